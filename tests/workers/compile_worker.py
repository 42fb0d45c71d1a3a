"""The compiled transformer layers (`actor_config.use_torch_compile`) against the eager ones on one tiny
Qwen2 model, one rank: log-probs (actor in train mode, frozen reference in eval mode), loss metrics and
gradients of an update, fixed and packed micro-batches; determinism (the same call twice) and the
resume case (a batch of another length gives the same bits whether or not the process compiled for
an earlier length). Driven by test_compiled_forward.py.

    python tests/workers/compile_worker.py --out DIR      # writes DIR/result.pt
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
from tests.workers.microbatch_worker import HF, VOCAB  # noqa: E402  (the same tiny Qwen2)


def batch(seed: int, rows: int, responses: list[int]):
    from mindrl.workers.actor import build_sequence_batch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, VOCAB, (int(n),), generator=g).tolist() for n in torch.randint(4, 12, (rows,), generator=g)]
    resp = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in responses]
    b = build_sequence_batch(prompts, resp, torch.randn(rows, generator=g))
    return b, g


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    warnings.filterwarnings("ignore")
    from torch._dynamo.utils import counters

    from mindrl.backends import get_backend
    from mindrl.config.schema import RLConfig
    from mindrl.workers.actor import PolicyWorker
    from mindrl.workers.bringup import PolicySpec, build_policy, frozen_copy
    from mindrl.workers.megatron_engine import OptimConfig

    backend = get_backend("cpu")
    torch.set_num_threads(1)
    # lr 0: every update sees the same weights; no clipping (compare raw gradients).
    model = build_policy(PolicySpec(hf=HF, dtype="fp32", seed=1234, overrides={"init_method_std": 0.2}), backend,
                         optim=OptimConfig(lr=0.0, clip_grad=1e9))
    reference = frozen_copy(model, backend)
    params = [q for chunk in model.chunks for q in chunk.parameters()]
    res: dict = {}

    def workers(m, **kw):
        return (PolicyWorker(m, micro_batch_size=4, temperature=0.9, **kw),
                PolicyWorker(m, micro_batch_size=4, temperature=0.9, use_torch_compile=True, **kw))

    def update(worker, b, rl):
        metrics = worker.update(b, rl)
        return metrics, [q.main_grad.clone() for q in params]

    rl = RLConfig(entropy_coeff=0.01, use_kl_loss=True, kl_coef=0.1)
    b, g = batch(0, 12, [3, 9, 5, 4, 21, 3, 2, 6, 17, 4, 3, 1])
    mask = b.response_mask
    for name, m, kw in (("fixed", model, {}), ("packed", model, {"max_tokens_per_micro_batch": 64}),
                        ("reference", reference, {})):
        eager, compiled = workers(m, **kw)
        lp_e = eager.log_probs(b)
        lp_c = compiled.log_probs(b)
        res[f"{name}_logp_mean"] = lp_e[mask].mean().item()
        res[f"{name}_logp"] = (lp_e - lp_c)[mask].abs().max().item()
        res[f"{name}_logp_deterministic"] = torch.equal(lp_c, compiled.log_probs(b))
        res[f"{name}_logp_off_response"] = lp_c[~mask].abs().max().item()
        # The eager worker on the same modules stays eager (the compiled call is scoped to its worker's calls).
        res[f"{name}_eager_after"] = torch.equal(lp_e, eager.log_probs(b))
        if name == "reference":
            continue
        b.old_log_probs = lp_e + 0.3 * torch.randn(lp_e.shape, generator=g)  # ratios != 1: clipping active
        b.ref_log_probs = lp_e + 0.3 * torch.randn(lp_e.shape, generator=g)
        m_e, g_e = update(eager, b, rl)
        m_c, g_c = update(compiled, b, rl)
        m_c2, g_c2 = update(compiled, b, rl)
        res[f"{name}_grad_scale"] = max(a.abs().max().item() for a in g_e)
        res[f"{name}_grad"] = max((a - c).abs().max().item() for a, c in zip(g_e, g_c))
        res[f"{name}_metrics"] = {k: abs(m_e[k] - m_c[k]) for k in m_e}
        res[f"{name}_metric_values"] = m_e
        res[f"{name}_update_deterministic"] = m_c == m_c2 and all(torch.equal(a, c) for a, c in zip(g_c, g_c2))
        b.old_log_probs = b.ref_log_probs = None
    res["graph_breaks"] = sum(counters["graph_break"].values())
    res["unique_graphs"] = counters["stats"]["unique_graphs"]

    # Resume: a batch of another length after the process compiled for the first one, against the same
    # batch in a process state that never saw another length (dynamo's caches reset).
    b2, g2 = batch(5, 8, [7, 30, 2, 11, 4, 25, 9, 3])
    _, compiled = workers(model)
    b2.old_log_probs = compiled.log_probs(b2)
    after, g_after = update(compiled, b2, rl)
    torch._dynamo.reset()
    _, fresh = workers(model)
    lp_fresh = fresh.log_probs(b2)
    fresh_m, g_fresh = update(fresh, b2, rl)
    res["resume_logp_equal"] = torch.equal(b2.old_log_probs, lp_fresh)
    res["resume_update_equal"] = after == fresh_m and all(torch.equal(a, c) for a, c in zip(g_after, g_fresh))
    torch.save(res, out / "result.pt")


if __name__ == "__main__":
    main()
