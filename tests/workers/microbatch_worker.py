"""Token-budget micro-batches (packed without padding, and right-padded) against fixed ones on one tiny Qwen2 model: log-probs, loss metrics
and gradients; driven by test_micro_batches.py. TP=1 in this process, then TP=2 (two gloo ranks).

    python tests/workers/microbatch_worker.py --out DIR

Writes DIR/tp{T}_rank{R}.pt with max abs differences and the micro-batch shapes used.
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
VOCAB = 250
HF = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": VOCAB, "rope_theta": 1e4,
      "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 256}
# Long-tailed response lengths: most short, two long (as GRPO batches are).
RESPONSES = [3, 2, 5, 4, 41, 3, 2, 6, 63, 4, 3, 1]


def batch():
    from mindrl.workers.actor import build_sequence_batch

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (int(n),), generator=g).tolist() for n in torch.randint(4, 9, (12,), generator=g)]
    responses = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in RESPONSES]
    return build_sequence_batch(prompts, responses, torch.randn(12, generator=g))


def run(tp: int, out: Path) -> None:
    warnings.filterwarnings("ignore")
    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.config.schema import RLConfig, RolloutISConfig
    from mindrl.models import ParallelLayout
    from mindrl.workers.actor import PolicyWorker, sequence_lengths
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import OptimConfig

    backend = get_backend("cpu")
    # lr 0: the weights stay put, so both updates see the same model; no clipping (compare raw grads).
    model = build_policy(PolicySpec(hf=HF, layout=ParallelLayout(tp=tp), dtype="fp32", seed=1234,
                                    overrides={"init_method_std": 0.2}), backend,
                         optim=OptimConfig(lr=0.0, clip_grad=1e9))
    fixed = PolicyWorker(model, micro_batch_size=3, temperature=0.9)
    packed = PolicyWorker(model, micro_batch_size=3, temperature=0.9, max_tokens_per_micro_batch=96)
    padded = PolicyWorker(model, micro_batch_size=3, temperature=0.9, max_tokens_per_micro_batch=96)
    padded.pack = False  # the right-padded token-budget groups (what multi-latent-attention models get)
    b = batch()
    mask = b.response_mask
    result: dict = {"shapes": [tuple(mb["tokens"].shape) for mb in padded._micro_batches(b)],
                    "fixed_shapes": [tuple(mb["tokens"].shape) for mb in fixed._micro_batches(b)],
                    "packed_shapes": [tuple(mb["tokens"].shape) for mb in packed._micro_batches(b)],
                    "packed_rows": [len(mb["rows"]) for mb in packed._micro_batches(b)],
                    "real_tokens": int(sequence_lengths(b).sum())}
    assert packed.pack
    lp_fixed = fixed.log_probs(b)
    result["logp_mean"] = lp_fixed[mask].mean().item()
    for name, worker in (("padded", padded), ("packed", packed)):
        lp = worker.log_probs(b)
        result[f"{name}_logp"] = (lp_fixed - lp)[mask].abs().max().item()
        result[f"{name}_logp_off_response"] = lp[~mask].abs().max().item()
    g = torch.Generator().manual_seed(1)
    b.old_log_probs = lp_fixed + 0.3 * torch.randn(lp_fixed.shape, generator=g)  # ratios != 1: clipping active
    b.ref_log_probs = lp_fixed + 0.3 * torch.randn(lp_fixed.shape, generator=g)
    # A rollout engine whose log-probs differ: rollout IS at token level with token-mean, at sequence level with
    # seq-mean-token-mean; the expected clip fractions (tokens / rows over the batch) and log-prob distances
    # (to this model's log-probs) computed here directly from the batch.
    b.rollout_log_probs = torch.where(mask, lp_fixed + 0.3 * torch.randn(lp_fixed.shape, generator=g), 0.0)
    log_w = torch.where(mask, b.old_log_probs - b.rollout_log_probs, 0.0)
    result["expected_is_clipfrac"] = {"token-mean": (log_w > math.log(1.2))[mask].float().mean().item(),
                                      "seq-mean-token-mean": (log_w.sum(-1) > math.log(2.0)).float().mean().item()}
    diff = (lp_fixed - b.rollout_log_probs)[mask].abs()
    result["expected_logprob_diff"] = (diff.mean().item(), diff.max().item())
    params = [p for chunk in model.chunks for p in chunk.parameters()]
    for mode in ("token-mean", "seq-mean-token-mean"):
        level, threshold = ("token", 1.2) if mode == "token-mean" else ("sequence", 2.0)
        rl = RLConfig(entropy_coeff=0.01, use_kl_loss=True, kl_coef=0.1, loss_agg_mode=mode,
                      rollout_is=RolloutISConfig(enable=True, level=level, threshold=threshold))
        m_fixed = fixed.update(b, rl)
        result[f"{mode}_is_clipfrac"] = m_fixed["actor/rollout_is_clipfrac"]
        result[f"{mode}_logprob_diff"] = (m_fixed["rollout/logprob_diff_mean"], m_fixed["rollout/logprob_diff_max"])
        g_fixed = [p.main_grad.clone() for p in params]
        result[f"{mode}_pg_loss"] = m_fixed["actor/pg_loss"]
        result[f"{mode}_grad_scale"] = max(a.abs().max().item() for a in g_fixed)
        for name, worker in (("padded", padded), ("packed", packed)):
            m_budget = worker.update(b, rl)
            g_budget = [p.main_grad.clone() for p in params]
            # pg_loss / kl_loss metrics are per-micro-batch shares of the global loss averaged by tokens, so
            # they depend on the split by construction; the loss itself is compared through its gradient.
            result[f"{name}_{mode}_metrics"] = {k: abs(m_fixed[k] - m_budget[k]) for k in m_fixed
                                                if k not in ("actor/pg_loss", "actor/kl_loss")}
            result[f"{name}_{mode}_grad"] = max((a - c).abs().max().item() for a, c in zip(g_fixed, g_budget))
    if tp == 2:  # sequence parallelism: packed sequences padded to a multiple of TP with an extra sequence
        model = build_policy(PolicySpec(hf=HF, layout=ParallelLayout(tp=tp, sequence_parallel=True), dtype="fp32",
                                        seed=1234, overrides={"init_method_std": 0.2}), backend,
                             optim=OptimConfig(lr=0.0, clip_grad=1e9))
        params = [p for chunk in model.chunks for p in chunk.parameters()]
        packed = PolicyWorker(model, micro_batch_size=3, temperature=0.9, max_tokens_per_micro_batch=96)
        padded = PolicyWorker(model, micro_batch_size=3, temperature=0.9, max_tokens_per_micro_batch=96)
        padded.pack = False
        result["sp_packed_lengths"] = [mb["tokens"].shape[1] for mb in packed._micro_batches(b)]
        result["sp_logp"] = (padded.log_probs(b) - packed.log_probs(b))[mask].abs().max().item()
        rl = RLConfig(entropy_coeff=0.01, use_kl_loss=True, kl_coef=0.1)
        padded.update(b, rl)
        g_padded = [p.main_grad.clone() for p in params]
        packed.update(b, rl)
        result["sp_grad"] = max((a - p.main_grad).abs().max().item() for a, p in zip(g_padded, params))
        result["sp_grad_scale"] = max(a.abs().max().item() for a in g_padded)
    torch.save(result, out / f"tp{tp}_rank{torch.distributed.get_rank()}.pt")
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import run_at_tp1_then_tp2

    run_at_tp1_then_tp2(run)
