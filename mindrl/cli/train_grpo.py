"""Train with GRPO: `python -m mindrl.cli.train_grpo --config-name <recipe> [key=value ...]`.

    python -m mindrl.cli.train_grpo --config-name grpo_tiny_cpu
    python -m mindrl.cli.train_grpo --config-name grpo_qwen25_7b_deepscaler actor_config.lr=5e-7

Recipes are YAML files under configs/ (Hydra); any key can be overridden as `section.key=value`.
The config is validated before any process starts. Rerunning the same command with the same
`megatron_training.output_dir` resumes from its last checkpoint.

Launch: with no RANK/WORLD_SIZE in the environment this spawns
`rl_config.actor_resource.num_npus` local processes; under torchrun each process is one rank.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindrl.cli.train_grpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-name", default="grpo_tiny_cpu", help="recipe under configs/ (default: %(default)s)")
    p.add_argument("--config-dir", default=None, help="directory of recipes (default: the repo's configs/)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. rl_config.kl_coef=0.001")
    args = p.parse_args(argv)
    try:
        cfg = check_config(load_config(args.config_name, args.overrides, args.config_dir))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        _rank_main(cfg)
    else:
        from mindrl.utils.launch import spawn

        spawn(_rank_main, cfg.rl_config.actor_resource.num_npus, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
