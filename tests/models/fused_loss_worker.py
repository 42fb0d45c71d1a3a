"""The output layer with the loss fused in (`mindrl.models.fused_loss.output_loss`, actor_config.head_grad_in_forward)
against float64 autograd over the full vocabulary, and through megatron's schedule + DDP against the log-probs'
own backward (`output_log_probs`); driven by test_fused_loss.py. TP=1 here, then TP=2 (two gloo ranks).

    python tests/models/fused_loss_worker.py --out DIR

Writes DIR/tp{T}_rank{R}.pt: max abs differences of the loss, log-probs, entropies and the hidden states' and
weight's gradients, and whether the per-block gradients were used (`separable`), for: a linear loss, a GRPO
clipped-surrogate + KL loss, the same with an entropy bonus, a sequence-level (GSPO-like, not token-separable)
loss; blocks of 1 token, 4 tokens and the default; temperature 0.7 and 1; eager and compiled tiles; an upstream
gradient != 1; a frozen weight (LoRA's); bf16 weights against the log-probs' own fused path.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from mindrl.models.logprob_tiles import has_cxx_compiler  # noqa: E402
from tests.models.fused_head_worker import (ROWS, SEQ, T, VOCAB, compare_grads, inputs, model_cases,  # noqa: E402
                                            model_key, tiny_policy)


def losses(select: torch.Tensor, logp: torch.Tensor) -> dict:
    """name -> (loss_of(logp [b, s], entropy [b, s]) -> scalar, uses the entropy, token-separable). The old
    log-probs are `logp` (the current ones) moved by ~0.3: some ratios clipped at 0.8 / 1.28, some not."""
    c = inputs()
    g = torch.Generator().manual_seed(5)
    old = logp.double() + 0.3 * torch.randn(ROWS, SEQ, generator=g, dtype=torch.float64)
    adv = torch.randn(ROWS, 1, generator=g)
    m = select.double()

    def grpo(lp: torch.Tensor, ent: torch.Tensor, bonus: float = 0.0) -> torch.Tensor:
        ratio = torch.exp(lp - old.to(lp.dtype))  # some tokens are clipped, some not (|log ratio| ~ 1)
        pg = -torch.min(ratio * adv, ratio.clamp(0.8, 1.28) * adv)
        d = old.to(lp.dtype) - lp
        kl = torch.exp(d) - d - 1
        return ((pg + 0.04 * kl - bonus * ent) * m.to(lp.dtype)).sum() / m.sum()

    def sequence(lp: torch.Tensor, ent: torch.Tensor) -> torch.Tensor:  # GSPO-like: a per-sequence ratio
        mm = m.to(lp.dtype)
        s = torch.exp(((lp - old.to(lp.dtype)) * mm).sum(1, keepdim=True) / mm.sum(1, keepdim=True).clamp(min=1))
        return (-(s * adv) * mm).sum() / mm.sum()

    return {"linear": (lambda lp, ent: (c["w_lp"].to(lp.dtype) * lp).sum() + (c["w_h"].to(lp.dtype) * ent).sum(),
                       True, True),
            "grpo": (grpo, False, True),
            "grpo_bonus": (lambda lp, ent: grpo(lp, ent, 0.01), True, True),
            "sequence": (sequence, False, False)}


def _reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, select: torch.Tensor,
               temperature: float, loss_of, scale: float) -> tuple[torch.Tensor, ...]:
    """float64 autograd over the real vocabulary: loss, log-probs, entropy, grads of hidden and weight."""
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    logq = torch.log_softmax((h.transpose(0, 1) @ w[:VOCAB].t()) / temperature, -1)
    lp = logq.gather(-1, labels[..., None])[..., 0] * select
    ent = -(logq.exp() * logq).sum(-1) * select
    loss = loss_of(lp, ent)
    (loss * scale).backward()
    return loss.detach(), lp.detach(), ent.detach(), h.grad, w.grad


def op_vs_float64(result: dict, rank: int, tp: int) -> None:
    from mindrl.models.fused_loss import last_call_kept, last_call_separable, output_loss

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(SEQ, ROWS, 32, generator=g, dtype=torch.float64)
    weight = torch.randn(256, 32, generator=g, dtype=torch.float64) * 0.5
    c = inputs()
    rows = slice(rank * 256 // tp, (rank + 1) * 256 // tp)
    local = 256 // tp
    cases = []
    for temperature in (T, 1.0):
        logp = _reference(hidden, weight, c["labels"], c["select"], temperature, lambda lp, ent: lp.sum(), 1.0)[1]
        for name, (loss_of, entropy_grad, _) in losses(c["select"], logp).items():
            # blocks of 1 token, 4 (2 x elements; ragged last block: 26 selected), the default (all tokens)
            for elements in (1, 2 * local, None):
                for compiled in (False, True) if has_cxx_compiler() else (False,):
                    cases.append((name, loss_of, entropy_grad, temperature, elements, compiled, 1.0, True, None))
            for compiled in (False, True) if has_cxx_compiler() else (False,):  # tiles of 7 vocab columns
                cases.append((name, loss_of, entropy_grad, temperature, 2 * local, compiled, 1.0, True, None, 7))
    # an upstream gradient != 1, a frozen weight; the weight's gradient added into a main_grad buffer (megatron
    # DDP's) for an upstream gradient of 0.37: returning a dummy gradient, or none (a tied embedding's case), for
    # the softmax-weighted path (grpo), the entropy-gradient path (grpo_bonus) and a non-separable loss, whose
    # per-block gradients are then corrected by the recompute path (sequence)
    logp = _reference(hidden, weight, c["labels"], c["select"], T, lambda lp, ent: lp.sum(), 1.0)[1]
    named = losses(c["select"], logp)
    grpo = named["grpo"][0]
    cases.append(("grpo", grpo, False, T, 2 * local, False, 0.37, True, None))
    cases.append(("grpo", grpo, False, T, 2 * local, False, 1.0, False, None))
    cases.append(("grpo", grpo, False, T, 2 * local, False, 0.37, True, "dummy"))
    cases.append(("grpo_bonus", named["grpo_bonus"][0], True, T, 2 * local, False, 0.37, True, "dummy"))
    cases.append(("sequence", named["sequence"][0], False, T, 2 * local, False, 0.37, True, "none"))
    # token-separable before the middle selected position, one squared sum over the rest: the blocks before the
    # tail keep their per-block gradients, the recompute path adds the rest's (own buffer, and main_grad)
    m = c["select"].float()
    half = int(c["select"].nonzero()[:, 1].float().median())  # the middle selected position

    def tail(lp: torch.Tensor, ent: torch.Tensor) -> torch.Tensor:
        rest = (lp[:, half:] * m[:, half:].to(lp.dtype)).sum()
        return (c["w_lp"].to(lp.dtype) * lp).sum() + 0.05 * rest ** 2 / m.sum()
    cases.append(("tail", tail, False, T, 2 * local, False, 1.0, True, None))
    cases.append(("tail", tail, False, T, 2 * local, False, 0.37, True, "dummy"))
    # the backend's kernel for the logits tiles (CPU: oneDNN's inner product) on the softmax-weighted path (grpo),
    # the entropy-gradient path (grpo_bonus) and the recompute path (sequence)
    from mindrl.backends import get_backend
    matmul = get_backend("cpu").logits_matmul(torch.float32)
    for name in ("grpo", "grpo_bonus", "sequence") if matmul is not None else ():
        cases.append((name, named[name][0], named[name][1], T, 2 * local, False, 1.0, True, "onednn"))
    for name, loss_of, entropy_grad, temperature, elements, compiled, scale, train_w, main, *columns in cases:
        ref = _reference(hidden, weight, c["labels"], c["select"], temperature, loss_of, scale)
        h = hidden.float().requires_grad_(True)
        w = weight[rows].float().requires_grad_(train_w)
        main_grad = None
        if main in ("dummy", "none"):  # what megatron DDP gives a parameter: a main_grad buffer (holding earlier micro-batches' sum)
            main_grad = torch.randn(w.shape, generator=g)
            before = main_grad.clone()
            w.grad_added_to_main_grad = False
        loss, lp, ent = output_loss(h, w, c["labels"], VOCAB, loss_of, select=c["select"], temperature=temperature,
                                    chunk_elements=elements, chunk_columns=columns[0] if columns else None,
                                    compiled=compiled, entropy_grad=entropy_grad, main_grad=main_grad,
                                    upstream=scale, dummy_grad=main == "dummy",
                                    matmul=matmul if main == "onednn" else None)
        (loss * scale).backward()
        key = (f"op_{name}_T{temperature}_b{elements}{'_c7' if columns else ''}{'_compiled' if compiled else ''}"
               f"{'_scaled' if scale != 1.0 else ''}{'' if train_w else '_frozen'}{f'_main_{main}' if main else ''}")
        if main in ("dummy", "none"):  # the gradient is what main_grad gained; the one returned a dummy or none
            result[key + "_returned"] = (float(w.grad is not None and w.grad.shape == w.shape
                                               and w.grad_added_to_main_grad) if main == "dummy"
                                         else float(w.grad is None and not w.grad_added_to_main_grad))
            w.grad = main_grad - before
        result[key + "_loss"] = (loss.double() - ref[0]).abs().item()
        result[key + "_logp"] = (lp.double() - ref[1]).abs().max().item()
        result[key + "_entropy"] = (ent.double() - ref[2]).abs().max().item()
        result[key + "_hgrad"] = (h.grad.double() - ref[3]).abs().max().item()
        result[key + "_wgrad"] = -1.0 if w.grad is None else (w.grad.double() - ref[4][rows]).abs().max().item()
        result[key + "_separable"] = float(last_call_separable())
        kept, tokens = last_call_kept()
        result[key + "_kept"] = kept / tokens
        result[key + "_grad_scale"] = min(ref[3].abs().max().item(), ref[4].abs().max().item())
    # main_grad for one upstream gradient, a backward bringing another: refused, not silently wrong
    w = weight[rows].float().requires_grad_(True)
    loss = output_loss(hidden.float(), w, c["labels"], VOCAB, grpo, select=c["select"], temperature=T,
                       main_grad=torch.zeros(w.shape), upstream=2.0)[0]
    try:
        loss.backward()
        result["main_grad_mismatch_refused"] = 0.0
    except RuntimeError as e:
        result["main_grad_mismatch_refused"] = float("upstream" in str(e))
    # bf16 weights: the same log-probs as the log-probs' own fused path (the same bf16 logits), gradients
    # within bf16 rounding of its backward.
    from mindrl.models.logprobs import output_log_probs_and_entropy

    grads = []
    for fused_loss in (False, True):
        h = hidden.float().requires_grad_(True)
        w = weight[rows].to(torch.bfloat16).requires_grad_(True)
        if fused_loss:
            loss, lp, ent = output_loss(h, w, c["labels"], VOCAB, grpo, select=c["select"], temperature=T,
                                        chunk_elements=2 * local)
        else:
            lp, ent = output_log_probs_and_entropy(h, w, c["labels"], VOCAB, select=c["select"], temperature=T)
            loss = grpo(lp, ent)
        loss.backward()
        grads.append((lp.detach(), h.grad, w.grad.float()))
    result["bf16_logp"] = (grads[0][0] - grads[1][0]).abs().max().item()
    result["bf16_hgrad"] = (grads[0][1] - grads[1][1]).abs().max().item() / grads[0][1].abs().max().item()
    result["bf16_wgrad"] = (grads[0][2] - grads[1][2]).abs().max().item() / grads[0][2].abs().max().item()


def model_fused_loss_vs_logprobs(result: dict, tp: int, tied: bool, sp: bool, compiled: bool = False) -> None:
    """One backward through megatron's schedule + DDP (two micro-batches, the loss times 3: an upstream gradient of
    1.5 for the fused loss to add into main_grad) with `output_loss` and with `output_log_probs` + the loss; same
    model, lr 0: every parameter's gradient, for GRPO with an entropy bonus and without (the softmax-weighted
    path); the largest difference of the two."""
    from mindrl.workers.megatron_engine import forward_backward, gpt_forward, output_log_probs, output_loss

    model = tiny_policy(tp, tied, sp)
    c = inputs()
    with torch.no_grad():  # the old log-probs near the model's own
        hidden = gpt_forward(model.chunks[0], c, hidden_states=True)
        logp = output_log_probs(model.chunks[0], hidden, c["labels"], VOCAB, select=c["select"], temperature=T)[0]
    named = losses(c["select"], logp)
    params = [(n, p) for chunk in model.chunks for n, p in chunk.named_parameters()]
    runs = {}
    for (loss_name, fused_loss) in [(n, f) for n in ("grpo_bonus", "grpo") for f in (False, True)]:
        grpo, entropy_grad = named[loss_name][:2]

        def forward(chunk, mb):
            output = gpt_forward(chunk, mb, hidden_states=True)

            def loss_fn(output):
                if fused_loss:
                    loss, lp, ent = output_loss(chunk, output, mb["labels"], VOCAB, grpo, select=mb["select"],
                                                temperature=T, compiled=compiled, entropy_grad=entropy_grad,
                                                upstream=3.0 / 2)
                else:
                    lp, ent = output_log_probs(chunk, output, mb["labels"], VOCAB, select=mb["select"], temperature=T,
                                               compiled=compiled)
                    loss = grpo(lp, ent)
                return loss * 3.0, {"lp": lp.detach(), "loss": loss.detach()}
            return output, loss_fn

        reported = forward_backward(model, [c, c], forward)
        runs[loss_name, fused_loss] = (reported[0], {n: p.main_grad.clone() for n, p in params})
    key = model_key(tied, sp, compiled)
    # The CPU backend's sparse word-embedding gradient (mindrl.models.sparse_embedding) against megatron's dense
    # one: the last run again with the embedding switched back.
    from megatron.core.tensor_parallel.layers import VocabParallelEmbedding

    from mindrl.models.sparse_embedding import SparseGradVocabParallelEmbedding
    sparse = [m for chunk in model.chunks for m in chunk.modules() if type(m) is SparseGradVocabParallelEmbedding]
    result[key + "_sparse_embeddings"] = float(len(sparse))
    for m in sparse:
        m.__class__ = VocabParallelEmbedding
    forward_backward(model, [c, c], forward)
    dense: dict = {}
    compare_grads(dense, key, runs["grpo", True][1], {n: p.main_grad.clone() for n, p in params})
    result[key + "_dense_embedding_diff"] = dense[key + "_grad"]
    for loss_name in ("grpo_bonus", "grpo"):
        (r0, g0), (r1, g1) = runs[loss_name, False], runs[loss_name, True]
        one: dict = {}
        compare_grads(one, key, g0, g1)
        one[key + "_loss"] = (r0["loss"] - r1["loss"]).abs().item()
        one[key + "_logp"] = (r0["lp"] - r1["lp"]).abs().max().item()
        for k, v in one.items():  # the worse of the two losses (every gradient must be there in both)
            result[k] = min(result.get(k, v), v) if k.endswith("_nonzero_grads") else max(result.get(k, v), v)


def run(tp: int, out: Path) -> None:
    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed, init_distributed

    init_distributed(get_backend("cpu"), tp=tp)
    result: dict = {}
    op_vs_float64(result, ps.get_tensor_model_parallel_rank(), tp)
    for tied, sp, compiled in model_cases(tp):
        model_fused_loss_vs_logprobs(result, tp, tied, sp, compiled)
    torch.save(result, out / f"tp{tp}_rank{torch.distributed.get_rank()}.pt")
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import run_at_tp1_then_tp2

    run_at_tp1_then_tp2(run)
