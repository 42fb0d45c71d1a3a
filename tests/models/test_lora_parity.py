"""LoRA on megatron-core's parallel linears: TP2 / TP2+SP / PP2 / DP2 (distributed optimizer) equal one rank.

lora_worker.py runs a single-rank reference, then two fresh ranks run each layout with the
reference's base weights and adapters (B non-zero). Compared against the reference:
- the adapters as initialised (A drawn on the full matrix from the seed, then sliced): bit-equal;
- the loss, the canonical adapter gradients, and the adapters after one Adam step;
- the optimizer holds adapters only, and no base parameter is trainable.
Exactness against independent references, in the single-rank run:
- zero B (the initial adapters): logits equal a model built without LoRA, bit for bit;
- adapters disabled (`adapters_disabled`): logits equal that base model bit for bit, and B != 0
  does change them (the adapters are live), and enabling them again restores the LoRA logits.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import shared_path

WORKER = Path(__file__).with_name("lora_worker.py")
TOL = 1e-5
pytestmark = pytest.mark.megatron


def run_worker(out: Path, arch: str, layouts: list[str]) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, str(WORKER), "--arch", arch, "--out", str(out), "--layouts", ",".join(layouts)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {name: torch.load(out / f"{name}.pt") for name in ["ref", *layouts]}


def _worst(a: dict, b: dict) -> float:
    assert set(a) == set(b), set(a) ^ set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def check(results: dict[str, dict], layouts: list[str]) -> None:
    ref = results["ref"]
    assert torch.equal(ref["zero_b_logits"], ref["base_logits"])
    assert torch.equal(ref["disabled_logits"], ref["base_logits"])
    assert (ref["lora_logits"] - ref["base_logits"]).abs().max() > 1e-2  # the adapters act
    assert torch.equal(ref["enabled_again_logits"], ref["lora_logits"])
    assert not ref["trainable_base"]
    n_adapter = sum(v.numel() for v in ref["initial"].values())
    assert ref["opt_params"] == [n_adapter]  # the optimizer holds the adapters, nothing else
    assert all(v.abs().max() == 0 for k, v in ref["initial"].items() if k.endswith("lora_B"))
    assert max(ref["grads"][k].abs().max().item() for k in ref["grads"]) > 1e-3
    assert _worst(ref["initial"], ref["after"]) > 1e-3  # the step moved the adapters
    for name in layouts:
        got = results[name]
        assert _worst(ref["initial"], got["initial"]) == 0.0, f"{name}: initial adapters differ from TP1's"
        assert abs(ref["loss"].item() - got["loss"].item()) <= TOL, (name, ref["loss"], got["loss"])
        if name != "dp2dist":  # the distributed optimizer leaves each rank only its shard of the reduced grads
            assert _worst(ref["grads"], got["grads"]) <= TOL, name
        assert abs(ref["grad_norm"] - got["grad_norm"]) <= TOL * max(1.0, ref["grad_norm"]), name
        assert _worst(ref["after"], got["after"]) <= TOL, f"{name}: adapters after one optimizer step differ"
        assert not got["trainable_base"]
    assert results.get("tp2sp", {"sequence_parallel": True})["sequence_parallel"]


def test_lora_layouts_equal_single_rank(tmp_path):
    shared_path("models", "Qwen2.5-0.5B")
    layouts = ["tp2", "tp2sp", "pp2", "dp2dist"]
    check(run_worker(tmp_path, "qwen2", layouts), layouts)


@pytest.mark.slow
def test_lora_layouts_equal_single_rank_llama(tmp_path):
    shared_path("models", "Llama-3.2-1B")
    layouts = ["tp2", "tp2sp", "pp2"]
    check(run_worker(tmp_path, "llama", layouts), layouts)
