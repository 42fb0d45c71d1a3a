#!/usr/bin/env bash
# Math evaluation, R1-Zero style: MATH-500 (avg@1), AIME 2024 (avg@8, pass@8), AMC 2023 (avg@1).
#   MODEL=/models/Qwen2.5-7B bash examples/eval/eval_math.sh
#   MODEL=output/run/checkpoints TP=2 bash examples/eval/eval_math.sh --strict-format
# MODEL: an HF directory or a megatron checkpoint (tools/convert_ckpt.py output or a trainer's
# checkpoints/). Overrides (environment): TOKENIZER (default: the model's), DATA_DIR (raw eval files,
# default ../shared/data/eval), OUTPUT_DIR (default output/eval/math), TP, PP, NPROC (default TP*PP),
# AIME_N (8), MAX_TOKENS (2048), TEMPERATURE (0.6), TOP_P (0.95), TEMPLATE (qwen_r1), LIMIT (0 = all).
# Extra arguments go to `python -m mindrl.evaluate` (e.g. --strict-format, --seed 1, --backend cpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL=/path/to/hf_model_or_megatron_checkpoint}"
DATA_DIR=${DATA_DIR:-../shared/data/eval}
TP=${TP:-1}; PP=${PP:-1}
ARGS=(--model "$MODEL" --datasets math500,aime24,amc23
      "math500.input=$DATA_DIR/math500.jsonl" "aime24.input=$DATA_DIR/aime24.jsonl" "amc23.input=$DATA_DIR/amc23.jsonl"
      --template "${TEMPLATE:-qwen_r1}" --n 1 --n "aime24=${AIME_N:-8}" --limit "${LIMIT:-0}"
      --max-tokens "${MAX_TOKENS:-2048}" --temperature "${TEMPERATURE:-0.6}" --top-p "${TOP_P:-0.95}"
      --tp "$TP" --pp "$PP" --nproc "${NPROC:-$((TP * PP))}" --output "${OUTPUT_DIR:-output/eval/math}")
[ -n "${TOKENIZER:-}" ] && ARGS+=(--tokenizer "$TOKENIZER")
exec python -m mindrl.evaluate "${ARGS[@]}" "$@"
