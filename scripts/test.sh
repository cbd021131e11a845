#!/usr/bin/env bash
# Install the project into .venv and run the test suite (what .ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/python -m pytest -q "$@"
