"""Drive the vLLM adapter through the trainer's path (`build_rollout` -> `RolloutRunner`) with the
recording stand-in of vllm_standin.py in place of vllm; driven by test_vllm_contract.py.

    python tests/rollout/vllm_contract_worker.py --out DIR [--arch qwen2,llama,deepseek_v3]

One process, world size 1, one tiny megatron model per architecture. Three steps: generate,
weights_updated + generate, generate. Writes DIR/{arch}.pt with the stand-in's record.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="qwen2,llama,deepseek_v3")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from tests.rollout import vllm_standin

    vllm_standin.install()
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.config import GenerateConfig
    from mindrl.rollout import SamplingParams, build_rollout
    from mindrl.workers.bringup import PolicySpec, build_policy
    from tests.checkpoint.tiny import tiny_config
    from tests.conftest import shared_path

    backend = get_backend("cpu")
    for arch in args.arch.split(","):
        hf = tiny_config(shared_path("models"), arch)
        model = build_policy(PolicySpec(hf=hf, dtype="fp32", seed=1234), backend, train=False)
        plan = model.plan
        rec = vllm_standin.RECORD
        rec.__init__()  # fresh record per architecture
        gen = GenerateConfig(engine="vllm", infer_tensor_parallel_size=1, max_num_seqs=64, max_model_len=512,
                             gpu_memory_utilization=0.5, weight_bucket_mb=0.05)
        runner = build_rollout(gen, plan=plan, actor_chunks=model.chunks, tokenizer=None,
                               core_attention=backend.core_attention_cls(), seed=1234, use_cpu_initialization=True)
        params = SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=11)
        prompts = [[3, 4, 5], [6, 7]]
        outs = [runner.generate(prompts, params)]
        runner.weights_updated()
        outs.append(runner.generate(prompts, params))
        outs.append(runner.generate(prompts, params))  # no update since: no push
        record = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
        record["pushed"] = [dict(c) for c in rec.pushed]  # asdict would count a Counter's items
        torch.save({"record": record, "hf": hf, "shared": runner.shared,
                    "outputs": [[(o.prompt_index, o.sample_index, o.token_ids) for o in step] for step in outs]},
                   Path(args.out) / f"{arch}.pt")
        ps.destroy_model_parallel()


if __name__ == "__main__":
    main()
