#!/usr/bin/env bash
# Countdown test split (TinyZero's 1,024 held-out tasks), scored by the `countdown` scorer.
#   MODEL=output/countdown/checkpoints bash examples/eval/eval_countdown.sh
# MODEL: an HF directory or a megatron checkpoint. Overrides (environment): INPUT (default
# ../shared/data/countdown/countdown_test_1024.jsonl), TOKENIZER, OUTPUT_DIR (output/eval/countdown),
# N (1), TP, PP, NPROC (default TP*PP), MAX_TOKENS (1024), TEMPERATURE (0.6), TOP_P (0.95),
# TEMPLATE (countdown_r1; countdown_r1_zh / countdown_r1_qwen for the other recipes), LIMIT (0 = all).
# Extra arguments go to `python -m mindrl.evaluate`.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL=/path/to/hf_model_or_megatron_checkpoint}"
TP=${TP:-1}; PP=${PP:-1}
ARGS=(--model "$MODEL" --datasets countdown "countdown.input=${INPUT:-../shared/data/countdown/countdown_test_1024.jsonl}"
      --template "${TEMPLATE:-countdown_r1}" --n "${N:-1}" --limit "${LIMIT:-0}"
      --max-tokens "${MAX_TOKENS:-1024}" --temperature "${TEMPERATURE:-0.6}" --top-p "${TOP_P:-0.95}"
      --tp "$TP" --pp "$PP" --nproc "${NPROC:-$((TP * PP))}" --output "${OUTPUT_DIR:-output/eval/countdown}")
[ -n "${TOKENIZER:-}" ] && ARGS+=(--tokenizer "$TOKENIZER")
exec python -m mindrl.evaluate "${ARGS[@]}" "$@"
