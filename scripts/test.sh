#!/usr/bin/env bash
# Lint, then the whole test suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Tiny models run fastest on one thread; more threads only contend on a small machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
