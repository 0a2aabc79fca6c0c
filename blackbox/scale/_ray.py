"""The one place that imports ray: the missing-extra message and cluster connection."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from ..errors import BlackboxError, bad_value

RAY_PIN = "ray==2.60.0"
INSTALL_HINT = f"pip install 'blackbox-adapt[ray]' (or {RAY_PIN})"
INLINE_BYTES = 4 * 1024 * 1024


def require_ray(what: str = "--replicas/--backend ray") -> Any:
    """The ``ray`` module, or one line saying which extra to install when it is missing."""
    try:
        import ray
    except ImportError:
        raise BlackboxError(f"{what}: needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto``/``local``."""
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise bad_value("ray_address", "auto, local, HOST:PORT or ray://HOST:PORT", address)
    return host.strip("[]"), int(port)


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """Connect this process to Ray once and return the ray module.

    ``None``/``"local"`` start a local cluster sized to the machine (or to ``num_cpus``);
    ``"auto"`` joins the cluster started on this machine by ``ray start --head``;
    ``HOST:PORT`` joins a head node (``ray://HOST:PORT`` through Ray Client). An address that
    cannot be reached is one line naming it. A process already connected keeps its connection.
    """
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise bad_value("ray_address", "auto, local, HOST:PORT or ray://HOST:PORT", address)
    address = None if address is None else address.strip()
    remote = address not in (None, "local", "auto")
    if remote:
        host, port = _host_port(address)  # type: ignore[arg-type,misc]
        try:
            with socket.create_connection((host, port), timeout=3.0):
                pass
        except OSError as exc:
            raise BlackboxError(f"ray_address: could not reach a Ray cluster at {address!r} ({exc.strerror or exc}); "
                                "start one with `ray start --head`, or use --ray-address local") from None
    ray = require_ray()
    if ray.is_initialized():
        return ray
    # No usage reporting, no dashboard, no log forwarding to our stdout.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                                  ignore_reinit_error=True)
    if address in (None, "local"):
        # Shards of up to 4 MiB travel inline in the task message rather than through the
        # shared-memory object store: measured 2x less driver overhead per step at d = 10^4
        # (bench/ray_scaling.py). A cluster started by `ray start` keeps its own setting.
        kwargs.update(address="local", num_cpus=num_cpus, _system_config={"max_direct_call_object_size": INLINE_BYTES})
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = "a new local cluster" if address in (None, "local") else repr(address)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = " (is `ray start --head` running on this machine?)" if address == "auto" else ""
        raise BlackboxError(f"ray_address: could not connect to {where}{hint}: {first}") from None
    return ray
