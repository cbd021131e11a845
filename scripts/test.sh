#!/usr/bin/env bash
# Install the project into .venv, check formatting and lint (ruff), and run the test suite (what .ci/run does).
#   ./scripts/test.sh                 the full suite
#   ./scripts/test.sh -m "not slow"   the fast tier: no Ray, MLflow or S3 services, no whole-job runs
# Tests run in TEST_WORKERS pytest-xdist processes (2 by default; 0 runs them in this process), each
# with its own session fixtures (tiny models, Ray cluster, MLflow and S3 stack); the 15 slowest are listed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
.venv/bin/ruff format --check --quiet . || { echo "run: .venv/bin/ruff format ." >&2; exit 1; }
.venv/bin/ruff check --quiet .
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --maxschedchunk 1 --durations=15 "$@"
