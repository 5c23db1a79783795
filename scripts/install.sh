#!/usr/bin/env bash
# Create .venv and install qgnn into it, torch pinned first so nothing replaces it.
# Usage: bash scripts/install.sh [extras]   (default extras: dev,plot)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,plot}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, from constraints.txt: on our machines this is the local CPU wheel.
.venv/bin/python -m pip install -q -c constraints.txt torch
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
echo "qgnn installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
