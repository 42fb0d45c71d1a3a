"""Which rank failed first, and the message that names it.

When one rank dies, its peers' collectives fail at once (gloo: "Connection closed by peer"), and
their exceptions can reach the driver before Ray reports the death. So the driver does not blame
the first failure to *arrive*: it collects the failures that arrive within a short grace window
and blames the one that *happened* first:

- an exception: the wall-clock time it left `fn` inside the rank (stamped by the rank actor);
- a death: the last sign of life, i.e. the rank's heartbeat file (`rank_<r>.alive` next to its log,
  rewritten every `HEARTBEAT_S`), else the time Ray recorded the death, else when the driver saw it.
  The process died after its last heartbeat, so a death that caused its peers to raise is always
  earlier than their exceptions; an unrelated death less than `HEARTBEAT_S` after another rank's
  exception may be blamed instead of it.

Times from different nodes are compared as they are, so node clocks must agree (NTP) to well under
a second. Ray is imported lazily; `first_failure` is plain logic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mindrl.launch.placement import RankSlot

HEARTBEAT_S = 0.5  # how often a running rank rewrites its `.alive` file
FAILED_AT = "mindrl_failed_at"  # attribute the rank actor sets on an exception: wall time it left fn


def rank_log_path(log_dir: str | Path, rank: int) -> Path:
    return Path(log_dir) / f"rank_{rank:05d}.log"


def heartbeat_path(log_dir: str | Path, rank: int) -> Path:
    return Path(log_dir) / f"rank_{rank:05d}.alive"


def read_heartbeat(log_dir: str | Path, rank: int) -> float | None:
    """The last time the rank said it was alive, or None (not written yet, or not on a shared filesystem)."""
    try:
        return float(heartbeat_path(log_dir, rank).read_text().strip())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log readable here at {path}; it is on the rank's node)"
    return "\n".join(text[-lines:]) if text else f"({path} is empty)"


@dataclass
class Failure:
    slot: RankSlot
    err: BaseException
    arrived: float  # driver's wall clock when the failure reached it
    at: float  # when it happened (see the module docstring); `arrived` when nothing better is known
    died: bool
    source: str  # where `at` came from: "raised" | "heartbeat" | "ray" | "arrival"


def is_death(err: BaseException) -> bool:
    import ray.exceptions as rex

    return isinstance(err, rex.RayActorError) and not isinstance(err, rex.RayTaskError)


def death_time_from_ray(actor_id: str | None) -> float | None:
    """When the GCS marked the actor dead (s), if it says; private API, so any failure is None."""
    if not actor_id:
        return None
    try:
        from ray._private.state import actors

        end_ms = actors(actor_id).get("EndTime", 0)
        return end_ms / 1000.0 if end_ms else None
    except Exception:  # noqa: BLE001 - best effort: the arrival time still bounds it
        return None


def classify(slot: RankSlot, err: BaseException, arrived: float, log_dir: str | Path, started: float = 0.0) -> Failure:
    """A failure with its best-known time of happening. A heartbeat older than `started` (when the
    driver launched the ranks) is a previous run's and is ignored."""
    if not is_death(err):
        cause = getattr(err, "cause", None) or err
        raised = getattr(cause, FAILED_AT, None)
        if isinstance(raised, int | float):
            return Failure(slot, err, arrived, float(raised), died=False, source="raised")
        return Failure(slot, err, arrived, arrived, died=False, source="arrival")
    beat = read_heartbeat(log_dir, slot.rank)
    if beat is not None and beat >= started:
        return Failure(slot, err, arrived, min(beat, arrived), died=True, source="heartbeat")
    ray_t = death_time_from_ray(getattr(err, "actor_id", None))
    if ray_t is not None:
        return Failure(slot, err, arrived, min(ray_t, arrived), died=True, source="ray")
    return Failure(slot, err, arrived, arrived, died=True, source="arrival")


def first_failure(failures: list[Failure]) -> Failure:
    """The failure that happened first; ties go to a death (it is the likelier cause), then the lower rank."""
    return min(failures, key=lambda f: (f.at, not f.died, f.slot.rank))


def _what(err: BaseException) -> str:
    import ray.exceptions as rex

    if isinstance(err, rex.RayTaskError):
        return f"raised {type(err.cause).__name__ if err.cause else 'an error'}: {str(err.cause or err)[-1500:]}"
    if isinstance(err, rex.RayActorError):
        return f"died ({str(err).splitlines()[0][:300]})"
    if isinstance(err, rex.GetTimeoutError):
        return f"did not answer within {err}"
    return f"failed: {type(err).__name__}: {err}"


def failure_message(slot: RankSlot, err: BaseException, log_dir: str, world: int, others: list[Failure] = (),
                    first: Failure | None = None, phase: str | None = None) -> str:
    """`phase`: what the rank was asked before training started (then there is no log to show)."""
    head = f"rank {slot.rank} of {world} on node {slot.ip} (node {slot.node_id[:8]}) {_what(err)}"
    if phase:
        return (f"{head}\nwhile {phase}, before training started; every rank of the job was stopped. Check that "
                f"node's Ray logs (/tmp/ray/session_latest/logs/ there) and that it has the same checkout and "
                f"Python environment as this one.")
    later = ""
    if others and first is not None:
        rows = [f"rank {f.slot.rank} {'died' if f.died else 'raised'} {f.at - first.at:+.2f}s" for f in
                sorted(others, key=lambda f: f.at)]
        later = (f"\nit failed first ({first.source} time {time.strftime('%H:%M:%S', time.localtime(first.at))}"
                 f"); then: {', '.join(rows)}")
    path = rank_log_path(log_dir, slot.rank)
    return (f"{head}{later}\nevery rank of the job was stopped. Last lines of {path}:\n{tail(path)}\n"
            f"Rerun the same command to resume from the last checkpoint.")
