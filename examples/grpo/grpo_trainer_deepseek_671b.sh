#!/usr/bin/env bash
# DeepSeek-R1-Zero on DeepSeek-V3-671B (configs/grpo_deepseek_r1_671b.yaml): 16 Ascend nodes x 16 NPUs,
# training TP4 PP8 EP8 = 256 ranks; rollout vLLM TP64 x EP64 (4 engines of 4 nodes; per-die arithmetic in
# docs/rollout.md, "The 671B layout"). NOT VERIFIED ON HARDWARE.
# The same command on every node (docs/multinode.md); extra arguments are Hydra overrides.
#   NNODES=16 DEVICES_PER_NODE=16 MASTER_ADDR=10.0.0.1 bash examples/grpo/grpo_trainer_deepseek_671b.sh   # all 16 nodes
# Environment: NNODES, DEVICES_PER_NODE, MASTER_ADDR (head address), MASTER_PORT (Ray head port, default
# 6379), optional NODE_IP, NODE_RANK. The head starts Ray, waits for every node, trains and stops its Ray;
# the other nodes join, stay until the job ends and leave. Rerunning resumes from the last checkpoint.
# Node logic: mindrl/launch/ray_node.py. Prepare data and checkpoints as configs/grpo_deepseek_r1_671b.yaml says.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec python -m mindrl.launch.ray_node train --config-name grpo_deepseek_r1_671b "$@"
