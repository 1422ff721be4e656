#!/usr/bin/env bash
# Lint, then the whole test suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
