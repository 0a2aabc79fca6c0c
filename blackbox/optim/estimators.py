"""Finite-difference gradient estimates along random directions (pure functions).

Two-sided: probes ``θ ± cΔ_i``; ``ĝ = mean_i (L⁺_i − L⁻_i)/(2c) · w_i``.
One-sided: probes ``θ`` (the shared pivot) and ``θ + cΔ_i``; ``ĝ = mean_i (L_i − L_0)/c · w_i``.
``w_i`` is ``1/Δ_i`` (SPSA) or ``Δ_i`` scaled (Gaussian smoothing); see ``perturbations``.
All probes of one estimate are meant to be evaluated on the same minibatch / noise seed
(common random numbers), which the caller arranges.
"""

from __future__ import annotations

import numpy as np


def queries_per_estimate(q: int, two_sided: bool) -> int:
    """Objective evaluations one estimate costs: ``2q`` two-sided, ``q + 1`` one-sided."""
    return 2 * q if two_sided else q + 1


def probe_points(theta: np.ndarray, c: float, directions: np.ndarray, two_sided: bool) -> np.ndarray:
    """Rows to evaluate: two-sided ``[θ+cΔ_1, θ−cΔ_1, …]``; one-sided ``[θ, θ+cΔ_1, …]``."""
    q, d = directions.shape
    if two_sided:
        out = np.empty((2 * q, d), dtype=np.float64)
        np.multiply(directions, c, out=out[0::2])
        np.negative(out[0::2], out=out[1::2])
        out += theta
        return out
    out = np.empty((q + 1, d), dtype=np.float64)
    out[0] = theta
    np.multiply(directions, c, out=out[1:])
    out[1:] += theta
    return out


def finite_differences(losses: np.ndarray, c: float, q: int, two_sided: bool) -> np.ndarray:
    """Directional derivative estimates ``(q,)`` from the probe losses, in probe order."""
    losses = np.asarray(losses, dtype=np.float64)
    if two_sided:
        return (losses[0::2] - losses[1::2]) / (2.0 * c)
    return (losses[1:] - losses[0]) / c


def estimate_gradient(
    losses: np.ndarray, c: float, weights: np.ndarray, two_sided: bool
) -> np.ndarray:
    """Average over the q directions of ``difference_i · w_i`` (``weights`` is ``(q, d)``)."""
    q = weights.shape[0]
    diffs = finite_differences(losses, c, q, two_sided)
    return diffs @ weights / q
