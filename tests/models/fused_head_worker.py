"""The fused output layer + log-probs (`gpt_forward(hidden_states=True)` + `output_log_probs`) against
the unfused path (full logits, then `token_log_probs_and_entropy`), and the fused op alone against a
float64 full-vocabulary reference; driven by test_fused_head.py. TP=1 here, then TP=2 (two gloo ranks).

    python tests/models/fused_head_worker.py --out DIR

Writes DIR/tp{T}_rank{R}.pt: max abs differences of log-probs, entropies, the hidden states' and the
weight's gradients (the op alone: tiles of token rows and of vocab columns, fp32 and bf16 weights,
log-prob-only gradients, temperature 0.7 and 1), and every model parameter's gradient after a backward
through megatron's schedule and DDP, for tied / untied embeddings, temperature 0.7, with and without
sequence parallelism.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from mindrl.models.logprob_tiles import has_cxx_compiler  # noqa: E402
VOCAB = 250  # megatron pads it to 256 (TP1) / 256 (TP2, 128 a rank): padded rows exist
HF = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": VOCAB, "rope_theta": 1e4,
      "rms_norm_eps": 1e-6, "max_position_embeddings": 256}
ROWS, SEQ, T = 3, 16, 0.7


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (ROWS, SEQ + 1), generator=g)
    select = torch.zeros(ROWS, SEQ, dtype=torch.bool)  # response-like: a tail of each row
    for i, start in enumerate((5, 9, 15)):
        select[i, start:SEQ - i] = True
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "select": select,
            "w_lp": torch.randn(ROWS, SEQ, generator=g), "w_h": torch.randn(ROWS, SEQ, generator=g)}


def _op_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, select: torch.Tensor | None,
                  temperature: float, entropy_grad: bool = True) -> tuple[torch.Tensor, ...]:
    """Plain float64 autograd over the full real vocabulary: log-probs, entropy, grads of hidden and weight."""
    c = inputs()
    ref_h, ref_w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    logq = torch.log_softmax((ref_h.transpose(0, 1) @ ref_w[:VOCAB].t()) / temperature, -1)
    keep = torch.ones_like(labels, dtype=torch.bool) if select is None else select
    ref_lp = logq.gather(-1, labels[..., None])[..., 0] * keep
    ref_ent = -(logq.exp() * logq).sum(-1) * keep
    ((c["w_lp"] * ref_lp).sum() + ((c["w_h"] * ref_ent).sum() if entropy_grad else 0.0)).backward()
    return ref_lp, ref_ent, ref_h.grad, ref_w.grad


def _op_errors(result: dict, key: str, ref: tuple, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
               select: torch.Tensor | None, rows: slice, temperature: float, entropy_grad: bool = True,
               dtype: torch.dtype = torch.float32, **tiles) -> None:
    from mindrl.models.logprobs import output_log_probs_and_entropy

    c = inputs()
    h = hidden.float().requires_grad_(True)
    w = weight[rows].to(dtype).requires_grad_(True)
    lp, ent = output_log_probs_and_entropy(h, w, labels, VOCAB, select=select, temperature=temperature, **tiles)
    ((c["w_lp"] * lp).sum() + (c["w_h"] * (ent if entropy_grad else ent.detach())).sum()).backward()
    ref_lp, ref_ent, ref_hg, ref_wg = ref
    result[key + "_logp"] = (lp.double() - ref_lp).abs().max().item()
    result[key + "_entropy"] = (ent.double() - ref_ent).abs().max().item()
    result[key + "_hgrad"] = (h.grad.double() - ref_hg).abs().max().item()
    result[key + "_wgrad"] = (w.grad.double() - ref_wg[rows]).abs().max().item()


def head_vs_float64(result: dict, rank: int, tp: int) -> None:
    """The fused op alone: values and gradients of hidden and weight vs plain float64 autograd, for
    tiles of one value, of whole token rows, and of vocab columns (`chunk_columns`, ragged last
    chunk, several row blocks); padded vocab rows exist on every rank (TP1: 250 of 256; TP2: 128
    and 122 of 128)."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(SEQ, ROWS, 32, generator=g, dtype=torch.float64)
    weight = torch.randn(256, 32, generator=g, dtype=torch.float64) * 0.5
    c = inputs()
    rows = slice(rank * 256 // tp, (rank + 1) * 256 // tp)
    ref = _op_reference(hidden, weight, c["labels"], c["select"], T)
    for chunk in (None, 1, 300):  # default, 1 value a tile, 1 token x a rank's whole vocab
        _op_errors(result, f"op_chunk{chunk}", ref, hidden, weight, c["labels"], c["select"], rows, T,
                   chunk_elements=chunk)
    result["op_grad_scale"] = min(ref[2].abs().max().item(), ref[3].abs().max().item())
    # Every position selected, labels spread over the vocab so that every 7-column chunk holds some
    # (the first and the last real column, both sides of TP2's 128 boundary, the ragged last chunk).
    labels = (torch.arange(ROWS * SEQ).reshape(SEQ, ROWS).t() * VOCAB) // (ROWS * SEQ)
    labels[-1, -1], labels[0, 0] = VOCAB - 1, 0
    result["op_label_chunks"] = len(set((labels.reshape(-1) // 7).tolist()))
    for temperature in (T, 1.0):
        ref = _op_reference(hidden, weight, labels, None, temperature)
        # 7 columns by all 48 tokens; 7 columns by 5 tokens (10 row blocks, the last ragged); 32 x 2
        for elements, columns in ((None, 7), (40, 7), (64, 32)):
            _op_errors(result, f"op_tile{elements}x{columns}_T{temperature}", ref, hidden, weight, labels, None, rows,
                       temperature, chunk_elements=elements, chunk_columns=columns)
        # The tiles' elementwise work in compiled kernels (actor_config.compiled_logprob_tiles): ragged last
        # column chunk, several row blocks.
        for elements, columns in ((None, 7), (40, 7)) if has_cxx_compiler() else ():
            _op_errors(result, f"compiled_tile{elements}x{columns}_T{temperature}", ref, hidden, weight, labels, None,
                       rows, temperature, chunk_elements=elements, chunk_columns=columns, compiled=True)
    # The backend's kernel for the logits tiles (Backend.logits_matmul; CPU: oneDNN's inner product), where it has
    # one: the forward works on its fresh tiles, the backward copies them into its scratch.
    from mindrl.backends import get_backend
    matmul = get_backend("cpu").logits_matmul(torch.float32)
    for elements, columns in ((None, 7), (40, 7)) if matmul is not None else ():
        _op_errors(result, f"backend_tile{elements}x{columns}", _op_reference(hidden, weight, labels, None, T),
                   hidden, weight, labels, None, rows, T, chunk_elements=elements, chunk_columns=columns,
                   matmul=matmul)
    ref = _op_reference(hidden, weight, labels, None, T, entropy_grad=False)  # log-prob gradient only
    _op_errors(result, "op_tile40x7_lponly", ref, hidden, weight, labels, None, rows, T, entropy_grad=False,
               chunk_elements=40, chunk_columns=7)
    if has_cxx_compiler():
        _op_errors(result, "compiled_tile40x7_lponly", ref, hidden, weight, labels, None, rows, T, entropy_grad=False,
                   chunk_elements=40, chunk_columns=7, compiled=True)
    # entropy=False (the reference / old-log-prob forwards): no entropy, the same log-probs bit for bit (the
    # log-normaliser's sums are the same operations; only the entropy's sum is skipped).
    from mindrl.models.logprobs import output_log_probs_and_entropy
    with torch.no_grad():
        x, wr = hidden.float(), weight[rows].float()
        both = output_log_probs_and_entropy(x, wr, labels, VOCAB, temperature=T, chunk_elements=40, chunk_columns=7)
        only = output_log_probs_and_entropy(x, wr, labels, VOCAB, temperature=T, chunk_elements=40, chunk_columns=7,
                                            entropy=False)
    result["entropy_off_is_none"] = float(only[1] is None)
    result["entropy_off_logp"] = (both[0] - only[0]).abs().max().item()
    # bf16 weights (megatron's bf16 output layer: the matmul in bf16, statistics in fp32) against the
    # float64 reference of the same bf16-rounded weight and input: bf16 logits rounding only.
    w16, h16 = weight.to(torch.bfloat16).double(), hidden.to(torch.bfloat16).double()
    ref = _op_reference(h16, w16, labels, None, T)
    for elements, columns in ((None, None), (40, 7)):
        _op_errors(result, f"bf16_tile{elements}x{columns}", ref, h16, w16, labels, None, rows, T,
                   dtype=torch.bfloat16, chunk_elements=elements, chunk_columns=columns)
    # ... and against the unfused bf16 path as megatron runs it (bf16 logits of the whole vocab slice,
    # then the row-chunked `token_log_probs_and_entropy`; bf16 autograd of the matmul): the same logits.
    from mindrl.models.logprobs import token_log_probs_and_entropy
    h = hidden.float().requires_grad_(True)
    w = weight[rows].to(torch.bfloat16).requires_grad_(True)
    # As ColumnParallelLinear: the input's gradient summed over the TP ranks' vocab slices (entered with a
    # contiguous tensor: megatron's all-reduce would reduce a copy of a non-contiguous gradient).
    from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region
    x = copy_to_tensor_model_parallel_region(h.transpose(0, 1).contiguous())
    logits = (x.to(torch.bfloat16) @ w.t()).float()
    lp, ent = token_log_probs_and_entropy(logits, labels, VOCAB, temperature=T)
    ((c["w_lp"] * lp).sum() + (c["w_h"] * ent).sum()).backward()
    ref = (lp.detach().double(), ent.detach().double(), h.grad.double(), None)
    ref = ref[:3] + (torch.zeros(256, 32, dtype=torch.float64).index_copy_(0, torch.arange(rows.start, rows.stop),
                                                                             w.grad.double()),)
    _op_errors(result, "bf16_vs_unfused", ref, hidden, weight, labels, None, rows, T, dtype=torch.bfloat16,
               chunk_elements=40, chunk_columns=7)
    result["bf16_grad_scale"] = min(ref[2].abs().max().item(), ref[3].abs().max().item())


def model_fused_vs_unfused(result: dict, tp: int, tied: bool, sp: bool, compiled: bool = False) -> None:
    """One backward through megatron's schedule + DDP with each path; same model, lr 0."""
    from mindrl.models.logprobs import token_log_probs_and_entropy
    from mindrl.workers.megatron_engine import forward_backward, gpt_forward, output_log_probs

    model = tiny_policy(tp, tied, sp)
    c = inputs()
    params = [(n, p) for chunk in model.chunks for n, p in chunk.named_parameters()]
    runs = {}
    for fused in (False, True):
        def forward(chunk, mb):
            output = gpt_forward(chunk, mb, hidden_states=fused)

            def loss_fn(output):
                if fused:
                    lp, ent = output_log_probs(chunk, output, mb["labels"], VOCAB, select=mb["select"], temperature=T,
                                               compiled=compiled)
                else:
                    lp, ent = token_log_probs_and_entropy(output, mb["labels"], VOCAB, temperature=T)
                    lp, ent = lp * mb["select"], ent * mb["select"]
                loss = (mb["w_lp"] * lp).sum() + (mb["w_h"] * ent).sum()
                return loss, {"lp": lp.detach(), "ent": ent.detach()}
            return output, loss_fn

        reported = forward_backward(model, [c], forward)
        runs[fused] = (reported[0], {n: p.main_grad.clone() for n, p in params})
    (r0, g0), (r1, g1) = runs[False], runs[True]
    key = model_key(tied, sp, compiled)
    result[key + "_logp"] = (r0["lp"] - r1["lp"]).abs().max().item()
    result[key + "_entropy"] = (r0["ent"] - r1["ent"]).abs().max().item()
    compare_grads(result, key, g0, g1)
    result[key + "_params"] = sorted(g0)


def tiny_policy(tp: int, tied: bool, sp: bool):
    """The tiny Qwen2 (HF) at this TP, fp32, lr 0 (a backward leaves the weights as they are)."""
    from mindrl.backends import get_backend
    from mindrl.models import ParallelLayout
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import OptimConfig

    return build_policy(PolicySpec(hf={**HF, "tie_word_embeddings": tied},
                                   layout=ParallelLayout(tp=tp, sequence_parallel=sp), dtype="fp32", seed=1234,
                                   overrides={"init_method_std": 0.2}), get_backend("cpu"),
                        optim=OptimConfig(lr=0.0, clip_grad=1e9))


def model_cases(tp: int):
    """(tied, sequence parallel, compiled tiles) of the model comparisons at this TP (SP needs TP 2, compiled
    tiles a C++ compiler); the process groups are kept between cases."""
    for tied, sp, compiled in ((True, False, False), (False, False, False), (True, True, False), (True, False, True)):
        if not ((sp and tp == 1) or (compiled and not has_cxx_compiler())):
            yield tied, sp, compiled


def model_key(tied: bool, sp: bool, compiled: bool) -> str:
    return f"model_{'tied' if tied else 'untied'}{'_sp' if sp else ''}{'_compiled' if compiled else ''}"


def compare_grads(result: dict, key: str, g0: dict[str, torch.Tensor], g1: dict[str, torch.Tensor]) -> None:
    """The largest gradient difference relative to each parameter's largest gradient (at least 1), and the
    fraction of parameters with a gradient to compare (> 1e-4)."""
    result[key + "_grad"] = max((g0[n] - g1[n]).abs().max().item() / max(1.0, g0[n].abs().max().item()) for n in g0)
    result[key + "_nonzero_grads"] = sum(int(g.abs().max() > 1e-4) for g in g0.values()) / len(g0)


def run(tp: int, out: Path) -> None:
    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed, init_distributed

    init_distributed(get_backend("cpu"), tp=tp)
    result: dict = {}
    head_vs_float64(result, ps.get_tensor_model_parallel_rank(), tp)
    for tied, sp, compiled in model_cases(tp):
        model_fused_vs_unfused(result, tp, tied, sp, compiled)
    torch.save(result, out / f"tp{tp}_rank{torch.distributed.get_rank()}.pt")
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import run_at_tp1_then_tp2

    run_at_tp1_then_tp2(run)
