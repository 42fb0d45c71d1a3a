"""Token-budget micro-batches (`actor_config.max_tokens_per_micro_batch`), packed without padding
and right-padded, give the same log-probs,
gradients and split-independent loss metrics as fixed micro-batches, at TP=1 and TP=2, on a
long-tailed batch; plus the grouping rule itself. The model runs in microbatch_worker.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mindrl.workers.actor import SequenceBatch, sequence_lengths, token_budget_groups
from tests.tp_worker import tp_worker_results

WORKER = Path(__file__).with_name("microbatch_worker.py")


def test_groups_respect_the_budget_and_are_deterministic():
    lengths = torch.tensor([5, 40, 7, 7, 100, 3, 7, 12])
    groups = token_budget_groups(lengths, 30)
    assert [(r.tolist(), n) for r, n in groups] == [([4], 100), ([1], 40), ([7, 2], 12), ([3, 6, 0, 5], 7)]
    for rows, n in groups:
        assert n == int(lengths[rows].max()) and (len(rows) * n <= 30 or len(rows) == 1)
    assert sorted(i for r, _ in groups for i in r.tolist()) == list(range(8))
    assert [(r.tolist(), n) for r, n in token_budget_groups(lengths, 30)] == [(r.tolist(), n) for r, n in groups]


def test_packed_groups_count_real_tokens():
    lengths = torch.tensor([5, 40, 7, 7, 100, 3, 7, 12])
    groups = token_budget_groups(lengths, 30, packed=True)
    assert [(r.tolist(), n) for r, n in groups] == [([4], 100), ([1], 40), ([7, 2, 3], 12), ([6, 0, 5], 7)]
    for rows, _ in groups:
        assert int(lengths[rows].sum()) <= 30 or len(rows) == 1


def test_sequence_lengths_from_the_response_mask():
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    b = SequenceBatch(torch.zeros(3, 6, dtype=torch.long), mask, torch.zeros(3))
    assert sequence_lengths(b).tolist() == [4, 6, 2]


@pytest.mark.megatron
def test_budget_equals_fixed_micro_batches(tmp_path):
    runs = tp_worker_results(WORKER, tmp_path, timeout=400)
    assert sorted(runs) == ["tp1_rank0", "tp2_rank0", "tp2_rank1"]
    for name, r in runs.items():
        # Not vacuous: the budget really regrouped and trimmed the long-tailed batch.
        assert r["shapes"] != r["fixed_shapes"] and min(s[1] for s in r["shapes"]) < 20, r["shapes"]
        assert all(rows * length <= 96 or rows == 1 for rows, length in r["shapes"])
        # Packed: one sequence per micro-batch, no padding beyond a multiple of TP, within the budget.
        assert all(s[0] == 1 for s in r["packed_shapes"]) and max(r["packed_rows"]) > 3, r["packed_shapes"]
        assert all(s[1] <= 96 or rows == 1 for s, rows in zip(r["packed_shapes"], r["packed_rows"]))
        assert sum(s[1] for s in r["packed_shapes"]) < sum(rows * n for rows, n in r["shapes"])
        assert sum(s[1] for s in r["packed_shapes"]) <= r["real_tokens"], r["packed_shapes"]
        assert r["logp_mean"] < -1.0
        if name.startswith("tp2"):  # sequence parallel: an odd packed length got an extra padding sequence
            assert all(n % 2 == 0 for n in r["sp_packed_lengths"]) and r["sp_grad_scale"] > 1e-2
            assert r["sp_logp"] <= 1e-5 and r["sp_grad"] <= 1e-5 * max(1.0, r["sp_grad_scale"]), name
        for mode in ("token-mean", "seq-mean-token-mean"):  # aggregated over micro-batches and TP ranks
            expected = r["expected_is_clipfrac"][mode]
            assert 0 < expected < 1 and r[f"{mode}_is_clipfrac"] == pytest.approx(expected, abs=1e-6), (name, mode)
            mean, top = r["expected_logprob_diff"]
            assert r[f"{mode}_logprob_diff"] == pytest.approx((mean, top), rel=1e-4, abs=1e-5), (name, mode)
        for variant in ("padded", "packed"):
            assert r[f"{variant}_logp"] <= 1e-5, (name, variant, r[f"{variant}_logp"])
            assert r[f"{variant}_logp_off_response"] == 0.0  # only response positions are computed
            for mode in ("token-mean", "seq-mean-token-mean"):
                assert r[f"{mode}_grad_scale"] > 1e-2, name
                grad = r[f"{variant}_{mode}_grad"]
                assert grad <= 1e-5 * max(1.0, r[f"{mode}_grad_scale"]), (name, variant, mode, grad)
                for k, diff in r[f"{variant}_{mode}_metrics"].items():
                    assert diff <= 1e-5 * max(1.0, abs(diff)) + 1e-5, (name, variant, mode, k, diff)


@pytest.mark.parametrize("changes,message", [
    ({"max_tokens_per_micro_batch": 1}, "max_tokens_per_micro_batch=1 must be >= 2"),
    ({"max_tokens_per_micro_batch": 512, "pipeline_model_parallel_size": 2},
     "max_tokens_per_micro_batch needs pipeline_model_parallel_size=1"),
    ({"max_tokens_per_micro_batch": 512, "loss_agg_mode": "seq-mean-token-sum-norm"}, "seq-mean-token-sum-norm"),
    ({"max_tokens_per_micro_batch": 512}, None),
])
def test_validate_refuses_what_token_budgets_cannot_do(changes, message):
    from mindrl.config import config_from_dict, validate
    from tests.config.test_config import base

    actor = {k: v for k, v in changes.items() if k != "loss_agg_mode"}
    cfg = base(**{f"actor_config__{k}": v for k, v in actor.items()})
    if "loss_agg_mode" in changes:
        cfg["rl_config"]["loss_agg_mode"] = changes["loss_agg_mode"]
    errors = [e for e in validate(config_from_dict(cfg)) if "max_tokens_per_micro_batch" in e]
    assert (errors == []) if message is None else any(message in e for e in errors), errors


@pytest.mark.slow
@pytest.mark.megatron
def test_trainer_step_with_token_budget_matches_fixed(tiny_demo, tmp_path):
    """`actor_config.max_tokens_per_micro_batch` reaches the trainer (train.py) and one GRPO step
    with it equals the fixed-micro-batch step: same samples, same gradient norm and loss metrics
    that do not depend on the split."""
    import json

    from tests.conftest import run_cli
    from tests.trainer.test_grpo_e2e import train_cmd

    out = {}
    for name, extra in (("fixed", ["actor_config.micro_batch_size=4"]),
                        ("budget", ["actor_config.micro_batch_size=4", "actor_config.max_tokens_per_micro_batch=64"])):
        # An entropy bonus: step 1's policy gradient can be all zero (flat groups, ratio 1, KL 0).
        proc = run_cli(train_cmd(tiny_demo, tmp_path / name, "megatron_training.train_iters=1",
                                 "megatron_training.save_interval=0", "rl_config.entropy_coeff=0.01", *extra))
        assert proc.returncode == 0, proc.stderr[-4000:]
        out[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    f, b = out["fixed"], out["budget"]
    assert f["response_length/mean"] == b["response_length/mean"] and f["reward/mean"] == b["reward/mean"]
    for key in ("actor/grad_norm", "actor/entropy", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert abs(f[key] - b[key]) <= 1e-5 * max(1.0, abs(f[key])), (key, f[key], b[key])
    assert f["actor/grad_norm"] > 0
