"""Misbehaving scorers for the sandbox tests. Module-level so that workers can unpickle them by name."""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Mapping


def echo(completion: str, labels: Mapping[str, Any]) -> float:
    """labels["x"], so every result can be checked against its own row (order preserved)."""
    return float(labels["x"])


def length(completion: str, labels: Mapping[str, Any], *, scale: float = 1.0) -> float:
    return len(completion) * scale


def spin(completion: str, labels: Mapping[str, Any]) -> float:
    """Burns CPU in Python when the completion says so: the worker's CPU-time timer stops it."""
    if completion == "spin":
        while True:
            pass
    return float(labels["x"])


def sleepy(completion: str, labels: Mapping[str, Any]) -> float:
    """Blocks without using CPU (a hung call): only the caller's wall-clock deadline stops it."""
    if completion == "sleep":
        time.sleep(60)
    return float(labels["x"])


def swallows(completion: str, labels: Mapping[str, Any]) -> float:
    """Catches the timeout and keeps going, like a bare ``except:`` in a library."""
    if completion == "swallow":
        while True:
            try:
                while True:
                    pass
            except BaseException:  # noqa: BLE001 - misbehaving on purpose
                continue
    return float(labels["x"])


def masks_timer(completion: str, labels: Mapping[str, Any]) -> float:
    """Blocks the timer signal, then spins."""
    if completion == "mask":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF})
        while True:
            pass
    return float(labels["x"])


def busy_c_loop(completion: str, labels: Mapping[str, Any]) -> float:
    """A long loop inside one C call (sum over a range): signal handlers cannot run until it ends."""
    if completion == "busy":
        return float(sum(range(10 ** 11)))
    return float(labels["x"])


def raises(completion: str, labels: Mapping[str, Any]) -> float:
    if completion == "raise":
        raise RuntimeError("scorer bug")
    return float(labels["x"])


def crashes(completion: str, labels: Mapping[str, Any]) -> float:
    """Kills its own process, like a segfault in a C extension."""
    if completion == "crash":
        os._exit(3)
    return float(labels["x"])


def nan(completion: str, labels: Mapping[str, Any]) -> float:
    return float("nan") if completion == "nan" else float(labels["x"])


def hog_memory(completion: str, labels: Mapping[str, Any]) -> float:
    """Asks for 16 GiB, far over the worker's address-space limit."""
    if completion == "hog":
        return float(len(bytearray(16 * 1024 ** 3)))
    return float(labels["x"])
