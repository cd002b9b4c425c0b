#!/usr/bin/env bash
# Lint and format check (ruff, configured in pyproject.toml); the dependency direction of app/ is
# checked by tests/unit/test_layers.py. Needs the dev extra (bash scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check app tests scripts examples
.venv/bin/ruff format --check app tests scripts examples
