"""The built-in objectives: sphere, rosenbrock, noisy quadratic and logistic regression.

Every objective takes a 1-D parameter vector (or a 2-D batch, one row per candidate — they
declare ``batched = True``) and returns a float loss (or one loss per row). They live apart
from :mod:`blackbox.testing` (which re-exports them) so that :mod:`blackbox.problems` can build
on them without an import cycle.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


def _batched(fn: Any) -> Any:
    fn.batched = True
    return fn


def _rows(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(x, dtype=np.float64)
    return np.atleast_2d(x), x.ndim == 1


@_batched
def sphere(x: np.ndarray) -> Any:
    """``Σ (x_i − 1)²``: minimum 0 at the all-ones vector (so a zero start is not the answer)."""
    X, single = _rows(x)
    out = np.sum((X - 1.0) ** 2, axis=1)
    return float(out[0]) if single else out


@_batched
def rosenbrock(x: np.ndarray) -> Any:
    """The Rosenbrock function ``Σ 100(x_{i+1} − x_i²)² + (1 − x_i)²``: minimum 0 at ones."""
    X, single = _rows(x)
    out = np.sum(100.0 * (X[:, 1:] - X[:, :-1] ** 2) ** 2 + (1.0 - X[:, :-1]) ** 2, axis=1)
    return float(out[0]) if single else out


@_batched
def noisy_quadratic(x: np.ndarray, seed: int | None = None) -> Any:
    """``Σ h_i (x_i − 1)² / 2`` (``h`` log-spaced in [0.1, 10]) plus N(0, 0.1²) noise.

    The noise is a deterministic function of ``seed`` (which the optimizer sets per round;
    equal seeds give equal noise: common random numbers) and of the row index, so a run is
    reproducible and resumable.
    """
    X, single = _rows(x)
    d = X.shape[1]
    h = np.logspace(-1, 1, d)
    clean = 0.5 * np.sum(h * (X - 1.0) ** 2, axis=1)
    rng = np.random.default_rng([0 if seed is None else int(seed), 7])
    noise = 0.1 * rng.standard_normal()
    out = clean + noise
    return float(out[0]) if single else out


noisy_quadratic.stochastic = True


@functools.lru_cache(maxsize=8)
def logistic_data(d: int, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed synthetic data set behind :func:`logistic`: ``n = 2d`` rows, noisy labels."""
    n = 2 * d if n is None else n
    rng = np.random.default_rng([seed, d, n])
    A = rng.standard_normal((n, d)) / np.sqrt(d)
    w = rng.standard_normal(d)
    y = (A @ w + 0.5 * rng.standard_normal(n) > 0).astype(np.float64)
    A.setflags(write=False)
    y.setflags(write=False)
    return A, y


LOGISTIC_L2 = 1e-3


@_batched
def logistic(x: np.ndarray) -> Any:
    """Mean logistic-regression loss of a fixed synthetic data set (``d = len(x)``,
    ``n = 2d`` rows, 20% label noise) plus ``1e-3·‖x‖²/2``; bounded below, unique minimum."""
    X, single = _rows(x)
    A, y = logistic_data(X.shape[1])
    Z = X @ A.T
    out = np.mean(np.logaddexp(0.0, Z) - y * Z, axis=1) + 0.5 * LOGISTIC_L2 * np.sum(X * X, axis=1)
    return float(out[0]) if single else out
