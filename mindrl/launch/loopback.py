"""Keep a Ray cluster on 127.0.0.1 when asked to (the simulated cluster, tests).

Ray's `ray start` and `ray.init` replace a loopback address by the machine's routable one, so
that other machines could reach it. A simulated cluster must send nothing to any other address,
so when the address we are given is loopback we keep it: every node then registers as
127.0.0.1 and every Ray server binds there. Real clusters (a routable NODE_IP) are untouched.
"""
from __future__ import annotations

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    return host.strip("[]") in LOOPBACK


def keep_loopback() -> None:
    """Make Ray keep loopback addresses as given (idempotent; only this process)."""
    import ray._private.services as services

    original = services.resolve_ip_for_localhost
    if getattr(original, "_mindrl_keeps_loopback", False):
        return

    def resolve(host: str) -> str:
        if host in LOOPBACK:
            return "127.0.0.1" if host == "localhost" else host
        return original(host)

    resolve._mindrl_keeps_loopback = True  # type: ignore[attr-defined]
    services.resolve_ip_for_localhost = resolve
