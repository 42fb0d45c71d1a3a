"""A short training run of a tiny model through the real stack, to check an install.

    python -m mindrl.cli.sanity                          # grpo_tiny_cpu's model: tiny Qwen2, TP=2 on 2 CPU ranks
    python -m mindrl.cli.sanity model=tiny_deepseekv3 actor_config.tensor_model_parallel_size=1 actor_config.expert_model_parallel_size=2

Backend -> process groups -> megatron-core GPTModel from an HF config -> megatron DDP and
optimizer -> megatron's pipeline schedule, for `megatron_training.train_iters` steps of
next-token prediction on a synthetic "count upwards" sequence that any working model learns
within a few steps. It passes when the loss falls by 30%; it prints a table and writes
`output/sanity/sanity_metrics.jsonl`. A quick install check; the main job is
`bash examples/grpo/grpo_trainer_tiny.sh`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from mindrl.config import MindRLConfig, actor_layout, check_config, load_config
from mindrl.utils.io import atomic_write_text

PATTERN_VOCAB = 60  # the synthetic sequences use token ids [1, 61): inside every tiny model's vocab
SANITY_DEFAULTS = ["megatron_training.train_iters=20", "actor_config.lr=1e-2", "actor_config.tensor_model_parallel_size=2",
                   "megatron_training.output_dir=output/sanity"]


def synthetic_batch(step: int, rows: int, seq: int, seed: int):
    """rows x (seq+1) tokens counting upwards from random starts: next token = previous + 1."""
    import torch

    g = torch.Generator().manual_seed(seed * 100003 + step)
    starts = torch.randint(0, PATTERN_VOCAB, (rows, 1), generator=g)
    return (starts + torch.arange(seq + 1)) % PATTERN_VOCAB + 1


def rank_main(cfg: MindRLConfig, result_path: str) -> None:
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("megatron").setLevel(logging.ERROR)
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.workers.bringup import PolicySpec, build_policy, optim_config
    from mindrl.workers.megatron_engine import data_parallel_slice, forward_backward, next_token_loss_forward

    backend = get_backend(cfg.backend)
    layout = actor_layout(cfg)
    mt, actor = cfg.megatron_training, cfg.actor_config
    # The trainer's bring-up and LR schedule; one optimizer update per sanity step.
    model = build_policy(PolicySpec.from_config(cfg), backend, optim=optim_config(cfg, updates_per_iteration=1))
    plan = model.plan
    device = backend.device(int(os.environ.get("LOCAL_RANK", "0")))
    rank0 = dist.get_rank() == 0
    rows = mt.global_batch_size * cfg.rl_config.n_samples_per_prompt
    seq = min(mt.seq_length, 32)
    micro = actor.micro_batch_size
    history = []
    if rank0:
        print(f"[sanity] {plan.hf['model_type']} ({plan.config.num_layers} layers, hidden {plan.config.hidden_size}, "
              f"vocab {plan.vocab_size}) on {dist.get_world_size()} x {backend.name} ranks: TP={layout.tp} "
              f"PP={layout.pp} EP={layout.ep} DP={ps.get_data_parallel_world_size()} "
              f"SP={plan.config.sequence_parallel}", flush=True)
    for step in range(mt.train_iters):
        t0 = time.perf_counter()
        tokens = data_parallel_slice(synthetic_batch(step, rows, seq, mt.seed)).to(device)
        micro_batches = [{"tokens": t[:, :-1], "labels": t[:, 1:]} for t in tokens.split(micro)]

        reported = forward_backward(model, micro_batches, next_token_loss_forward(plan.vocab_size))
        ok, grad_norm, _ = model.optimizer.step()
        loss = torch.stack([r["loss"] for r in reported]).mean() if reported else torch.zeros(())
        # The last pipeline stage has the loss; average it over data-parallel ranks onto rank 0.
        summed = torch.stack([loss.float().cpu(), torch.tensor(1.0 if reported else 0.0)])
        dist.all_reduce(summed)
        loss_value = (summed[0] / summed[1]).item()
        seconds = time.perf_counter() - t0
        history.append({"step": step + 1, "loss": round(loss_value, 5), "grad_norm": float(grad_norm or 0.0),
                        "update_ok": bool(ok), "seconds": round(seconds, 3),
                        "tokens_per_s": round(rows * seq / seconds, 1)})
        if rank0:
            print(f"[sanity] step {step + 1:3d}/{mt.train_iters}  loss {loss_value:7.4f}  "
                  f"grad_norm {float(grad_norm or 0):6.3f}  {seconds:5.2f}s", flush=True)
    if rank0:
        atomic_write_text(result_path, "".join(json.dumps(h) + "\n" for h in history))
    destroy_distributed()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mindrl.cli.sanity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-name", default="grpo_tiny_cpu", help="a YAML under configs/ (default: %(default)s)")
    p.add_argument("--config-dir", default=None, help="directory of configs (default: the repo's configs/)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. megatron_training.train_iters=5")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Its own step count and learning rate (the recipe's are for GRPO); the user's overrides win.
    # No paths are checked: this run needs no tokenizer, data or checkpoint.
    cfg = check_config(load_config(args.config_name, SANITY_DEFAULTS + args.overrides, args.config_dir),
                       check_paths=False)
    out_dir = Path(cfg.megatron_training.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = out_dir / "sanity_metrics.jsonl"
    world = cfg.rl_config.actor_resource.num_npus
    t0 = time.perf_counter()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun: we are one rank
        rank_main(cfg, str(result))
        if int(os.environ["RANK"]) != 0:
            return 0
    else:
        from mindrl.utils.launch import spawn

        spawn(rank_main, world, cfg, str(result))
    history = [json.loads(line) for line in result.read_text().splitlines()]
    first, last = history[0]["loss"], history[-1]["loss"]
    # Pass: the mean loss of the last 3 steps is at least 30% below the first step's.
    tail = sum(h["loss"] for h in history[-3:]) / len(history[-3:])
    passed = tail <= 0.7 * first and all(h["update_ok"] for h in history)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mindrl sanity run")
    for col in ("model", "ranks", "steps", "first loss", "last loss", "tokens/s", "wall", "result"):
        table.add_column(col)
    mean_tps = sum(h["tokens_per_s"] for h in history[1:]) / max(1, len(history) - 1)
    table.add_row(cfg.model.name, str(world), str(len(history)), f"{first:.3f}", f"{last:.3f}", f"{mean_tps:.0f}",
                  f"{time.perf_counter() - t0:.0f}s", "[green]PASS[/]" if passed else "[red]FAIL[/]")
    Console().print(table)
    print(f"metrics: {result}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
