"""Which node gets which ranks: pure logic over a snapshot of the cluster (no Ray import).

Ranks are ordered by node, then device, so rank r sits on node r // devices_per_node, and a
model-parallel group (contiguous ranks in megatron's order) stays on one node whenever its size
divides devices_per_node: tensor-parallel traffic then never crosses the network.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class PlacementError(RuntimeError):
    """The cluster cannot host the job; the message says requested vs available per node."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    total: float  # devices of the job's resource on this node
    available: float  # not reserved by anything else right now
    is_head: bool = False
    node_rank: int | None = None  # the NODE_RANK its per-node script declared (a `mindrl_node_rank_<r>` resource)

    @property
    def name(self) -> str:
        rank = "" if self.node_rank is None else f"NODE_RANK {self.node_rank}, "
        return f"{self.ip} ({rank}node {self.node_id[:8]})"


@dataclass
class RankSlot:
    """One rank: its node, its index among the node's ranks and the accelerator ids Ray gave it."""

    rank: int
    node_id: str
    ip: str
    local_rank: int = 0
    local_world_size: int = 1
    group: int = 0  # which bundle of the placement group (one bundle per node) ...
    bundle: int = 0  # ... and which of that bundle's devices
    accelerator_ids: list[str] = field(default_factory=list)


def describe_nodes(nodes: list[NodeInfo], resource: str) -> str:
    if not nodes:
        return f"no alive node offers resource '{resource}'"
    return "; ".join(f"{n.name}: {n.available:g} of {n.total:g} {resource} free" for n in nodes)


NODE_RANK_RESOURCE = "mindrl_node_rank_"  # + r: a per-node script's own declaration of which node it is


def node_rank_of(resources: dict[str, float]) -> int | None:
    """The node rank a node declared through its `mindrl_node_rank_<r>` resource, if any."""
    ranks = [int(k[len(NODE_RANK_RESOURCE):]) for k in resources
             if k.startswith(NODE_RANK_RESOURCE) and k[len(NODE_RANK_RESOURCE):].isdigit()]
    return ranks[0] if len(ranks) == 1 else None


def missing_node_ranks(nodes: list[NodeInfo], nnodes: int) -> list[int] | None:
    """Which of node ranks 0..nnodes-1 have not joined; None when some joined node did not say which
    rank it is (then the missing ones cannot be named, only counted)."""
    if any(n.node_rank is None for n in nodes):
        return None
    return sorted(set(range(nnodes)) - {n.node_rank for n in nodes})


def check_capacity(nodes: list[NodeInfo], world_size: int, devices_per_node: int, resource: str) -> None:
    """Fail now, with the numbers, when no assignment of `world_size` ranks can exist. Each group of
    `devices_per_node` ranks needs its own machine (the driver reserves them STRICT_SPREAD), so a node
    with twice the devices still hosts one group."""
    if devices_per_node < 1 or world_size % devices_per_node:
        raise PlacementError(f"{world_size} ranks cannot be split into nodes of devices_per_node="
                             f"{devices_per_node}; rl_config.actor_resource.num_npus must be a multiple of it")
    groups = world_size // devices_per_node
    fits = sum(1 for n in nodes if n.available >= devices_per_node)
    if fits < groups:
        raise PlacementError(
            f"requested {world_size} '{resource}' devices as {groups} node(s) x {devices_per_node}, but the "
            f"cluster can host only {fits} such group(s), one per machine. Available per node: "
            f"{describe_nodes(nodes, resource)}")


def order_slots(bundle_nodes: list[list[tuple[str, str]]], head_node_id: str | None = None) -> list[RankSlot]:
    """Ranks from reserved bundles: `bundle_nodes[g]` lists (node_id, ip) per device of node bundle g.

    Groups are sorted by node (the head's first, then by ip and node id) so the numbering is the
    same on every run; within a group, bundle order is device order.
    """
    def key(g: int) -> tuple:
        node_id, ip = bundle_nodes[g][0]
        return (node_id != head_node_id, ip, node_id, g)

    slots: list[RankSlot] = []
    per_node: dict[str, int] = {}
    for g in sorted(range(len(bundle_nodes)), key=key):
        for b, (node_id, ip) in enumerate(bundle_nodes[g]):
            local = per_node.get(node_id, 0)
            per_node[node_id] = local + 1
            slots.append(RankSlot(rank=len(slots), node_id=node_id, ip=ip, local_rank=local, group=g, bundle=b))
    for slot in slots:
        slot.local_world_size = per_node[slot.node_id]
    return slots


def assign_local_ranks(slots: list[RankSlot]) -> dict[str, list[str]]:
    """With accelerator ids known, LOCAL_RANK is the index of a rank's id among its node's ids.

    Returns node_id -> the sorted ids every rank of that node should see (the visible-devices list),
    so `device(LOCAL_RANK)` is exactly the device Ray reserved for the rank.
    """
    by_node: dict[str, list[str]] = {}
    for s in slots:
        by_node.setdefault(s.node_id, []).extend(s.accelerator_ids)
    visible = {n: sorted(set(ids), key=lambda x: (len(x), x)) for n, ids in by_node.items()}
    for s in slots:
        if s.accelerator_ids:
            s.local_rank = visible[s.node_id].index(s.accelerator_ids[0])
    return visible
