#!/usr/bin/env bash
# benchmarks/gpu.py on a GPU machine without network, in one command:
#   bash benchmarks/gpu.sh [--budget-s 400] [--parts demo generate dpo grpo] ...
# Installs the packages constraints-cpu.txt pins from wheels in .whl/ (the machine's own torch stays), puts
# src/ on the path for spr itself, and writes gpu.json, gpu.log and the demo's log to $OUT (default gpu-out/).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE="${SPR_SITE:-/tmp/spr-site}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
exec python3 benchmarks/gpu.py --mode gpu --out "${OUT:-gpu-out}" --budget-s 400 "$@"
