"""The fused output layer + log-probs (`gpt_forward(hidden_states=True)` + `output_log_probs`) against
the unfused path (full logits, then `token_log_probs_and_entropy`), and the fused op alone against a
float64 full-vocabulary reference; driven by test_fused_head.py. TP=1 here, then TP=2 (two gloo ranks).

    python tests/models/fused_head_worker.py --out DIR

Writes DIR/tp{T}_rank{R}.pt: max abs differences of log-probs, entropies, the hidden states' and the
weight's gradients, and every model parameter's gradient after a backward through megatron's schedule
and DDP, for tied / untied embeddings, temperature 0.7, with and without sequence parallelism.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
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


def head_vs_float64(result: dict, rank: int, tp: int) -> None:
    """The fused op alone: values and gradients of hidden and weight vs plain float64 autograd."""
    from mindrl.models.logprobs import output_log_probs_and_entropy

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(SEQ, ROWS, 32, generator=g, dtype=torch.float64)
    weight = torch.randn(256, 32, generator=g, dtype=torch.float64) * 0.5
    c = inputs()
    ref_h, ref_w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    logq = torch.log_softmax((ref_h.transpose(0, 1) @ ref_w[:VOCAB].t()) / T, -1)
    ref_lp = logq.gather(-1, c["labels"][..., None])[..., 0] * c["select"]
    ref_ent = -(logq.exp() * logq).sum(-1) * c["select"]
    ((c["w_lp"] * ref_lp).sum() + (c["w_h"] * ref_ent).sum()).backward()
    rows = slice(rank * 256 // tp, (rank + 1) * 256 // tp)
    for chunk in (None, 1, 300):  # default, 1 token a chunk (128-256 columns), 2 tokens
        h = hidden.float().requires_grad_(True)
        w = weight[rows].float().requires_grad_(True)
        lp, ent = output_log_probs_and_entropy(h, w, c["labels"], VOCAB, select=c["select"], temperature=T,
                                               chunk_elements=chunk)
        ((c["w_lp"] * lp).sum() + (c["w_h"] * ent).sum()).backward()
        key = f"op_chunk{chunk}"
        result[key + "_logp"] = (lp.double() - ref_lp).abs().max().item()
        result[key + "_entropy"] = (ent.double() - ref_ent).abs().max().item()
        result[key + "_hgrad"] = (h.grad.double() - ref_h.grad).abs().max().item()
        result[key + "_wgrad"] = (w.grad.double() - ref_w.grad[rows]).abs().max().item()
    result["op_grad_scale"] = min(ref_h.grad.abs().max().item(), ref_w.grad.abs().max().item())


def model_fused_vs_unfused(result: dict, tp: int, tied: bool, sp: bool) -> None:
    """One backward through megatron's schedule + DDP with each path; same model, lr 0."""
    from mindrl.backends import get_backend
    from mindrl.models import ParallelLayout
    from mindrl.models.logprobs import token_log_probs_and_entropy
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import OptimConfig, forward_backward, gpt_forward, output_log_probs

    model = build_policy(PolicySpec(hf={**HF, "tie_word_embeddings": tied},
                                    layout=ParallelLayout(tp=tp, sequence_parallel=sp), dtype="fp32", seed=1234,
                                    overrides={"init_method_std": 0.2}), get_backend("cpu"),
                         optim=OptimConfig(lr=0.0, clip_grad=1e9))
    c = inputs()
    params = [(n, p) for chunk in model.chunks for n, p in chunk.named_parameters()]
    runs = {}
    for fused in (False, True):
        def forward(chunk, mb):
            output = gpt_forward(chunk, mb, hidden_states=fused)

            def loss_fn(output):
                if fused:
                    lp, ent = output_log_probs(chunk, output, mb["labels"], VOCAB, select=mb["select"], temperature=T)
                else:
                    lp, ent = token_log_probs_and_entropy(output, mb["labels"], VOCAB, temperature=T)
                    lp, ent = lp * mb["select"], ent * mb["select"]
                loss = (mb["w_lp"] * lp).sum() + (mb["w_h"] * ent).sum()
                return loss, {"lp": lp.detach(), "ent": ent.detach()}
            return output, loss_fn

        reported = forward_backward(model, [c], forward)
        runs[fused] = (reported[0], {n: p.main_grad.clone() for n, p in params})
    (r0, g0), (r1, g1) = runs[False], runs[True]
    key = f"model_{'tied' if tied else 'untied'}{'_sp' if sp else ''}"
    result[key + "_logp"] = (r0["lp"] - r1["lp"]).abs().max().item()
    result[key + "_entropy"] = (r0["ent"] - r1["ent"]).abs().max().item()
    result[key + "_grad"] = max((g0[n] - g1[n]).abs().max().item() / max(1.0, g0[n].abs().max().item())
                                for n, _ in params)
    result[key + "_nonzero_grads"] = sum(int(g0[n].abs().max() > 1e-4) for n, _ in params) / len(params)
    result[key + "_params"] = sorted(n for n, _ in params)


def run(tp: int, out: Path) -> None:
    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed, init_distributed

    init_distributed(get_backend("cpu"), tp=tp)
    result: dict = {}
    head_vs_float64(result, ps.get_tensor_model_parallel_rank(), tp)
    for tied, sp in ((True, False), (False, False), (True, True)):  # the process groups are kept
        if sp and tp == 1:
            continue
        model_fused_vs_unfused(result, tp, tied, sp)
    torch.save(result, out / f"tp{tp}_rank{torch.distributed.get_rank()}.pt")
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import run_at_tp1_then_tp2

    run_at_tp1_then_tp2(run)
