"""hf -> mg -> hf round trips (bit-exact), mg -> mg re-shards, the CLI, and bad inputs."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.checkpoint.tiny import make_hf_model
from tests.conftest import REPO, shared_path

ARCHS = ["qwen2", "llama", "deepseek_v3"]
# (name, tp, pp, ep, num_layer_list, vpp layers); the tiny models have 4 layers
LAYOUTS = [("tp2", 2, 1, 1, None, None), ("pp2", 1, 2, 1, None, None), ("tp2pp2_uneven", 2, 2, 1, [1, 3], None),
           ("vpp", 1, 2, 1, None, 1), ("ep2", 1, 1, 2, None, None), ("tp2ep2", 2, 1, 2, None, None),
           ("tp2pp2ep2", 2, 2, 2, [3, 1], None)]


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    models = shared_path("models")
    root = tmp_path_factory.mktemp("hf")
    return {(arch, dtype): make_hf_model(models, arch, root / f"{arch}-{dtype}", dtype=dtype)
            for arch in ARCHS for dtype in ("float32", "bfloat16")}


def convert(src: Path, dst: Path, arch: str, load: str = "hf", save: str = "mg", **kw) -> Path:
    from mindrl.checkpoint.convert import convert as run

    run(model_type=arch, load_type=load, save_type=save, load_dir=src, save_dir=dst, **kw)
    return dst


def load_st(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_bit_exact(hf_models, tmp_path, arch, dtype):
    src = hf_models[(arch, dtype)]
    for name, tp, pp, ep, layers, vpp in LAYOUTS:
        if ep > 1 and arch != "deepseek_v3":
            continue
        mg = convert(src, tmp_path / f"mg-{name}", arch, tp=tp, pp=pp, ep=ep, num_layer_list=layers, vpp_layers=vpp)
        back = convert(mg, tmp_path / f"hf-{name}", arch, load="mg", save="hf")
        assert_identical(load_st(src), load_st(back))
        assert (back / "config.json").read_text() == (src / "config.json").read_text()
        assert ("lm_head.weight" in load_st(back)) == (arch == "deepseek_v3")  # qwen2/llama tiny: tied


def rank_files(d: Path) -> dict[str, dict]:
    return {str(p.relative_to(d)): torch.load(p, weights_only=True) for p in sorted(d.rglob("model_optim_rng.pt"))}


@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3"])
def test_mg_to_mg_equals_direct(hf_models, tmp_path, arch):
    src = hf_models[(arch, "float32")]
    a = convert(src, tmp_path / "a", arch, tp=2, pp=2, num_layer_list=[1, 3])
    ep = 2 if arch == "deepseek_v3" else 1
    resharded = convert(a, tmp_path / "b", arch, load="mg", save="mg", tp=1, pp=2, ep=ep, vpp_layers=1)
    direct = convert(src, tmp_path / "c", arch, tp=1, pp=2, ep=ep, vpp_layers=1)
    x, y = rank_files(resharded), rank_files(direct)
    assert sorted(x) == sorted(y) and len(x) == 2 * ep
    for f in x:
        for chunk in ("model0", "model1"):
            assert_identical(x[f][chunk], y[f][chunk])


def test_params_dtype_and_format(hf_models, tmp_path):
    mg = convert(hf_models[("qwen2", "float32")], tmp_path / "mg", "qwen2", tp=2, params_dtype="bf16")
    meta = json.loads((mg / "mindrl_layout.json").read_text())
    assert meta["layout"]["tp"] == 2 and meta["padded_vocab_size"] == 1024
    assert (mg / "latest_checkpointed_iteration.txt").read_text() == "1"
    sd = torch.load(mg / "iter_0000001" / "mp_rank_01" / "model_optim_rng.pt", weights_only=True)
    emb = sd["model"]["embedding.word_embeddings.weight"]
    assert emb.dtype == torch.bfloat16 and emb.shape == (512, 64) and not emb[1003 - 512:].any()
    back = convert(mg, tmp_path / "hf", "qwen2", load="mg", save="hf", hf_shard_bytes=200_000)
    index = json.loads((back / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    src = load_st(hf_models[("qwen2", "float32")])
    assert_identical({k: v.bfloat16() for k, v in src.items()}, load_st(back))


def test_cli_hf_to_mg(hf_models, tmp_path):
    out = tmp_path / "mg"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "convert_ckpt.py"), "--model-type-hf", "deepseek_v3",
                        "--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
                        str(hf_models[("deepseek_v3", "bfloat16")]), "--save-dir", str(out),
                        "--target-expert-parallel-size", "2", "--target-pipeline-parallel-size", "2"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert sorted(p.parent.name for p in out.rglob("model_optim_rng.pt")) == [
        "mp_rank_00_000_000", "mp_rank_00_000_001", "mp_rank_00_001_000", "mp_rank_00_001_001"]


# ---- bad inputs ------------------------------------------------------------------------------------
def _cli(argv: list[str], capsys) -> tuple[int, str]:
    sys.path.insert(0, str(REPO / "tools"))
    import convert_ckpt

    rc = convert_ckpt.main(argv)
    return rc, capsys.readouterr().err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(path: Path, drop: str | None = None, rename: tuple[str, str] | None = None,
             reshape: str | None = None) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(path)
    if drop:
        del sd[drop]
    if rename:
        sd[rename[1]] = sd.pop(rename[0])
    if reshape:
        sd[reshape] = sd[reshape][:-1].clone()
    save_file(sd, path, metadata={"format": "pt"})


BAD = {
    "missing": (lambda d: _rewrite(d / "model.safetensors", drop="model.layers.1.self_attn.k_proj.weight"),
                [], "missing tensor 'model.layers.1.self_attn.k_proj.weight'"),
    "unexpected": (lambda d: _rewrite(d / "model.safetensors", rename=("model.norm.weight", "model.extra.weight")),
                   [], "unexpected tensor 'model.extra.weight'"),
    "shape": (lambda d: _rewrite(d / "model.safetensors", reshape="model.layers.0.mlp.up_proj.weight"),
              [], "tensor 'model.layers.0.mlp.up_proj.weight'"),
    "truncated": (lambda d: os.truncate(d / "model.safetensors", (d / "model.safetensors").stat().st_size - 100),
                  [], "truncated"),
    "corrupt": (lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json" + b" " * 40),
                [], "corrupt safetensors header"),
    "layout": (lambda d: None, ["--target-tensor-parallel-size", "3"],
               "tensor_model_parallel_size=3 does not divide num_attention_heads=4"),
    "layers": (lambda d: None, ["--target-pipeline-parallel-size", "2", "--num-layer-list", "1,2"],
               "num_layer_list [1, 2] sums to 3, but the model has 4 layers"),
    "model_type": (lambda d: None, ["--model-type-hf", "qwen3"], "unknown --model-type-hf 'qwen3'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(hf_models, tmp_path, capsys, case):
    damage, extra, message = BAD[case]
    src = _copy(hf_models[("qwen2", "float32")], tmp_path / "src")
    damage(src)
    save = tmp_path / "save"
    save.mkdir()
    (save / "keep.txt").write_text("mine")
    argv = ["--model-type-hf", "qwen2", "--load-model-type", "hf", "--save-model-type", "mg",
            "--load-dir", str(src), "--save-dir", str(save), "--overwrite"]
    if "--model-type-hf" in extra:
        argv[1] = extra[1]
        extra = []
    rc, err = _cli(argv + extra, capsys)
    assert rc == 2 and message in err, err
    assert sorted(p.name for p in save.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["save", "src"]  # no temp dir left behind


def test_non_empty_save_dir_needs_overwrite(hf_models, tmp_path, capsys):
    save = tmp_path / "save"
    save.mkdir()
    (save / "keep.txt").write_text("mine")
    rc, err = _cli(["--model-type-hf", "llama", "--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
                    str(hf_models[("llama", "float32")]), "--save-dir", str(save)], capsys)
    assert rc == 2 and "exists and is not empty (pass --overwrite" in err
    assert (save / "keep.txt").read_text() == "mine"


def test_mg_without_layout_file(tmp_path, capsys):
    (tmp_path / "mg").mkdir()
    rc, err = _cli(["--model-type-hf", "qwen2", "--load-model-type", "mg", "--save-model-type", "hf", "--load-dir",
                    str(tmp_path / "mg"), "--save-dir", str(tmp_path / "out")], capsys)
    assert rc == 2 and "mindrl_layout.json not found" in err
    assert not (tmp_path / "out").exists()
