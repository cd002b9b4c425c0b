#!/usr/bin/env bash
# Set up .venv (with the dev, hf, trl and onnx extras and the pretrained encoder) and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS="dev,hf,trl,onnx" SETUP_PRETRAINED=1 bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
