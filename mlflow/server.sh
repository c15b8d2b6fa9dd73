#!/usr/bin/env bash
# A shared MLflow tracking server for several machines: PostgreSQL for runs, a folder for
# artifacts, which clients send through the server (so workers need no shared disk). Then run
# the nas commands with MLFLOW_TRACKING_URI=http://HOST:PORT (or --tracking-uri).
#   mlflow/server.sh postgresql://USER@127.0.0.1:5432/mlflow [PORT]
# No password on the command line, where `ps` shows it to every user: libpq reads it from
# PGPASSWORD or from ~/.pgpass (a line HOST:PORT:DATABASE:USER:PASSWORD, chmod 600).
# It listens on loopback unless MLFLOW_HOST says otherwise (e.g. 0.0.0.0 behind a firewall).
# The PostgreSQL driver (psycopg) is installed with the project. `nas server --tracking-uri
# postgresql://...` starts the same server, beside a Prefect server, for one machine.
set -euo pipefail
backend=${1:?usage: mlflow/server.sh postgresql://USER@HOST:PORT/DATABASE [PORT]}
port=${2:-5000}
artifacts=${MLFLOW_ARTIFACTS:-$(cd "$(dirname "$0")" && pwd)/artifacts}
exec mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
    --host "${MLFLOW_HOST:-127.0.0.1}" --port "$port"
