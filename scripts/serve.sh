#!/usr/bin/env bash
# Set up .venv and serve the current model in model_store/ on http://127.0.0.1:8000.
# Extra arguments go to reward-serve (see `reward-serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/reward-serve --model-store model_store "$@"
