"""`python -m mindrl.plan --config-name RECIPE [overrides] [--device NAME | --device-gb N]
[--nodes N --devices-per-node M] [--json]`: per-device memory of every phase of a GRPO job.

Needs only the recipe and its model's config.json (no checkpoint, data, tokenizer or device; paths
that do not exist yet are warned about). Exit status: 0 when every phase fits (or no capacity was
given), 3 when one does not, 2 on a bad config or argument.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from mindrl.plan.devices import DEVICES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mindrl.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-name", help="recipe under configs/")
    p.add_argument("--config-dir", default=None, help="directory of recipes (default: the repo's configs/)")
    p.add_argument("--config-json", default=None, help="a whole config as JSON (dataclasses.asdict of a "
                                                       "MindRLConfig; what validate()'s memory check passes)")
    p.add_argument("--device", choices=sorted(DEVICES), default=None, help="device kind (its usable memory)")
    p.add_argument("--device-gb", type=float, default=None, help="device memory in GiB, instead of --device")
    p.add_argument("--nodes", type=int, default=None, help="nodes of the job (with --devices-per-node)")
    p.add_argument("--devices-per-node", type=int, default=None, help="devices per node (host memory per node)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--states-only", action="store_true",
                   help="skip the activation measurement (weights, grads, optimizer and rollout rows only)")
    p.add_argument("--all-ranks", action="store_true",
                   help="count the states of every rank (JSON 'stages'), not only each stage's first")
    p.add_argument("--suggest", nargs="?", type=int, const=None, default=False, metavar="N",
                   help="list the cheapest layouts (TP/PP/EP/offload_train_state) of N devices (default: the recipe's "
                        "num_npus) whose plan fits --device / --device-gb, ranked by a crude estimated step cost "
                        "(compute x (1 + pipeline bubble) + TP/EP/DP traffic + offload traffic at stated bandwidths: "
                        "mindrl/plan/cost.py, docs/plan.md); the other options and the rollout layout stay the "
                        "recipe's. Exit 0 when one fits, 3 when none does. A bare --suggest goes after the overrides (it would "
                        "take the next word as N)")
    p.add_argument("--top", type=int, default=3, help="with --suggest: stop after this many fitting layouts")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. actor_config.micro_batch_size=2")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("megatron").setLevel(logging.ERROR)
    from mindrl.config import ConfigError, config_from_dict, load_config, validate
    from mindrl.plan.devices import device_bytes
    from mindrl.plan.phases import plan_job
    from mindrl.plan.report import render

    try:
        capacity = device_bytes(args.device, args.device_gb)
        if args.config_json:
            with open(args.config_json, encoding="utf-8") as f:
                cfg = config_from_dict(json.load(f))
        elif args.config_name:
            cfg = load_config(args.config_name, args.overrides, args.config_dir)
        else:
            raise ConfigError("give --config-name RECIPE (or --config-json FILE)")
        problems = validate(cfg, check_paths=False)  # the plan needs a valid config; paths are warned about
        if problems:
            raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
        if args.suggest is not False:
            return _suggest(args, cfg, capacity)
        world = cfg.rl_config.actor_resource.num_npus
        dpn = args.devices_per_node
        if args.nodes is not None:
            if dpn is None:
                raise ValueError("--nodes needs --devices-per-node")
            if args.nodes * dpn != world:
                raise ValueError(f"--nodes x --devices-per-node = {args.nodes} x {dpn} = {args.nodes * dpn}, but "
                                 f"rl_config.actor_resource.num_npus = {world}")
        plan = plan_job(cfg, capacity=capacity, device=args.device or (f"{args.device_gb:g} GiB" if args.device_gb
                                                                        else None),
                        devices_per_node=dpn, recipe=args.config_name or args.config_json,
                        activations=not args.states_only, all_ranks=args.all_ranks)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_json(), indent=1) if args.json else render(plan))
    return 3 if plan.fits is False else 0


def _suggest(args: argparse.Namespace, cfg, capacity: int | None) -> int:  # noqa: ANN001
    from mindrl.plan.suggest import render_suggestion, suggest

    devices = cfg.rl_config.actor_resource.num_npus if args.suggest is None else args.suggest  # bare --suggest
    if capacity is None:
        raise ValueError("--suggest needs the device memory: --device NAME or --device-gb N")
    if args.top < 1:
        raise ValueError(f"--top {args.top} must be >= 1")
    if args.nodes is not None:
        if args.devices_per_node is None or args.nodes * args.devices_per_node != devices:
            raise ValueError(f"--suggest {devices} with --nodes {args.nodes} --devices-per-node "
                             f"{args.devices_per_node}: nodes x devices per node must be the device count")
    result = suggest(cfg, devices, capacity, devices_per_node=args.devices_per_node, top=args.top,
                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(result.to_json(), indent=1) if args.json
          else render_suggestion(result, args.config_name or args.config_json))
    return 0 if result.fitting else 3


if __name__ == "__main__":
    sys.exit(main())
