"""LoRA against real `peft` (0.21): adapters made by peft load into mindrl with the same logits, mindrl's
export loads back into peft, and the merged weights equal peft's `merge_and_unload()`.

Per architecture (Qwen2 with GQA and QKV bias, Llama), on a tiny random HF model:
1. peft makes a random adapter on every target (`init_lora_weights=False`: B non-zero) and saves it;
2. lora_worker.py loads the HF base + that folder into megatron at TP=1 and TP=2 and records the
   logits, the adapters written back out with `write_peft_adapter`, and the merged HF tensors of
   the weight push (`iter_hf_buckets`);
3. here: mindrl's logits equal peft's (fp32, <= 1e-4); the export loads with
   `PeftModel.from_pretrained` on the same base and gives the same logits, its tensors equal the
   original adapter's; the pushed (merged) tensors equal `merge_and_unload()`'s state dict.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.checkpoint.logits_worker import prompt
from tests.checkpoint.tiny import make_hf_model
from tests.conftest import shared_path

WORKER = Path(__file__).with_name("lora_worker.py")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = 1e-4
pytestmark = pytest.mark.megatron


def run_worker(job: dict, out: Path, nproc: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(WORKER), "--job", str(out / "job.json"), "--nproc", str(nproc),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return torch.load(out / "result.pt")


def hf_logits(model, vocab: int) -> torch.Tensor:
    with torch.no_grad():
        return model(prompt(vocab)).logits.float()


def peft_adapter(base_dir: Path, out: Path, targets: list[str], seed: int = 0, **extra) -> Path:
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                                            lora_dropout=0.0, **extra))
    peft.save_pretrained(out)
    return out


def load_peft(base_dir: Path, adapter: Path):
    import transformers
    from peft import PeftModel

    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).eval()


def check_round_trip(base_dir: Path, adapter: Path, result: dict, export: Path) -> None:
    from safetensors.torch import load_file

    peft = load_peft(base_dir, adapter)
    vocab = peft.base_model.model.config.vocab_size
    want = hf_logits(peft, vocab)
    assert (result["logits"] - want).abs().max().item() <= TOL
    with peft.disable_adapter():  # the adapters matter: the base alone differs
        assert (hf_logits(peft, vocab) - want).abs().max() > 1e-3
    # mindrl's export: the same tensors under peft's names, and peft loads it to the same logits.
    original, exported = load_file(adapter / "adapter_model.safetensors"), load_file(export / "adapter_model.safetensors")
    assert sorted(original) == sorted(exported)
    for k in original:
        assert torch.equal(original[k], exported[k]), k
    again = load_peft(base_dir, export)
    assert (hf_logits(again, vocab) - want).abs().max().item() <= TOL
    # The pushed tensors are the merged weights, as peft's merge_and_unload() computes them.
    merged = peft.merge_and_unload().state_dict()
    for name, t in result["merged"].items():
        assert (t.float() - merged[name].float()).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("arch,tps", [pytest.param("qwen2", (2,), id="qwen2-tp2"),
                                      pytest.param("qwen2", (1,), id="qwen2-tp1", marks=pytest.mark.slow),
                                      pytest.param("llama", (1, 2), id="llama", marks=pytest.mark.slow)])
def test_peft_adapter_round_trip(tmp_path, arch, tps):
    base = make_hf_model(shared_path("models"), arch, tmp_path / "base", num_layers=2)
    adapter = peft_adapter(base, tmp_path / "peft", TARGETS)
    for tp in tps:
        out = tmp_path / f"tp{tp}"
        result = run_worker({"base": str(base), "adapter": str(adapter), "tp": tp}, out, tp)
        check_round_trip(base, adapter, result, out / "export")


@pytest.mark.slow
def test_peft_adapter_subset_of_targets_and_rslora(tmp_path):
    """q and v only (peft's default for Qwen2; k's share of the fused QKV stays untouched), rsLoRA scaling."""
    base = make_hf_model(shared_path("models"), "qwen2", tmp_path / "base", num_layers=2)
    adapter = peft_adapter(base, tmp_path / "peft", ["q_proj", "v_proj", "down_proj"], use_rslora=True)
    result = run_worker({"base": str(base), "adapter": str(adapter), "tp": 2}, tmp_path / "tp2", 2)
    check_round_trip(base, adapter, result, tmp_path / "tp2" / "export")
    assert result["scaling"] == pytest.approx(8 / 2)  # alpha / sqrt(r)
