"""Launch logic without Ray: rank order, capacity errors, node roles, spawn limits, timeouts, config keys."""
from __future__ import annotations

import json
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mindrl.backends import get_backend
from mindrl.backends.distributed import collective_timeout_s
from mindrl.config import ConfigError, check_config, load_config
from mindrl.launch.loopback import is_loopback
from mindrl.launch.placement import (NodeInfo, PlacementError, assign_local_ranks, check_capacity, missing_node_ranks,
                                     node_rank_of, order_slots)
from mindrl.launch.ray_node import NodeError, _ray_args, node_env, role
from mindrl.utils.launch import LaunchError, check_local_ranks

REPO = Path(__file__).resolve().parents[2]


def test_ranks_are_ordered_by_node_then_device_head_first():
    # Group 0 landed on node "b" (10.0.0.2), group 1 on the head "a" (10.0.0.1): the head's ranks come first.
    bundles = [[("b", "10.0.0.2"), ("b", "10.0.0.2")], [("a", "10.0.0.1"), ("a", "10.0.0.1")]]
    slots = order_slots(bundles, head_node_id="a")
    assert [(s.rank, s.node_id, s.local_rank, s.group, s.bundle) for s in slots] == [
        (0, "a", 0, 1, 0), (1, "a", 1, 1, 1), (2, "b", 0, 0, 0), (3, "b", 1, 0, 1)]
    assert {s.local_world_size for s in slots} == {2}


def test_local_rank_follows_the_accelerator_ray_reserved():
    slots = order_slots([[("a", "h"), ("a", "h"), ("a", "h")]], head_node_id="a")
    for slot, ids in zip(slots, (["7"], ["2"], ["10"])):
        slot.accelerator_ids = ids
    visible = assign_local_ranks(slots)
    assert visible == {"a": ["2", "7", "10"]}  # numeric order, not string order
    assert [s.local_rank for s in slots] == [1, 0, 2]


def test_capacity_error_names_requested_and_available_per_node():
    nodes = [NodeInfo("n1aaaaaaaa", "10.0.0.1", total=8, available=8, is_head=True),
             NodeInfo("n2bbbbbbbb", "10.0.0.2", total=8, available=3)]
    check_capacity(nodes, 8, 8, "NPU")  # fits on the head
    with pytest.raises(PlacementError) as err:
        check_capacity(nodes, 16, 8, "NPU")
    msg = str(err.value)
    assert "requested 16 'NPU' devices as 2 node(s) x 8" in msg and "host only 1" in msg
    assert "10.0.0.1 (node n1aaaaaa): 8 of 8 NPU free" in msg and "10.0.0.2 (node n2bbbbbb): 3 of 8 NPU free" in msg
    with pytest.raises(PlacementError, match="multiple of it"):
        check_capacity(nodes, 12, 8, "NPU")
    with pytest.raises(PlacementError, match="no alive node offers resource 'NPU'"):
        check_capacity([], 1, 1, "NPU")


def test_each_node_group_needs_its_own_machine():
    """16 free devices on one machine do not make two nodes of 8: the groups are spread one per machine."""
    big = NodeInfo("n1aaaaaaaa", "10.0.0.1", total=16, available=16, is_head=True)
    check_capacity([big], 16, 16, "NPU")
    with pytest.raises(PlacementError, match=r"as 2 node\(s\) x 8, but the cluster can host only 1 such group\(s\), "
                                             r"one per machine.*10.0.0.1 \(node n1aaaaaa\): 16 of 16 NPU free"):
        check_capacity([big], 16, 8, "NPU")
    check_capacity([big, NodeInfo("n2bbbbbbbb", "10.0.0.2", total=8, available=8)], 16, 8, "NPU")


def _cfg(*overrides: str):
    return load_config("grpo_tiny_cpu", list(overrides))


def test_node_roles_and_defaults(monkeypatch):
    for var in ("NNODES", "DEVICES_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "NODE_IP", "NODE_RANK", "SIMULATE_LOCAL"):
        monkeypatch.delenv(var, raising=False)
    env = node_env(_cfg())
    assert role(env) == "single" and env.resource == "mindrl_cpu"  # no variables needed
    assert role(node_env(load_config("grpo_deepseek_r1_671b", []))) == "single"  # spawn then refuses, clearly
    monkeypatch.setenv("NNODES", "2")
    with pytest.raises(NodeError, match="needs MASTER_ADDR"):
        node_env(_cfg())
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("NODE_IP", "127.0.0.1")
    env = node_env(_cfg())
    assert (env.devices_per_node, env.master_port, role(env)) == (1, 6379, "head")  # cpu: num_npus / NNODES
    monkeypatch.setenv("NODE_RANK", "1")
    assert role(node_env(_cfg())) == "worker"
    monkeypatch.setenv("DEVICES_PER_NODE", "2")
    with pytest.raises(NodeError, match=r"num_npus=2 but NNODES x DEVICES_PER_NODE = 2 x 2 = 4"):
        node_env(_cfg())
    monkeypatch.setenv("SIMULATE_LOCAL", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.1.1.1")
    env = node_env(_cfg("rl_config.actor_resource.num_npus=4"))
    assert (role(env), env.master_addr, env.node_ip) == ("simulate", "127.0.0.1", "127.0.0.1")


def test_nodes_declare_their_rank_so_missing_ones_can_be_named(monkeypatch):
    for var in ("NNODES", "SIMULATE_LOCAL", "MASTER_ADDR", "NODE_IP", "NODE_RANK", "DEVICES_PER_NODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    env = node_env(_cfg())
    args = _ray_args(env, head=False, node_rank=3)
    assert json.loads(args[args.index("--resources") + 1]) == {"mindrl_cpu": 1, "mindrl_node_rank_3": 1}
    assert "mindrl_node_rank_" not in " ".join(_ray_args(env, head=False))  # a worker without NODE_RANK
    assert node_rank_of({"mindrl_cpu": 1.0, "mindrl_node_rank_2": 1.0}) == 2 and node_rank_of({"CPU": 4.0}) is None
    head, two = (NodeInfo("h" * 10, "10.0.0.1", 8, 8, True, 0), NodeInfo("w" * 10, "10.0.0.3", 8, 8, False, 2))
    assert missing_node_ranks([head, two], 4) == [1, 3]
    assert missing_node_ranks([head, NodeInfo("x" * 10, "10.0.0.9", 8, 8)], 4) is None  # one did not say: count only
    assert two.name == "10.0.0.3 (NODE_RANK 2, node wwwwwwww)"


def test_spawn_refuses_more_local_ranks_than_devices():
    check_local_ranks(2, get_backend("cpu"))
    with pytest.raises(LaunchError, match=r"num_npus=384 ranks but this machine has .* CPU ranks.*grpo_trainer_"):
        check_local_ranks(384, get_backend("cpu"))
    npu = get_backend("npu")
    if not type(npu).is_available():
        with pytest.raises(LaunchError, match=r"backend 'npu', which this machine does not have.*multinode.md"):
            check_local_ranks(384, npu)


def test_671b_recipe_refuses_to_spawn_and_points_to_the_ray_scripts():
    proc = subprocess.run([sys.executable, "-m", "mindrl.cli.train_grpo", "--launcher", "spawn", "--config-name",
                           "grpo_deepseek_r1_671b", "megatron_training.tokenizer_name_or_path=null",
                           "megatron_training.data_path=null", "actor_config.load=null",
                           # without vLLM installed, validate() would refuse the recipe's engine first
                           *([] if importlib.util.find_spec("vllm") else ["generate_config.engine=builtin"])],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "num_npus=256" in proc.stderr and "examples/grpo/grpo_trainer_<recipe>.sh" in proc.stderr


def test_collective_timeout_from_argument_env_or_default(monkeypatch):
    monkeypatch.delenv("MINDRL_COLLECTIVE_TIMEOUT_S", raising=False)
    assert collective_timeout_s() == 1800.0
    monkeypatch.setenv("MINDRL_COLLECTIVE_TIMEOUT_S", "42")
    assert collective_timeout_s() == 42.0 and collective_timeout_s(7) == 7.0
    monkeypatch.setenv("MINDRL_COLLECTIVE_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="MINDRL_COLLECTIVE_TIMEOUT_S='soon'"):
        collective_timeout_s()


def test_launcher_config_keys_are_validated():
    cfg = _cfg("rl_config.launcher.failure_timeout_s=0", "rl_config.launcher.collective_timeout_s=30")
    with pytest.raises(ConfigError, match=r"rl_config.launcher.failure_timeout_s=0.0 must be > 0 seconds"):
        check_config(cfg, check_paths=False)
    assert cfg.rl_config.launcher.collective_timeout_s == 30.0


def test_loopback_detection():
    assert is_loopback("127.0.0.1:6379") and is_loopback("localhost") and is_loopback("127.0.0.1")
    assert not is_loopback("10.0.0.1:6379") and not is_loopback(None)


def test_failure_message_names_rank_node_reason_and_log_tail(tmp_path):
    import ray.exceptions as rex

    from mindrl.launch.failures import failure_message as _failure_message
    from mindrl.launch.failures import rank_log_path
    from mindrl.launch.placement import RankSlot

    rank_log_path(tmp_path, 3).write_text("".join(f"line {i}\n" for i in range(40)))
    slot = RankSlot(rank=3, node_id="abcdef0123456789", ip="10.0.0.7")
    raised = _failure_message(slot, rex.RayTaskError("run", "Traceback ...", ValueError("boom")), str(tmp_path), 8)
    assert raised.startswith("rank 3 of 8 on node 10.0.0.7 (node abcdef01) raised ValueError: boom")
    assert "line 39" in raised and "line 19" not in raised  # the last 20 lines
    died = _failure_message(slot, rex.ActorDiedError(), str(tmp_path), 8)
    assert "rank 3 of 8 on node 10.0.0.7 (node abcdef01) died (The actor died unexpectedly" in died
    missing = _failure_message(RankSlot(rank=5, node_id="n", ip="10.0.0.8"), rex.ActorDiedError(), str(tmp_path), 8)
    assert "no log readable here" in missing and "it is on the rank's node" in missing


def test_first_failure_is_by_when_it_happened_not_when_it_arrived(tmp_path):
    """A dead rank's last heartbeat is before its peers' exceptions (they raised because it died), even when
    their exceptions reach the driver first; an exception stamped before the heartbeat wins instead."""
    import ray.exceptions as rex

    from mindrl.launch.failures import FAILED_AT, classify, first_failure, heartbeat_path
    from mindrl.launch.placement import RankSlot

    def raised(at: float | None) -> rex.RayTaskError:
        cause = RuntimeError("Connection closed by peer")
        if at is not None:
            setattr(cause, FAILED_AT, at)
        return rex.RayTaskError("run", "Traceback ...", cause)

    slot = [RankSlot(rank=r, node_id=f"node{r}", ip="10.0.0.1") for r in range(3)]
    heartbeat_path(tmp_path, 1).write_text("100.000\n")
    survivors = [classify(slot[0], raised(100.2), 100.25, tmp_path, started=50.0),
                 classify(slot[2], raised(100.3), 100.31, tmp_path, started=50.0)]
    dead = classify(slot[1], rex.ActorDiedError(), 100.9, tmp_path, started=50.0)
    assert (dead.at, dead.died, dead.source) == (100.0, True, "heartbeat")
    assert [(f.at, f.source) for f in survivors] == [(100.2, "raised"), (100.3, "raised")]
    assert first_failure([*survivors, dead]) is dead  # arrived last, happened first
    earlier = classify(slot[2], raised(99.5), 100.95, tmp_path, started=50.0)
    assert first_failure([*survivors, dead, earlier]) is earlier
    # A heartbeat from before this run started is a previous run's: the death counts from its arrival.
    stale = classify(slot[1], rex.ActorDiedError(), 100.9, tmp_path, started=100.5)
    assert (stale.at, stale.source) == (100.9, "arrival") and first_failure([*survivors, stale]) is survivors[0]
    # No stamp (an exception type that refused the attribute): its arrival time stands in.
    unstamped = classify(slot[0], raised(None), 101.0, tmp_path)
    assert (unstamped.at, unstamped.source) == (101.0, "arrival")
    # Same time: the death is the likelier cause.
    tie = classify(slot[0], raised(100.0), 100.1, tmp_path, started=50.0)
    assert first_failure([tie, dead]) is dead
