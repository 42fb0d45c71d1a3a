"""Weight push at EP: a rank receives only the routed experts its rollout shard holds (review item 9).

Tiny DeepSeek-V3 (MLA + MoE, 4 layers, 1 dense), trained at TP2 on 2 CPU ranks, pushed as HF names
for a rollout EP2 (rank r holds half the experts). Against the push that sends everything to
everyone (the previous behaviour, `experts=None`): every tensor a rank gets is bit-identical; it
gets every dense tensor and exactly its own experts; and the bytes it receives are the full push's
minus the other rank's share of the experts it does not hold, computed by hand from the config
(TP2 splits every expert matrix in two: half of 3 x hidden x moe_intermediate fp32 values per
expert and MoE layer). The end-to-end push through the rollout runner (bit-exact against
tools/convert_ckpt.py at the rollout layout) is test_reshard.py's DeepSeek-V3 train TP2 -> rollout EP2.
For vLLM, `mindrl.rollout.parallel.vllm_expert_ids` reads what a rank holds from vLLM's own placement.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.checkpoint.tiny import tiny_config
from tests.conftest import REPO, shared_path

WORKER = REPO / "tests" / "rollout" / "push_experts_worker.py"
pytestmark = pytest.mark.megatron
_EXPERT = re.compile(r"\.experts\.(\d+)\.")


def test_each_rank_receives_only_its_experts(tmp_path):
    hf = tiny_config(shared_path("models"), "deepseek_v3")
    (tmp_path / "job.json").write_text(json.dumps({"hf": hf, "tp": 2, "ep": 1}))
    r = subprocess.run([sys.executable, str(WORKER), "--job", str(tmp_path / "job.json"), "--nproc", "2",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in range(2)]
    experts, layers = hf["n_routed_experts"], hf["num_hidden_layers"]
    moe_layers = layers - hf["first_k_dense_replace"]
    expert_bytes = 3 * hf["hidden_size"] * hf["moe_intermediate_size"] * 4  # one expert of one layer, fp32
    assert ranks[0]["full"].keys() == ranks[1]["full"].keys()
    for r in ranks:
        full, owned, ids = r["full"], r["owned"], set(r["owned_ids"])
        assert any(_EXPERT.search(n) for n in full), "the HF names carry no per-expert tensors: nothing checked"
        want = {n for n in full if not _EXPERT.search(n) or int(_EXPERT.search(n).group(1)) in ids}
        assert set(owned) == want, sorted(set(owned) ^ want)[:6]
        for name, t in owned.items():
            assert torch.equal(t, full[name]), name
        not_held = experts - len(ids)
        saved = not_held * moe_layers * expert_bytes // 2  # the other TP rank's half of each
        assert r["owned_stats"]["recv_bytes"] == r["full_stats"]["recv_bytes"] - saved, (r["owned_stats"],
                                                                                          r["full_stats"], saved)
    # Sends: what one rank no longer sends is what the other no longer receives.
    for me, other in ((0, 1), (1, 0)):
        drop_sent = ranks[me]["full_stats"]["sent_bytes"] - ranks[me]["owned_stats"]["sent_bytes"]
        drop_recv = ranks[other]["full_stats"]["recv_bytes"] - ranks[other]["owned_stats"]["recv_bytes"]
        assert drop_sent == drop_recv > 0


def test_vllm_expert_ids_follow_vllms_placement():
    """What a vLLM rank holds, read through vLLM's own ExpertMapManager (the object its expert weight
    loader asks): EP64 of 256 experts, linear -> 4 consecutive ids, round-robin -> every 64th; no EP -> None."""
    pytest.importorskip("vllm")
    r = subprocess.run([sys.executable, str(REPO / "tests" / "rollout" / "vllm_experts_check.py")], capture_output=True,
                       text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for rank in (0, 1, 63):
        assert got[f"linear_rank{rank}"] == list(range(4 * rank, 4 * rank + 4))
        assert got[f"round_robin_rank{rank}"] == [rank, rank + 64, rank + 128, rank + 192]
    assert got["no_ep"] is None
