#!/usr/bin/env bash
# Install the project into .venv and run the main job on the shipped toy world
# (local Ray, local run folder). Extra arguments are config overrides, e.g. plan.name=draft_lv.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/python -m pipeline.train "$@"
