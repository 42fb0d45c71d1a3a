"""Read megatron's own per-rank plan off simulated ranks and compare it with `plan_ranks`.

    python tests/plan/rank_plan_worker.py JOBS.json

JOBS.json: a list of {"name", "hf" (config.json fields), "layout" (ParallelLayout fields), "world",
"ranks"}. For each rank, the model is built by megatron-core on that simulated rank of the world
(`mindrl.plan.world.simulated_rank`: fake process group, FakeTensorMode; nothing allocated) and
`shard_specs` plus the local shapes of the live modules are compared with the rank's entry of
`plan_ranks` (computed without processes, what tools/convert_ckpt.py writes and reads rank files by).
Prints one JSON object: name -> {"rank N": [mismatches...], ...} and "compared": tensors compared.
A process of its own: the simulated rank's CPU adaptations are process-wide.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(jobs_path: str) -> None:
    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state as ps

    from mindrl.backends.attention import SDPACoreAttention
    from mindrl.checkpoint.hf_mapping import Mapping
    from mindrl.models import ParallelLayout, build_model, plan_model
    from mindrl.models.layout import plan_ranks
    from mindrl.plan.world import simulated_rank
    from tests.checkpoint.logits_worker import plan_mismatches

    out: dict = {"compared": 0}
    for job in json.loads(Path(jobs_path).read_text()):
        result = out.setdefault(job["name"], {})
        m = Mapping(job["hf"])
        for rank in job["ranks"]:
            layout = ParallelLayout(**job["layout"])
            # perform_initialization: megatron sets a weight's TP attributes (`tensor_model_parallel`,
            # `partition_dim`) only when it initialises it (tensor_parallel/layers.py); on fake tensors it
            # costs nothing.
            plan = plan_model(job["hf"], layout, dtype="bf16", use_cpu_initialization=True,
                              perform_initialization=True)
            assert len(plan_ranks(m, plan.layout, plan.padded_vocab_size)) == layout.tp * layout.pp * layout.ep
            with simulated_rank(rank, job["world"], tp=layout.tp, pp=layout.pp, ep=layout.ep,
                                vpp=plan.config.virtual_pipeline_model_parallel_size):
                chunks = build_model(plan, SDPACoreAttention)
                where = (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                         ps.get_expert_model_parallel_rank())
                result[f"rank {rank} (tp, pp, ep) = {where}"] = plan_mismatches(chunks, plan, m)
                out["compared"] += sum(1 for c in chunks for k, v in c.state_dict().items()
                                       if v is not None and not k.endswith("_extra_state"))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
