"""The process-wide replica setting and the Clients objectives ask for by provider spec.

``blackbox optimize --replicas N --ray-address A`` calls :func:`configure`; an objective that
gets its model through :func:`client_for` then talks to N replicas without changing a line:

    from blackbox.scale import client_for

    def loss(X, seed):
        probs = client_for("torch:mypkg.models:build").classify(ClassifyRequest(inputs=...)).scores
        ...

Each spec gets one :class:`~blackbox.client.Client` per process (its ledger counts every query
of the run once), wrapping the provider itself (1 replica, no address: no Ray at all) or a
:class:`~blackbox.scale.ReplicaPool`.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ..errors import bad_value

__all__ = ["Settings", "configure", "current", "client_for", "reset", "served"]


@dataclass(frozen=True)
class Settings:
    """How providers named by spec are served in this process."""

    replicas: int = 1
    address: str | None = None
    timeout: float | None = None

    @property
    def scaled(self) -> bool:
        """True when calls go to Ray replicas (more than one, or an explicit address)."""
        return self.replicas > 1 or self.address is not None


_settings = Settings()
_clients: dict[str, Any] = {}
_lock = threading.Lock()


def check_replicas(replicas: Any, address: Any = None, timeout: Any = None) -> Settings:
    """Validate ``--replicas``/``--ray-address``/timeout values; one line naming the bad one."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise bad_value("replicas", "an integer >= 1", replicas)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise bad_value("ray_address", "auto, local, HOST:PORT or ray://HOST:PORT", address)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 or not math.isfinite(timeout)):
        raise bad_value("replica_timeout", "seconds > 0 or None", timeout)
    return Settings(replicas, None if address is None else address.strip(), None if timeout is None else float(timeout))


def configure(replicas: int = 1, address: str | None = None, timeout: float | None = None) -> Settings:
    """Set how :func:`client_for` serves providers; with replicas > 1 or an address, Ray must be
    installed and reachable (checked now, so a missing extra fails before any work).
    Changing the setting closes the Clients made under the old one."""
    global _settings
    new = check_replicas(replicas, address, timeout)
    if new.scaled:
        from ._ray import connect

        connect(new.address)
    with _lock:
        if new != _settings:
            _close_all()
        _settings = new
    return new


def current() -> Settings:
    """The setting in force."""
    return _settings


def client_for(spec: str) -> Any:
    """The Client serving ``spec`` in this process (made on first use; then the same one)."""
    from ..client import Client, Ledger

    if not isinstance(spec, str) or not spec.strip():
        raise bad_value("spec", "a provider spec string", spec)
    with _lock:
        client = _clients.get(spec)
        if client is None:
            client = Client(make_provider(spec, _settings), ledger=Ledger())
            _clients[spec] = client
        return client


def make_provider(spec: str, settings: Settings | None = None) -> Any:
    """``spec`` loaded in this process, or a :class:`ReplicaPool` of it when ``settings`` scale out."""
    settings = settings or _settings
    if not settings.scaled:
        from ..provider import load_provider

        return load_provider(spec)
    from .pool import ReplicaPool

    return ReplicaPool(spec, settings.replicas, address=settings.address, timeout=settings.timeout)


@contextmanager
def served(specs: Iterable[str | None], replicas: int = 1, address: str | None = None, timeout: float | None = None, *,
           client: bool = False) -> Iterator[list[Any]]:
    """Within the block, ``load_provider(spec)`` for each of ``specs`` gives that provider served by
    ``replicas`` Ray replicas (a :class:`~blackbox.scale.ReplicaPool`; with one replica and no
    address, the provider itself), wrapped in a :class:`~blackbox.client.Client` with its own
    ledger when ``client``. Only the first load of each spec is served so; other loads and other
    specs load as usual. Everything made here is closed at exit. Yields the list of what was
    served (filled as the block loads: a Client's ledger can be read after the block).

    This is how ``--replicas`` reaches a method that loads its model by spec (``unlearn fit``,
    ``crosstune fit``, ...) without a change to the method or to the spec stored in its run:
    replicas do not change results, so they are not part of a run's settings.
    """
    from ..client import Client, Ledger
    from ..provider import LOAD_HOOKS, parse_spec
    from ..registry import providers as provider_registry

    settings = check_replicas(replicas, address, timeout)
    wanted = {str(parse_spec(s)) for s in specs if s}
    if not wanted or not (settings.scaled or client):
        yield []
        return
    if settings.scaled:
        from ._ray import connect

        connect(settings.address)  # a missing extra or an unreachable address fails before any work
    made: list[Any] = []  # pools and clients, closed at exit
    served_now: list[Any] = []  # what load_provider returned, for the caller

    def hook(spec: Any) -> Any:
        # Only the first load of each named spec: a method that loads the same spec again for
        # another role (CrossTune's generator after its feature model) gets its own copy, as without replicas.
        if str(spec) not in wanted:
            return None
        wanted.discard(str(spec))
        if settings.scaled:
            from .pool import ReplicaPool

            provider = ReplicaPool(str(spec), settings.replicas, address=settings.address, timeout=settings.timeout)
        else:
            provider = provider_registry.get(spec.kind).from_spec(spec.target, dict(spec.options))
        made.append(provider)
        if client:
            provider = Client(provider, ledger=Ledger())
            made.append(provider)
        served_now.append(provider)
        return provider

    LOAD_HOOKS.append(hook)
    try:
        yield served_now
    finally:
        LOAD_HOOKS.remove(hook)
        for p in reversed(made):
            try:
                p.close()
            except Exception:  # noqa: BLE001 - closing is best effort (the method may have closed it)
                pass


def _close_all() -> None:
    for client in _clients.values():
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    _clients.clear()


def reset() -> None:
    """Close every Client (and replica) made here and return to one in-process replica."""
    global _settings
    with _lock:
        _close_all()
        _settings = Settings()
