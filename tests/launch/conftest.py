"""A simulated 2-node Ray cluster on 127.0.0.1 for the Ray launch tests, started once for tests/launch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "MINDRL_CPU_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
DEVICES_PER_NODE = 3  # more than the 1 per node most jobs ask for: node groups must still land on distinct machines


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    """Two Ray nodes on 127.0.0.1 with 3 `mindrl_cpu` each, started by mindrl.launch.ray_node (the code under
    test); always stopped. Yields the head's address."""
    from mindrl.backends.distributed import free_port
    from mindrl.launch.ray_node import NodeEnv, start_nodes

    logs = tmp_path_factory.mktemp("ray_cluster")
    env = NodeEnv(nnodes=2, devices_per_node=DEVICES_PER_NODE, master_addr="127.0.0.1", master_port=free_port(),
                  node_ip="127.0.0.1", node_rank=None, simulate=True, resource="mindrl_cpu", output_dir=str(logs),
                  num_npus=2 * DEVICES_PER_NODE)
    tmp = f"/tmp/mindrl_ray_test_{os.getpid()}"  # Ray's sockets need a short path
    os.environ["RAY_NODE_TMPDIR"] = tmp
    try:
        nodes = start_nodes(env, logs, {"MINDRL_CPU_THREADS": "1"})
    finally:
        os.environ.pop("RAY_NODE_TMPDIR", None)
    try:
        address = f"127.0.0.1:{env.master_port}"
        # Both nodes registered before any test runs (tests that count nodes must not race node1's start).
        ready = subprocess.run([sys.executable, "-c", "from mindrl.launch.ray_driver import connect, wait_for_devices; "
                                f"connect('{address}'); wait_for_devices('mindrl_cpu', 2, {DEVICES_PER_NODE}, 300)"],
                               cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
        assert ready.returncode == 0, ready.stderr[-3000:]
        yield address
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
