"""The Ray driver: reserve devices, start one rank actor per device, wait on every rank.

    run_on_ray(fn, cfg, RayLaunch(address="10.0.0.1:6379", nnodes=16, devices_per_node=24))

1. Connect to a running cluster (`ray start` on every node; examples/grpo/*.sh do that).
2. Optionally wait until `nnodes` x `devices_per_node` devices of the backend's Ray resource joined.
3. One STRICT_SPREAD placement group with one bundle per node holding that node's devices, so
   every node of the job is a different machine; ranks ordered by node, then device
   (mindrl.launch.placement). Fails within `placement_timeout_s` with requested vs available
   devices per node: never left pending.
4. One `RankActor` per device, one device out of its node's bundle (num_cpus=0: only the device
   resource counts, so small machines never deadlock on CPUs). Every actor reports its node and
   devices and rank 0 a free port (a failure here is a `RankFailure` naming the rank); every actor
   gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and its visible
   devices, then runs the same SPMD `fn(cfg)` the spawn and torchrun paths run.
5. The driver waits on every rank. A rank that raises or dies ends the job: the driver collects
   the failures that follow within a short grace window, every rank is killed, the placement
   group is removed, and `RankFailure` names the rank that failed *first by its own clock*
   (mindrl.launch.failures: exception time, or a dead rank's last heartbeat), its node and its
   last log lines, all within `failure_timeout_s`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mindrl.launch.failures import (FAILED_AT, HEARTBEAT_S, classify, failure_message, first_failure,
                                    heartbeat_path, rank_log_path, tail)
from mindrl.launch.placement import (NodeInfo, PlacementError, RankSlot, assign_local_ranks, check_capacity,
                                     describe_nodes, missing_node_ranks, node_rank_of, order_slots)

__all__ = ["RankFailure", "RayLaunch", "run_on_ray", "rank_log_path", "tail", "failure_message"]


class RankFailure(RuntimeError):
    """A rank raised or died; the job was stopped. The message names rank, node and last log lines;
    `failures` holds every failure collected (mindrl.launch.failures.Failure), the blamed one first."""

    def __init__(self, message: str, failures: list | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


@dataclass
class RayLaunch:
    address: str | None = None  # None: RAY_ADDRESS, else a local cluster (`ray.init()` default)
    nnodes: int | None = None  # wait until this many nodes' devices joined (per-node scripts)
    devices_per_node: int | None = None  # None: the largest per-node count of the resource
    join_timeout_s: float = 600.0
    placement_timeout_s: float = 120.0
    failure_timeout_s: float = 60.0
    log_dir: str | None = None  # rank logs (rank_00000.log ...); default <output_dir>/logs


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
        # Ray leaves a fully used resource out of a node's entry: absent there means 0 free.
        free = available[n["NodeID"]].get(resource, 0.0) if n["NodeID"] in available else total
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
        import threading

        os.environ.update(env)
        os.chdir(cwd)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the rank
        log.write(f"=== rank {env['RANK']}/{env['WORLD_SIZE']} pid {os.getpid()} node {env['MINDRL_NODE']} "
                  f"at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        done = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(heartbeat_path(Path(log_path).parent, self.rank), done),
                                name="mindrl-heartbeat", daemon=True)
        beat.start()
        try:
            fn(*args)
        except BaseException as err:
            import traceback

            try:  # when it happened, for the driver's "who failed first" (mindrl.launch.failures)
                setattr(err, FAILED_AT, time.time())
            except Exception:  # noqa: BLE001 - an exception type without attributes: arrival time is used
                pass
            traceback.print_exc()
            raise
        finally:
            done.set()
            sys.stdout.flush()
            sys.stderr.flush()


def _heartbeat(path: Path, done: Any) -> None:
    """Rewrite `path` with the wall time every HEARTBEAT_S: a dead rank's last sign of life."""
    tmp = path.parent / (path.name + ".tmp")
    while True:
        try:
            tmp.write_text(f"{time.time():.3f}\n")
            os.replace(tmp, path)  # atomic: the driver never reads half a number
        except OSError:
            pass
        if done.wait(HEARTBEAT_S):
            return


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
    """One STRICT_SPREAD placement group whose bundle g is node g's devices ({resource: devices_per_node}):
    Ray puts every bundle on a different machine, so two "nodes" of the job never share one (as two
    separate per-node groups could when a machine has more devices than DEVICES_PER_NODE). Rank actors
    then take one device each out of their node's bundle. Returns ([group], per-bundle [(node_id, ip)]
    per rank); PlacementError after `timeout_s`, with the group removed (nothing left pending)."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    per_node = min(devices_per_node, world_size)
    nodes = cluster_nodes(resource)
    check_capacity(nodes, world_size, per_node, resource)
    n_nodes = world_size // per_node
    group = placement_group([{resource: per_node}] * n_nodes, strategy="STRICT_SPREAD", name="mindrl_nodes")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise PlacementError(
            f"placement not satisfiable within {timeout_s:.0f}s: requested {n_nodes} distinct node(s) x {per_node} "
            f"'{resource}' ({world_size} devices); available per node: "
            f"{describe_nodes(cluster_nodes(resource), resource)}. Devices may be held by another job, or a "
            f"node left; raise rl_config.launcher.placement_timeout_s to wait longer")
    ip_of = {n.node_id: n.ip for n in cluster_nodes(resource)}
    table = placement_group_table(group)["bundles_to_node_id"]
    return [group], [[(table[g], ip_of.get(table[g], "?"))] * per_node for g in range(n_nodes)]


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
        groups[0], placement_group_bundle_index=slot.group)).remote(slot.rank, resource) for slot in slots]
    try:
        calls = {a.info.remote(): slot for slot, a in zip(slots, actors)}
        infos = _answers(calls, launch.placement_timeout_s, "reporting its node and devices (RankActor.info)", world)
        for slot, info in zip(slots, infos):
            slot.accelerator_ids = info["accelerator_ids"]
        visible = assign_local_ranks(slots)
        master_addr = slots[0].ip
        master_port = _answers({actors[0].free_port.remote(master_addr): slots[0]}, launch.placement_timeout_s,
                               f"finding a free port on {master_addr} for torch.distributed (RankActor.free_port)",
                               world)[0]
        forwarded = {k: v for k, v in os.environ.items() if k.startswith("MINDRL_")}
        refs = {}
        started = time.time()
        for slot, actor in zip(slots, actors):
            env = {**forwarded, "RANK": str(slot.rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(slot.local_rank),
                   "LOCAL_WORLD_SIZE": str(slot.local_world_size), "MASTER_ADDR": master_addr,
                   "MASTER_PORT": str(master_port), "MINDRL_NODE": f"{slot.ip}/{slot.node_id[:8]}"}
            if visible.get(slot.node_id):
                env = backend.set_visible_devices(visible[slot.node_id], env)
            ref = actor.run.remote(fn, (cfg,), env, os.getcwd(), str(rank_log_path(log_dir, slot.rank)))
            refs[ref] = slot
        _wait_all(refs, actors, groups, launch.failure_timeout_s, log_dir, world, started)
    finally:  # success, a failed rank (already stopped: this is quick), Ctrl-C: no rank outlives the driver
        _stop(actors, groups, [], launch.failure_timeout_s)


def _answers(calls: dict, timeout_s: float, what: str, world: int) -> list:
    """Results of small start-up calls, one per rank, in order; RankFailure naming the rank that raised,
    died or did not answer (the caller's `finally` stops every rank)."""
    import ray
    from ray.exceptions import GetTimeoutError

    refs = list(calls)
    ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in refs:  # in rank order: the lowest failing rank is named
        if ref in late:
            raise RankFailure(failure_message(calls[ref], GetTimeoutError(f"{timeout_s:.0f}s"), "", world,
                                              phase=what))
        try:
            ray.get(ref)
        except Exception as err:  # noqa: BLE001 - raised or died: either way the job cannot start
            raise RankFailure(failure_message(calls[ref], err, "", world, phase=what)) from None
    return ray.get(refs)


def _wait_all(refs: dict, actors: list, groups: list, bound_s: float, log_dir: str, world: int,
              started: float = 0.0) -> None:
    """Wait on every rank. On the first failure, keep collecting for a grace window (the others'
    failures it caused, and a death Ray reports late), blame the one that happened first
    (mindrl.launch.failures), then stop every rank."""
    import ray

    pending, failures = list(refs), []
    grace_s, grace_end = min(5.0, bound_s / 4), None
    while pending and (grace_end is None or time.monotonic() < grace_end):
        wait_s = 1.0 if grace_end is None else max(0.0, grace_end - time.monotonic())
        done, pending = ray.wait(pending, num_returns=1, timeout=wait_s)
        for ref in done:
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 - any rank failure ends the job
                failures.append(classify(refs[ref], err, time.time(), log_dir, started))
                grace_end = grace_end or time.monotonic() + grace_s
    if failures:
        _stop(actors, groups, pending, bound_s - grace_s)
        first = first_failure(failures)
        others = [f for f in failures if f is not first]
        raise RankFailure(failure_message(first.slot, first.err, log_dir, world, others, first),
                          [first, *others]) from None
