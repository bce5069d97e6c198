#!/usr/bin/env bash
# Generate device data, run the X-LLM-style staged training with the real SmolLM2 and score the held-out split.
# Usage (from the repo root): plugins/xmm-plugin-device/scripts/xllm_device.sh [N_TRAIN] [N_TEST]
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
XMM="${XMM:-$ROOT/.venv/bin/xmm}"
DATA="$ROOT/runs/device-data"
N_TRAIN="${1:-6400}"
N_TEST="${2:-300}"
mkdir -p "$ROOT/runs"
"$PY" -m xmm_plugin_device.synthetic "$DATA" --n "$N_TRAIN" --seed 1 --split train --turns 1 \
  --action-weights close_app=4 > "$DATA.train.json"  # 15 apps to name: see more of them in training only
"$PY" -m xmm_plugin_device.synthetic "$DATA" --n "$N_TEST" --seed 2 --split test --no-captions > "$DATA.test.json"
start=$(date +%s)
"$XMM" train "$HERE/configs/xllm-device.yaml"
echo "training wall time: $(( $(date +%s) - start )) s"
"$XMM" eval "$ROOT/runs/device" "$DATA/test.jsonl" --metric exact --max-new-tokens 16 --batch-size 16
"$PY" "$HERE/scripts/device_eval.py" "$ROOT/runs/device" "$DATA/test.jsonl"
