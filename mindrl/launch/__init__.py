"""Launching ranks across machines with Ray: the driver, the rank actors and the per-node logic.

Owns: connecting to a Ray cluster, one STRICT_PACK placement group per node (one bundle per device,
the backend's Ray resource), one rank actor per bundle running the same SPMD `train(cfg)` as the
spawn and torchrun paths, failure handling (stop every rank, name the failed one), and the node
roles behind examples/grpo/*.sh (`python -m mindrl.launch.ray_node`).
May import: backends, config, trainer (the rank actor calls `train`), utils. Ray is imported only
inside functions, so a single box never needs it.
"""
