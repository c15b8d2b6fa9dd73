#!/usr/bin/env bash
# A shared MLflow tracking server for several machines: PostgreSQL for runs, a folder for
# artifacts. Then run searches with MLFLOW_TRACKING_URI=http://HOST:PORT.
#   mlflow/server.sh postgresql://USER:PASSWORD@127.0.0.1:5432/mlflow [PORT]
# The PostgreSQL driver is psycopg2-binary (pip install psycopg2-binary).
set -euo pipefail
backend=${1:?usage: mlflow/server.sh POSTGRES_URI [PORT]}
port=${2:-5000}
artifacts=${MLFLOW_ARTIFACTS:-$(cd "$(dirname "$0")" && pwd)/artifacts}
exec mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
    --host "${MLFLOW_HOST:-127.0.0.1}" --port "$port"
