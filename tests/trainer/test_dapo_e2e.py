"""DAPO in the trainer, end to end on the tiny CPU demo: dynamic sampling with its cap, exact resume, and
a DAPO-settings run that learns (slow).

Runs `python -m mindrl.cli.train_grpo --config-name grpo_tiny_cpu` as a user would, overriding only data
paths, batch shape and rl_config algorithm keys, so the demo recipe can change underneath.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.megatron

GBS, N, CAP = 4, 4, 3
# Filtering on accuracy: after the fixture's short warm start the sums are almost never right, so most
# groups are flat and the cap is reached: the step trains on the few informative groups there are.
DYNAMIC = ["rl_config.filter_groups.enable=true", "rl_config.filter_groups.metric=acc",
           f"rl_config.filter_groups.max_num_gen_batches={CAP}"]


def train_cmd(demo: Path, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mindrl.cli.train_grpo", "--config-name", "grpo_tiny_cpu",
            f"megatron_training.output_dir={out}", f"megatron_training.tokenizer_name_or_path={demo / 'tokenizer'}",
            f"megatron_training.data_path={demo / 'data' / 'tiny'}", f"actor_config.load={demo / 'mg'}",
            f"megatron_training.global_batch_size={GBS}", f"rl_config.n_samples_per_prompt={N}",
            "actor_config.micro_batch_size=4", "rl_config.actor_resource.num_npus=1",
            "generate_config.sampling_config.max_tokens=24", "megatron_training.save_interval=1", *overrides]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dynamic_run(tiny_demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dapo")
    proc = run_cli(train_cmd(tiny_demo, out, "megatron_training.train_iters=2", *DYNAMIC))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_dynamic_sampling_reports_rounds_and_trains_on_a_partial_batch_at_the_cap(dynamic_run):
    rows = metrics(dynamic_run)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        rounds = r["filter/gen_rounds"]
        assert 1 <= rounds <= CAP
        assert r["filter/kept_groups"] + r["filter/dropped_groups"] == rounds * GBS  # every generated group counted
        assert r["filter/trained_groups"] <= min(r["filter/kept_groups"], GBS)
        assert r["filter/partial_batch"] == float(r["filter/trained_groups"] < GBS)
        assert rounds == CAP or r["filter/trained_groups"] == GBS  # more rounds only while short
        # a step trains only when it has groups: the loss metrics come from the update
        assert ("actor/pg_loss" in r) == (r["filter/trained_groups"] > 0)
    partial = [r for r in rows if r["filter/partial_batch"] == 1.0]
    assert partial, rows  # the cap path ran: the run went on (never aborts) on what it had
    # the data stream advanced by whole rounds of global_batch_size prompts
    state = json.loads((dynamic_run / "checkpoints" / "iter_0000002" / "trainer_state.json").read_text())
    assert state["consumed_samples"] == GBS * sum(r["filter/gen_rounds"] for r in rows)


def test_dynamic_sampling_resume_repeats_the_uninterrupted_run(tiny_demo, dynamic_run, tmp_path):
    first = run_cli(train_cmd(tiny_demo, tmp_path, "megatron_training.train_iters=1", *DYNAMIC))
    assert first.returncode == 0, first.stderr[-4000:]
    resumed = run_cli(train_cmd(tiny_demo, tmp_path, "megatron_training.train_iters=2", *DYNAMIC))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    a, b = metrics(dynamic_run), metrics(tmp_path)
    assert [m["step"] for m in b] == [1, 2]
    for x, y in zip(a, b):
        for key in ("reward/mean", "response_length/mean", "filter/gen_rounds", "filter/kept_groups",
                    "filter/trained_groups", "actor/pg_loss", "actor/grad_norm"):
            assert x.get(key) == y.get(key), (x["step"], key, x.get(key), y.get(key))


def dapo_algorithm_overrides(max_tokens: int, verifiers: list[str]) -> list[str]:
    """The DAPO recipe's algorithm keys, read from configs/grpo_qwen25_7b_dapo.yaml, as overrides."""
    rl = yaml.safe_load((REPO / "configs" / "grpo_qwen25_7b_dapo.yaml").read_text())["rl_config"]
    value = lambda v: str(v).lower() if isinstance(v, bool) else v  # noqa: E731
    keys = ("adv_estimator", "policy_loss", "clip_ratio_low", "clip_ratio_high", "loss_agg_mode", "use_kl_loss",
            "use_kl_in_reward", "kl_coef", "entropy_coeff")
    out = [f"rl_config.{k}={value(rl[k])}" for k in keys]
    fg = rl["filter_groups"]
    # The tiny task's accuracy barely moves in a short run (the format is learnt first, docs/grpo.md), so
    # groups that vary in accuracy are rare; filtering on the whole reward is the same mechanism.
    out += ["rl_config.filter_groups.enable=true", "rl_config.filter_groups.metric=reward",
            f"rl_config.filter_groups.max_num_gen_batches={fg['max_num_gen_batches']}"]
    # The overlong buffer, scaled to this run's response length with the recipe's buffer fraction.
    overlong = rl["verifier_options"]["overlong"]
    buffer = max(1, round(max_tokens * overlong["buffer"] / overlong["max_length"]))
    names = verifiers + ["overlong"]
    out += [f"rl_config.verifier_function=[{','.join(names)}]",
            f"rl_config.verifier_weight=[{','.join(['1.0'] * len(names))}]",
            f"+rl_config.verifier_options.overlong={{max_length:{max_tokens},buffer:{buffer},"
            f"penalty_factor:{overlong['penalty_factor']}}}"]
    return out


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dapo_settings_learn_on_the_tiny_demo(tmp_path):
    """The demo recipe with DAPO's algorithm settings: reward/mean rises, as the demo's does."""
    from mindrl.config import load_config

    demo = tmp_path / "demo"
    proc = run_cli([sys.executable, "-m", "mindrl.cli.prepare_tiny_demo", "--out", str(demo),
                    f"megatron_training.tokenizer_name_or_path={demo / 'tokenizer'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli([sys.executable, "tools/convert_ckpt.py", "--model-type-hf", "qwen2", "--load-model-type", "hf",
                    "--save-model-type", "mg", "--load-dir", str(demo / "warm_start"), "--save-dir",
                    str(demo / "mg"), "--target-tensor-parallel-size", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    tiny = load_config("grpo_tiny_cpu")
    steps = 40
    out = tmp_path / "run"
    proc = run_cli([sys.executable, "-m", "mindrl.cli.train_grpo", "--config-name", "grpo_tiny_cpu",
                    f"megatron_training.output_dir={out}",
                    f"megatron_training.tokenizer_name_or_path={demo / 'tokenizer'}",
                    f"megatron_training.data_path={demo / 'data' / 'tiny'}", f"actor_config.load={demo / 'mg'}",
                    f"megatron_training.train_iters={steps}", "megatron_training.save_interval=0",
                    *dapo_algorithm_overrides(tiny.generate_config.sampling_config.max_tokens,
                                              list(tiny.rl_config.verifier_function))], timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = metrics(out)
    assert len(rows) == steps
    first, last = rows[:10], rows[-10:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "reward/mean") > mean(first, "reward/mean") + 0.15, (mean(first, "reward/mean"),
                                                                           mean(last, "reward/mean"))
    assert all(r["filter/trained_groups"] > 0 for r in rows[5:])
