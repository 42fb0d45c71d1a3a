#!/usr/bin/env bash
# GSM8K test set (1,319 problems), scored by the `gsm8k` scorer (the number after ####).
#   MODEL=/models/Qwen2.5-3B bash examples/eval/eval_gsm8k.sh
# MODEL: an HF directory or a megatron checkpoint. Overrides (environment): INPUT (default
# ../shared/data/eval/gsm8k_test.jsonl), TOKENIZER, OUTPUT_DIR (output/eval/gsm8k), N (1), TP, PP,
# NPROC (default TP*PP), MAX_TOKENS (1024), TEMPERATURE (0.6), TOP_P (0.95), TEMPLATE (qwen_r1), LIMIT (0 = all).
# Extra arguments go to `python -m mindrl.evaluate`.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL=/path/to/hf_model_or_megatron_checkpoint}"
TP=${TP:-1}; PP=${PP:-1}
ARGS=(--model "$MODEL" --datasets gsm8k "gsm8k.input=${INPUT:-../shared/data/eval/gsm8k_test.jsonl}"
      --template "${TEMPLATE:-qwen_r1}" --n "${N:-1}" --limit "${LIMIT:-0}"
      --max-tokens "${MAX_TOKENS:-1024}" --temperature "${TEMPERATURE:-0.6}" --top-p "${TOP_P:-0.95}"
      --tp "$TP" --pp "$PP" --nproc "${NPROC:-$((TP * PP))}" --output "${OUTPUT_DIR:-output/eval/gsm8k}")
[ -n "${TOKENIZER:-}" ] && ARGS+=(--tokenizer "$TOKENIZER")
exec python -m mindrl.evaluate "${ARGS[@]}" "$@"
