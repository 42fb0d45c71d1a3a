"""generate_config.offload_train_state around a rollout with its own weights (a bf16 built-in copy; the
runner drives vLLM through the same calls): the training state goes to host memory before the engine
wakes and comes back after it sleeps, and a run with the offload is bit-identical to one without.

On the CPU backend "host" is the same memory as the "device": the offload still makes real copies
there and back and frees the gradient buffers, so this proves the order and the exactness of the
round trip, not any memory saving (docs/rollout.md, docs/hardware.md)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, shared_path

WORKER = REPO / "tests" / "rollout" / "offload_worker.py"
pytestmark = pytest.mark.megatron


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    shared_path("models")
    out = tmp_path_factory.mktemp("offload")
    r = subprocess.run([sys.executable, str(WORKER), "--out", str(out)], capture_output=True, text=True, timeout=600,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
    return torch.load(out / "result.pt", weights_only=False)


def test_offload_wraps_every_awake_phase(result):
    rec = result["offload"]["record"]
    assert rec["violations"] == []
    calls = [c for c in rec["calls"] if c[0] != "load_weights"]
    step = [("offload",), ("wake_up", ("weights",)), ("wake_up", ("kv_cache",)), ("generate", 2), ("sleep",),
            ("reload",)]
    assert calls == step * 3
    loads = [i for i, c in enumerate(rec["calls"]) if c[0] == "load_weights"]
    assert loads  # the push happens while the training state is on the host (it reads the model's weights only)
    for i in loads:
        assert [c for c in rec["calls"][:i] if c[0] in ("offload", "reload")][-1] == ("offload",)
    assert not any(c[0] in ("offload", "reload") for c in result["plain"]["record"]["calls"])


def test_offload_moves_the_optimizer_state_and_frees_the_grad_buffers(result):
    moved = result["offload"]["moved"]
    assert len(moved) == 3
    for m in moved:
        # Adam's two moments for each of the tiny model's parameters, in fresh host storage
        assert m["tensors"] == 2 * len(result["offload"]["weights"]) and m["all_new_storage"]
        assert m["grad_buffers_freed"] >= 1 and m["grad_storage_now"] == 0 and m["bytes"] > 0


def test_offload_is_bit_exact(result):
    plain, off = result["plain"], result["offload"]
    assert plain["losses"] == off["losses"]  # every update's loss and grad norm, the last one after 3 round trips
    assert plain["weights"].keys() == off["weights"].keys()
    for name, w in plain["weights"].items():
        assert torch.equal(w, off["weights"][name]), name
    assert plain["moments"].keys() == off["moments"].keys() and plain["moments"]
    for name, m in plain["moments"].items():
        assert torch.equal(m, off["moments"][name]), name
