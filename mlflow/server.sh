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
# It needs a password (MLflow's basic-auth app): start it with MLFLOW_AUTH_ADMIN_PASSWORD set, and
# give clients MLFLOW_TRACKING_USERNAME=admin and MLFLOW_TRACKING_PASSWORD (the same password).
set -euo pipefail
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD, the password clients will send as user admin}"
# Signs the auth app's CSRF tokens; the same on every replica of the server.
export MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(python -c 'import secrets; print(secrets.token_hex(16))')}
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}  # GenAI jobs: none here
backend=${1:?usage: mlflow/server.sh postgresql://USER@HOST:PORT/DATABASE [PORT]}
port=${2:-5000}
artifacts=${MLFLOW_ARTIFACTS:-$(cd "$(dirname "$0")" && pwd)/artifacts}
exec mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
    --host "${MLFLOW_HOST:-127.0.0.1}" --port "$port" --app-name basic-auth
