#!/usr/bin/env bash
# GRPO on Qwen2.5-7B, DeepScaleR (configs/grpo_qwen25_7b_deepscaler.yaml: TP4, 8 devices).
# The same command on every node (docs/multinode.md); extra arguments are Hydra overrides.
#   bash examples/grpo/grpo_trainer_qwen25_7b.sh                    # one machine: spawn launcher, no Ray
#   NNODES=2 DEVICES_PER_NODE=8 MASTER_ADDR=10.0.0.1 bash examples/grpo/grpo_trainer_qwen25_7b.sh \
#     rl_config.actor_resource.num_npus=16                                         # on both nodes
# Environment: NNODES, DEVICES_PER_NODE, MASTER_ADDR (head address), MASTER_PORT (Ray head port, default
# 6379), optional NODE_IP, NODE_RANK. The head starts Ray, waits for every node, trains and stops its Ray;
# the other nodes join, stay until the job ends and leave. Rerunning resumes from the last checkpoint.
# Node logic: mindrl/launch/ray_node.py. Prepare data and checkpoints as configs/grpo_qwen25_7b_deepscaler.yaml says.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec python -m mindrl.launch.ray_node train --config-name grpo_qwen25_7b_deepscaler "$@"
