"""Megatron models loaded from converted checkpoints give HF transformers' logits (fp32, <= 1e-4),
the layout plan matches what live models hold, and `iter_hf_buckets` gives back the HF state dict.

Each group of jobs runs in one subprocess (or one set of spawned ranks): megatron's cpu adaptations
are process-wide, and the imports cost ~20 s per process on 2 cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.checkpoint.test_convert import ARCHS, convert, load_st
from tests.checkpoint.tiny import VOCAB, make_hf_model
from tests.conftest import REPO, shared_path

WORKER = REPO / "tests" / "checkpoint" / "logits_worker.py"


@pytest.fixture(scope="module")
def fp32_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    models = shared_path("models")
    root = tmp_path_factory.mktemp("hf32")
    return {arch: make_hf_model(models, arch, root / arch) for arch in ARCHS}


def hf_logits(model_dir: Path) -> torch.Tensor:
    import transformers

    from tests.checkpoint.logits_worker import prompt

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(prompt(VOCAB)).logits


def run_jobs(models: dict[str, Path], tmp: Path, nproc: int, jobs: list[dict]) -> None:
    for job in jobs:
        job["ckpt"] = str(convert(models[job["arch"]], tmp / f"mg-{job['name']}", job["arch"], tp=job.get("tp", 1),
                                  pp=job.get("pp", 1), ep=job.get("ep", 1), num_layer_list=job.get("num_layer_list"),
                                  vpp_layers=job.get("vpp_layers")))
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    r = subprocess.run([sys.executable, str(WORKER), "--jobs", str(tmp / "jobs.json"), "--nproc", str(nproc),
                        "--out", str(tmp)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    for job in jobs:
        res = torch.load(tmp / f"{job['name']}.pt", weights_only=True)
        assert res["errors"] == [], res["errors"][:3]
        diff = (res["logits"] - hf_logits(models[job["arch"]])).abs().max().item()
        assert diff <= 1e-4, f"{job['name']}: max |logits - HF| = {diff}"
        ref = load_st(models[job["arch"]])
        assert sorted(res["hf"]) == sorted(ref)
        assert all(torch.equal(res["hf"][k], ref[k]) for k in ref), job["name"]


def test_single_rank_logits(fp32_models, tmp_path):
    run_jobs(fp32_models, tmp_path, 1, [{"name": arch, "arch": arch} for arch in ARCHS])


def test_two_rank_logits(fp32_models, tmp_path):
    run_jobs(fp32_models, tmp_path, 2, [
        {"name": "qwen2-tp2", "arch": "qwen2", "tp": 2}, {"name": "qwen2-pp2", "arch": "qwen2", "pp": 2},
        {"name": "ds-tp2", "arch": "deepseek_v3", "tp": 2}, {"name": "ds-pp2", "arch": "deepseek_v3", "pp": 2}])


@pytest.mark.slow
def test_two_rank_logits_more(fp32_models, tmp_path):
    run_jobs(fp32_models, tmp_path, 2, [
        {"name": "llama-tp2", "arch": "llama", "tp": 2}, {"name": "llama-pp2", "arch": "llama", "pp": 2},
        {"name": "ds-ep2", "arch": "deepseek_v3", "ep": 2},
        {"name": "qwen2-vpp", "arch": "qwen2", "pp": 2, "vpp_layers": 1},
        {"name": "ds-vpp", "arch": "deepseek_v3", "pp": 2, "vpp_layers": 1}])


@pytest.mark.slow
def test_four_rank_logits(fp32_models, tmp_path):
    run_jobs(fp32_models, tmp_path, 4, [
        {"name": "qwen2-tp2pp2", "arch": "qwen2", "tp": 2, "pp": 2, "num_layer_list": [1, 3]},
        {"name": "llama-tp2pp2", "arch": "llama", "tp": 2, "pp": 2, "num_layer_list": [3, 1]},
        {"name": "ds-tp2pp2", "arch": "deepseek_v3", "tp": 2, "pp": 2, "num_layer_list": [1, 3]}])


@pytest.mark.slow
def test_four_rank_logits_tp2ep2(fp32_models, tmp_path):
    """MoE dispatch with expert-TP gathers uneven token blocks: cpu_megatron.gloo_uneven_collectives."""
    run_jobs(fp32_models, tmp_path, 4, [{"name": "ds-tp2ep2", "arch": "deepseek_v3", "tp": 2, "ep": 2}])
