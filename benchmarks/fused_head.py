"""The fused output layer + log-prob/entropy (mindrl.models.logprobs) against an earlier revision of
the same file, in one process, alternating: forward alone (the reference / old-log-prob forward) and
forward + backward (the update), on tokens x vocab x hidden fp32 (default the docs' 880 x 151,936 x 256,
temperature 0.9, both outputs weighted).

    python -m benchmarks.fused_head [--baseline REV] [--tokens 880] [--repeats 3] [--threads 1]
                                    [--columns 1024,4096] [--check]

Times: CPU seconds (`time.process_time`, the figure to compare under load) and wall seconds, per
variant, best and median of the repeats, with `uptime`'s load average before and after. `--columns`
also times the current code at other vocab-tile widths (`chunk_columns`). `--check` prints the
largest differences of log-probs, entropy and both gradients between the two revisions.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
import warnings

import torch


def _load_revision(rev: str) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{rev}:mindrl/models/logprobs.py"], check=True, capture_output=True,
                         text=True).stdout
    mod = types.ModuleType(f"logprobs_{rev}")
    exec(compile(src, f"{rev}:mindrl/models/logprobs.py", "exec"), mod.__dict__)
    return mod


def _init_single_rank() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29611")
    dist.init_process_group("gloo", rank=0, world_size=1)
    ps.initialize_model_parallel(1)


def _load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="0b36ca3", help="git revision of the code to compare against")
    ap.add_argument("--tokens", type=int, default=880)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--columns", default="", help="extra vocab-tile widths of the current code to time")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    _init_single_rank()
    from mindrl.models import logprobs as new

    old = _load_revision(args.baseline)
    g = torch.Generator().manual_seed(0)
    n, v, hd = args.tokens, args.vocab, args.hidden
    hidden = torch.randn(n, hd, generator=g)
    weight = torch.randn(v, hd, generator=g) * 0.05
    labels = torch.randint(0, v, (n,), generator=g)
    w_lp, w_h = torch.randn(n, generator=g), torch.randn(n, generator=g)
    inv_temp = 1 / 0.9

    variants: dict[str, tuple] = {f"baseline {args.baseline}": (old._FusedLinearLogProbEntropy, ()),
                                  f"current ({new.CHUNK_COLUMNS} columns)": (new._FusedLinearLogProbEntropy, (None,))}
    for c in filter(None, args.columns.split(",")):
        variants[f"current ({int(c)} columns)"] = (new._FusedLinearLogProbEntropy, (int(c),))

    def run(fn, extra, backward: bool):
        h = hidden.clone().requires_grad_(backward)
        w = weight.clone().requires_grad_(backward)
        with torch.enable_grad() if backward else torch.no_grad():
            lp, ent = fn.apply(h, w, labels, v, inv_temp, None, *extra)
            if backward:
                ((w_lp * lp).sum() + (w_h * ent).sum()).backward()
        return lp, ent, h.grad, w.grad

    if args.check:
        ref = run(*variants[f"baseline {args.baseline}"], True)
        for name, (fn, extra) in list(variants.items())[1:]:
            out = run(fn, extra, True)
            print(name, "max |diff| vs baseline: logp, entropy, grad hidden, grad weight =",
                  ["%.2e" % (a - b).abs().max().item() for a, b in zip(out, ref)])

    print(f"{n} tokens x {v} vocab x {hd} hidden, fp32, {args.threads} thread(s), load {_load()}")
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name, (fn, extra) in variants.items():  # warm-up
        run(fn, extra, False)
    for _ in range(args.repeats):
        for phase, backward in (("forward", False), ("forward+backward", True)):
            for name, (fn, extra) in variants.items():
                c0, w0 = time.process_time(), time.perf_counter()
                run(fn, extra, backward)
                times.setdefault((phase, name), []).append((time.process_time() - c0, time.perf_counter() - w0))
    print(f"load after {_load()}")
    print("| phase | variant | CPU s (best, median) | wall s (best, median) |")
    print("|---|---|---:|---:|")
    for (phase, name), t in times.items():
        cpu, wall = [x[0] for x in t], [x[1] for x in t]
        print(f"| {phase} | {name} | {min(cpu):.2f}, {statistics.median(cpu):.2f} "
              f"| {min(wall):.2f}, {statistics.median(wall):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
