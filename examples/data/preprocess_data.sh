#!/usr/bin/env bash
# Tokenize a raw dataset into a megatron-core indexed prompt set for GRPO training.
#
#   bash examples/data/preprocess_data.sh NAME [key=value ...]
#
# NAME is a config in configs/datasets/ (deepscaler, countdown, math23k, gsm8k, math500, aime24,
# amc23) or a path to a yaml file; key=value pairs override it, e.g.
#
#   bash examples/data/preprocess_data.sh deepscaler input=/data/ds.jsonl \
#       tokenizer_name_or_path=/models/Qwen2.5-7B output_prefix=/data/out/deepscaler prompt_type=qwen_r1
#
# Relative paths are taken from the directory you run it in. See docs/data.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo
    exec "${PYTHON}" -m mindrl.data.preprocess --help
fi

NAME="$1"
shift
exec "${PYTHON}" -m mindrl.data.preprocess --config-name "${NAME}" --config-dir "${REPO}/configs/datasets" "$@"
