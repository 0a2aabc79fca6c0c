"""A public suite of minimisation problems that break fixed optimizer gains.

Each problem is a batched objective over ``z ∈ R^d`` started at ``z = 0`` (problems whose
natural start is elsewhere, e.g. a neural network's random initialisation, are written in
shifted coordinates), with its optimum value ``f*`` (or best known value) and how that was
obtained. The problems differ in what breaks a fixed gain: the gradient's size at the start
(from about 1e-3 to 1e4 in norm), the distance to the optimum (0.1 to 100), conditioning
(up to 1e4), additive noise and minibatch noise, a non-smooth loss, a small neural network
on real data (scikit-learn's digits) and the dimension (10 to 10,000).

``make_problem(name, instance=0)`` builds one; ``SUITE`` lists the names. ``instance = 0``
is the suite that was used to choose the optimizer defaults; ``instance >= 1`` draws a
different family member: new random optima, rotations and data, *and* its scale, distance
or conditioning constants moved by up to ±1 decade, so a held-out check does not see the
exact problems the defaults were chosen on. Every suite problem is also a built-in objective
of ``blackbox optimize --objective NAME`` (instance 0; ``--dim`` must equal its ``d``).

Noisy problems take the optimizer's ``seed`` keyword (common random numbers: probes that
share a seed share the minibatch); additive noise is a deterministic function of the seed
*and the point*, so two different points never share it and a resumed run replays exactly.
Excess losses are measured on the noise-free loss (``Problem.clean``).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import ObjectiveError, bad_value

__all__ = ["Problem", "SUITE", "make_problem", "suite"]


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: a batched objective at ``x0 = 0`` with its optimum value."""

    name: str
    d: int
    fn: Callable[..., Any] = field(repr=False)
    clean: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    optimum: Callable[[], tuple[float, str]] = field(repr=False)
    stresses: str
    stochastic: bool = False
    instance: int = 0

    @property
    def f_star(self) -> float:
        """The optimum (or best known) value of the noise-free loss (computed once, lazily)."""
        return self.optimum()[0]

    @property
    def f_star_how(self) -> str:
        """How ``f_star`` was obtained."""
        return self.optimum()[1]

    def f0(self) -> float:
        """Noise-free loss at the start ``x0 = 0``."""
        return float(self.clean(np.zeros((1, self.d)))[0])

    def excess(self, x: np.ndarray) -> np.ndarray:
        """Noise-free excess loss ``f(x) − f*`` of one point or of each row of a batch."""
        X = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return self.clean(X) - self.f_star


# --- helpers ------------------------------------------------------------------------------------

def _tag(name: str) -> int:
    return zlib.crc32(name.encode())


def _rng(name: str, instance: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([_tag(name), instance, *more])


def _family(name: str, instance: int) -> np.random.Generator:
    """The random source of a family member's constants (instance 0 keeps the listed ones)."""
    return _rng(name, instance, 99)


def _decade(name: str, instance: int, span: float = 1.0) -> float:
    """1 for instance 0; otherwise a factor 10^U(−span, span) drawn per (problem, instance)."""
    if instance == 0:
        return 1.0
    return float(10.0 ** _family(name, instance).uniform(-span, span))


def _checked(name: str, d: int, x: np.ndarray) -> tuple[np.ndarray, bool]:
    arr = np.asarray(x, dtype=np.float64)
    X = np.atleast_2d(arr)
    if X.ndim != 2 or X.shape[1] != d:
        raise ObjectiveError(f"objective {name}: expected points of dimension d = {d} (--dim {d}), received shape {arr.shape}")
    return X, arr.ndim == 1


def _batched(name: str, d: int, clean: Callable[[np.ndarray], np.ndarray]) -> Callable[..., Any]:
    def fn(x: np.ndarray) -> Any:
        X, single = _checked(name, d, x)
        out = clean(X)
        return float(out[0]) if single else out

    fn.batched = True  # type: ignore[attr-defined]
    fn.__name__ = name
    fn.__doc__ = f"Suite problem {name!r} (d = {d})."
    return fn


def _point_noise(X: np.ndarray, seed: int | None, sigma: float) -> np.ndarray:
    """N(0, σ²) per row, a deterministic function of (seed, the row's bytes)."""
    s = 0 if seed is None else int(seed)
    out = np.empty(X.shape[0])
    for i, row in enumerate(X):
        out[i] = np.random.default_rng([s, zlib.crc32(np.ascontiguousarray(row).tobytes())]).standard_normal()
    return sigma * out


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    u = rng.standard_normal(d)
    return u / np.linalg.norm(u)


def _quadratic(name: str, instance: int, d: int, scale: float, dist: float, h_lo: float, h_hi: float,
               rotate: bool = False) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """``scale · Σ h_i (Qx − x*)_i² / 2`` with ``h`` log-spaced, ``|x*| = dist`` (f* = 0)."""
    rng = _rng(name, instance)
    h = np.logspace(math.log10(h_lo), math.log10(h_hi), d)
    rng.shuffle(h)
    xs = dist * _unit(rng, d)
    if rotate:
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        H = (Q * h) @ Q.T  # Q diag(h) Q^T

        def clean(X: np.ndarray) -> np.ndarray:
            D = X - xs
            return 0.5 * scale * np.einsum("ij,jk,ik->i", D, H, D)
    else:
        def clean(X: np.ndarray) -> np.ndarray:
            D = X - xs
            return 0.5 * scale * ((D * D) @ h)
    return clean, "analytic (quadratic with minimum 0 at x*)"


# --- problems -------------------------------------------------------------------------------------

def _quad_problem(name: str, instance: int, d: int, scale: float, dist: float, h: tuple[float, float],
                  stresses: str, rotate: bool = False) -> Problem:
    clean, how = _quadratic(name, instance, d, scale, dist, h[0], h[1], rotate=rotate)
    return Problem(name, d, _batched(name, d, clean), clean, _exact(how), stresses, instance=instance)


def _p_quad_far(instance: int) -> Problem:
    dist = 100.0 * _decade("quad_far", instance, 0.5)
    return _quad_problem("quad_far", instance, 100, 1.0, dist, (1.0, 1.0),
                         f"optimum at distance {dist:.3g} from x0 (isotropic quadratic)")


def _p_quad_near(instance: int) -> Problem:
    dist = 0.1 * _decade("quad_near", instance, 0.5)
    return _quad_problem("quad_near", instance, 1000, 1.0, dist, (0.1, 10.0),
                         f"optimum at distance {dist:.3g} from x0, curvature 0.1..10")


def _p_quad_flat(instance: int) -> Problem:
    scale = 1e-4 * _decade("quad_flat", instance)
    return _quad_problem("quad_flat", instance, 100, scale, 10.0, (0.1, 1.0),
                         f"tiny gradients (loss scale {scale:.2g}), optimum at distance 10")


def _p_quad_steep(instance: int) -> Problem:
    scale = 1e3 * _decade("quad_steep", instance)
    return _quad_problem("quad_steep", instance, 100, scale, 3.0, (1.0, 10.0),
                         f"huge gradients (loss scale {scale:.2g}), curvature 1..10, distance 3")


def _p_ellipsoid(instance: int) -> Problem:
    cond = 1e4 if instance == 0 else float(10.0 ** _family("ellipsoid", instance).uniform(3.0, 4.5))
    return _quad_problem("ellipsoid", instance, 100, 1.0, 3.0, (1.0 / math.sqrt(cond), math.sqrt(cond)),
                         f"rotated ellipsoid, condition number {cond:.2g}, distance 3", rotate=True)


def _p_quad_10k(instance: int) -> Problem:
    cond = 100.0 * _decade("quad_10k", instance)
    return _quad_problem("quad_10k", instance, 10_000, 1.0, 10.0, (1.0 / cond, 1.0),
                         f"d = 10,000, diagonal curvature 1/{cond:.3g}..1, distance 10")


def _p_noisy_quad(instance: int) -> Problem:
    name, d = "noisy_quad", 100
    sigma = 0.1 * _decade(name, instance)
    clean, how = _quadratic(name, instance, d, 1.0, 3.0, 0.1, 10.0)

    def fn(x: np.ndarray, seed: int | None = None) -> Any:
        X, single = _checked(name, d, x)
        out = clean(X) + _point_noise(X, seed, sigma)
        return float(out[0]) if single else out

    fn.batched = True  # type: ignore[attr-defined]
    fn.stochastic = True  # type: ignore[attr-defined]
    return Problem(name, d, fn, clean, _exact(how + "; of the noise-free loss"),
                   f"additive N(0, {sigma:.2g}²) noise, independent per point; curvature 0.1..10, distance 3",
                   stochastic=True, instance=instance)


def _p_l1(instance: int) -> Problem:
    name, d = "l1", 300
    rng = _rng(name, instance)
    w = np.logspace(-1, 1, d) * _decade(name, instance)
    rng.shuffle(w)
    xs = rng.uniform(-1.0, 1.0, d)

    def clean(X: np.ndarray) -> np.ndarray:
        return np.abs(X - xs) @ w

    return Problem(name, d, _batched(name, d, clean), clean, _exact("analytic (weighted L1 distance, minimum 0 at x*)"),
                   "non-smooth: Σ w_i |x_i − x*_i|, weights 0.1..10", instance=instance)


def _p_rosenbrock(instance: int) -> Problem:
    name, d = "rosenbrock_10", 10
    s = _decade(name, instance, 0.5)

    def clean(X: np.ndarray) -> np.ndarray:
        Y = X * s  # instance ≥ 1 stretches the valley: optimum at 1/s
        return np.sum(100.0 * (Y[:, 1:] - Y[:, :-1] ** 2) ** 2 + (1.0 - Y[:, :-1]) ** 2, axis=1)

    return Problem(name, d, _batched(name, d, clean), clean, _exact("analytic (Rosenbrock, minimum 0 at the all-ones point)"),
                   "non-convex curved valley, d = 10", instance=instance)


# --- problems with data: optimum by L-BFGS on the analytic gradient --------------------------------

def _lbfgs(fg: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, maxiter: int = 5000) -> tuple[float, str]:
    from scipy.optimize import minimize

    res = minimize(fg, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": maxiter, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-10})
    gn = float(np.linalg.norm(fg(res.x)[1]))
    return float(res.fun), f"scipy L-BFGS-B with the analytic gradient from x0 ({res.nit} iterations, final |grad| = {gn:.1e})"


def _logistic_parts(A: np.ndarray, y: np.ndarray, l2: float) -> tuple[Callable, Callable]:
    def clean(X: np.ndarray) -> np.ndarray:
        Z = X @ A.T
        return np.mean(np.logaddexp(0.0, Z) - y * Z, axis=1) + 0.5 * l2 * np.sum(X * X, axis=1)

    def fg(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = A @ w
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * (w @ w))
        return loss, A.T @ (p - y) / len(y) + l2 * w

    return clean, fg


@functools.lru_cache(maxsize=16)
def _logistic_far_data(instance: int) -> tuple[np.ndarray, np.ndarray, float]:
    name, d = "logistic_far", 1000
    rng = _rng(name, instance)
    n = 2 * d
    scale = 3.0 * _decade(name, instance, 0.5)
    A = scale * rng.standard_normal((n, d)) / math.sqrt(d)
    w = rng.standard_normal(d)
    y = (A @ w > 0).astype(np.float64)
    flip = rng.random(n) < 0.02
    y[flip] = 1.0 - y[flip]
    return A, y, scale


def _p_logistic_far(instance: int) -> Problem:
    name, d, l2 = "logistic_far", 1000, 1e-4
    A, y, scale = _logistic_far_data(instance)
    clean, fg = _logistic_parts(A, y, l2)
    opt = _optimum(fg, d)
    return Problem(name, d, _batched(name, d, clean), clean, opt,
                   f"logistic regression, feature scale {scale:.2g}, 2% label noise: optimum far from x0", instance=instance)


@functools.lru_cache(maxsize=16)
def _minibatch_logistic_data(instance: int) -> tuple[np.ndarray, np.ndarray]:
    name, d, n = "minibatch_logistic", 200, 2000
    rng = _rng(name, instance)
    A = rng.standard_normal((n, d)) / math.sqrt(d) * _decade(name, instance, 0.5)
    w = 2.0 * rng.standard_normal(d)
    y = (A @ w + 0.5 * rng.standard_normal(n) > 0).astype(np.float64)
    return A, y


def _p_minibatch_logistic(instance: int) -> Problem:
    name, d, l2, batch = "minibatch_logistic", 200, 1e-3, 64
    A, y = _minibatch_logistic_data(instance)
    clean, fg = _logistic_parts(A, y, l2)
    n = len(y)

    def fn(x: np.ndarray, seed: int | None = None) -> Any:
        X, single = _checked(name, d, x)
        if seed is None:
            out = clean(X)
        else:
            idx = np.random.default_rng([int(seed), 3]).choice(n, batch, replace=False)
            Z = X @ A[idx].T
            out = np.mean(np.logaddexp(0.0, Z) - y[idx] * Z, axis=1) + 0.5 * l2 * np.sum(X * X, axis=1)
        return float(out[0]) if single else out

    fn.batched = True  # type: ignore[attr-defined]
    fn.stochastic = True  # type: ignore[attr-defined]
    opt = _optimum(fg, d, "; of the full-batch loss")
    return Problem(name, d, fn, clean, opt,
                   f"minibatch noise: {batch} of {n} rows per step (common random numbers within a step)",
                   stochastic=True, instance=instance)


@functools.lru_cache(maxsize=4)
def _digits(instance: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn comes with the vision/llm/text extras
        raise ObjectiveError("objective mlp_digits: needs scikit-learn (pip install 'blackbox-adapt[vision]')") from exc
    X, y = load_digits(return_X_y=True)
    idx = _rng("mlp_digits", instance).permutation(len(y))[:1000]
    return (X[idx] / 16.0), y[idx].astype(np.int64)


_H = 16  # hidden units of the digits MLP: 64-16-10, d = 1210


def _mlp_unpack(W: np.ndarray) -> tuple[np.ndarray, ...]:
    i = 0
    W1 = W[..., i:i + 64 * _H].reshape(W.shape[:-1] + (64, _H)); i += 64 * _H
    b1 = W[..., i:i + _H]; i += _H
    W2 = W[..., i:i + _H * 10].reshape(W.shape[:-1] + (_H, 10)); i += _H * 10
    b2 = W[..., i:i + 10]
    return W1, b1, W2, b2


def _p_mlp_digits(instance: int) -> Problem:
    name, l2 = "mlp_digits", 1e-4
    d = 64 * _H + _H + _H * 10 + 10
    Xd, yd = _digits(instance)
    n = len(yd)
    rng = _rng(name, instance, 1)
    w0 = np.concatenate([rng.standard_normal(64 * _H) / 8.0, np.zeros(_H),
                         rng.standard_normal(_H * 10) / 4.0, np.zeros(10)])
    onehot = np.eye(10)[yd]

    def loss_of(W: np.ndarray) -> float:
        W1, b1, W2, b2 = _mlp_unpack(W)
        h = np.tanh(Xd @ W1 + b1)
        z = h @ W2 + b2
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(lse - z[np.arange(n), yd]) + 0.5 * l2 * (W @ W))

    def clean(Z: np.ndarray) -> np.ndarray:
        return np.array([loss_of(w0 + z) for z in Z])

    def fg(z: np.ndarray) -> tuple[float, np.ndarray]:
        W = w0 + z
        W1, b1, W2, b2 = _mlp_unpack(W)
        h = np.tanh(Xd @ W1 + b1)
        s = h @ W2 + b2
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(np.mean(-np.log(p[np.arange(n), yd] + 1e-300)) + 0.5 * l2 * (W @ W))
        ds = (p - onehot) / n
        gW2, gb2 = h.T @ ds, ds.sum(0)
        dh = (ds @ W2.T) * (1 - h * h)
        gW1, gb1 = Xd.T @ dh, dh.sum(0)
        return loss, np.concatenate([gW1.ravel(), gb1, gW2.ravel(), gb2]) + l2 * W

    opt = _optimum(fg, d, "; a local optimum of a non-convex loss, i.e. the best known value")
    return Problem(name, d, _batched(name, d, clean), clean, opt,
                   "tiny MLP (64-16-10, tanh) on 1,000 sklearn digits, cross-entropy, start at a random init",
                   instance=instance)


def _optimum(fg: Callable, d: int, note: str = "") -> Callable[[], tuple[float, str]]:
    """L-BFGS from x0 on the analytic gradient, run on first use and remembered."""

    def run() -> tuple[float, str]:
        value, how = _lbfgs(fg, np.zeros(d))
        return value, how + note

    return functools.cache(run)


def _exact(how: str) -> Callable[[], tuple[float, str]]:
    return lambda: (0.0, how)


# --- the suite -------------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[int], Problem]] = {
    "quad_far": _p_quad_far,
    "quad_near": _p_quad_near,
    "quad_flat": _p_quad_flat,
    "quad_steep": _p_quad_steep,
    "ellipsoid": _p_ellipsoid,
    "quad_10k": _p_quad_10k,
    "noisy_quad": _p_noisy_quad,
    "minibatch_logistic": _p_minibatch_logistic,
    "l1": _p_l1,
    "rosenbrock_10": _p_rosenbrock,
    "logistic_far": _p_logistic_far,
    "mlp_digits": _p_mlp_digits,
}
SUITE: tuple[str, ...] = tuple(_BUILDERS)


def _p_logistic_builtin(instance: int) -> Problem:
    from .objectives_builtin import LOGISTIC_L2, logistic, logistic_data

    name, d = "logistic", 1000
    if instance != 0:
        raise bad_value("instance", "0 (the built-in logistic problem has one instance)", instance)
    A, y = logistic_data(d)
    clean, fg = _logistic_parts(A, y, LOGISTIC_L2)
    return Problem(name, d, logistic, lambda X: np.asarray(logistic(X), dtype=np.float64), _optimum(fg, d),
                   "the built-in blackbox.testing.logistic at d = 1000 (not in the suite: a regression check)")


# Problems outside the suite that the benchmark can also run (regression checks).
EXTRA: dict[str, Callable[[int], Problem]] = {"logistic": _p_logistic_builtin}


@functools.lru_cache(maxsize=128)
def make_problem(name: str, instance: int = 0) -> Problem:
    """Build suite problem ``name``; ``instance`` 0 is the tuning suite, ≥ 1 held-out family members."""
    if name in EXTRA:
        return EXTRA[name](instance)
    if name not in _BUILDERS:
        raise bad_value("problem", f"one of {', '.join(SUITE)} (or {', '.join(EXTRA)})", name)
    if not isinstance(instance, int) or isinstance(instance, bool) or instance < 0:
        raise bad_value("instance", "an integer >= 0", instance)
    return _BUILDERS[name](instance)


def suite(instance: int = 0) -> list[Problem]:
    """Every suite problem at one instance (0: the tuning suite)."""
    return [make_problem(n, instance) for n in SUITE]


def objective(name: str) -> Callable[..., Any]:
    """The batched objective of suite problem ``name`` at instance 0 (for ``--objective NAME``)."""
    return make_problem(name, 0).fn
