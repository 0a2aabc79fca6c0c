"""Gain schedules: pure functions of the 1-based step ``k``, serialisable as dicts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PowerDecay:
    """``scale / (k + offset) ** exponent`` (SPSA: ``a/(k+o)^α`` and, with offset 0, ``c/k^γ``)."""

    scale: float
    exponent: float
    offset: float = 0.0

    def __call__(self, k: int) -> float:
        return self.scale / (k + self.offset) ** self.exponent


@dataclass(frozen=True)
class Constant:
    """The same value at every step."""

    value: float

    def __call__(self, k: int) -> float:
        return self.value


@dataclass(frozen=True)
class Cosine:
    """Cosine decay from ``init`` to ``final`` over ``steps`` steps, then flat at ``final``."""

    init: float
    steps: int
    final: float = 0.0

    def __call__(self, k: int) -> float:
        t = min(max(k - 1, 0), self.steps) / max(self.steps, 1)
        return self.final + 0.5 * (self.init - self.final) * (1.0 + math.cos(math.pi * t))


Schedule = PowerDecay | Constant | Cosine
_KINDS = {"power": PowerDecay, "constant": Constant, "cosine": Cosine}


def to_dict(s: Schedule) -> dict[str, Any]:
    """Serialise a schedule (``{"kind": ..., **fields}``)."""
    kind = next(k for k, v in _KINDS.items() if isinstance(s, v))
    return {"kind": kind, **asdict(s)}


def from_dict(d: dict[str, Any]) -> Schedule:
    """Inverse of :func:`to_dict`."""
    d = dict(d)
    return _KINDS[d.pop("kind")](**d)
