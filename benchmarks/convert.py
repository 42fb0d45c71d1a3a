"""Checkpoint conversion benchmark: peak RSS and throughput of tools/convert_ckpt.py vs a plain copy.

    python benchmarks/convert.py [--layers 8] [--tp 1] [--workdir /tmp/mindrl-convert-bench]

Writes a random-init HF checkpoint (a scaled Qwen2.5-7B: hidden 2048, untied embeddings, bf16,
~2.5 GB in 1 GB shards), then, in the same run and on the same (page-cached) files:
  copy   : shutil.copyfile of every shard (the bytes-moved baseline)
  hf->mg : convert in a subprocess (peak RSS from getrusage(RUSAGE_CHILDREN))
  mg->hf : convert back in a subprocess
  import : a subprocess that only imports the converter (the interpreter + torch + megatron floor)
Targets (issue 3): peak RSS <= 25% of the model's bytes; >= 50% of the copy's GB/s.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONVERT = """
import sys; sys.path.insert(0, {repo!r})
import time
from mindrl.checkpoint.convert import convert
t = time.time()
convert(model_type="qwen2", load_type={lt!r}, save_type={st!r}, load_dir={src!r}, save_dir={dst!r}, tp={tp}, overwrite=True)
print("ELAPSED", time.time() - t)
"""
IMPORT_ONLY = "import sys; sys.path.insert(0, {repo!r}); import mindrl.checkpoint.convert"


def write_random_hf(out: Path, layers: int, shard_bytes: int = 1024**3) -> int:
    """A random bf16 Qwen2 checkpoint written tensor by tensor; returns its bytes."""
    import torch

    from mindrl.checkpoint.hf_mapping import Mapping
    from mindrl.checkpoint.tensor_io import SafetensorsWriter
    from mindrl.models import load_hf_config

    cfg = load_hf_config(REPO.parent / "shared" / "models" / "Qwen2.5-7B")
    cfg.update(num_hidden_layers=layers, hidden_size=2048, num_attention_heads=16, num_key_value_heads=4,
               intermediate_size=11008, tie_word_embeddings=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    entries = [(n, s) for r in Mapping(cfg).rules for n, s in zip(r.hf, r.hf_shapes)]
    shards, size = [[]], 0
    for name, shape in entries:
        nbytes = torch.Size(shape).numel() * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, torch.bfloat16, shape))
        size += nbytes
    weight_map, total = {}, 0
    g = torch.Generator().manual_seed(0)
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        w = SafetensorsWriter(out / fname, shard)
        for name, dtype, shape in shard:
            w.write(name, (torch.randn(shape, generator=g) * 0.02).to(dtype))
            weight_map[name] = fname
            total += torch.Size(shape).numel() * 2
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return total


def child(code: str) -> tuple[float, float]:
    """(seconds, peak RSS GiB) of a python subprocess (fresh, so RUSAGE_CHILDREN is its own).
    Seconds: what the child reports as ELAPSED (the conversion alone), else its wall time."""
    probe = ("import resource,subprocess,sys,time;t=time.time();"
             f"r=subprocess.run([sys.executable,'-c',{code!r}],check=True,capture_output=True,text=True);"
             "print(r.stdout);print(time.time()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    seconds = float(out[out.index("ELAPSED") + 1]) if "ELAPSED" in out else float(out[-2])
    return seconds, float(out[-1]) / 1024**2  # ru_maxrss is KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--workdir", default="/tmp/mindrl-convert-bench")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    hf, mg, back, cp = work / "hf", work / "mg", work / "hf_back", work / "copy"
    nbytes = write_random_hf(hf, args.layers)
    gb = nbytes / 1e9
    cp.mkdir(parents=True)
    t = time.time()
    for f in sorted(hf.iterdir()):
        shutil.copyfile(f, cp / f.name)
    copy_s = time.time() - t
    imp_s, imp_rss = child(IMPORT_ONLY.format(repo=str(REPO)))
    rows = [("copy", copy_s, None)]
    for name, lt, st, src, dst in [("hf->mg", "hf", "mg", hf, mg), ("mg->hf", "mg", "hf", mg, back)]:
        s, rss = child(CONVERT.format(repo=str(REPO), lt=lt, st=st, src=str(src), dst=str(dst), tp=args.tp))
        rows.append((name, s, rss))
    print(f"\nmodel: {gb:.2f} GB (bf16, {args.layers} layers, hidden 2048, untied), target TP={args.tp}")
    print(f"import floor: {imp_s:.1f} s, {imp_rss:.2f} GiB RSS (python + torch + megatron-core)\n")
    print(f"{'step':8} {'seconds':>8} {'GB/s':>7} {'vs copy':>8} {'peak RSS GiB':>13} {'RSS/model':>10} {'(RSS-floor)/model':>18}")
    for name, s, rss in rows:
        speed = gb / s
        extra = "" if rss is None else f"{rss:13.2f} {rss * 1024**3 / nbytes:10.1%} {(rss - imp_rss) * 1024**3 / nbytes:18.1%}"
        print(f"{name:8} {s:8.1f} {speed:7.2f} {speed / (gb / copy_s):8.0%} {extra}")
    print("\n(converter seconds: the convert() call alone, timed inside the child; the copy moves the same bytes)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
