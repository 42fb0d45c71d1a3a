"""Chunked log-probs / entropy (mindrl.models.logprobs) against a full-vocabulary float64 reference,
at TP=1 (this process) and TP=2 (two spawned gloo ranks); driven by test_logprobs.py.

    python tests/models/logprobs_worker.py --out DIR

Each run writes DIR/tp{T}_rank{R}.pt with max abs differences of log-probs, entropies and the
gradient of this rank's vocab slice, for several chunk sizes and temperatures.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
VOCAB = 250  # real tokens; the logits carry 256 columns (padding, as megatron pads the vocab)
PADDED = 256


def case(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, PADDED, generator=g, dtype=torch.float64) * 4
    logits[..., VOCAB:] = torch.randn(3, 7, PADDED - VOCAB, generator=g, dtype=torch.float64) * 50  # junk
    labels = torch.randint(0, VOCAB, (3, 7), generator=g)
    return {"logits": logits, "labels": labels, "w_lp": torch.randn(3, 7, generator=g, dtype=torch.float64),
            "w_h": torch.randn(3, 7, generator=g, dtype=torch.float64)}


def reference(c: dict[str, torch.Tensor], temperature: float, entropy_grad: bool) -> dict[str, torch.Tensor]:
    """Plain autograd on the full real vocabulary in float64."""
    logits = c["logits"].clone().requires_grad_(True)
    logq = torch.log_softmax(logits[..., :VOCAB] / temperature, dim=-1)
    logp = logq.gather(-1, c["labels"][..., None])[..., 0]
    entropy = -(logq.exp() * logq).sum(-1)
    loss = (c["w_lp"] * logp).sum() + ((c["w_h"] * entropy).sum() if entropy_grad else 0.0)
    loss.backward()
    return {"logp": logp.detach(), "entropy": entropy.detach(), "grad": logits.grad}


def run(tp: int, out: Path) -> None:
    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed, init_distributed
    from mindrl.models.logprobs import token_log_probs, token_log_probs_and_entropy, vocab_parallel_entropy

    init_distributed(get_backend("cpu"), tp=tp)
    rank = ps.get_tensor_model_parallel_rank()
    cols = slice(rank * PADDED // tp, (rank + 1) * PADDED // tp)
    c = case()
    result: dict[str, float] = {}
    for temperature in (1.0, 0.7):
        for entropy_grad in (False, True):
            ref = reference(c, temperature, entropy_grad)
            for chunk in (None, 1, 300, 10_000):  # default, one value (1 row), 2-row chunks, 1 chunk
                logits = c["logits"][..., cols].float().clone().requires_grad_(True)
                logp, entropy = token_log_probs_and_entropy(logits, c["labels"], VOCAB, temperature=temperature,
                                                            chunk_elements=chunk)
                h = entropy if entropy_grad else entropy.detach()
                loss = (c["w_lp"].float() * logp).sum() + (c["w_h"].float() * h).sum()
                loss.backward()
                key = f"T{temperature}_hgrad{int(entropy_grad)}_chunk{chunk}"
                result[key + "_logp"] = (logp.double() - ref["logp"]).abs().max().item()
                result[key + "_entropy"] = (entropy.double() - ref["entropy"]).abs().max().item()
                result[key + "_grad"] = (logits.grad.double() - ref["grad"][..., cols]).abs().max().item()
            result[f"T{temperature}_grad_scale"] = ref["grad"].abs().max().item()
    # The previous implementation (megatron's vocab-parallel cross entropy) agrees too.
    local = c["logits"][..., cols].float()
    mine = token_log_probs(local, c["labels"], VOCAB, chunk_elements=300)
    masked = local.clone()
    masked[..., max(0, min(PADDED // tp, VOCAB - rank * PADDED // tp)):] = float("-inf")
    theirs = -vocab_parallel_cross_entropy(masked.transpose(0, 1).contiguous(), c["labels"].transpose(0, 1).contiguous())
    result["vs_megatron"] = (mine - theirs.transpose(0, 1)).abs().max().item()
    want = reference(c, 1.0, False)["entropy"]
    with torch.no_grad():
        result["entropy_fn"] = (vocab_parallel_entropy(local, VOCAB).double() - want).abs().max().item()
    torch.save(result, out / f"tp{tp}_rank{torch.distributed.get_rank()}.pt")
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import run_at_tp1_then_tp2

    run_at_tp1_then_tp2(run)
