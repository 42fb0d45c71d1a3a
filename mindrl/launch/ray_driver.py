"""The Ray driver: reserve devices, start one rank actor per device, wait on every rank.

    run_on_ray(fn, cfg, RayLaunch(address="10.0.0.1:6379", nnodes=16, devices_per_node=24))

1. Connect to a running cluster (`ray start` on every node; examples/grpo/*.sh do that).
2. Optionally wait until `nnodes` x `devices_per_node` devices of the backend's Ray resource joined.
3. One STRICT_PACK placement group per node, one bundle per device; ranks ordered by node, then
   device (mindrl.launch.placement). Fails within `placement_timeout_s` with requested vs available
   devices per node: never left pending.
4. One `RankActor` per bundle (num_cpus=0: only the device resource counts, so small machines never
   deadlock on CPUs). Rank 0 reports its address and a free port; every actor gets RANK, WORLD_SIZE,
   LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and its visible devices, then runs the same
   SPMD `fn(cfg)` the spawn and torchrun paths run.
5. The driver waits on every rank. The first rank that raises or dies ends the job: every rank is
   killed, the placement groups are removed, and `RankFailure` names the rank, its node and its last
   log lines, all within `failure_timeout_s`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mindrl.launch.placement import (NodeInfo, PlacementError, RankSlot, assign_local_ranks, check_capacity,
                                     describe_nodes, missing_node_ranks, node_rank_of, order_slots)


class RankFailure(RuntimeError):
    """A rank raised or died; the job was stopped. The message names rank, node and last log lines."""


@dataclass
class RayLaunch:
    address: str | None = None  # None: RAY_ADDRESS, else a local cluster (`ray.init()` default)
    nnodes: int | None = None  # wait until this many nodes' devices joined (per-node scripts)
    devices_per_node: int | None = None  # None: the largest per-node count of the resource
    join_timeout_s: float = 600.0
    placement_timeout_s: float = 120.0
    failure_timeout_s: float = 60.0
    log_dir: str | None = None  # rank logs (rank_00000.log ...); default <output_dir>/logs


def rank_log_path(log_dir: str | Path, rank: int) -> Path:
    return Path(log_dir) / f"rank_{rank:05d}.log"


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log readable here at {path}; it is on the rank's node)"
    return "\n".join(text[-lines:]) if text else f"({path} is empty)"


def connect(address: str | None) -> None:
    import ray

    from mindrl.launch.loopback import is_loopback, keep_loopback

    address = address or os.environ.get("RAY_ADDRESS")
    if is_loopback(address):
        keep_loopback()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")


def cluster_nodes(resource: str) -> list[NodeInfo]:
    """Alive nodes that offer `resource`, with total and currently available counts."""
    import ray

    try:
        from ray._private.state import available_resources_per_node
        available = available_resources_per_node()
    except Exception:  # noqa: BLE001 - private API; fall back to totals (the PG timeout still guards)
        available = {}
    nodes = []
    for n in ray.nodes():
        total = n.get("Resources", {}).get(resource, 0)
        if not n.get("Alive") or total <= 0:
            continue
        free = available.get(n["NodeID"], {}).get(resource, total) if available else total
        nodes.append(NodeInfo(node_id=n["NodeID"], ip=n["NodeManagerAddress"], total=total, available=free,
                              is_head="node:__internal_head__" in n.get("Resources", {}),
                              node_rank=node_rank_of(n.get("Resources", {}))))
    return sorted(nodes, key=lambda x: (not x.is_head, x.ip, x.node_id))


def wait_for_devices(resource: str, nnodes: int, devices_per_node: int, timeout_s: float) -> list[NodeInfo]:
    """Block until `nnodes` nodes with `devices_per_node` each joined; name who is there on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = cluster_nodes(resource)
        if sum(1 for n in nodes if n.total >= devices_per_node) >= nnodes:
            return nodes
        if time.monotonic() > deadline:
            joined = describe_nodes(nodes, resource)
            missing = missing_node_ranks(nodes, nnodes)
            which = (f" Missing: NODE_RANK {', '.join(map(str, missing))}." if missing else
                     " (Set NODE_RANK on every node to have the missing ones named.)" if missing is None else "")
            raise PlacementError(
                f"waited {timeout_s:.0f}s for {nnodes} node(s) x {devices_per_node} '{resource}' devices; "
                f"{max(0, nnodes - len(nodes))} node(s) missing. Joined: {joined}.{which} Start the same script "
                f"on the missing nodes with MASTER_ADDR/MASTER_PORT pointing at this head")
        time.sleep(1.0)


class RankActor:
    """One rank of the job, pinned to one bundle. Plain class; wrapped with ray.remote at launch."""

    def __init__(self, rank: int, resource: str) -> None:
        self.rank, self.resource = rank, resource

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        ids = ctx.get_accelerator_ids().get(self.resource, [])
        return {"node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "accelerator_ids": [str(i) for i in ids]}

    def free_port(self, ip: str) -> int:
        from mindrl.backends.distributed import free_port

        return free_port(ip)

    def run(self, fn: Callable[..., Any], args: tuple, env: dict[str, str], cwd: str, log_path: str) -> None:
        import sys

        os.environ.update(env)
        os.chdir(cwd)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the rank
        log.write(f"=== rank {env['RANK']}/{env['WORLD_SIZE']} pid {os.getpid()} node {env['MINDRL_NODE']} "
                  f"at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            fn(*args)
        except BaseException:
            import traceback

            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


class _Tee:
    """Write to Ray's captured stream (streamed to the driver) and to the rank's own log file."""

    def __init__(self, stream: Any, log: Any) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _reserve(resource: str, world_size: int, devices_per_node: int, timeout_s: float) -> tuple[list, list]:
    """Placement groups (one per node) and their bundles' nodes; PlacementError after `timeout_s`."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    per_group = min(devices_per_node, world_size)
    nodes = cluster_nodes(resource)
    check_capacity(nodes, world_size, per_group, resource)
    groups = [placement_group([{resource: 1}] * per_group, strategy="STRICT_PACK", name=f"mindrl_node{g}")
              for g in range(world_size // per_group)]
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
    if len(ready) < len(groups):
        for g in groups:
            remove_placement_group(g)
        raise PlacementError(
            f"placement not satisfiable within {timeout_s:.0f}s: requested {len(groups)} node(s) x {per_group} "
            f"'{resource}' ({world_size} devices); available per node: "
            f"{describe_nodes(cluster_nodes(resource), resource)}")
    ip_of = {n.node_id: n.ip for n in cluster_nodes(resource)}
    bundles = []
    for g in groups:
        table = placement_group_table(g)["bundles_to_node_id"]
        bundles.append([(table[i], ip_of.get(table[i], "?")) for i in range(per_group)])
    return groups, bundles


def _stop(actors: list, groups: list, pending: list, bound_s: float) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    deadline = time.monotonic() + bound_s
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
    if pending:
        ray.wait(pending, num_returns=len(pending), timeout=max(0.0, deadline - time.monotonic()))
    for g in groups:
        try:
            remove_placement_group(g)
        except Exception:  # noqa: BLE001
            pass


def _failure_message(slot: RankSlot, err: BaseException, log_dir: str, world: int) -> str:
    import ray.exceptions as rex

    if isinstance(err, rex.RayTaskError):
        what = f"raised {type(err.cause).__name__ if err.cause else 'an error'}: {str(err.cause or err)[-1500:]}"
    elif isinstance(err, rex.ActorDiedError | rex.RayActorError):
        what = f"died ({str(err).splitlines()[0][:300]})"
    else:
        what = f"failed: {type(err).__name__}: {err}"
    path = rank_log_path(log_dir, slot.rank)
    return (f"rank {slot.rank} of {world} on node {slot.ip} (node {slot.node_id[:8]}) {what}\n"
            f"every rank of the job was stopped. Last lines of {path}:\n{tail(path)}\n"
            f"Rerun the same command to resume from the last checkpoint.")


def run_on_ray(fn: Callable[..., Any], cfg: Any, launch: RayLaunch) -> None:
    """Run `fn(cfg)` on `cfg.rl_config.actor_resource.num_npus` rank actors. Raises RankFailure/PlacementError."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from mindrl.backends import get_backend

    backend = get_backend(cfg.backend)
    resource, world = backend.ray_resource, cfg.rl_config.actor_resource.num_npus
    connect(launch.address)
    dpn = launch.devices_per_node
    if launch.nnodes:
        nodes = wait_for_devices(resource, launch.nnodes, dpn or 1, launch.join_timeout_s)
    else:
        nodes = cluster_nodes(resource)
    if not dpn:
        dpn = int(max((n.total for n in nodes), default=0)) or 1
    groups, bundles = _reserve(resource, world, dpn, launch.placement_timeout_s)
    head = next((n.node_id for n in nodes if n.is_head), None)
    slots = order_slots(bundles, head)
    log_dir = str(Path(launch.log_dir or Path(cfg.megatron_training.output_dir) / "logs").resolve())
    # Only the device resource is requested: num_cpus=0 so a 2-core machine never waits on CPUs.
    resources = {"num_cpus": 0, "num_gpus": 1} if resource == "GPU" else {"num_cpus": 0, "resources": {resource: 1}}
    remote_cls = ray.remote(max_restarts=0)(RankActor)
    actors = [remote_cls.options(**resources, scheduling_strategy=PlacementGroupSchedulingStrategy(
        groups[slot.group], placement_group_bundle_index=slot.bundle)).remote(slot.rank, resource) for slot in slots]
    try:
        infos = ray.get([a.info.remote() for a in actors], timeout=launch.placement_timeout_s)
        for slot, info in zip(slots, infos):
            slot.accelerator_ids = info["accelerator_ids"]
        visible = assign_local_ranks(slots)
        master_addr = slots[0].ip
        master_port = ray.get(actors[0].free_port.remote(master_addr), timeout=launch.placement_timeout_s)
        forwarded = {k: v for k, v in os.environ.items() if k.startswith("MINDRL_")}
        refs = {}
        for slot, actor in zip(slots, actors):
            env = {**forwarded, "RANK": str(slot.rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(slot.local_rank),
                   "LOCAL_WORLD_SIZE": str(slot.local_world_size), "MASTER_ADDR": master_addr,
                   "MASTER_PORT": str(master_port), "MINDRL_NODE": f"{slot.ip}/{slot.node_id[:8]}"}
            if visible.get(slot.node_id):
                env = backend.set_visible_devices(visible[slot.node_id], env)
            ref = actor.run.remote(fn, (cfg,), env, os.getcwd(), str(rank_log_path(log_dir, slot.rank)))
            refs[ref] = slot
        _wait_all(refs, actors, groups, launch.failure_timeout_s, log_dir, world)
    finally:  # success, a failed rank (already stopped: this is quick), Ctrl-C: no rank outlives the driver
        _stop(actors, groups, [], launch.failure_timeout_s)


def _wait_all(refs: dict, actors: list, groups: list, bound_s: float, log_dir: str, world: int) -> None:
    import ray

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for ref in done:
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 - any rank failure ends the job
                _stop(actors, groups, pending, bound_s)
                raise RankFailure(_failure_message(refs[ref], err, log_dir, world)) from None
