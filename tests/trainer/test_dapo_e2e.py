"""DAPO in the trainer, end to end on the tiny CPU demo: dynamic sampling with its cap, exact resume (on the
short-warm-start fixture), and a run with the DAPO recipe's settings that learns the demo's task (slow; the
demo's own 1,000-step warm start).

Runs `python -m mindrl.cli.train_grpo --config-name grpo_tiny_cpu` as a user would, overriding only data
paths, batch shape and rl_config algorithm keys, so the demo recipe can change underneath.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mindrl.cli.summarize import verdict
from tests.conftest import REPO, demo_train_cmd, run_cli

pytestmark = pytest.mark.megatron

GBS, N, CAP = 4, 4, 3
# Filtering on accuracy: after the fixture's short warm start the sums are almost never right, so most
# groups are flat and the cap is reached: the step trains on the few informative groups there are.
DYNAMIC = ["rl_config.filter_groups.enable=true", "rl_config.filter_groups.metric=acc",
           f"rl_config.filter_groups.max_num_gen_batches={CAP}"]


def train_cmd(demo: Path, out: Path, *overrides: str) -> list[str]:
    """A small, one-rank run of the demo recipe (4 prompts x 4 samples, 24 new tokens): trainer mechanics."""
    return demo_train_cmd(demo, out, f"megatron_training.global_batch_size={GBS}",
                          f"rl_config.n_samples_per_prompt={N}", "actor_config.micro_batch_size=4", "rl_config.actor_resource.num_npus=1",
                          "generate_config.sampling_config.max_tokens=24", "megatron_training.save_interval=1",
                          *overrides)


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


# slow: a killed and resumed trainer run (~40 s); exact resume stays in the default suite through test_grpo_e2e
@pytest.mark.slow
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
    """The DAPO recipe's algorithm keys, read from configs/grpo_qwen25_7b_dapo.yaml, as overrides: clip-higher,
    token-mean, dynamic sampling on its metric (`acc`) with its round cap, the overlong buffer, no KL."""
    rl = yaml.safe_load((REPO / "configs" / "grpo_qwen25_7b_dapo.yaml").read_text())["rl_config"]
    value = lambda v: str(v).lower() if isinstance(v, bool) else v  # noqa: E731
    keys = ("adv_estimator", "policy_loss", "clip_ratio_low", "clip_ratio_high", "loss_agg_mode", "use_kl_loss",
            "use_kl_in_reward", "kl_coef", "entropy_coeff")
    out = [f"rl_config.{k}={value(rl[k])}" for k in keys]
    fg = rl["filter_groups"]
    out += [f"rl_config.filter_groups.{k}={value(v)}" for k, v in fg.items()]
    # The overlong buffer at the end of this run's response budget. The recipe's expected length (20480 - 4096)
    # is where its well-formed responses end; the demo's end at 35 of 40 tokens, so a buffer of 10% (4) leaves
    # them unpunished and punishes only the rambling ones, as DAPO's does.
    overlong = rl["verifier_options"]["overlong"]
    names = verifiers + ["overlong"]
    out += [f"rl_config.verifier_function=[{','.join(names)}]",
            f"rl_config.verifier_weight=[{','.join(['1.0'] * len(names))}]",
            f"+rl_config.verifier_options.overlong={{max_length:{max_tokens},buffer:{max(1, max_tokens // 10)},"
            f"penalty_factor:{overlong['penalty_factor']}}}"]
    return out


DAPO_STEPS, DAPO_MIN_GAIN = 40, 0.2


def run_dapo_demo(demo: Path, out: Path) -> list[dict]:
    from mindrl.config import load_config

    tiny = load_config("grpo_tiny_cpu")
    proc = run_cli(demo_train_cmd(demo, out, f"megatron_training.train_iters={DAPO_STEPS}",
                                  "megatron_training.save_interval=0",
                                  *dapo_algorithm_overrides(tiny.generate_config.sampling_config.max_tokens,
                                                            list(tiny.rl_config.verifier_function))),
                   timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return metrics(out)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dapo_settings_learn_on_the_tiny_demo(learning_demo, tmp_path):
    """The demo (its 1,000-step warm start, 16 prompts x 8 on DP=2, lr 1e-3) with DAPO's algorithm settings
    learns the task in the demo's sense: `accuracy` (the `acc` scorer, never format) of the last 10 steps
    above the first 10's, judged by the demo's own verdict (mindrl.cli.summarize), with the format kept.

    The demo asks for +0.3 over 150 steps; 40 DAPO steps (~2 min on 2 cores) measured +0.34 (default seed)
    and +0.36 (megatron_training.seed=1), +0.375 after sampling stopped depending on the DP rank, and the
    same run at lr 0 +0.00, so +0.2 is a clear margin both
    ways. The first 10 steps already learn (0.31 at step 1 -> ~0.55 at step 10), which the window hides."""
    rows = run_dapo_demo(learning_demo, tmp_path)
    assert len(rows) == DAPO_STEPS
    learned, line = verdict(rows, window=10, min_gain=DAPO_MIN_GAIN, min_format=0.9)
    assert learned, line
    # dynamic sampling was at work: flat groups were dropped and more rounds generated to fill the batch
    assert sum(r["filter/dropped_groups"] for r in rows) > 0 and max(r["filter/gen_rounds"] for r in rows) > 1
    # most steps trained a full batch; a step that hit the round cap says so (late in the run, when most
    # groups are all-correct, the cap is hit: 0.875 of all groups were trained in one run, 0.9+ in another)
    assert sum(r["filter/trained_groups"] for r in rows) >= 0.75 * DAPO_STEPS * 16
    assert all(r["filter/partial_batch"] == float(r["filter/trained_groups"] < 16) for r in rows)
