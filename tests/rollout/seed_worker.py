"""One GRPO generation round (`mindrl.trainer.grpo.generate_round`, the trainer's own code) on a tiny
converted Qwen2, at a given training layout and rollout layout; driven by test_layout_seeds.py.

    python tests/rollout/seed_worker.py --job JOB.json --nproc N --out DIR

JOB.json: {"ckpt" (tools/convert_ckpt.py output at the training layout), "tp" (training TP; the
other ranks are data-parallel), "rollout_tp" (null: share the training layout)}.
DIR/samples.json (rank 0): {round: {global prompt index: [token ids of each sample]}} for rounds
0 and 1 of step 3, gathered from every data-parallel rank.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PROMPT_LENS = [5, 9, 3, 7, 4, 6, 8, 2]  # two rounds of global_batch_size 4


class Prompts:
    """The prompt stream every rank reads (the trainer's PromptDataset interface: `take`)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(11)
        self.samples = [SimpleNamespace(index=i, row=i, labels={"i": i},
                                        prompt_ids=np.array(torch.randint(3, 1000, (n,), generator=g).tolist()))
                        for i, n in enumerate(PROMPT_LENS)]
        self.pos = 0

    def take(self, count: int) -> list:
        out = self.samples[self.pos:self.pos + count]
        self.pos += count
        return out


class Tokens:
    def batch_decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(map(str, t)) for t in ids]


def rank_main(job: dict) -> None:
    warnings.filterwarnings("ignore")
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.checkpoint.live import load_megatron_checkpoint
    from mindrl.config import MindRLConfig
    from mindrl.models import ParallelLayout, load_hf_config
    from mindrl.rollout import build_rollout
    from mindrl.trainer.grpo import Run, generate_round
    from mindrl.workers.bringup import PolicySpec, build_policy

    backend = get_backend("cpu")
    hf = load_hf_config(Path(job["ckpt"]) / "hf")
    model = build_policy(PolicySpec(hf=hf, layout=ParallelLayout(tp=job["tp"]), dtype="fp32", seed=1234), backend,
                         train=False)
    load_megatron_checkpoint(model.unwrapped, job["ckpt"])
    cfg = MindRLConfig()
    cfg.megatron_training.global_batch_size, cfg.megatron_training.seed = 4, 1234
    cfg.rl_config.n_samples_per_prompt, cfg.rl_config.max_prompt_length = 3, 64
    cfg.generate_config.sampling_config.temperature = 1.0
    cfg.generate_config.sampling_config.max_tokens = 8
    cfg.generate_config.infer_tensor_parallel_size = job["rollout_tp"]
    runner = build_rollout(cfg.generate_config, plan=model.plan, actor_chunks=model.chunks, tokenizer=None,
                           core_attention=backend.core_attention_cls(), seed=1234, use_cpu_initialization=True)
    assert runner.shared == (job["rollout_tp"] is None), (runner.shared, job)

    def reward(completions, labels, lengths):
        return SimpleNamespace(total=[float(n) for n in lengths], parts={}, metrics={})

    run = Run(cfg=cfg, actor=None, reference=None, engine=runner, tokenizer=Tokens(), dataset=Prompts(),
              reward_fn=reward, tracker=None, output_dir=Path(job["out"]), start_step=0, expected={})
    dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    per_rank = cfg.megatron_training.global_batch_size // dp_size
    mine: dict[int, dict[int, list[list[int]]]] = {}
    for round_index in (0, 1):
        groups, _ = generate_round(run, step=3, round_index=round_index)
        mine[round_index] = {dp_rank * per_rank + i: [o.token_ids for o in g.outputs] for i, g in enumerate(groups)}
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        merged: dict[int, dict[int, list]] = {0: {}, 1: {}}
        for m in everyone:
            for r, groups in m.items():
                for i, samples in groups.items():
                    assert merged[r].setdefault(i, samples) == samples  # model-parallel peers agree
        (Path(job["out"]) / "samples.json").write_text(json.dumps(merged))
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import spawn_job

    spawn_job(rank_main)
