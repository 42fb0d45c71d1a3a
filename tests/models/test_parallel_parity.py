"""Same weights, same batch: loss and every gradient at TP=2 / PP=2 / VPP / EP=2 equal TP=PP=EP=1.

Per architecture, parity_worker.py runs a single-rank reference, then two fresh processes run each
layout in turn (the cpu backend's megatron adaptations are process-wide, so never in pytest's own
process). Each layout loads the reference's weights; rank 0 merges every rank's gradient shards
back into the canonical layout for the comparison.

Tolerance (fp32): |loss - ref| <= 1e-5 and max |grad - ref| <= 1e-5 for every tensor. Observed on
this machine: ~1e-7 for the loss and <= 1e-6 for gradients — the split changes summation order only.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import shared_path

WORKER = Path(__file__).with_name("parity_worker.py")
TOL = 1e-5
pytestmark = pytest.mark.megatron

LAYOUTS = {
    # uneven PP: 1 + 3 layers; VPP: PP=2 x 2 virtual stages of 1 layer
    "qwen2": ["tp2", "pp2:1-3", "vpp1"],
    "llama": ["tp2", "pp2"],
    # MoE with TP=2 turns sequence parallelism on; uneven PP puts the dense layer with 2 MoE layers
    "deepseek_v3": ["tp2", "ep2", "pp2:3-1"],
}
SLOW_LAYOUTS = {"qwen2": ["tp2sp", "pp2"], "llama": ["tp2sp", "vpp1"], "deepseek_v3": ["pp2", "vpp1"]}


FOUR_RANK_LAYOUTS = {"deepseek_v3": ["tp2ep2", "tp2pp2"], "qwen2": ["tp2pp2:1-3"]}


def run_worker(out: Path, arch: str, layouts: list[str], nproc: int = 2) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, str(WORKER), "--arch", arch, "--out", str(out), "--nproc", str(nproc),
                           "--layouts", ",".join(layouts)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"worker {arch} {layouts} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {name: torch.load(out / f"{name}.pt") for name in ["ref", *layouts]}


def assert_same(ref: dict, got: dict, what: str) -> None:
    assert abs(ref["loss"].item() - got["loss"].item()) <= TOL, (what, ref["loss"], got["loss"])
    assert set(ref["grads"]) == set(got["grads"]), (what, set(ref["grads"]) ^ set(got["grads"]))
    worst = {name: (ref["grads"][name] - got["grads"][name]).abs().max().item() for name in ref["grads"]}
    bad = {k: v for k, v in worst.items() if v > TOL}
    assert not bad, f"{what}: gradients differ beyond {TOL}: {bad}"
    # The gradients are not trivially zero: the comparison means something.
    assert max(ref["grads"][n].abs().max().item() for n in ref["grads"]) > 1e-3


CASES = ([pytest.param(arch, layouts, 2, id=arch) for arch, layouts in sorted(LAYOUTS.items())]
         + [pytest.param(arch, layouts, 2, id=f"{arch}-more", marks=pytest.mark.slow)
            for arch, layouts in sorted(SLOW_LAYOUTS.items())]
         # TP2 x EP2 (expert-TP MoE dispatch: uneven gathers on gloo) and TP2 x PP2, on 4 processes
         + [pytest.param(arch, layouts, 4, id=f"{arch}-4ranks", marks=pytest.mark.slow)
            for arch, layouts in sorted(FOUR_RANK_LAYOUTS.items())])


@pytest.mark.parametrize("arch,layouts,nproc", CASES)
def test_parallel_layouts_match_single_rank(tmp_path, arch, layouts, nproc):
    shared_path("models")
    results = run_worker(tmp_path, arch, layouts, nproc=nproc)
    for name in layouts:
        assert_same(results["ref"], results[name], f"{arch} {name}")
    if "tp2" in layouts and arch == "deepseek_v3":
        assert results["tp2"]["sequence_parallel"], "MoE with TP>1 must turn sequence parallelism on"
