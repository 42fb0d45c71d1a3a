"""Backend selection and the hardware facts each backend owns."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from mindrl.backends import BACKENDS, Backend, detect_backend, get_backend
from mindrl.backends.npu import INSTALL_HINT, NpuBackend


def test_registry_and_facts():
    table = {name: (b.device_type, b.dist_backend, b.visible_devices_env, b.ray_resource)
             for name, b in ((n, get_backend(n)) for n in BACKENDS)}
    assert table == {
        "cuda": ("cuda", "nccl", "CUDA_VISIBLE_DEVICES", "GPU"),
        "npu": ("npu", "hccl", "ASCEND_RT_VISIBLE_DEVICES", "NPU"),
        "cpu": ("cpu", "gloo", None, "mindrl_cpu"),
    }
    for name in BACKENDS:
        assert isinstance(get_backend(name), Backend)


def test_cpu_ranks_are_not_tied_to_devices(monkeypatch):
    """CPU ranks are processes (any count per node); an accelerator counts its devices."""
    assert get_backend("cpu").local_device_count() is None
    cuda = get_backend("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert cuda.local_device_count() == 8


def test_auto_detects_cpu_here(monkeypatch):
    monkeypatch.delenv("MINDRL_BACKEND", raising=False)
    if torch.cuda.is_available() or importlib.util.find_spec("torch_npu"):
        pytest.skip("this machine has an accelerator")
    assert detect_backend() == "cpu"
    assert get_backend("auto").name == "cpu"
    monkeypatch.setenv("MINDRL_BACKEND", "npu")
    assert detect_backend() == "npu"


def test_unknown_backend_names_choices():
    with pytest.raises(ValueError, match=r"backend: unknown value 'tpu'; expected one of auto, cuda, npu, cpu"):
        get_backend("tpu")


def test_npu_without_torch_npu_fails_clearly():
    if importlib.util.find_spec("torch_npu"):
        pytest.skip("torch_npu is installed")
    npu = NpuBackend()
    assert NpuBackend.is_available() is False
    with pytest.raises(ImportError) as err:
        npu.setup_process(0)
    assert "torch_npu" in str(err.value) and "docs/install.md" in str(err.value)
    assert INSTALL_HINT in str(err.value)


def test_cuda_without_gpu_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(RuntimeError, match="torch.cuda.is_available\\(\\) is False"):
        get_backend("cuda").setup_process(0)


def test_visible_devices_env(monkeypatch):
    npu = get_backend("npu")
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "2, 3")
    assert npu.visible_devices() == ["2", "3"]
    env = npu.set_visible_devices([4, 5], env={})
    assert env == {"ASCEND_RT_VISIBLE_DEVICES": "4,5"}
    assert get_backend("cpu").set_visible_devices([1], env={}) == {}


def test_hardware_decides_auto_dtype_and_host_initialisation():
    """`auto` is fp32 on the CPU whatever the checkpoint; on accelerators a half-precision checkpoint
    stays bf16. An explicit dtype always wins."""
    cpu, cuda, npu = get_backend("cpu"), get_backend("cuda"), get_backend("npu")
    assert cpu.model_dtype("auto", "bfloat16") == "fp32" and cpu.model_dtype("bf16", None) == "bf16"
    for acc in (cuda, npu):
        assert acc.model_dtype("auto", "bfloat16") == acc.model_dtype("auto", "float16") == "bf16"
        assert acc.model_dtype("auto", "float32") == acc.model_dtype("auto", None) == "fp32"
        assert acc.model_dtype("fp32", "bfloat16") == "fp32"
    assert (cpu.use_cpu_initialization, cuda.use_cpu_initialization, npu.use_cpu_initialization) == (True, False, False)


def test_importing_mindrl_does_not_patch_torch():
    """Only setup_process() adapts megatron; a plain import leaves torch.cuda alone."""
    code = "import mindrl.backends, mindrl.models, torch; torch.cuda.current_device()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and ("CUDA" in proc.stderr or "cuda" in proc.stderr)
