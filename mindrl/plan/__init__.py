"""Per-device memory of every phase of a GRPO job, before it launches: `python -m mindrl.plan`.

Owns: simulating one rank of a job in this process (`world.py`: torch's fake process group,
megatron's real parallel state, FakeTensorMode), counting that rank's weights, grads, fp32 main
params and optimizer states on the real megatron-core objects the trainer builds (`states.py`),
measuring one micro-batch's activations through the real model with torch's MemTracker
(`activations.py`; `attention.py`: the flash-style kernel memory of accelerator jobs), building the
training stages and the rollout rank (`ranks.py`), the per-phase tables (`phases.py`), the device
table (`devices.py`), text output (`report.py`), the layout search of `--suggest` (`suggest.py`) and its
crude step cost (`cost.py`), the CLI (`__main__.py`) and validate()'s memory check
(`check.py`, passed to `mindrl.config.validate(cfg, memory_check=...)`; config never imports plan).
May import: mindrl.backends (the CPU adaptations, attention kernels), mindrl.models, mindrl.config,
mindrl.workers (the trainer's own `PolicySpec`, `optim_config`, `setup_model`, forward code).
Nothing but cli/ imports it.
"""
