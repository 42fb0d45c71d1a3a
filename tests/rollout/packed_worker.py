"""The built-in engine with `linear_packer` (generate_config.packed_linear) against the plain path, on tiny
megatron models in a fresh process (the cpu backend's megatron adaptations are process-wide); driven by
test_packed_linear.py.

    python tests/rollout/packed_worker.py --arch qwen2,deepseek_v3 --out DIR

Writes DIR/result.pt: {arch: {...}} with, for the same model and prompts, the plain engine's and the packed
engine's sampled (seeded) and greedy outputs, the packed engine's outputs again with the same seed, the
training forward's log-probs of the packed engine's tokens, and how many weights were packed / packed calls ran.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.rollout.rollout_worker import ToyTokenizer, build, max_diff, prompts, teacher_forced  # noqa: E402


class CountingPacker:
    """The backend's packer, counting what it packs and how often the packed linears run."""

    def __init__(self, packer) -> None:
        self.packer, self.packed, self.calls = packer, [], 0

    def __call__(self, weight: torch.Tensor, rows: int, with_out: bool = False):
        self.packed.append(tuple(weight.shape))
        self.with_out = getattr(self, "with_out", []) + [tuple(weight.shape)] * with_out
        fn = self.packer(weight, rows, with_out=with_out)

        def linear(x, bias=None, *out):
            self.calls += 1
            return fn(x, bias, *out)
        return linear


def check(arch: str, args: argparse.Namespace, backend) -> dict:
    from mindrl.models import ParallelLayout
    from mindrl.rollout import BuiltinRolloutEngine, SamplingParams

    plan, model = build(arch, args, backend, ParallelLayout())
    packer = backend.linear_packer(torch.float32)
    if packer is None:
        return {"unavailable": True}
    counting = CountingPacker(packer)
    kw = dict(eos_token_id=[], tokenizer=ToyTokenizer(), max_batch_size=64)
    plain = BuiltinRolloutEngine.from_plan(plan, model.chunks, **kw)
    packed = BuiltinRolloutEngine.from_plan(plan, model.chunks, linear_packer=counting, **kw)
    ps_ = prompts(0)
    sp = SamplingParams(n=2, temperature=0.8, max_tokens=args.max_tokens, seed=7)
    gp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    r: dict = {}
    r["plain_sampled"], r["plain_greedy"] = plain.generate(ps_, sp), plain.generate(ps_, gp)
    r["packed_sampled"] = packed.generate(ps_, sp)
    r["weights_packed"], r["packed_calls"] = list(counting.packed), counting.calls
    r["with_out"] = counting.with_out
    r["pack_seconds"] = packed.last_pack_seconds
    r["packed_greedy"] = packed.generate(ps_, gp)
    r["packed_again"] = packed.generate(ps_, sp)
    r["weights"] = sorted({tuple(p.shape) for n, p in model.chunks[0].named_parameters()
                           if "weight" in n and p.dim() == 2})
    ref, _ = teacher_forced(model.chunks[0], r["packed_sampled"], 0.8, plan.vocab_size, 1)
    r["gate_diff"] = max_diff(r["packed_sampled"], ref)
    ref_g, argmax = teacher_forced(model.chunks[0], r["packed_greedy"], 0.0, plan.vocab_size, 1)
    r["greedy_is_argmax"] = all(o.token_ids == a.tolist() for o, a in zip(r["packed_greedy"], argmax))
    # fused_sampler (plain and packed): the LM head fused with the sampler, only for the rows that sample.
    fused = BuiltinRolloutEngine.from_plan(plan, model.chunks, fused_sampler=True, **kw)
    packed_fused = BuiltinRolloutEngine.from_plan(plan, model.chunks, linear_packer=packer, fused_sampler=True, **kw)
    r["fused_sampled"] = fused.generate(ps_, sp)
    r["packed_fused_sampled"] = packed_fused.generate(ps_, sp)
    r["fused_again"] = packed_fused.generate(ps_, sp)
    r["fused_greedy"] = packed_fused.generate(ps_, gp)  # greedy: the unfused path
    # A prompt's samples do not depend on the other prompts of the call (prompt_keys keep its seeds).
    r["fused_subset"] = packed_fused.generate(ps_[1::2], sp, prompt_keys=list(range(1, len(ps_), 2)))
    r["fused_used"] = packed_fused._fuses(sp) and not packed_fused._fuses(gp)
    for name in ("fused_sampled", "packed_fused_sampled"):
        ref_f, _ = teacher_forced(model.chunks[0], r[name], 0.8, plan.vocab_size, 1)
        r[name + "_gate"] = max_diff(r[name], ref_f)
    # Weights change between calls (an optimizer step): the next call packs the new weights.
    with torch.no_grad():
        for p in model.chunks[0].parameters():
            p.mul_(1.01)
    r["after_update_plain"] = plain.generate(ps_, gp)
    r["after_update_packed"] = packed.generate(ps_, gp)
    r["after_update_fused"] = packed_fused.generate(ps_, sp)
    r["after_update_plain_sampled"] = plain.generate(ps_, sp)
    for k, v in list(r.items()):
        if isinstance(v, list) and v and hasattr(v[0], "token_ids"):
            r[k] = [(o.token_ids, o.logprobs) for o in v]
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="qwen2")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed

    backend = get_backend("cpu")
    results = {arch: check(arch, args, backend) for arch in args.arch.split(",")}
    torch.save(results, Path(args.out) / "result.pt")
    destroy_distributed()


if __name__ == "__main__":
    main()
