"""Scale-out on Ray: a provider served by N replicas, and sweeps of many runs.

Importing this package never imports ray (``import blackbox`` stays light); ray loads when a
:class:`ReplicaPool` is built or a sweep runs with ``backend="ray"``. Without the ``[ray]``
extra those raise one line naming what to install.

* :class:`ReplicaPool` — a :class:`~blackbox.provider.Provider` whose calls are split by rows
  across Ray actors, each holding its own instance of the provider; wrap it in a
  :class:`~blackbox.client.Client` and the cache and the ledger stay in the driver.
* :func:`configure` / :func:`client_for` — the process-wide replica setting that
  ``blackbox optimize --replicas N`` sets, and the Client an objective asks for by spec.
* :func:`served` — a block in which a method that loads its model by spec gets it from
  replicas (``unlearn`` and ``crosstune`` with ``--replicas N``).
* the ``ray:`` provider kind (:mod:`.spec`) — ``ray:SPEC?replicas=N``, a pool wherever a spec is taken.
* :mod:`.sweep` — ``blackbox sweep``: a grid of runs, one run directory each, resumable.
"""

from __future__ import annotations

from typing import Any

from ._ray import RAY_PIN, connect, require_ray
from .context import client_for, configure, current, reset, served

__all__ = ["ReplicaPool", "RAY_PIN", "connect", "require_ray", "configure", "client_for", "current", "reset", "served"]


def __getattr__(name: str) -> Any:
    # ReplicaPool's module imports the provider machinery; keep it out of `import blackbox.scale`.
    if name == "ReplicaPool":
        from .pool import ReplicaPool

        return ReplicaPool
    raise AttributeError(f"module 'blackbox.scale' has no attribute {name!r}")
