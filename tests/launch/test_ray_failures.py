"""Ray driver failure handling and placement on the simulated 2-node cluster (tests/launch/conftest.py), driven
from this process: who is blamed when a rank dies, start-up calls that fail, node groups on distinct machines,
and the placement timeout. Small rank functions (tests/launch/ray_rank_fns.py), no training: seconds each.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from mindrl.launch.placement import PlacementError
from tests.launch import ray_rank_fns
from tests.launch.conftest import DEVICES_PER_NODE


@pytest.fixture(scope="module")
def driver(cluster):
    """This process as a Ray driver of the test cluster; disconnected at the end (the cluster stays up)."""
    import ray
    import ray.cloudpickle

    from mindrl.launch.ray_driver import connect

    ray.cloudpickle.register_pickle_by_value(ray_rank_fns)  # Ray workers need not import tests/
    connect(cluster)
    yield cluster
    ray.shutdown()


def _cfg(out, world: int, **extra) -> SimpleNamespace:
    return SimpleNamespace(backend="cpu", rl_config=SimpleNamespace(actor_resource=SimpleNamespace(num_npus=world)),
                           megatron_training=SimpleNamespace(output_dir=str(out)), **extra)


def _free_devices() -> float:
    import ray

    return ray.available_resources().get("mindrl_cpu", 0)


def _settled(expected: float, timeout_s: float = 30.0) -> float:
    """Ray's resource view lags a little behind removals: wait until `expected` devices are free again."""
    deadline = time.monotonic() + timeout_s
    while _free_devices() != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return _free_devices()


# slow: a 3-rank Ray job with a paused raylet (~40 s idle); the default suite keeps the other failure reports
@pytest.mark.slow
def test_killed_rank_is_blamed_even_when_its_peers_errors_arrive_first(driver, tmp_path):
    """Rank 1 of 3 dies (SIGKILL) while ranks 0 and 2 wait on it in an all-reduce; they raise at once, and its
    node reports the death 2 s late, so their errors reach the driver first. The failure is rank 1's."""
    from mindrl.launch.failures import death_time_from_ray
    from mindrl.launch.ray_driver import RankFailure, RayLaunch, run_on_ray

    launch = RayLaunch(address=driver, devices_per_node=3, placement_timeout_s=60, failure_timeout_s=40,
                       log_dir=str(tmp_path / "logs"))
    t0 = time.monotonic()
    with pytest.raises(RankFailure) as err:
        run_on_ray(ray_rank_fns.die_in_collective, _cfg(tmp_path, 3, victim=1, pause_raylet_s=2.0), launch)
    msg = str(err.value)
    assert msg.startswith("rank 1 of 3 on node 127.0.0.1") and " died (" in msg, msg
    # Both survivors raised after it, and the message says so (their times relative to rank 1's heartbeat).
    assert "it failed first (heartbeat time" in msg and "rank 0 raised +" in msg and "rank 2 raised +" in msg, msg
    assert "rank 1 kills itself at" in msg  # rank 1's own log tail
    # Each time came from where it should: the survivors' stamps survived Ray's serialization.
    first, *others = [(f.slot.rank, f.died, f.source) for f in err.value.failures]
    assert first == (1, True, "heartbeat") and sorted(others) == [(0, False, "raised"), (2, False, "raised")]
    # The fallback without a readable heartbeat: Ray's time of death, after the last heartbeat. (It can be a
    # little after the driver saw the death: Ray may first report the actor unreachable, then dead.)
    dead = err.value.failures[0]
    assert dead.at <= death_time_from_ray(dead.err.actor_id) <= dead.arrived + 10
    assert time.monotonic() - t0 < 40 + 30
    assert _settled(2 * DEVICES_PER_NODE) == 2 * DEVICES_PER_NODE  # every rank stopped, the group removed


@pytest.mark.parametrize("fail,rank,phase", [("info", 1, "reporting its node and devices (RankActor.info)"),
                                             ("free_port", 0, "finding a free port on 127.0.0.1")])
def test_start_up_call_failures_are_rank_failures(driver, tmp_path, monkeypatch, fail, rank, phase):
    import mindrl.launch.ray_driver as rd

    monkeypatch.setattr(ray_rank_fns.FaultyRankActor, "fail", fail)
    monkeypatch.setattr(rd, "RankActor", ray_rank_fns.FaultyRankActor)
    with pytest.raises(rd.RankFailure) as err:
        rd.run_on_ray(ray_rank_fns.where, _cfg(tmp_path, 2), rd.RayLaunch(address=driver, devices_per_node=1,
                                                                          placement_timeout_s=60))
    msg = str(err.value)
    assert msg.startswith(f"rank {rank} of 2 on node 127.0.0.1") and "raised OSError" in msg, msg
    assert f"while {phase}" in msg and "before training started" in msg, msg
    assert not list(tmp_path.glob("node_*"))  # no rank ran
    assert _settled(2 * DEVICES_PER_NODE) == 2 * DEVICES_PER_NODE


def test_node_groups_land_on_distinct_machines(driver, tmp_path):
    """Two 1-device node groups on a cluster whose every node has 3 devices: one machine could hold both, but
    each "node" of the job must be its own machine. While another job holds all of one node's devices the job is
    refused (only one machine is free); once released, its two ranks run on the two machines."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from mindrl.launch.ray_driver import RayLaunch, cluster_nodes, run_on_ray

    launch = RayLaunch(address=driver, devices_per_node=1, placement_timeout_s=60)
    other = placement_group([{"mindrl_cpu": DEVICES_PER_NODE}], strategy="STRICT_PACK")
    ray.get(other.ready(), timeout=60)
    try:
        deadline = time.monotonic() + 30  # until the resource view shows the held node
        while min(n.available for n in cluster_nodes("mindrl_cpu")) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(PlacementError, match=r"requested 2 'mindrl_cpu' devices as 2 node\(s\) x 1, but the "
                                                 r"cluster can host only 1 such group\(s\), one per machine"):
            run_on_ray(ray_rank_fns.where, _cfg(tmp_path, 2), launch)
    finally:
        remove_placement_group(other)
    assert not list(tmp_path.glob("node_*"))
    _settled(2 * DEVICES_PER_NODE)
    run_on_ray(ray_rank_fns.where, _cfg(tmp_path, 2), launch)
    ran_on = {(tmp_path / f"node_{r}").read_text() for r in range(2)}
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(ran_on) == 2 and ran_on <= alive


def test_placement_not_ready_within_the_timeout_is_removed_and_reported(driver, monkeypatch):
    """Another job holds 2 devices on each node after the capacity check saw them free (a stale view): the
    placement cannot become ready, and after the timeout it is removed and the error says what was asked."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    import mindrl.launch.ray_driver as rd

    other = placement_group([{"mindrl_cpu": 2}] * 2, strategy="STRICT_SPREAD")
    ray.get(other.ready(), timeout=60)
    try:
        monkeypatch.setattr(rd, "check_capacity", lambda *a: None)  # the capacity check passed a moment ago
        t0 = time.monotonic()
        with pytest.raises(PlacementError) as err:
            rd._reserve("mindrl_cpu", 4, 2, timeout_s=3)
        assert 3 <= time.monotonic() - t0 < 30
        msg = str(err.value)
        assert msg.startswith("placement not satisfiable within 3s: requested 2 distinct node(s) x 2 'mindrl_cpu' "
                              "(4 devices); available per node: 127.0.0.1"), msg
        assert msg.count(f": 1 of {DEVICES_PER_NODE} mindrl_cpu free") == 2, msg
        ours = [g for g in placement_group_table().values() if g["name"] == "mindrl_nodes"]
        assert ours and all(g["state"] == "REMOVED" for g in ours)  # nothing left pending
    finally:
        remove_placement_group(other)
    assert _settled(2 * DEVICES_PER_NODE) == 2 * DEVICES_PER_NODE
