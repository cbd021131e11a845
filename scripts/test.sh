#!/usr/bin/env bash
# Install the project with its test extras into .venv and run the test suite.
# torch and torchvision come as the matching pair pinned in constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/python -m pytest -q "$@"
