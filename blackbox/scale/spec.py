"""The ``ray:`` provider kind: any provider spec served by Ray replicas, wherever a spec is taken.

``ray:INNER?OPTIONS`` builds a :class:`~blackbox.scale.ReplicaPool` of the spec ``INNER`` with
the options that are not the pool's own, e.g.::

    ray:efficientnet-lite0?size=96&replicas=2
    ray:torch:blackbox.testing:tiny_image_classifier?replicas=4&ray_address=auto&replica_timeout=60

so every command or method that loads its model from a spec (``--provider``, CrossTune's
encoder, ...) can spread its batched calls over replicas without a change of its own. The pool
options: ``replicas`` (default 2), ``ray_address`` (auto, local or HOST:PORT; default: a local
cluster), ``replica_timeout`` (seconds; default none), ``cpus_per_replica`` (CPUs Ray reserves
for each; default 1, less for a provider that mostly waits on a server). Registered as an entry point of this
distribution; importing this module does not import ray.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from ..errors import SpecError
from ..provider import Provider
from ..types import Capability

__all__ = ["RayProvider", "POOL_OPTIONS"]

POOL_OPTIONS = ("replicas", "ray_address", "replica_timeout", "cpus_per_replica")


class RayProvider(Provider):
    """Factory for ``ray:`` specs (instances are :class:`~blackbox.scale.ReplicaPool` objects)."""

    name: ClassVar[str] = "ray"
    # What a pool can do is what its inner provider can; the kind itself promises nothing.
    declared_capabilities: ClassVar[frozenset[Capability]] = frozenset()
    summary: ClassVar[str] = "any provider spec served by N Ray replicas: ray:SPEC?replicas=N[&ray_address=...]"

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> Provider:  # type: ignore[override]
        """A ReplicaPool of ``target`` (with the options the pool does not take)."""
        from .context import check_replicas
        from .pool import ReplicaPool

        if not target:
            raise SpecError("provider ray: expected a provider spec after 'ray:', e.g. ray:efficientnet-lite0?size=96&replicas=2")
        inner_opts = {k: v for k, v in options.items() if k not in POOL_OPTIONS}
        try:
            replicas = int(options.get("replicas", "2"))
        except ValueError:
            raise SpecError(f"provider ray: replicas: expected an integer >= 1, received {options['replicas']!r}") from None
        timeout = options.get("replica_timeout")
        try:
            timeout_s = None if timeout is None else float(timeout)
        except ValueError:
            raise SpecError(f"provider ray: replica_timeout: expected seconds > 0, received {timeout!r}") from None
        try:
            cpus = float(options.get("cpus_per_replica", "1"))
        except ValueError:
            raise SpecError(f"provider ray: cpus_per_replica: expected a number >= 0, received {options['cpus_per_replica']!r}") from None
        settings = check_replicas(replicas, options.get("ray_address"), timeout_s)
        inner = target + ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in inner_opts.items()) if inner_opts else "")
        return ReplicaPool(inner, settings.replicas, address=settings.address, timeout=settings.timeout, num_cpus=cpus)
