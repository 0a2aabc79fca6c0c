"""Random perturbation directions for finite-difference gradient estimates.

Each sampler maps ``(rng, q, d)`` to a ``(q, d)`` float64 array. Each also names how an
estimate weights a finite difference along it: ``inverse`` (SPSA: multiply by ``1/Δ``
elementwise) or ``direction`` (Gaussian smoothing: multiply by ``Δ`` times a scale so that
``E[w Δᵀ] = I``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UnknownComponentError

Sampler = Callable[[np.random.Generator, int, int], np.ndarray]


# Byte value -> its eight bits (most significant first) as ±1.0: one gather per byte.
_SIGNS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64) * 2.0 - 1.0


def rademacher(rng: np.random.Generator, q: int, d: int) -> np.ndarray:
    """±1 with equal probability (classic SPSA)."""
    # One random byte gives eight signs: 8x fewer draws than one integer per coordinate, and
    # a table lookup turns them into floats in one pass.
    nbytes = (d + 7) // 8
    out = _SIGNS.take(rng.integers(0, 256, size=(q, nbytes), dtype=np.uint8), axis=0).reshape(q, nbytes * 8)
    return out if nbytes * 8 == d else np.ascontiguousarray(out[:, :d])


def segmented_uniform(rng: np.random.Generator, q: int, d: int) -> np.ndarray:
    """Random sign times U[0.5, 1] (BlackVIP): bounded away from 0 so ``1/Δ`` stays ≤ 2."""
    # One uniform draw per coordinate: its sign is the sign, its magnitude maps onto [0.5, 1].
    u = rng.uniform(-1.0, 1.0, size=(q, d))
    # In place (same values as copysign(0.5 + 0.5|u|, u)): one temporary instead of four.
    out = np.abs(u)
    out *= 0.5
    out += 0.5
    return np.copysign(out, u, out=out)


def gaussian(rng: np.random.Generator, q: int, d: int) -> np.ndarray:
    """Standard normal directions (Gaussian smoothing, MeZO)."""
    return rng.standard_normal(size=(q, d))


def sphere(rng: np.random.Generator, q: int, d: int) -> np.ndarray:
    """Uniform on the unit sphere."""
    z = rng.standard_normal(size=(q, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


@dataclass(frozen=True)
class Perturbation:
    """A named sampler and the weighting its estimate uses."""

    name: str
    sample: Sampler
    weighting: str  # "inverse" or "direction"

    def weights(self, directions: np.ndarray) -> np.ndarray:
        """Per-direction multipliers ``w`` with ``E[w Δᵀ] = I`` (so estimates are unbiased)."""
        if self.name == "rademacher":
            return directions  # 1/(±1) = ±1: skip a division per coordinate
        if self.weighting == "inverse":
            return 1.0 / directions
        if self.name == "sphere":
            return directions * directions.shape[1]
        return directions


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("rademacher", rademacher, "inverse"),
        Perturbation("segmented", segmented_uniform, "inverse"),
        Perturbation("gaussian", gaussian, "direction"),
        Perturbation("sphere", sphere, "direction"),
    )
}


def get_perturbation(name: str) -> Perturbation:
    """Look up a perturbation by name; unknown names list the valid ones."""
    try:
        return PERTURBATIONS[name]
    except KeyError:
        raise UnknownComponentError("perturbation", name, sorted(PERTURBATIONS)) from None
