"""The per-node logic behind examples/grpo/grpo_trainer_<recipe>.sh: the same command on every node.

    python -m mindrl.launch.ray_node train --config-name <recipe> [overrides]   # what the scripts run
    python -m mindrl.launch.ray_node role  --config-name <recipe> [overrides]   # prints single|simulate|head|worker

Environment (all optional with NNODES=1):
    NNODES            nodes in the job (default 1: train here with the spawn launcher, no Ray)
    DEVICES_PER_NODE  devices per node (default: this node's device count; cpu: num_npus / NNODES)
    MASTER_ADDR       the head node's address (required when NNODES > 1)
    MASTER_PORT       the Ray head (GCS) port (default 6379; simulated: a free port)
    NODE_IP           this node's address (default: the local address that routes to MASTER_ADDR)
    NODE_RANK         optional: 0 makes this node the head, others workers (default: head iff
                      NODE_IP == MASTER_ADDR); two invocations on one machine need it
    SIMULATE_LOCAL=1  start NNODES Ray nodes on this machine (127.0.0.1 only) and train across them
    RAY_JOIN_RETRIES, RAY_JOIN_INTERVAL_S   workers: how long to wait for the head (30 x 10 s)
    RAY_OBJECT_STORE_BYTES                  object store per node (default 256 MB: only configs pass)
    RAY_NODE_TMPDIR                         Ray's temp/log dir on the head (simulated: a fresh one)

Head: `ray start --head` with the device resource, the trainer (`train_grpo --launcher ray`, which
waits for NNODES x DEVICES_PER_NODE devices and names what is missing), then stops the Ray processes
it started. Worker: joins with bounded retries, stays while the head is up, then leaves. Only
processes started here are ever signalled (each `ray start --block` runs in its own session).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mindrl.backends.distributed import free_port


class NodeError(RuntimeError):
    """A node could not start or join; the message says what to check."""


@dataclass
class NodeEnv:
    nnodes: int
    devices_per_node: int
    master_addr: str
    master_port: int
    node_ip: str
    node_rank: int | None
    simulate: bool
    resource: str
    output_dir: str
    num_npus: int


def _int_env(name: str, default: int | None) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise NodeError(f"{name}={value!r}: expected an integer") from None


def _route_ip(target: str) -> str:
    """The local address this machine uses to reach `target` (no packet is sent: UDP connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((target, 9))
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def node_env(cfg: Any) -> NodeEnv:
    """Read and check the node variables against the recipe, before anything starts."""
    from mindrl.backends import get_backend

    backend = get_backend(cfg.backend)
    nnodes = _int_env("NNODES", 1) or 1
    simulate = os.environ.get("SIMULATE_LOCAL", "0") not in ("", "0", "false", "no")
    num_npus = cfg.rl_config.actor_resource.num_npus
    default_dpn = None
    devices = backend.local_device_count() if type(backend).is_available() else None
    if simulate or (type(backend).is_available() and devices is None):  # ranks are processes: split evenly
        default_dpn = num_npus // nnodes if num_npus % nnodes == 0 else None
    else:
        default_dpn = devices
    if nnodes == 1 and not simulate:
        default_dpn = default_dpn or num_npus  # one node: the spawn launcher checks the count itself
    dpn = _int_env("DEVICES_PER_NODE", default_dpn)
    if dpn is None or dpn < 1:
        raise NodeError(f"set DEVICES_PER_NODE (devices of each node; rl_config.actor_resource.num_npus={num_npus}, "
                        f"NNODES={nnodes})")
    if nnodes > 1 and nnodes * dpn != num_npus:
        raise NodeError(f"rl_config.actor_resource.num_npus={num_npus} but NNODES x DEVICES_PER_NODE = {nnodes} x "
                        f"{dpn} = {nnodes * dpn}; make them equal (override rl_config.actor_resource.num_npus=...)")
    master = os.environ.get("MASTER_ADDR", "").strip()
    if simulate:
        master = "127.0.0.1"
    elif nnodes > 1 and not master:
        raise NodeError("NNODES > 1 needs MASTER_ADDR (the head node's address) on every node")
    port = _int_env("MASTER_PORT", None) or (free_port() if simulate else 6379)
    node_ip = "127.0.0.1" if simulate else (os.environ.get("NODE_IP", "").strip() or _route_ip(master or "127.0.0.1"))
    return NodeEnv(nnodes=nnodes, devices_per_node=dpn, master_addr=master or "127.0.0.1", master_port=port,
                   node_ip=node_ip, node_rank=_int_env("NODE_RANK", None), simulate=simulate,
                   resource=backend.ray_resource, output_dir=cfg.megatron_training.output_dir, num_npus=num_npus)


def role(env: NodeEnv) -> str:
    if env.simulate:
        return "simulate"
    if env.nnodes == 1:
        return "single"
    if env.node_rank is not None:
        return "head" if env.node_rank == 0 else "worker"
    local = {env.node_ip, "127.0.0.1"}
    try:
        local |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return "head" if env.master_addr in local else "worker"


def _reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class RayNode:
    """One `ray start --block` we started, in its own session, so stopping it touches nothing else."""

    def __init__(self, name: str, args: list[str], log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(extra_env or {})}
        cmd = [sys.executable, "-m", "mindrl.launch.ray_node", "ray-start", "--", "start", "--block", *args]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (Ray drains and stops its processes), then SIGKILL to our session if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # the session holds only processes this node started (raylet, gcs, agents, workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _ray_args(env: NodeEnv, head: bool, node_rank: int | None = None) -> list[str]:
    """`ray start` arguments. A node that knows its rank (the head is 0; a worker from NODE_RANK;
    simulated nodes by index) declares it as a resource, so a head that times out waiting can name
    the nodes that never joined."""
    from mindrl.launch.loopback import is_loopback
    from mindrl.launch.placement import NODE_RANK_RESOURCE

    custom: dict[str, int] = {} if env.resource == "GPU" else {env.resource: env.devices_per_node}
    if node_rank is not None:
        custom[f"{NODE_RANK_RESOURCE}{node_rank}"] = 1
    resources = (["--num-gpus", str(env.devices_per_node)] if env.resource == "GPU" else []) + (
        ["--resources", json.dumps(custom)] if custom else [])
    args = [*resources, "--node-ip-address", env.node_ip, "--disable-usage-stats",
            "--object-store-memory", str(_int_env("RAY_OBJECT_STORE_BYTES", 256 * 2**20))]
    if head:
        args += ["--head", "--port", str(env.master_port), "--include-dashboard", "false"]
        tmp = os.environ.get("RAY_NODE_TMPDIR")
        if tmp:
            args += ["--temp-dir", tmp]
    else:
        args += ["--address", f"{env.master_addr}:{env.master_port}"]
    if env.simulate or is_loopback(env.node_ip):
        # Several raylets on one machine: every port random, so they never collide with each other
        # (or with another Ray on the box); CPUs logical (ranks ask num_cpus=0).
        args += ["--num-cpus", "1", "--min-worker-port", "0", "--max-worker-port", "0",
                 "--node-manager-port", "0", "--object-manager-port", "0",
                 "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                 "--runtime-env-agent-port", str(free_port())]
        # One log monitor per machine (as ray.cluster_utils does): two would stream every line twice.
        args += ["--ray-client-server-port", str(free_port())] if head else ["--include-log-monitor", "false"]
    return args


def _wait_up(node: RayNode, host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not node.alive():
            raise NodeError(f"{node.name}: `ray start` exited with {node.proc.returncode}; log {node.log_path}:\n"
                            f"{node.tail()}")
        if _reachable(host, port, 1.0):
            return
        time.sleep(0.5)
    raise NodeError(f"{node.name}: Ray head not listening on {host}:{port} after {timeout_s:.0f}s; "
                    f"log {node.log_path}:\n{node.tail()}")


def _logs(env: NodeEnv) -> Path:
    return Path(env.output_dir).resolve() / "logs"


def _run_trainer(env: NodeEnv, train_args: list[str], extra_env: dict[str, str]) -> int:
    cmd = [sys.executable, "-m", "mindrl.cli.train_grpo", "--launcher", "ray",
           "--ray-address", f"{env.node_ip}:{env.master_port}", "--nnodes", str(env.nnodes),
           "--devices-per-node", str(env.devices_per_node), *train_args]
    proc = subprocess.Popen(cmd, env={**os.environ, **extra_env})
    try:
        return proc.wait()
    except BaseException:  # Ctrl-C (the driver got it too) or SIGTERM: the driver stops its ranks on SIGINT
        for sig, wait_s in ((None, 5.0), (signal.SIGINT, 60.0), (signal.SIGKILL, 10.0)):
            if proc.poll() is not None:
                break
            if sig is not None:
                proc.send_signal(sig)
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                pass
        raise


def start_nodes(env: NodeEnv, logs: Path, extra_env: dict[str, str] | None = None) -> list[RayNode]:
    """Start this machine's Ray head, plus NNODES-1 more nodes when simulating. Caller stops them."""
    nodes: list[RayNode] = []
    try:
        nodes.append(RayNode("head", _ray_args(env, head=True, node_rank=0), logs / "ray_head.log", extra_env))
        _wait_up(nodes[0], env.node_ip, env.master_port, 180)
        if env.simulate:
            for i in range(1, env.nnodes):
                nodes.append(RayNode(f"node{i}", _ray_args(env, head=False, node_rank=i), logs / f"ray_node{i}.log",
                                     extra_env))
    except BaseException:
        for node in reversed(nodes):
            node.stop()
        raise
    return nodes


def run_head(env: NodeEnv, train_args: list[str]) -> int:
    """Head (or the whole simulated cluster): start Ray, train across it, stop what was started."""
    logs, nodes = _logs(env), []
    extra: dict[str, str] = {}
    if env.simulate:
        # All simulated ranks share this machine's cores, as the spawn launcher's ranks do.
        extra["MINDRL_CPU_THREADS"] = os.environ.get("MINDRL_CPU_THREADS") or str(
            max(1, (os.cpu_count() or 1) // max(1, env.num_npus)))
        if not os.environ.get("RAY_NODE_TMPDIR"):
            os.environ["RAY_NODE_TMPDIR"] = f"/tmp/mindrl_ray_{os.getpid()}"
    try:
        nodes = start_nodes(env, logs, extra)
        print(f"[mindrl] Ray head on {env.node_ip}:{env.master_port}; waiting for {env.nnodes} node(s) x "
              f"{env.devices_per_node} '{env.resource}'. Logs: {logs}", flush=True)
        return _run_trainer(env, train_args, extra)
    finally:
        for node in reversed(nodes):
            node.stop()


def run_worker(env: NodeEnv) -> int:
    """Join the head with bounded retries; stay while the head is up; leave when it goes away."""
    retries, interval = _int_env("RAY_JOIN_RETRIES", 30), float(os.environ.get("RAY_JOIN_INTERVAL_S", "10"))
    where = f"{env.master_addr}:{env.master_port}"
    log = _logs(env) / f"ray_worker_{env.node_ip}_{os.getpid()}.log"
    for attempt in range(1, retries + 1):
        if not _reachable(env.master_addr, env.master_port):
            print(f"[mindrl] head {where} not up yet (try {attempt}/{retries})", flush=True)
            time.sleep(interval)
            continue
        node = RayNode("worker", _ray_args(env, head=False, node_rank=env.node_rank), log)
        try:
            down = 0
            while node.alive():
                time.sleep(2.0)
                down = 0 if _reachable(env.master_addr, env.master_port) else down + 1
                if down >= 3:  # the head stopped its Ray: the job is over
                    print(f"[mindrl] head {where} is gone: leaving the cluster", flush=True)
                    return 0
            print(f"[mindrl] `ray start` exited with {node.proc.returncode} (try {attempt}/{retries}); "
                  f"log {log}:\n{node.tail()}", file=sys.stderr, flush=True)
        finally:
            node.stop()
        time.sleep(interval)
    print(f"error: could not join the Ray head at {where} after {retries} tries, {interval:g}s apart; check "
          f"MASTER_ADDR/MASTER_PORT and that the head node is running the same script", file=sys.stderr)
    return 1


def _ray_start(argv: list[str]) -> int:
    """`ray start ...`, keeping a loopback --node-ip-address/--address as given (see loopback.py)."""
    from mindrl.launch.loopback import is_loopback, keep_loopback

    if any(is_loopback(a) for a in argv):
        keep_loopback()
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *argv]
    return int(ray_main() or 0)


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ray-start"]:
        return _ray_start(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    p = argparse.ArgumentParser(prog="python -m mindrl.launch.ray_node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("train", "role", "join"))
    p.add_argument("--config-name", default="grpo_tiny_cpu")
    p.add_argument("--config-dir", default=None)
    args, rest = p.parse_known_args(argv)
    from mindrl.config import ConfigError, load_config

    overrides = [a for a in rest if a != "--"]
    try:
        cfg = load_config(args.config_name, overrides, args.config_dir)
        env = node_env(cfg)
    except (ConfigError, NodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kind = role(env)
    if args.command == "role":
        print(kind)
        return 0
    train_args = ["--config-name", args.config_name, *(["--config-dir", args.config_dir] if args.config_dir else []),
                  *overrides]
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        if kind == "single":
            return subprocess.call([sys.executable, "-m", "mindrl.cli.train_grpo", *train_args])
        if kind == "worker" or args.command == "join":
            return run_worker(env)
        return run_head(env, train_args)
    except NodeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[mindrl] interrupted: stopped the Ray processes this script started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
