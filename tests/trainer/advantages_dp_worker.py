"""The trainer's advantages (`mindrl.trainer.grpo.estimate_advantages`) on one batch held by one rank, then
split over two data-parallel gloo ranks; driven by test_advantages_dp.py.

    python tests/trainer/advantages_dp_worker.py --out DIR

Writes DIR/dp{W}_rank{R}.pt: {estimator: (advantages of the rank's rows, the same without the DP sum)}.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
ROWS, WIDTH, N = 8, 6, 2  # 4 prompts x 2 samples; each DP=2 rank holds 2 whole groups
ESTIMATORS = ("reinforce_plus_plus", "reinforce_plus_plus_baseline", "grpo", "rloo")


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores [N], token-level rewards [N, T] (a KL-like penalty on every token), response mask [N, T]):
    responses of uneven lengths, rewards uneven across the two halves so per-rank statistics differ."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 2, 5, 3, 1, 6, 4, 2])
    mask = torch.arange(WIDTH).unsqueeze(0) < lengths.unsqueeze(1)
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 0.5])
    token_rewards = torch.where(mask, -0.05 * torch.rand(ROWS, WIDTH, generator=g), torch.zeros(ROWS, WIDTH))
    last = lengths - 1
    token_rewards[torch.arange(ROWS), last] += scores
    return scores, token_rewards, mask


def run(world: int, out: Path) -> None:
    warnings.filterwarnings("ignore")
    from mindrl.algorithms import get_advantage_estimator
    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed, init_distributed
    from mindrl.config.schema import RLConfig
    from mindrl.trainer.grpo import estimate_advantages

    init_distributed(get_backend("cpu"), tp=1)
    rank = torch.distributed.get_rank()
    rows = slice(rank * ROWS // world, (rank + 1) * ROWS // world)
    scores, token_rewards, mask = batch()
    result = {}
    for name in ESTIMATORS:
        rl = RLConfig(adv_estimator=name, n_samples_per_prompt=N)
        for kind, rewards in (("scores", scores), ("tokens", token_rewards)):
            adv = estimate_advantages(rl, rewards[rows], mask[rows])
            local, _ = get_advantage_estimator(name)(rewards[rows], mask[rows], n_samples_per_prompt=N)
            result[f"{name}/{kind}"] = (adv, local.float())
    torch.save(result, out / f"dp{world}_rank{rank}.pt")
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import run_at_tp1_then_tp2

    run_at_tp1_then_tp2(run)  # one rank (DP=1), then two ranks at TP=1 (DP=2)
