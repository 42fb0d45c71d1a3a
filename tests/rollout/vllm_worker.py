"""The trainer's vLLM rollout (build_rollout -> RolloutRunner -> the real vLLM engine, in-process) against
independent references; driven by test_vllm_engine.py.

    python tests/rollout/vllm_worker.py --job JOB.json --nproc N --out DIR

JOB.json: {"arch" (qwen2 | deepseek_v3), "tp", "ep" (training layout), "rollout_tp", "rollout_ep",
optional "ascend_standin" (install tests/rollout/ascend_standin.py first; each step then also records its
`snapshot`, and at the end a push the old way, `model.load_weights` into the live model, is tried),
optional "v023_hooks" (vLLM 0.23's push hooks around the engine; before the second push, vllm-ascend 0.23's
wake-up transpose of the MoE weights and the adapter's hook after it; at the end a stale W_UV must fail their
check, and a push after the wake-up transpose without the hook must fail), optional
"lora": {"merge": bool} (a LoRA actor, rank 8 on all seven targets, B non-zero; the second push follows one
Adam step of the adapters instead of noise; the HF reference is then `peft`: the unmerged base from
`iter_hf_buckets(merge_lora=False)` + mindrl's PEFT export, loaded with `PeftModel.from_pretrained`;
merge=false pushes the adapter as a vLLM LoRA)}.
A tiny random model with head sizes vLLM's CPU kernels run (head_dim 64; MLA latent 512 + rope 64).
Per rank, DIR/rank{R}.pt holds, for the first push and again after the actor's weights changed (a second
push): the vLLM greedy tokens and HF transformers' greedy tokens from the same weights (the actor's,
gathered as an HF checkpoint and loaded with `from_pretrained`), and the max |vLLM log-prob - the
training forward's log-prob| of sampled tokens (temperature 0.8, fp32).
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PROMPTS = [[5, 17, 33, 99, 4], [7, 8, 9], [300, 2, 41, 41, 900, 11, 3], [12]]


def tiny_vllm_config(arch: str) -> dict:
    from mindrl.models import load_hf_config, scale_down
    from tests.checkpoint.tiny import MODEL_DIRS
    from tests.conftest import shared_path

    cfg = scale_down(load_hf_config(shared_path("models") / MODEL_DIRS[arch]), num_layers=2, hidden_size=256,
                     num_heads=4, num_kv_heads=2, intermediate_size=256, vocab_size=1003, first_k_dense=1)
    cfg.update(bos_token_id=1, eos_token_id=2)
    if arch == "deepseek_v3":  # vLLM's CPU MLA kernel runs only a 576-wide latent (kv_lora_rank 512 + rope 64)
        cfg.update(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=32, v_head_dim=32, q_lora_rank=64)
    return cfg


def hf_reference(chunks, hf: dict, directory: str):
    """The actor's weights as an HF checkpoint (collective), loaded by transformers."""
    import safetensors.torch
    import transformers

    from mindrl.checkpoint.live import iter_hf_buckets
    from mindrl.rollout.vllm_support import vllm_hf_config, write_hf_config

    state = {n: t.clone() for bucket in iter_hf_buckets(chunks, hf, 1 << 20) for n, t in bucket}
    write_hf_config(vllm_hf_config(hf, "float32"), directory)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(directory,
                                                                                             "model.safetensors"))
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def peft_reference(chunks, hf: dict, spec, directory: str):
    """The LoRA actor as `peft` runs it (collective): its unmerged base as an HF checkpoint, loaded by
    transformers, with mindrl's PEFT export of its adapters loaded by `PeftModel.from_pretrained`."""
    import peft
    import safetensors.torch
    import transformers

    from mindrl.checkpoint.live import iter_hf_buckets
    from mindrl.checkpoint.lora_io import write_peft_adapter
    from mindrl.models.lora import gather_canonical_adapters
    from mindrl.rollout.vllm_support import vllm_hf_config, write_hf_config

    state = {n: t.clone() for bucket in iter_hf_buckets(chunks, hf, 1 << 20, merge_lora=False) for n, t in bucket}
    adapters, _ = gather_canonical_adapters(chunks)
    write_hf_config(vllm_hf_config(hf, "float32"), directory)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(directory,
                                                                                             "model.safetensors"))
    write_peft_adapter(os.path.join(directory, "adapter"), spec, adapters, hf)
    base = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return peft.PeftModel.from_pretrained(base, os.path.join(directory, "adapter")).eval()


def lora_train_step(model, vocab: int) -> None:
    """One Adam step of the adapters on a fixed random batch (the same on every rank)."""
    from mindrl.workers.megatron_engine import forward_backward, next_token_loss_forward

    tokens = torch.randint(3, vocab, (2, 17), generator=torch.Generator().manual_seed(5))
    for chunk in model.chunks:
        chunk.train()
    forward_backward(model, [{"tokens": tokens[:, :-1], "labels": tokens[:, 1:]}], next_token_loss_forward(vocab))
    ok, _, _ = model.optimizer.step()
    assert ok


def hf_greedy(model, max_tokens: int) -> list[list[int]]:
    out = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = model.generate(torch.tensor([p]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
            out.append(ids[0, len(p):].tolist())
    return out


def ascend_standin_names(hf: dict):
    first = int(hf.get("first_k_dense_replace", 0))
    yield f"model.layers.{first}.mlp.experts.0.gate_proj.weight"


def wake_up_transpose(model) -> None:
    """What vllm-ascend 0.23's `NPUWorker.wake_up` does to unquantized MoE weights (worker/worker.py:251-270):
    each `w13_weight` / `w2_weight` re-registered as its transpose(1, 2) view, without its hidden-size
    conditions (they pick vllm-ascend's layout; this is vLLM-CPU's)."""
    for module in model.modules():
        for name in ("w13_weight", "w2_weight"):
            param = module._parameters.get(name)
            if param is not None and param.dim() == 3:
                module.register_parameter(name, torch.nn.Parameter(param.data.transpose(1, 2), requires_grad=False))


def stale_absorbed_copy(model) -> None:
    """What a push that skips MLA's post-load processing leaves: W_UV no longer what kv_b_proj implies."""
    from mindrl.rollout.vllm_push_v023 import _absorbed_owners

    owner = next(o for m in model.modules() for o in _absorbed_owners(m))
    owner.W_UV = owner.W_UV + 1.0


def rank_main(job: dict) -> None:
    warnings.filterwarnings("ignore")
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ.get("MINDRL_HANG_DUMP_S", "500")), exit=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tiny model needs far less
    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.config import GenerateConfig
    from mindrl.models import ParallelLayout
    from mindrl.rollout import SamplingParams, build_rollout
    from mindrl.workers.bringup import PolicySpec, build_policy
    from tests.rollout.rollout_worker import trainer_log_probs

    from mindrl.models.lora import LoRASpec, gather_canonical_adapters, load_adapters
    from mindrl.workers.megatron_engine import OptimConfig

    backend = get_backend("cpu")
    hf = tiny_vllm_config(job["arch"])
    lora_job = job.get("lora")
    lora = LoRASpec(rank=8, alpha=16.0) if lora_job else None
    model = build_policy(PolicySpec(hf=hf, layout=ParallelLayout(tp=job["tp"], ep=job["ep"]), dtype="fp32", seed=1234,
                                    make_vocab_size_divisible_by=1, overrides={"init_method_std": 0.1}, lora=lora),
                         backend, train=lora is not None, optim=OptimConfig(lr=0.05, clip_grad=0.0))
    if lora is not None:  # non-zero B (the same on every rank), so the adapters change what is generated
        adapters, _ = gather_canonical_adapters(model.unwrapped)
        g = torch.Generator().manual_seed(11)
        load_adapters(model.unwrapped, {k: v if k.endswith("lora_A") else torch.randn(v.shape, generator=g) * 0.1
                                        for k, v in sorted(adapters.items())})
    plan = model.plan
    rank = torch.distributed.get_rank()
    gen = GenerateConfig(engine="vllm", infer_tensor_parallel_size=job["rollout_tp"],
                         infer_expert_parallel_size=job["rollout_ep"], max_model_len=64, max_num_seqs=16,
                         gpu_memory_utilization=0.05, weight_bucket_mb=0.5)
    if job.get("ascend_standin"):
        from tests.rollout import ascend_standin

        ascend_standin.install()
    if job.get("v023_hooks"):  # vLLM 0.23's push hooks (mindrl/rollout/vllm_push_v023.py) around this engine
        import mindrl.rollout.vllm_engine as vllm_engine
        from mindrl.rollout.vllm_push_v023 import V023PushHooks

        vllm_engine.push_hooks = lambda: V023PushHooks()
    runner = build_rollout(gen, plan=plan, actor_chunks=model.chunks, tokenizer=None,
                           core_attention=backend.core_attention_cls(), seed=1234, use_cpu_initialization=True,
                           lora_adapter=lora if lora_job and not lora_job["merge"] else None)
    result: dict = {"replica": (runner.replica, runner.num_replicas), "steps": []}
    if job.get("generate_before_push"):  # vLLM on its dummy weights, before any push (diagnosis)
        result["before_push"] = [o.token_ids for o in runner.engine.generate(PROMPTS, SamplingParams(max_tokens=4))]
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=8, seed=3, ignore_eos=True)  # as HF, eos_token_id=None
    sampled = SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=7)
    for step in range(2):
        if step and lora is not None:  # new adapters: one optimizer step
            lora_train_step(model, plan.vocab_size)
            runner.weights_updated()
        elif step:  # new weights in the actor (replicated tensors get the same noise on every rank)
            g = torch.Generator().manual_seed(99)
            with torch.no_grad():
                for c in model.unwrapped:
                    for _, p in c.named_parameters():
                        p.add_(torch.randn(p.shape, generator=g) * 0.05)
            runner.weights_updated()
            if job.get("v023_hooks"):  # a wake-up of the weights as on vllm-ascend 0.23, then the adapter's hook
                runner.engine.llm.apply_model(wake_up_transpose)
                runner.engine.hooks.after_wake_up(runner.engine.llm, ["weights"])
        tokens = [o.token_ids for o in runner.generate(PROMPTS, greedy)]
        outs = runner.generate(PROMPTS, sampled)
        ref = trainer_log_probs(model, outs, 0.8, plan.vocab_size)
        diff = max((torch.tensor(o.logprobs) - r).abs().max().item() for o, r in zip(outs, ref))
        with tempfile.TemporaryDirectory() as d:
            reference = (hf_reference(model.unwrapped, plan.hf, d) if lora is None
                         else peft_reference(model.unwrapped, plan.hf, lora, d))
            hf_tokens = hf_greedy(reference, 8)
        result["steps"].append({"vllm": tokens, "hf": hf_tokens, "logprob_diff": diff, "pushes": runner.pushes,
                                "sampled": [o.token_ids for o in outs], "push": dict(runner.last_push)})
        if lora is not None:
            engine = runner.engine
            request = engine.lora_request
            result["steps"][-1]["lora"] = {
                "id": None if request is None else request.lora_int_id,
                "loaded": sorted(engine.llm.llm_engine.list_loras()) if engine.lora_spec is not None else [],
                "adapter_bytes": sum(t.numel() * t.element_size()
                                     for t in gather_canonical_adapters(model.unwrapped)[0].values())}
        if job.get("ascend_standin"):
            result["steps"][-1]["standin"] = runner.engine.llm.apply_model(ascend_standin.snapshot)[0]
    if job.get("ascend_standin"):  # the old adapter's push: straight into the live model
        name = next(n for n in ascend_standin_names(plan.hf))
        weight = torch.zeros(int(plan.hf["moe_intermediate_size"]), int(plan.hf["hidden_size"]))
        try:
            runner.engine.llm.apply_model(lambda m: m.load_weights([(name, weight)]))
            result["legacy_push"] = "ok"
        except Exception as e:  # noqa: BLE001 - the error is the result
            result["legacy_push"] = f"{type(e).__name__}: {e}"
    if job.get("v023_hooks"):  # the hooks' MLA check passed on every push above; a stale copy must fail it
        runner.engine.llm.apply_model(stale_absorbed_copy)
        try:
            runner.engine.hooks.after_update(runner.engine.llm)
            result["stale_check"] = "passed"
        except RuntimeError as e:
            result["stale_check"] = str(e)
        torch.save(result, Path(job["out"]) / f"rank{rank}.pt")
        runner.engine.llm.apply_model(wake_up_transpose)  # the same wake-up without the hook: the push fails
        runner.weights_updated()
        try:
            runner.push_weights()
            result["push_after_unrestored_wake_up"] = "ok"
        except Exception as e:  # noqa: BLE001 - the error is the result
            result["push_after_unrestored_wake_up"] = f"{type(e).__name__}: {e}"
    torch.save(result, Path(job["out"]) / f"rank{rank}.pt")
    runner.close()
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import spawn_job

    spawn_job(rank_main)
