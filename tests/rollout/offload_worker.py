"""Training-state offload around a rollout with its own weights (a built-in copy in bf16 from an fp32
actor; the runner drives every engine alike, vLLM included); driven by test_offload.py.

    python tests/rollout/offload_worker.py --out DIR

One process, world size 1, a tiny Qwen2 with megatron DDP + Adam. Two passes from the same initial
weights, without and with `TrainStateOffload`: 3 x (update, weights_updated, generate), then one more
update (it uses the Adam moments that went to the host and back). Writes DIR/result.pt: per pass the
losses, the final canonical weights and Adam moments, the engine's call record (with "offload" /
"reload" events inserted), and what each offload moved.
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


def run_pass(offload: bool) -> dict:
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.offload import TrainStateOffload
    from mindrl.config import GenerateConfig
    from mindrl.rollout import SamplingParams, build_rollout
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import OptimConfig, forward_backward, next_token_loss_forward
    from tests.checkpoint.tiny import tiny_config
    from tests.conftest import shared_path

    backend = get_backend("cpu")
    hf = tiny_config(shared_path("models"), "qwen2")
    model = build_policy(PolicySpec(hf=hf, dtype="fp32", seed=1234), backend, optim=OptimConfig(lr=1e-2))
    class Record:
        calls: list = []
        violations: list = []

    rec = Record()
    rec.calls, rec.violations = [], []
    moved: list[dict] = []

    class Recording(TrainStateOffload):
        def offload(self) -> None:
            before = {id(v): v.data_ptr() for _, _, v in self._slots()}
            rec.calls.append(("offload",))
            super().offload()
            after = list(self._slots())
            moved.append({"tensors": len(self.moved), "bytes": self.offloaded_bytes,
                          "grad_buffers_freed": len(self.freed),
                          "grad_storage_now": sum(g.untyped_storage().size() for g in self._grad_buffers()),
                          "all_new_storage": all(v.data_ptr() not in before.values() for _, _, v in after)})

        def reload(self) -> None:
            super().reload()
            rec.calls.append(("reload",))

    state = Recording(backend, model.chunks, model.optimizer) if offload else None
    gen = GenerateConfig(engine="builtin", dtype="bfloat16", infer_tensor_parallel_size=1, max_num_seqs=64,
                         max_model_len=512, weight_bucket_mb=0.05, offload_train_state=offload)
    runner = build_rollout(gen, plan=model.plan, actor_chunks=model.chunks, tokenizer=None,
                           core_attention=backend.core_attention_cls(), seed=1234, use_cpu_initialization=True,
                           train_state=state)
    engine = runner.engine

    def recorded(name: str, fn, what=lambda *a, **k: ()):
        def call(*args, **kwargs):
            rec.calls.append((name, *what(*args, **kwargs)))
            return fn(*args, **kwargs)
        return call

    engine.wake_up = recorded("wake_up", engine.wake_up, lambda tags=None: (tuple(tags or ()),))
    engine.load_weights = recorded("load_weights", engine.load_weights)
    engine.generate = recorded("generate", engine.generate, lambda prompts, *a, **k: (len(prompts),))
    engine.sleep = recorded("sleep", engine.sleep)
    vocab = model.plan.vocab_size
    losses = []

    def update(i: int) -> None:
        g = torch.Generator().manual_seed(100 + i)
        tokens = torch.randint(0, vocab, (2, 9), generator=g)
        for chunk in model.chunks:
            chunk.train()
        out = forward_backward(model, [{"tokens": tokens[:, :-1], "labels": tokens[:, 1:]}],
                               next_token_loss_forward(vocab))
        losses.append([float(v) if not isinstance(v, dict) else {k: float(x) for k, x in v.items()} for v in out])
        ok, grad_norm, _ = model.optimizer.step()
        assert ok
        losses.append(float(grad_norm))

    params = SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=11)
    for i in range(3):
        update(i)
        runner.weights_updated()
        runner.generate([[3, 4, 5], [6, 7]], params)
    update(3)
    weights = {n: p.detach().clone() for c in model.unwrapped for n, p in c.named_parameters()}
    inner = model.optimizer.optimizer
    moments = {f"{i}.{k}": v.clone() for i, s in enumerate(inner.state.values()) for k, v in s.items()
               if isinstance(v, torch.Tensor)}
    record = {"calls": list(rec.calls), "violations": list(rec.violations)}
    ps.destroy_model_parallel()
    return {"losses": losses, "weights": weights, "moments": moments, "record": record, "moved": moved,
            "shared": runner.shared}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    result = {"plain": run_pass(offload=False), "offload": run_pass(offload=True)}
    torch.save(result, Path(args.out) / "result.pt")


if __name__ == "__main__":
    main()
