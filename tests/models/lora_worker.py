"""LoRA at several layouts vs one rank; used by test_lora_parity.py.

    python tests/models/lora_worker.py --arch qwen2 --out DIR --layouts tp2,tp2sp,pp2,dp2dist

The single-rank reference runs in this process: it saves the base weights, the adapters as
initialised (A from the seed, B zero) and the adapters it trains from (B made non-zero), and records
the base model's logits (a model built *without* LoRA), the zero-B LoRA model's logits and the
non-zero-B LoRA model's logits with its adapters disabled. Then two spawned ranks run each layout:
they record their own initial adapters (must equal the reference's: A is drawn on the full matrix,
then sliced), load the reference's base and adapters, run forward + backward (next-token loss) and
one optimizer step, and rank 0 writes DIR/<layout>.pt: loss, canonical adapter gradients, canonical
adapters after the step, and what the optimizer holds.
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
from tests.models.parity_worker import (  # noqa: E402
    BATCH, MICRO_BATCHES, SEQ, parse_layout, reference_then_layouts, tiny_hf)

LORA = dict(rank=4, alpha=8.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"])


def _gather(obj):
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _logits(model, tokens):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from mindrl.workers.megatron_engine import forward_backward, gpt_forward

    def forward(chunk, batch):
        output = gpt_forward(chunk, batch)
        return output, lambda lg: (lg.sum() * 0, {"logits": gather_from_tensor_model_parallel_region(lg).detach()})
    with torch.no_grad():
        rep = forward_backward(model, [{"tokens": tokens}], forward, forward_only=True)
    return rep[0]["logits"] if rep else None


def run_layout(arch: str, name: str, out: Path, ref: dict | None) -> None:
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.models.lora import LoRASpec, adapters_disabled, load_adapters, local_adapter_shards
    from mindrl.models.sharding import load_canonical, local_shards, merge_shards
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import (OptimConfig, data_parallel_slice, forward_backward,
                                                next_token_loss_forward)

    hf = tiny_hf(arch)
    # "dp2dist": two data-parallel ranks with megatron's distributed optimizer.
    layout = parse_layout("ref" if name == "dp2dist" else name)
    spec = PolicySpec(hf, layout, dtype="fp32", lora=LoRASpec(**LORA), seed=7)
    # adam_eps well above the gradients' summation-order noise (~1e-8), so one Adam step compares tightly.
    model = build_policy(spec, get_backend("cpu"), optim=OptimConfig(lr=1e-2, adam_eps=1e-3,
                                                                     use_distributed_optimizer=name == "dp2dist"))
    plan = model.plan
    vocab = plan.vocab_size
    initial = merge_shards([p for g in _gather(local_adapter_shards(model.unwrapped)) for p in g], vocab)
    g = torch.Generator().manual_seed(0)  # the same global batch on every rank
    tokens = torch.randint(0, vocab, (MICRO_BATCHES, BATCH, SEQ + 1), generator=g)
    result: dict = {"initial": initial}
    if ref is None:  # the reference: base weights, adapters with non-zero B, exactness checks
        base = merge_shards(local_shards(model.unwrapped), vocab)
        plain = build_policy(PolicySpec(hf, layout, dtype="fp32", seed=7), get_backend("cpu"), train=False)
        load_canonical(plain.unwrapped, base)
        probe = tokens[0, :, :-1]
        result["base_logits"] = _logits(plain, probe)
        result["zero_b_logits"] = _logits(model, probe)
        gen = torch.Generator().manual_seed(1)
        adapters = {k: (v if k.endswith("lora_A") else torch.randn(v.shape, generator=gen) * 0.05)
                    for k, v in initial.items()}
        load_adapters(model.unwrapped, adapters)
        result["lora_logits"] = _logits(model, probe)
        with adapters_disabled(model.unwrapped):
            result["disabled_logits"] = _logits(model, probe)
        result["enabled_again_logits"] = _logits(model, probe)
        torch.save({"base": base, "adapters": adapters}, out / "weights.pt")
    else:
        load_canonical(model.unwrapped, ref["base"])
        load_adapters(model.unwrapped, ref["adapters"])
    micro = [{"tokens": data_parallel_slice(t[:, :-1]), "labels": data_parallel_slice(t[:, 1:])} for t in tokens]
    reported = forward_backward(model, micro, next_token_loss_forward(vocab))
    grads = merge_shards([p for g_ in _gather(local_adapter_shards(model.unwrapped, "grad")) for p in g_], vocab)
    base_grads = [n for c in model.unwrapped for n, p in c.named_parameters()
                  if p.requires_grad and ".lora.adapters." not in n]
    ok, grad_norm, _ = model.optimizer.step()
    after = merge_shards([p for g_ in _gather(local_adapter_shards(model.unwrapped)) for p in g_], vocab)
    opt_params = sum(p.numel() for group in model.optimizer.param_groups for p in group["params"])
    loss = torch.stack([r["loss"] for r in reported]).mean() if reported else None
    gathered = _gather({"loss": loss, "dp": ps.get_data_parallel_rank(), "trainable_base": base_grads,
                        "opt_params": opt_params})
    if torch.distributed.get_rank() == 0:
        losses = {x["dp"]: x["loss"] for x in gathered if x["loss"] is not None}
        result.update(loss=torch.stack(list(losses.values())).mean(), grads=grads, after=after,
                      sequence_parallel=plan.config.sequence_parallel,
                      grad_norm=float(grad_norm), update_ok=bool(ok),
                      trainable_base=[n for x in gathered for n in x["trainable_base"]],
                      opt_params=[x["opt_params"] for x in gathered])
        torch.save(result, out / f"{name}.pt")
    torch.distributed.barrier()
    ps.destroy_model_parallel()


def ranks_main(arch: str, layouts: list[str], out: str) -> None:
    warnings.filterwarnings("ignore")
    import faulthandler

    faulthandler.dump_traceback_later(int(os.environ.get("MINDRL_HANG_DUMP_S", "480")), exit=True)
    from mindrl.backends.distributed import destroy_distributed

    ref = torch.load(Path(out) / "weights.pt")
    for name in layouts:
        run_layout(arch, name, Path(out), ref)
    destroy_distributed()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True)
    p.add_argument("--layouts", default="")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    reference_then_layouts(run_layout, ranks_main, args.arch, args.layouts, Path(args.out))


if __name__ == "__main__":
    main()
