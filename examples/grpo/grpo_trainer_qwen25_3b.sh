#!/usr/bin/env bash
# GRPO on Qwen2.5-3B, Countdown (configs/grpo_qwen25_3b_countdown.yaml: TP2, 8 devices).
# The same command on every node (docs/multinode.md); extra arguments are Hydra overrides.
#   bash examples/grpo/grpo_trainer_qwen25_3b.sh                    # one machine: spawn launcher, no Ray
#   NNODES=2 DEVICES_PER_NODE=8 MASTER_ADDR=10.0.0.1 bash examples/grpo/grpo_trainer_qwen25_3b.sh \
#     rl_config.actor_resource.num_npus=16 megatron_training.global_batch_size=64   # on both nodes
# Environment: NNODES, DEVICES_PER_NODE, MASTER_ADDR (head address), MASTER_PORT (Ray head port, default
# 6379), optional NODE_IP, NODE_RANK. The head starts Ray, waits for every node, trains and stops its Ray;
# the other nodes join, stay until the job ends and leave. Rerunning resumes from the last checkpoint.
# Node logic: mindrl/launch/ray_node.py. Prepare data and checkpoints as configs/grpo_qwen25_3b_countdown.yaml says.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec python -m mindrl.launch.ray_node train --config-name grpo_qwen25_3b_countdown "$@"
