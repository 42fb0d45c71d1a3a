"""The per-rank plan conversion writes rank files by (`plan_ranks`, no processes) is megatron's own:
what `shard_specs` reads off the model megatron-core builds on a simulated rank (the planner's
`simulated_rank`), tensor by tensor (canonical name, TP split, rank, gated/vocab/duplicate flags,
local shape). Covers the full-size DeepSeek-V3 of the 671B recipe at TP4 x PP8 (uneven) x EP8 on
a stage-0 rank (TP 1, EP 3) and the last rank, and tiny Qwen2 (tied embeddings) with TP2 x PP2 and
virtual stages, and with an uneven PP2.
tests/checkpoint/test_logits.py makes the same comparison on real multi-process runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("rank_plan_worker.py")


def _hf(model: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "model" / f"{model}.yaml").read_text())["hf_config"]


def test_plan_ranks_is_megatrons_plan_on_simulated_ranks(tmp_path):
    from mindrl.models import scale_down

    tiny_qwen = scale_down(_hf("qwen25_0.5b"), num_layers=8, num_heads=4, num_kv_heads=2)
    assert tiny_qwen.get("tie_word_embeddings")  # the last stage's duplicate embedding is covered
    jobs = [
        # 671B: world 256 = PP8 x DP32 (rank order tp-ep-dp-pp); ranks: TP rank 1 of EP rank 3 on stage 0
        # (the embedding, the dense layers, experts 96-127); the last (TP 3, EP 7, the output layer)
        {"name": "deepseek_v3_671b tp4 pp8 ep8", "hf": _hf("deepseekv3_671b"), "world": 256,
         "layout": {"tp": 4, "pp": 8, "ep": 8, "num_layer_list": [7, 7, 8, 8, 8, 8, 8, 7]}, "ranks": [13, 255]},
        {"name": "qwen2 tp2 pp2 vpp", "hf": tiny_qwen, "world": 4,
         "layout": {"tp": 2, "pp": 2, "num_layers_per_virtual_pipeline_stage": 2}, "ranks": [0, 3]},
        {"name": "qwen2 pp2 uneven", "hf": tiny_qwen, "world": 2,
         "layout": {"pp": 2, "num_layer_list": [3, 5]}, "ranks": [1]},
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "jobs.json")], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("compared") > 600  # a 671B rank holds hundreds of expert tensors
    for job in jobs:
        ranks = out[job["name"]]
        assert len(ranks) == len(job["ranks"]), ranks.keys()
        for rank, errors in ranks.items():
            assert errors == [], f"{job['name']} {rank}: {errors[:3]}"
