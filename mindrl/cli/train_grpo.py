"""Train with GRPO: `python -m mindrl.cli.train_grpo --config-name <recipe> [key=value ...]`.

    python -m mindrl.cli.train_grpo --config-name grpo_tiny_cpu
    python -m mindrl.cli.train_grpo --config-name grpo_qwen25_7b_deepscaler actor_config.lr=5e-7
    python -m mindrl.cli.train_grpo --launcher ray --ray-address 10.0.0.1:6379 --config-name ...

Recipes are YAML files under configs/ (Hydra); any key can be overridden as `section.key=value`.
The config is validated before any process starts. Rerunning the same command with the same
`megatron_training.output_dir` resumes from its last checkpoint.

Launchers (`--launcher`, default auto):
  torchrun  RANK/WORLD_SIZE in the environment: this process is one rank.
  spawn     `rl_config.actor_resource.num_npus` local processes (one machine; no Ray needed).
  ray       one rank actor per device of a running Ray cluster (auto when --ray-address or
            RAY_ADDRESS is given). Per-node scripts: examples/grpo/*.sh, docs/multinode.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from mindrl.config import ConfigError, check_config, load_config


def _rank_main(cfg) -> None:  # noqa: ANN001 - a MindRLConfig, kept picklable for spawn
    warnings.filterwarnings("ignore")
    logging.getLogger("megatron").setLevel(logging.ERROR)
    from mindrl.trainer.train import train

    train(cfg)


def _launcher(args: argparse.Namespace) -> str:
    if args.launcher != "auto":
        return args.launcher
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "torchrun"
    return "ray" if (args.ray_address or os.environ.get("RAY_ADDRESS")) else "spawn"


def _memory_check(cfg, args: argparse.Namespace):  # noqa: ANN001, ANN202
    """validate()'s memory check when the device memory is known: --device / --device-gb, else the
    backend's visible device (none on the cpu backend: no check)."""
    from mindrl.plan.check import MemoryCheck
    from mindrl.plan.devices import device_bytes, local_device_bytes

    capacity = device_bytes(args.device, args.device_gb)
    if capacity is None:
        capacity = local_device_bytes(cfg.backend)
    return MemoryCheck(capacity, device=args.device) if capacity else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindrl.cli.train_grpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-name", default="grpo_tiny_cpu", help="recipe under configs/ (default: %(default)s)")
    p.add_argument("--config-dir", default=None, help="directory of recipes (default: the repo's configs/)")
    p.add_argument("--launcher", choices=("auto", "torchrun", "spawn", "ray"), default="auto")
    p.add_argument("--ray-address", default=None, help="Ray cluster address host:port (default: RAY_ADDRESS)")
    p.add_argument("--nnodes", type=int, default=None,
                   help="ray: wait until this many nodes joined (rl_config.launcher.node_join_timeout_s)")
    p.add_argument("--devices-per-node", type=int, default=None,
                   help="ray: devices per node (default: the largest per-node count in the cluster)")
    p.add_argument("--device", default=None,
                   help="device kind for the memory check (python -m mindrl.plan --help lists them; default: the "
                        "backend's device when one is visible)")
    p.add_argument("--device-gb", type=float, default=None, help="device memory in GiB for the memory check")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. rl_config.kl_coef=0.001")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config_name, args.overrides, args.config_dir)
        cfg = check_config(cfg, memory_check=_memory_check(cfg, args))
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    launcher, lc = _launcher(args), cfg.rl_config.launcher
    # Read by init_distributed in every rank (spawned processes and Ray actors inherit/forward it).
    os.environ["MINDRL_COLLECTIVE_TIMEOUT_S"] = str(lc.collective_timeout_s)
    if launcher == "torchrun":
        _rank_main(cfg)
    elif launcher == "ray":
        from mindrl.launch.placement import PlacementError
        from mindrl.launch.ray_driver import RankFailure, RayLaunch, run_on_ray

        launch = RayLaunch(address=args.ray_address, nnodes=args.nnodes, devices_per_node=args.devices_per_node,
                           join_timeout_s=lc.node_join_timeout_s, placement_timeout_s=lc.placement_timeout_s,
                           failure_timeout_s=lc.failure_timeout_s)
        try:
            run_on_ray(_rank_main, cfg, launch)
        except (RankFailure, PlacementError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # run_on_ray already stopped every rank
            print("interrupted: every rank was stopped; rerun the same command to resume", file=sys.stderr)
            return 130
    else:
        from mindrl.backends import get_backend
        from mindrl.utils.launch import LaunchError, check_local_ranks, spawn

        try:
            check_local_ranks(cfg.rl_config.actor_resource.num_npus, get_backend(cfg.backend))
        except LaunchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        spawn(_rank_main, cfg.rl_config.actor_resource.num_npus, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
