#!/usr/bin/env bash
# LoRA GRPO on Qwen2.5-7B on one 24 GB card (configs/grpo_qwen25_7b_lora_24g.yaml: bf16 frozen base,
# rank-32 adapters, the built-in engine sharing the base; memory arithmetic in docs/lora.md).
#   bash examples/grpo/grpo_trainer_qwen25_7b_lora.sh                          # one GPU, no Ray
#   bash examples/grpo/grpo_trainer_qwen25_7b_lora.sh actor_config.lora.rank=64 actor_config.lora.alpha=128
# Extra arguments are Hydra overrides. Rerunning resumes from the last checkpoint (adapters + their
# optimizer state; the base is reloaded from actor_config.load). Prepare data and the base checkpoint as
# the config's header says; export the adapter for peft with tools/convert_ckpt.py --lora-format peft.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec python -m mindrl.launch.ray_node train --config-name grpo_qwen25_7b_lora_24g "$@"
