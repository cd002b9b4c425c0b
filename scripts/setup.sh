#!/usr/bin/env bash
# Create .venv (once) and install the project into it. Used by serve.sh, test.sh and .ci/run.
# TORCH_SPEC picks the torch build, e.g. TORCH_SPEC="torch==2.13.0" or a CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
