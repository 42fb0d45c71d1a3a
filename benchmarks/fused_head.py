"""The fused output layer + log-prob/entropy (mindrl.models.logprobs) against an earlier revision of
the same file, in one process, alternating: forward alone (the reference / old-log-prob forward) and
forward + backward (the update), on tokens x vocab x hidden fp32 (default the docs' 880 x 151,936 x 256,
temperature 0.9, both outputs weighted).

    python -m benchmarks.fused_head [--baseline REV] [--tokens 880] [--repeats 3] [--threads 1]
                                    [--columns 1024,4096] [--compiled] [--fused-loss] [--check]
    python -m benchmarks.fused_head --phases [--prompts 2] [--repeats 2] [--threads 1]

Times: CPU seconds (`time.process_time`, the figure to compare under load) and wall seconds, per
variant, best and median of the repeats, with `uptime`'s load average before and after. `--columns`
also times the current code at other vocab-tile widths (`chunk_columns`); `--compiled` each current variant
again with its tiles' elementwise work compiled (mindrl/models/logprob_tiles.py). `--fused-loss`: also the
update's output layer with the loss fused in (mindrl/models/fused_loss.py, actor_config.head_grad_in_forward;
forward + backward only, with compiled tiles too under `--compiled`), on the same weighted sum of log-probs and
entropies and on the log-probs' alone (GRPO's default: the softmax-weighted path), each with torch.mm and its own
gradient buffer and, as the trainer runs it, with the backend's logits kernel (`Backend.logits_matmul`) and the
weight gradient added into a main_grad buffer. Every call runs inside one `reuse_workspace()` pass, as the engine's. `--check` prints the largest differences of log-probs, entropy and both gradients from the baseline.

`--phases`: instead, the reference forward and the update of `benchmarks.train_switches`' batch and
model (eager; `--prompts` x 8 samples, micro-batches of 8 rows, `PolicyWorker.log_probs` / `update`),
with the engine's fused output layer (`megatron_engine.output_log_probs_and_entropy`) taken from the
baseline revision or the current code, alternating; model FLOPs, GFLOP/s (wall) and % of the fp32
2048^2 matmul peak measured in this process before and after; the largest log-prob and gradient
differences between the two.
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

from mindrl.models.workspace import reuse_workspace


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


def phases(args, old: types.ModuleType) -> None:
    from benchmarks.train_switches import HF, KL, SAMPLES, _batch, _timed
    from mindrl.backends import get_backend
    from mindrl.backends.peak import measure_matmul_peak
    from mindrl.config.schema import RLConfig
    from mindrl.models import logprobs as new
    from mindrl.models.flops import flop_model, training_forward_flops
    from mindrl.workers import megatron_engine
    from mindrl.workers.actor import PolicyWorker
    from mindrl.workers.bringup import PolicySpec, build_policy, frozen_copy
    from mindrl.workers.megatron_engine import OptimConfig

    backend = get_backend("cpu")
    torch.set_num_threads(args.threads)
    load, peaks = [_load()], [measure_matmul_peak(torch.float32, repeats=5)]
    actor = build_policy(PolicySpec(hf=HF, dtype="fp32"), backend, optim=OptimConfig(lr=0.0))
    kw = {"micro_batch_size": SAMPLES, "temperature": 1.0}
    ref, act = PolicyWorker(frozen_copy(actor, backend), **kw), PolicyWorker(actor, **kw)
    batch, p_lens, r_lens = _batch(args.prompts)
    fwd = training_forward_flops(flop_model(HF), p_lens, r_lens)
    flops = {"reference": fwd, "update": 3 * fwd}
    rl = RLConfig(use_kl_loss=True, kl_coef=KL)
    params = [q for chunk in actor.chunks for q in chunk.parameters()]

    def baseline(*a, matmul=None, **k):  # the baseline's signature may predate `matmul` (this worker passes None)
        return old.output_log_probs_and_entropy(*a, **k)
    variants = {f"baseline {args.baseline}": baseline,
                "current": new.output_log_probs_and_entropy}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    outputs = {}
    for i in range(args.repeats + 1):  # the first round warms up
        for name, fn in variants.items():
            megatron_engine.output_log_probs_and_entropy = fn
            lp, w1, c1 = _timed(lambda: ref.log_probs(batch))
            batch.ref_log_probs = batch.old_log_probs = lp
            m, w2, c2 = _timed(lambda: act.update(batch, rl))
            outputs[name] = (lp, m, [q.main_grad.clone() for q in params])
            if i:
                times.setdefault(("reference", name), []).append((c1, w1))
                times.setdefault(("update", name), []).append((c2, w2))
    megatron_engine.output_log_probs_and_entropy = new.output_log_probs_and_entropy
    peaks.append(measure_matmul_peak(torch.float32, repeats=5))
    load.append(_load())
    peak = max(peaks)
    print(f"{len(p_lens)} rows of {min(p_lens)}-{max(p_lens)} prompt + {r_lens[0]} response tokens, micro-batches of "
          f"{SAMPLES}; {args.threads} thread(s); {args.repeats} alternating round(s); fp32 2048^2 matmul peak "
          f"{peaks[0] / 1e9:.0f} / {peaks[1] / 1e9:.0f} GFLOP/s before / after; load {load[0]} before, {load[1]} after")
    print("| phase | variant | model TFLOP | CPU s (median) | wall s (median) | GFLOP/s (wall) | % of peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (phase, name), t in times.items():
        cpu, wall = statistics.median(x[0] for x in t), statistics.median(x[1] for x in t)
        print(f"| {phase} | {name} | {flops[phase] / 1e12:.3f} | {cpu:.2f} | {wall:.2f} "
              f"| {flops[phase] / wall / 1e9:.0f} | {100 * flops[phase] / wall / peak:.0f}% |")
    (lp0, m0, g0), (lp1, m1, g1) = outputs.values()
    mask = batch.response_mask
    print(f"log-probs max |diff| {(lp0 - lp1)[mask].abs().max().item():.2e}; gradient max |diff| "
          f"{max((a - b).abs().max().item() for a, b in zip(g0, g1)):.2e} (largest "
          f"{max(a.abs().max().item() for a in g0):.2e}); grad_norm {m0['actor/grad_norm']:.6f} vs "
          f"{m1['actor/grad_norm']:.6f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="0b36ca3", help="git revision of the code to compare against")
    ap.add_argument("--tokens", type=int, default=880)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--columns", default="", help="extra vocab-tile widths of the current code to time")
    ap.add_argument("--compiled", action="store_true",
                    help="also time each current variant with compiled tiles (actor_config.compiled_logprob_tiles)")
    ap.add_argument("--fused-loss", action="store_true",
                    help="also time the update's output layer with the loss fused in "
                         "(actor_config.head_grad_in_forward)")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--phases", action="store_true", help="the reference forward and update instead")
    ap.add_argument("--prompts", type=int, default=2, help="--phases: prompts (x 8 samples)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    old = _load_revision(args.baseline)
    if args.phases:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MINDRL_CPU_THREADS=str(args.threads))
        return phases(args, old)
    _init_single_rank()
    from mindrl.models import logprobs as new
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
    if args.compiled:  # every current variant again with its tiles' elementwise work compiled
        for name, (fn, extra) in list(variants.items())[1:]:
            variants[name + ", compiled tiles"] = (fn, (extra[0], True))
    # The CPU backend's kernel for the logits tiles (Backend.logits_matmul: oneDNN), as the trainer passes it.
    from mindrl.backends import get_backend
    matmul = get_backend("cpu").logits_matmul(torch.float32)
    if matmul is not None:
        variants["current, backend kernel"] = (new._FusedLinearLogProbEntropy, (None, False, True, matmul))
    main_grad = torch.zeros(v, hd)  # what megatron DDP gives the weight (the trainer's fused loss adds into it)
    if args.fused_loss:
        from mindrl.models.fused_loss import _FusedLinearLoss
        # GRPO's default loss has no entropy term (the softmax-weighted path, eager); with one, the other path
        for compiled, ent in [(c, e) for c in ((False, True) if args.compiled else (False,)) for e in (False, True)]:
            name = f"fused loss, {'+ entropy' if ent else 'log-probs only'}{', compiled tiles' if compiled else ''}"
            variants[name + " (torch.mm, own gradient)"] = (_FusedLinearLoss, (compiled, None, None, ent))
            if matmul is not None:  # the trainer's: the backend's kernel, the weight gradient into main_grad
                variants[name + " (backend kernel, into main_grad)"] = (
                    _FusedLinearLoss, (compiled, matmul, main_grad, ent))

    def run(fn, extra, backward: bool):
        h = hidden.clone().requires_grad_(backward)
        w = weight.clone().requires_grad_(backward)
        if fn.__name__ == "_FusedLinearLoss":  # the loss inside: its gradients are computed in the forward
            compiled, mm, mg, with_ent = extra
            if mg is not None:
                mg.zero_()  # as DDP's zero_grad_buffer does once a step
            loss_of = (lambda a, b: (w_lp * a).sum() + (w_h * b).sum()) if with_ent else (lambda a, b: (w_lp * a).sum())
            loss, lp, ent = fn.apply(h, w, labels, v, inv_temp, None, None, compiled, loss_of, with_ent, mg, 1.0,
                                     True, mm)
            if backward:
                loss.backward()
            return lp, ent, h.grad, w.grad if mg is None else mg
        with torch.enable_grad() if backward else torch.no_grad():
            lp, ent = fn.apply(h, w, labels, v, inv_temp, None, *extra)
            if backward:
                ((w_lp * lp).sum() + (w_h * ent).sum()).backward()
        return lp, ent, h.grad, w.grad

    if args.check:
        ref = run(*variants[f"baseline {args.baseline}"], True)
        for name, (fn, extra) in list(variants.items())[1:]:
            out = run(fn, extra, True)
            if "log-probs only" in name:  # another loss: only the values compare
                out, ref_ = out[:2], ref[:2]
            else:
                ref_ = ref
            print(name, "max |diff| vs baseline: logp, entropy, grad hidden, grad weight =",
                  ["%.2e" % (a - b).abs().max().item() for a, b in zip(out, ref_)])

    print(f"{n} tokens x {v} vocab x {hd} hidden, fp32, {args.threads} thread(s), load {_load()}")
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    pass_ = reuse_workspace()  # as the engine runs a pass: big scratch buffers kept between calls
    pass_.__enter__()
    for name, (fn, extra) in variants.items():  # warm-up (and the compiled tiles' compile)
        run(fn, extra, False)
        run(fn, extra, True)
    for _ in range(args.repeats):
        for phase, backward in (("forward", False), ("forward+backward", True)):
            for name, (fn, extra) in variants.items():
                if not backward and name.startswith("fused loss"):  # an update-only path
                    continue
                c0, w0 = time.process_time(), time.perf_counter()
                run(fn, extra, backward)
                times.setdefault((phase, name), []).append((time.process_time() - c0, time.perf_counter() - w0))
    pass_.__exit__(None, None, None)
    print(f"load after {_load()}")
    print("| phase | variant | CPU s (best, median) | wall s (best, median) |")
    print("|---|---|---:|---:|")
    for (phase, name), t in times.items():
        cpu, wall = [x[0] for x in t], [x[1] for x in t]
        print(f"| {phase} | {name} | {min(cpu):.2f}, {statistics.median(cpu):.2f} "
              f"| {min(wall):.2f}, {statistics.median(wall):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
