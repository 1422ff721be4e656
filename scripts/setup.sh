#!/usr/bin/env bash
# Create .venv at the repo root and install SPR with the pinned CPU stack (constraints-cpu.txt).
# On a GPU machine, install your own torch build into .venv first and run with SPR_KEEP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${SPR_KEEP_TORCH:-0}" != "1" ]; then
  .venv/bin/python -m pip install -q torch==2.13.0
fi
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[dev]"
echo "SPR installed in .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
