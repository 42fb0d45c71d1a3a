"""GRPO steps side by side: mindrl (`mindrl.cli.train_grpo`, built-in engine) vs Hugging Face TRL
(`GRPOTrainer`, HF `generate`), same model, weights, prompts and settings; one process each.

    python -m benchmarks.grpo_vs_trl [--settings 1x8,8x8] [--steps 2] [--warmup 1] [--rounds 2]
                                     [--trl-python /work/venv-bench/bin/python] [--workdir DIR]

Setup (the issue's): a Qwen2-shaped model (hidden 256, 4 layers, 4 heads / 2 KV heads, tied
embeddings) with the real Qwen2.5 vocabulary (151,936 rows), random weights (seed 0), fp32; Countdown
prompts (mindrl's R1 template, generated locally); n = 8 samples, 64 new tokens, temperature 1, KL
0.04 to a reference model, lr 1e-6, one update per rollout. The tokenizer is the real Qwen2.5 one
(`--tokenizer`, default ../shared/models/Qwen2.5-Instruct-tokenizer); without it the benchmark
says so and exits 0.

Each (framework, setting) run is its own process (peak RSS is per process): `--warmup` steps, then
`--steps` timed steps; runs alternate between the frameworks for `--rounds` rounds and the table
gives medians over all timed steps, with ratios mindrl / TRL. TRL needs `pip install -e .[bench]`
(or a venv holding it: `--trl-python`, or env MINDRL_TRL_PYTHON).

Tokens: rollout tokens/s = generated tokens / generation time; training tokens/s = (prompt +
generated) tokens / (step time - generation time) (reference forward, update, rewards);
end-to-end = generated tokens / step time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO.parent / "shared" / "models" / "Qwen2.5-Instruct-tokenizer"
HF_CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 256,
             "intermediate_size": 1024, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 4,
             "vocab_size": 151936, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
             "max_position_embeddings": 4096, "hidden_act": "silu", "torch_dtype": "float32",
             "bos_token_id": 151643, "eos_token_id": 151643}
NUM_PROMPTS, N, NEW_TOKENS, KL, LR = 64, 8, 64, 0.04, 1e-6


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


# ---------------------------------------------------------------------------------------------- prepare
def prepare(workdir: Path, tokenizer_dir: Path) -> dict:
    """HF model with random weights, its megatron conversion, the prompt set; cached in workdir."""
    meta_path = workdir / "prepared.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from mindrl.data.config import load_config as load_dataset_config
    from mindrl.data.countdown import generate
    from mindrl.data.preprocess import preprocess

    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in HF_CONFIG.items() if k != "architectures"}))
    model.save_pretrained(workdir / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(workdir / "hf")
    subprocess.run([sys.executable, str(REPO / "tools" / "convert_ckpt.py"), "--model-type-hf", "qwen2",
                    "--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(workdir / "hf"),
                    "--save-dir", str(workdir / "mg"), "--overwrite"], check=True, capture_output=True)
    tasks = generate(NUM_PROMPTS, seed=0)
    with open(workdir / "tasks.jsonl", "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in tasks)
    cfg = load_dataset_config("countdown", [f"input={workdir / 'tasks.jsonl'}", f"tokenizer_name_or_path={tokenizer_dir}",
                                            f"output_prefix={workdir / 'data' / 'countdown'}", "workers=1"])
    preprocess(cfg, tokenizer=tokenizer, progress=False, log=lambda *a, **k: None)
    from mindrl.data import PromptDataset

    ds = PromptDataset(str(workdir / "data" / "countdown"), shuffle=False)
    prompts = [tokenizer.decode(list(ds[i].prompt_ids)) for i in range(len(ds))]
    meta = {"prompts": prompts, "prompt_tokens": [len(tokenizer(p)["input_ids"]) for p in prompts]}
    meta_path.write_text(json.dumps(meta))
    return meta


# ---------------------------------------------------------------------------------------------- one side
def run_mindrl(workdir: Path, prompts_per_step: int, steps: int, out: Path, extra: Sequence[str] = ()) -> dict:
    """mindrl's side; `extra`: trainer config overrides on top of these (benchmarks.efficiency --set)."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from mindrl.cli.train_grpo import main as train_main

    run_dir = out / "mindrl_run"
    # A fresh run: an earlier run's directory would be resumed (its final checkpoint already at train_iters, so
    # no step runs) and its metrics.jsonl reported again as this run's.
    shutil.rmtree(run_dir, ignore_errors=True)
    rows = prompts_per_step * N
    # Micro-batches of 8 sequences: [rows, length, 151,936] fp32 logits of all 64 rows at once would
    # be ~8 GiB (TRL bounds its own by computing logits of completion positions only, `logits_to_keep`).
    rc = train_main(["--config-name", "grpo_tiny_cpu", "model=qwen25_0.5b", f"model.hf_config_path={workdir / 'hf'}",
                     "~model.scale_down", "model.make_vocab_size_divisible_by=128",
                     f"megatron_training.tokenizer_name_or_path={workdir / 'hf'}",
                     f"megatron_training.data_path={workdir / 'data' / 'countdown'}",
                     f"megatron_training.output_dir={run_dir}", f"megatron_training.global_batch_size={prompts_per_step}",
                     f"megatron_training.train_iters={steps}", "megatron_training.save_interval=100000",
                     "megatron_training.seq_length=512", "megatron_training.no_shuffle=true",
                     f"actor_config.load={workdir / 'mg'}", f"actor_config.micro_batch_size={min(rows, N)}",
                     f"actor_config.lr={LR}", f"rl_config.n_samples_per_prompt={N}", "rl_config.max_prompt_length=256",
                     f"rl_config.kl_coef={KL}", "rl_config.use_kl_loss=true", "rl_config.verifier_function=[format,countdown]",
                     "rl_config.verifier_weight=[1.0,1.0]", "rl_config.log_samples_interval=0",
                     "rl_config.actor_resource.num_npus=1", "generate_config.max_model_len=512",
                     f"generate_config.sampling_config.max_tokens={NEW_TOKENS}",
                     "generate_config.sampling_config.temperature=1.0", *extra])
    if rc:
        raise SystemExit(f"mindrl run failed (rc {rc})")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"steps": [{"step_s": r["time/step"], "gen_s": r["time/rollout"], "gen_tokens": r["response_length/sum"]}
                      for r in records]}


def run_trl(workdir: Path, prompts_per_step: int, steps: int, prompts: list[str], micro_batch: int = 0) -> dict:
    """TRL's side. `micro_batch` > 0: TRL's micro-batch (`per_device_train_batch_size`, with gradient
    accumulation over the step's rows; TRL then generates once per optimizer step, as before); 0: all
    rows in one micro-batch (the default of this benchmark)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "hf")
    model = AutoModelForCausalLM.from_pretrained(workdir / "hf", dtype=torch.float32)
    gen_time = [0.0]
    original = type(model).generate

    def timed_generate(self, *a, **k):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            gen_time[0] += time.perf_counter() - t0
    type(model).generate = timed_generate
    gen_tokens = [0]

    def reward(completions, completion_ids=None, **_):  # noqa: ANN001, ANN202
        # A random model never solves Countdown (mindrl's side scores 0 too); rewards cost ~nothing.
        gen_tokens[0] += sum(len(c) for c in completion_ids) if completion_ids is not None else 0
        return [0.0 for _ in completions]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_step_begin(self, *_, **__):
            self.t0, gen_time[0], gen_tokens[0] = time.perf_counter(), 0.0, 0

        def on_step_end(self, *_, **__):
            self.rows.append({"step_s": time.perf_counter() - self.t0, "gen_s": gen_time[0], "gen_tokens": gen_tokens[0]})

    rows = prompts_per_step * N
    micro = micro_batch if micro_batch and rows % micro_batch == 0 else rows
    args = GRPOConfig(output_dir=str(workdir / "trl_out"), per_device_train_batch_size=micro,
                      gradient_accumulation_steps=rows // micro, num_generations=N,
                      max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, beta=KL, learning_rate=LR,
                      max_steps=steps, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                      bf16=False, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    dataset = Dataset.from_dict({"prompt": prompts[:max(rows // N, 1) * steps] * 1})
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return {"steps": timer.rows}


def rollout_vs_hf(workdir: Path, rows: int, new: int, rounds: int) -> list[tuple[str, str, str]]:
    """Generation alone, in this process: the built-in engine vs HF `generate` (what TRL runs), the
    same weights and prompts, `rows` = prompts x 8 rows, `new` tokens each, temperature 1; alternating
    `rounds` times, medians."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from mindrl.backends import get_backend
    from mindrl.checkpoint.live import load_megatron_checkpoint
    from mindrl.models import load_hf_config
    from mindrl.rollout import BuiltinRolloutEngine, SamplingParams
    from mindrl.workers.bringup import PolicySpec, build_policy

    meta = json.loads((workdir / "prepared.json").read_text())
    prompts = meta["prompts"][:rows // N]
    tokenizer = AutoTokenizer.from_pretrained(workdir / "hf", padding_side="left")
    hf = AutoModelForCausalLM.from_pretrained(workdir / "hf", dtype=torch.float32).eval()
    backend = get_backend("cpu")
    model = build_policy(PolicySpec(hf=load_hf_config(workdir / "hf"), dtype="fp32"), backend, train=False)
    plan = model.plan
    load_megatron_checkpoint(model.unwrapped, workdir / "mg")
    engine = BuiltinRolloutEngine.from_plan(plan, model.chunks, eos_token_id=[])
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)

    def ours() -> None:
        engine.generate(ids, SamplingParams(n=N, temperature=1.0, max_tokens=new, ignore_eos=True, seed=0))

    def theirs() -> None:
        with torch.no_grad():
            hf.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                        min_new_tokens=new, num_return_sequences=N, pad_token_id=tokenizer.pad_token_id)
    times: dict[str, list[float]] = {"mindrl built-in engine": [], "HF generate": []}
    for r in range(rounds):
        for name, fn in ((("mindrl built-in engine", ours), ("HF generate", theirs)) if r % 2 == 0
                         else (("HF generate", theirs), ("mindrl built-in engine", ours))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tok = rows * new
    return [(f"rollout only, {rows} rows x {new} new tokens", f"HF generate {med['HF generate']:.1f} s = "
             f"{n_tok / med['HF generate']:.1f} tok/s", f"built-in {med['mindrl built-in engine']:.1f} s = "
             f"{n_tok / med['mindrl built-in engine']:.1f} tok/s = "
             f"{med['HF generate'] / med['mindrl built-in engine']:.2f}x")]


# ---------------------------------------------------------------------------------------------- driver
def side_main(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    meta = json.loads((workdir / "prepared.json").read_text())
    p, _ = (int(x) for x in args.setting.split("x"))
    total = args.warmup + args.steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.side == "mindrl":
        result = run_mindrl(workdir, p, total, out)
    else:
        result = run_trl(workdir, p, total, meta["prompts"][:p * total] if p * total <= len(meta["prompts"])
                         else (meta["prompts"] * total)[:p * total], args.trl_micro_batch)
    result["steps"] = result["steps"][args.warmup:]
    result["rss_gib"] = _rss_gib()
    (out / "result.json").write_text(json.dumps(result))


def trl_python(explicit: str | None) -> str | None:
    for candidate in (explicit, os.environ.get("MINDRL_TRL_PYTHON"), sys.executable, "/work/venv-bench/bin/python"):
        if candidate and Path(candidate).exists() and subprocess.run(
                [candidate, "-c", "import trl"], capture_output=True).returncode == 0:
            return candidate
    return None


def compare(settings: list[str], steps: int, warmup: int, rounds: int, workdir: Path, tokenizer: Path,
            trl_py: str | None = None, trl_micro_batch: int = 0) -> list[dict]:
    """Run everything; returns one row per (setting, framework) with medians."""
    prepare(workdir, tokenizer)
    meta = json.loads((workdir / "prepared.json").read_text())
    py = trl_python(trl_py)
    if py is None:
        print("TRL is not installed (pip install -e .[bench], or --trl-python): running mindrl only")
    sides = ["mindrl"] + (["trl"] if py else [])
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    collected: dict[tuple[str, str], list[dict]] = {}
    for setting in settings:
        for r in range(rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):  # alternate who goes first
                out = workdir / "runs" / f"{setting}_{side}_{r}"
                cmd = [py if side == "trl" else sys.executable, "-m", "benchmarks.grpo_vs_trl", "--side", side,
                       "--setting", setting, "--steps", str(steps), "--warmup", str(warmup), "--workdir", str(workdir),
                       "--out", str(out), "--trl-micro-batch", str(trl_micro_batch)]
                proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{side} {setting} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
                res = json.loads((out / "result.json").read_text())
                collected.setdefault((setting, side), []).append(res)
                print(f"  {setting} {side} round {r}: steps {[round(s['step_s'], 1) for s in res['steps']]} s, "
                      f"peak RSS {res['rss_gib']:.2f} GiB", flush=True)
    rows = []
    for (setting, side), results in collected.items():
        p = int(setting.split("x")[0])
        prompt_tokens = sum(meta["prompt_tokens"][:p]) * N
        st = [s for res in results for s in res["steps"]]
        step = statistics.median(s["step_s"] for s in st)
        gen = statistics.median(s["gen_s"] for s in st)
        gen_tokens = statistics.median(s["gen_tokens"] or p * N * NEW_TOKENS for s in st)
        rows.append({"setting": setting, "framework": side, "step_s": step, "gen_s": gen,
                     "rollout_tok_s": gen_tokens / max(gen, 1e-9),
                     "train_tok_s": (prompt_tokens + gen_tokens) / max(step - gen, 1e-9),
                     "e2e_tok_s": gen_tokens / step, "rss_gib": max(res["rss_gib"] for res in results),
                     "steps_timed": len(st)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| setting | framework | step s (median) | rollout s | rollout tok/s | training tok/s | end-to-end tok/s "
             "| peak RSS GiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['framework']} | {r['step_s']:.2f} | {r['gen_s']:.2f} | "
                     f"{r['rollout_tok_s']:,.0f} | {r['train_tok_s']:,.0f} | {r['e2e_tok_s']:,.1f} | {r['rss_gib']:.2f} |")
    by = {(r["setting"], r["framework"]): r for r in rows}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        m, t = by.get((setting, "mindrl")), by.get((setting, "trl"))
        if m and t:
            lines.append(f"| {setting} | **mindrl / TRL** | {t['step_s'] / m['step_s']:.2f}x faster | | "
                         f"{m['rollout_tok_s'] / t['rollout_tok_s']:.2f}x | {m['train_tok_s'] / t['train_tok_s']:.2f}x | "
                         f"{m['e2e_tok_s'] / t['e2e_tok_s']:.2f}x | {m['rss_gib'] / t['rss_gib']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="1x8,8x8", help="prompts x samples per step, comma-separated")
    p.add_argument("--steps", type=int, default=2, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="alternating runs per framework and setting")
    p.add_argument("--workdir", default=str(REPO / "output" / "bench_grpo_vs_trl"))
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    p.add_argument("--trl-python", default=None)
    p.add_argument("--rollout-only", type=int, default=0, metavar="ROWS",
                   help="only time generation at ROWS rows: built-in engine vs HF generate, one process")
    p.add_argument("--new", type=int, default=16, help="new tokens for --rollout-only")
    p.add_argument("--trl-micro-batch", type=int, default=0, metavar="ROWS",
                   help="TRL's per_device_train_batch_size (gradient accumulation over the rest); 0: all rows at once")
    p.add_argument("--side", choices=["mindrl", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--setting", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        side_main(args)
        return 0
    if not Path(args.tokenizer, "tokenizer.json").exists():
        print(f"skipped: the Qwen2.5 tokenizer is not at {args.tokenizer} (pass --tokenizer DIR)")
        return 0
    if args.rollout_only:
        prepare(Path(args.workdir), Path(args.tokenizer))
        rows = rollout_vs_hf(Path(args.workdir), args.rollout_only, args.new, args.rounds)
        print("| part | baseline (same run) | mindrl |\n|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} |")
        print(f"\nload average {os.getloadavg()[0]:.1f}")
        return 0
    settings = [s for s in args.settings.split(",") if s]
    rows = compare(settings, args.steps, args.warmup, args.rounds, Path(args.workdir), Path(args.tokenizer),
                   args.trl_python, args.trl_micro_batch)
    print(table(rows))
    print(f"\n{args.steps} timed steps after {args.warmup} warm-up per run, {args.rounds} alternating rounds; "
          f"model hidden 256 x 4 layers, vocab 151,936, fp32; {N} samples x {NEW_TOKENS} new tokens; load "
          f"average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
