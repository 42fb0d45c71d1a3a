"""Rollout-engine checks on a tiny megatron model, in fresh processes (the cpu backend's megatron
adaptations are process-wide); driven by test_builtin_engine.py.

    python tests/rollout/rollout_worker.py --arch qwen2,deepseek_v3 --nproc 2 --tp 2 --check gate --out DIR

Several architectures share one process group (saves a launch). Every rank writes DIR/rank{R}.pt:
{arch: metrics of its checks (max abs log-prob differences, booleans) and its outputs}.

`--check pp` (pipeline parallelism): `--nproc` ranks build the `--pp` layout (with `--tp`, `--ep`,
an uneven `--layer-list`), make the `pp_calls` and the gate against the trainer's teacher-forced
log-probs (`forward_backward(forward_only=True)` + `token_log_probs`, through the pipeline
schedule); then, in the same processes with the parallel state rebuilt, a PP=1/TP=1 model with the
same (canonical) weights makes the same calls: the single-rank reference, under "ref".
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("MINDRL_SHARED", REPO.parent / "shared"))
MODEL_DIRS = {"qwen2": "Qwen2.5-0.5B", "deepseek_v3": "DeepSeek-V3"}
VOCAB = 250  # not a multiple of 128: the TP vocab padding is exercised
PROMPT_LENS = [5, 9, 3, 7]


class ToyTokenizer:
    """Token i decodes to "<i>": stop strings can then be aimed at a known token."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


def prompts(dp_rank: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(100 + dp_rank)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENS]


def teacher_forced(chunk, outputs, temperature: float, vocab: int, tp: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per output: the training forward's log-probs of its generated tokens, and its argmax tokens."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from mindrl.models.logprobs import mask_padded_vocab, token_log_probs
    from mindrl.workers.megatron_engine import gpt_forward

    seqs = [o.prompt_token_ids + o.token_ids for o in outputs]
    length = -(-max(map(len, seqs)) // tp) * tp + tp  # a multiple of TP (sequence parallelism); right padding
    tokens = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.tensor(s)
    with torch.no_grad():
        logits = gpt_forward(chunk, {"tokens": tokens}).float()
        scale = temperature if temperature > 0 else 1.0
        lp = token_log_probs(logits[:, :-1] / scale, tokens[:, 1:], vocab)
        full = gather_from_tensor_model_parallel_region(mask_padded_vocab(logits, vocab))
        argmax = full.argmax(-1)
    lps, argmaxes = [], []
    for i, o in enumerate(outputs):
        p, g = len(o.prompt_token_ids), len(o.token_ids)
        lps.append(lp[i, p - 1:p - 1 + g])
        argmaxes.append(argmax[i, p - 1:p - 1 + g])
    return lps, argmaxes


def trainer_log_probs(model, outputs, temperature: float, vocab: int) -> list[torch.Tensor]:
    """Per output: the log-probs of its generated tokens from the training path — megatron's
    schedule (`forward_backward(forward_only=True)`, pipelined when PP>1) + `token_log_probs` on the
    last stage — broadcast to every pipeline stage."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from mindrl.models.logprobs import token_log_probs
    from mindrl.workers.megatron_engine import forward_backward, gpt_forward

    tp = ps.get_tensor_model_parallel_world_size()
    seqs = [o.prompt_token_ids + o.token_ids for o in outputs]
    length = -(-max(map(len, seqs)) // tp) * tp + tp  # input length (tokens[:, :-1]) a multiple of TP
    tokens = torch.zeros(len(seqs), length + 1, dtype=torch.long)
    for i, seq in enumerate(seqs):
        tokens[i, :len(seq)] = torch.tensor(seq)
    scale = temperature if temperature > 0 else 1.0
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:]}

    def forward(chunk, mb):
        output = gpt_forward(chunk, mb)
        return output, lambda logits: (logits.sum() * 0.0,
                                       {"lp": token_log_probs(logits.float() / scale, mb["labels"], vocab)})

    for chunk in model.chunks:
        chunk.eval()
    with torch.no_grad():
        reported = forward_backward(model, [batch], forward, forward_only=True)
    lp = reported[0]["lp"].contiguous() if reported else torch.empty(len(seqs), length)
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(lp, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group())
    return [lp[i, len(o.prompt_token_ids) - 1:len(o.prompt_token_ids) - 1 + len(o.token_ids)]
            for i, o in enumerate(outputs)]


def max_diff(outputs, reference: list[torch.Tensor]) -> float:
    return max((torch.tensor(o.logprobs) - r).abs().max().item() for o, r in zip(outputs, reference))


def rank_main(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ.get("MINDRL_HANG_DUMP_S", "300")), exit=True)
    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed

    backend = get_backend("cpu")
    results = {arch: check_arch(arch, args, backend) for arch in args.arch.split(",")}
    rank = torch.distributed.get_rank()
    torch.save(results, Path(args.out) / f"rank{rank}.pt")
    destroy_distributed()


def build(arch: str, args: argparse.Namespace, backend, layout):
    from mindrl.models import load_hf_config, scale_down
    from mindrl.workers.bringup import PolicySpec, build_policy

    hf = scale_down(load_hf_config(SHARED / "models" / MODEL_DIRS[arch]), num_layers=args.layers, num_heads=4,
                    num_kv_heads=2, vocab_size=VOCAB, first_k_dense=1)
    # A larger init than the default 0.02: a tiny random model then has peaked, varied next-token
    # distributions (the default one repeats its input token under greedy decoding).
    model = build_policy(PolicySpec(hf, layout, dtype="fp32", overrides={"init_method_std": 0.15}), backend,
                         train=False)
    return model.plan, model


def check_arch(arch: str, args: argparse.Namespace, backend) -> dict:
    from megatron.core import parallel_state as ps

    from mindrl.models import ParallelLayout
    from mindrl.rollout import BuiltinRolloutEngine, SamplingParams

    plan, model = build(arch, args, backend, ParallelLayout(tp=args.tp, pp=args.pp, ep=args.ep))
    chunk = model.chunks[0]
    result: dict = {"sequence_parallel": plan.config.sequence_parallel}

    engine = BuiltinRolloutEngine.from_plan(plan, model.chunks, eos_token_id=[], tokenizer=ToyTokenizer(),
                                            max_batch_size=args.max_batch_size)
    dp_rank = ps.get_data_parallel_rank()
    ps_ = prompts(dp_rank)
    if args.uneven:  # data-parallel ranks get different amounts of work (EP: the dummy-forward path)
        ps_ = ps_[:len(ps_) - 3 * dp_rank]
    # The gate: sampled log-probs == the training forward's (same temperature), fp32.
    sampled = engine.generate(ps_, SamplingParams(n=2, temperature=args.temperature, max_tokens=args.max_tokens, seed=7))
    ref, _ = teacher_forced(chunk, sampled, args.temperature, plan.vocab_size, args.tp)
    result.update(gate_diff=max_diff(sampled, ref), outputs=[(o.prompt_index, o.sample_index, o.token_ids, o.logprobs,
                                                               o.finish_reason) for o in sampled])
    result["sp_restored"] = plan.config.sequence_parallel == chunk.config.sequence_parallel
    greedy = engine.generate(ps_, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    ref_g, argmax = teacher_forced(chunk, greedy, 0.0, plan.vocab_size, args.tp)
    result.update(greedy_diff=max_diff(greedy, ref_g),
                  greedy_is_argmax=all(o.token_ids == a.tolist() for o, a in zip(greedy, argmax)),
                  greedy_tokens=[o.token_ids for o in greedy])
    if args.check == "suite" and arch == args.arch.split(",")[0]:  # behaviours: on the first arch only
        result.update(suite(engine, ps_, greedy, sampled, args))
    return result


def suite(engine, ps_, greedy, sampled, args) -> dict:
    """Behaviours checked once, on one rank."""
    from mindrl.rollout import SamplingParams

    m = args.max_tokens
    r: dict = {}
    topk1 = engine.generate(ps_, SamplingParams(temperature=1.0, top_k=1, max_tokens=m, seed=3))
    r["top_k1_is_greedy"] = [o.token_ids for o in topk1] == [o.token_ids for o in greedy]
    r["top_k1_logprobs_equal"] = max(abs(a - b) for o, g in zip(topk1, greedy) for a, b in zip(o.logprobs, g.logprobs))
    r["length"] = [(o.finish_reason, len(o.token_ids)) for o in greedy]
    # EOS: make prompt 0's third greedy token the EOS.
    eos = greedy[0].token_ids[2]
    engine.eos_token_ids = [eos]
    stopped = engine.generate(ps_[:1], SamplingParams(temperature=0.0, max_tokens=m))[0]
    r["eos"] = (stopped.token_ids, stopped.finish_reason, stopped.stop_reason, greedy[0].token_ids.index(eos) + 1)
    ignored = engine.generate(ps_[:1], SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True))[0]
    r["ignore_eos"] = (len(ignored.token_ids), ignored.finish_reason)
    engine.eos_token_ids = []
    tok = greedy[1].token_ids[3]
    by_id = engine.generate(ps_[1:2], SamplingParams(temperature=0.0, max_tokens=m, stop_token_ids=[tok]))[0]
    r["stop_id"] = (by_id.token_ids, by_id.finish_reason, by_id.stop_reason, greedy[1].token_ids.index(tok) + 1)
    # Stop string spanning two tokens: "<a><b" where a, b are greedy tokens 2 and 3 of prompt 1.
    a, b = greedy[1].token_ids[2], greedy[1].token_ids[3]
    stop = f"<{a}><{b}"
    by_str = engine.generate(ps_[1:2], SamplingParams(temperature=0.0, max_tokens=m, stop=[stop], detokenize=True))[0]
    r["stop_str"] = (by_str.token_ids, by_str.finish_reason, by_str.stop_reason, by_str.text, stop)
    # Seeds: same seed -> same samples; other seed -> different; batch split / subset -> same.
    p = dict(n=2, temperature=args.temperature, max_tokens=m)
    again = engine.generate(ps_, SamplingParams(seed=7, **p))
    r["same_seed"] = [o.token_ids for o in again] == [o.token_ids for o in sampled]
    other = engine.generate(ps_, SamplingParams(seed=8, **p))
    r["other_seed_differs"] = [o.token_ids for o in other] != [o.token_ids for o in sampled]
    engine.max_batch_size = 2  # one prompt (x n=2) per static batch
    split = engine.generate(ps_, SamplingParams(seed=7, **p))
    engine.max_batch_size = args.max_batch_size
    subset = engine.generate(ps_[:2], SamplingParams(seed=7, **p))
    r["split_same"] = [o.token_ids for o in split] == [o.token_ids for o in sampled]
    r["subset_same"] = [o.token_ids for o in subset] == [o.token_ids for o in sampled[:4]]
    many = engine.generate(ps_, SamplingParams(n=3, temperature=1.0, max_tokens=4, seed=1))
    r["order"] = [(o.prompt_index, o.sample_index) for o in many]
    r["group_distinct"] = sum(len({tuple(o.token_ids) for o in many[i:i + 3]}) > 1 for i in range(0, 12, 3))
    try:
        engine.generate(ps_, SamplingParams(top_p=0.0))
    except ValueError as err:
        r["bad_params"] = str(err)
    return r


def pp_calls(engine, ps_) -> tuple[dict, list, list]:
    """The calls compared between a PP run and the single-rank reference: sampling (n=2, seeded),
    greedy, rows finishing at different steps (EOS while sampling; EOS and a stop string under
    greedy decoding: rows leave every stage's KV cache), and sampling split into one-prompt
    static batches."""
    from mindrl.rollout import SamplingParams

    def brief(outs):
        return [(o.prompt_index, o.sample_index, o.token_ids, o.logprobs, o.finish_reason, o.stop_reason, o.text)
                for o in outs]

    r: dict = {}
    sampled = engine.generate(ps_, SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=7))
    greedy = engine.generate(ps_, SamplingParams(temperature=0.0, max_tokens=8))
    r["sampled"], r["greedy"] = brief(sampled), brief(greedy)
    engine.eos_token_ids = [greedy[0].token_ids[2]]
    a, b = greedy[1].token_ids[2], greedy[1].token_ids[3]
    r["eos_sampled"] = brief(engine.generate(ps_, SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=5)))
    r["stops_greedy"] = brief(engine.generate(ps_, SamplingParams(temperature=0.0, max_tokens=8, stop=[f"<{a}><{b}"])))
    engine.eos_token_ids = []
    engine.max_batch_size = 2
    r["split"] = brief(engine.generate(ps_, SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=7)))
    engine.max_batch_size = 64
    return r, sampled, greedy


def pp_run(args: argparse.Namespace, backend, layout, weights: dict | None,
           ps_: list[list[int]] | None) -> tuple[dict, dict, list[list[int]]]:
    """Build `layout` (loading `weights` if given), make `pp_calls` and the gate; returns the results,
    the canonical weights and the prompts (`ps_`, or this data-parallel rank's: fewer on rank 1 with
    `--uneven`). Rebuilds megatron's parallel state; keeps the process group."""
    from megatron.core import parallel_state as ps

    from mindrl.models.sharding import load_canonical, local_shards, merge_shards
    from mindrl.rollout import BuiltinRolloutEngine

    plan, model = build(args.arch, args, backend, layout)
    if weights is None:
        pieces = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(pieces, local_shards(model.unwrapped, plan.args.num_experts))
        weights = merge_shards([x for p in pieces for x in p], plan.vocab_size)
    else:
        load_canonical(model.unwrapped, weights, plan.args.num_experts)
    engine = BuiltinRolloutEngine.from_plan(plan, model.chunks, eos_token_id=[], tokenizer=ToyTokenizer())
    if ps_ is None:
        ps_ = prompts(0)
        if args.uneven:  # EP: the idle pipeline's stages must run dummy forwards together
            ps_ = ps_[:len(ps_) - 2 * ps.get_data_parallel_rank()]
    r, sampled, greedy = pp_calls(engine, ps_)
    r["gate_diff"] = max_diff(sampled, trainer_log_probs(model, sampled, 0.8, plan.vocab_size))
    r["greedy_diff"] = max_diff(greedy, trainer_log_probs(model, greedy, 0.0, plan.vocab_size))
    r["pp_rank"] = ps.get_pipeline_model_parallel_rank()
    r["layers"] = [layer.layer_number for layer in model.unwrapped[0].decoder.layers]
    r["sequence_parallel"] = plan.config.sequence_parallel
    ps.destroy_model_parallel()
    return r, weights, ps_


def pp_rank(args: argparse.Namespace) -> None:
    """The PP layout on every rank, then (same processes, parallel state rebuilt) the single-rank
    reference: PP=1, TP=1 (data-parallel copies) with the PP model's canonical weights."""
    warnings.filterwarnings("ignore")
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ.get("MINDRL_HANG_DUMP_S", "300")), exit=True)
    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.models import ParallelLayout

    backend = get_backend("cpu")
    layers = [int(x) for x in args.layer_list.split(",")] if args.layer_list else None
    layout = ParallelLayout(tp=args.tp, pp=args.pp, ep=args.ep, num_layer_list=layers)
    result, weights, ps_ = pp_run(args, backend, layout, None, None)
    result["ref"], _, _ = pp_run(args, backend, ParallelLayout(), weights, ps_)
    torch.save(result, Path(args.out) / f"rank{torch.distributed.get_rank()}.pt")
    destroy_distributed()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True, help="comma-separated: " + ",".join(MODEL_DIRS))
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--check", default="gate", choices=["gate", "suite", "pp"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--layer-list", default="", help="uneven PP split, e.g. 1,2 (with --check pp)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--uneven", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from mindrl.utils.launch import spawn

    if args.check == "pp":
        spawn(pp_rank, args.nproc, args)
    elif args.nproc == 1:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        rank_main(args)
    else:
        spawn(rank_main, args.nproc, args)


if __name__ == "__main__":
    main()
