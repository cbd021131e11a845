#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test extras.
# torch and torchvision come as the matching pair pinned in constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
