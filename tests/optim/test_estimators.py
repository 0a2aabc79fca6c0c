"""Finite-difference gradient estimates and perturbation directions on analytic functions."""

from __future__ import annotations

import numpy as np
import pytest

from blackbox.errors import UnknownComponentError
from blackbox.optim import (
    PERTURBATIONS,
    estimate_gradient,
    finite_differences,
    get_perturbation,
    probe_points,
    queries_per_estimate,
)

D = 50
NAMES = ["rademacher", "segmented", "gaussian", "sphere"]
SIDES = [pytest.param(True, id="two-sided"), pytest.param(False, id="one-sided")]


class Quadratic:
    """``f(x) = ½ xᵀHx + bᵀx`` with diagonal H (condition number 100), gradient ``Hx + b``."""

    def __init__(self, d: int = D, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.h = np.logspace(-1, 1, d)
        self.b = rng.standard_normal(d)
        self.x = rng.standard_normal(d)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return 0.5 * np.sum(self.h * X * X, axis=-1) + X @ self.b

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.h * x + self.b


def _estimate(f: Quadratic, name: str, q: int, two_sided: bool, seed: int, c: float = 0.01) -> np.ndarray:
    p = get_perturbation(name)
    dirs = p.sample(np.random.default_rng([seed, q]), q, f.x.size)
    X = probe_points(f.x, c, dirs, two_sided)
    assert X.shape == (queries_per_estimate(q, two_sided), f.x.size)
    return estimate_gradient(f(X), c, p.weights(dirs), two_sided)


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


# --- accuracy ---------------------------------------------------------------------------


@pytest.mark.parametrize("two_sided", SIDES)
@pytest.mark.parametrize("name", NAMES)
def test_cosine_similarity_rises_with_q(name: str, two_sided: bool) -> None:
    f = Quadratic()
    g = f.grad(f.x)
    qs = (1, 4, 16, 64)
    mean_cos = [np.mean([_cos(_estimate(f, name, q, two_sided, s), g) for s in range(30)]) for q in qs]
    # Theory for an unbiased q-direction estimate: cos ≈ sqrt(q / (q + d)), i.e. about
    # 0.1, 0.27, 0.49, 0.75 here; every step up in q must buy a clear improvement.
    for lo, hi in zip(mean_cos, mean_cos[1:]):
        assert hi > lo + 0.08, (name, two_sided, mean_cos)
    assert mean_cos[0] > 0.03, mean_cos  # points downhill on average even with q=1
    assert mean_cos[-1] > 0.6, mean_cos


@pytest.mark.parametrize("two_sided", SIDES)
@pytest.mark.parametrize("name", NAMES)
def test_estimates_are_unbiased(name: str, two_sided: bool) -> None:
    """The mean of N single-direction estimates converges to the true gradient.

    ``estimate_gradient`` with q=N directions *is* the mean of N q=1 estimates. For a
    quadratic the one-sided curvature term ``c/2·ΔᵀHΔ·w`` has zero mean (odd moments of
    symmetric directions), so both forms are unbiased; the statistical error is about
    sqrt(d/N) ≈ 0.05 relative.
    """
    f = Quadratic(seed=1)
    g = f.grad(f.x)
    n = 20_000
    est = _estimate(f, name, n, two_sided, seed=123, c=0.05)
    rel = np.linalg.norm(est - g) / np.linalg.norm(g)
    assert rel < 0.1, (name, two_sided, rel)
    # Also per coordinate: no coordinate is systematically off by a scale factor.
    ratio = np.sum(est * g) / np.sum(g * g)
    assert 0.95 < ratio < 1.05, ratio


@pytest.mark.parametrize("name", NAMES)
def test_weights_make_expected_outer_product_identity(name: str) -> None:
    """``E[w Δᵀ] = I`` is what makes the estimates unbiased for every weighting."""
    p = get_perturbation(name)
    d, n = 6, 200_000
    dirs = p.sample(np.random.default_rng(5), n, d)
    M = p.weights(dirs).T @ dirs / n
    np.testing.assert_allclose(M, np.eye(d), atol=0.03)


def test_two_sided_differences_are_exact_on_a_quadratic() -> None:
    f = Quadratic(d=7, seed=3)
    dirs = np.random.default_rng(0).standard_normal((5, 7))
    for c in (1e-3, 0.5, 3.0):
        diffs = finite_differences(f(probe_points(f.x, c, dirs, True)), c, 5, True)
        np.testing.assert_allclose(diffs, dirs @ f.grad(f.x), rtol=1e-9, atol=1e-9)


def test_one_sided_differences_carry_the_curvature_term() -> None:
    f = Quadratic(d=7, seed=3)
    dirs = np.random.default_rng(0).standard_normal((5, 7))
    c = 0.3
    diffs = finite_differences(f(probe_points(f.x, c, dirs, False)), c, 5, False)
    expected = dirs @ f.grad(f.x) + 0.5 * c * np.sum(f.h * dirs * dirs, axis=1)
    np.testing.assert_allclose(diffs, expected, rtol=1e-9, atol=1e-9)


def test_estimate_gradient_is_mean_of_difference_times_weight() -> None:
    theta = np.array([1.0, -2.0, 0.5])
    dirs = np.array([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])
    w = np.array([2.0, -3.0, 0.5])
    f = lambda X: X @ w + 4.0  # noqa: E731  (linear: differences are exact)
    c = 0.1
    for two_sided in (True, False):
        L = f(probe_points(theta, c, dirs, two_sided))
        g = estimate_gradient(L, c, 1.0 / dirs, two_sided)
        d1, d2 = dirs @ w  # directional derivatives: 5.5 and 1.5
        expected = (d1 / dirs[0] + d2 / dirs[1]) / 2
        np.testing.assert_allclose(g, expected, rtol=1e-12)
    np.testing.assert_allclose(expected, [2.0, -3.5, 3.5])


def test_one_sided_pivot_cancels_a_shared_offset() -> None:
    """Adding the same constant to every probe (common random numbers) changes nothing."""
    f = Quadratic(d=10)
    dirs = get_perturbation("rademacher").sample(np.random.default_rng(0), 4, 10)
    for two_sided in (True, False):
        X = probe_points(f.x, 0.05, dirs, two_sided)
        a = estimate_gradient(f(X), 0.05, 1.0 / dirs, two_sided)
        b = estimate_gradient(f(X) + 1e3, 0.05, 1.0 / dirs, two_sided)
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8)


# --- probe layout and cost ------------------------------------------------------------


def test_probe_points_two_sided_layout() -> None:
    theta = np.array([10.0, 20.0, 30.0])
    dirs = np.array([[1.0, -1.0, 1.0], [0.5, 2.0, -1.0]])
    X = probe_points(theta, 0.1, dirs, True)
    expected = np.array(
        [
            [10.1, 19.9, 30.1],
            [9.9, 20.1, 29.9],
            [10.05, 20.2, 29.9],
            [9.95, 19.8, 30.1],
        ]
    )
    np.testing.assert_allclose(X, expected, rtol=0, atol=1e-12)
    assert X.dtype == np.float64
    # The inputs are not modified.
    np.testing.assert_array_equal(theta, [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(dirs, [[1.0, -1.0, 1.0], [0.5, 2.0, -1.0]])


def test_probe_points_one_sided_layout_pivot_first() -> None:
    theta = np.array([10.0, 20.0, 30.0])
    dirs = np.array([[1.0, -1.0, 1.0], [0.5, 2.0, -1.0]])
    X = probe_points(theta, 0.1, dirs, False)
    expected = np.array([[10.0, 20.0, 30.0], [10.1, 19.9, 30.1], [10.05, 20.2, 29.9]])
    np.testing.assert_allclose(X, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(theta, [10.0, 20.0, 30.0])


@pytest.mark.parametrize("q", [1, 2, 3, 7, 64])
def test_queries_per_estimate(q: int) -> None:
    assert queries_per_estimate(q, True) == 2 * q
    assert queries_per_estimate(q, False) == q + 1
    dirs = np.ones((q, 4))
    for two_sided in (True, False):
        assert probe_points(np.zeros(4), 0.1, dirs, two_sided).shape[0] == queries_per_estimate(q, two_sided)


# --- perturbations --------------------------------------------------------------------


def test_perturbation_registry_names() -> None:
    assert sorted(PERTURBATIONS) == sorted(NAMES)


def test_unknown_perturbation_lists_valid_names() -> None:
    with pytest.raises(UnknownComponentError) as exc:
        get_perturbation("uniform")
    msg = str(exc.value)
    assert "'uniform'" in msg
    for name in NAMES:
        assert name in msg
    assert isinstance(exc.value, LookupError)


@pytest.mark.parametrize("name", NAMES)
def test_samplers_shape_dtype_and_determinism(name: str) -> None:
    p = get_perturbation(name)
    a = p.sample(np.random.default_rng(3), 5, 11)
    b = p.sample(np.random.default_rng(3), 5, 11)
    c = p.sample(np.random.default_rng(4), 5, 11)
    assert a.shape == (5, 11) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.isfinite(a)) and np.all(a != 0)


def test_sampler_supports() -> None:
    rng = np.random.default_rng(0)
    r = get_perturbation("rademacher").sample(rng, 200, 30)
    assert set(np.unique(r)) == {-1.0, 1.0}
    assert abs(r.mean()) < 0.05
    s = get_perturbation("segmented").sample(rng, 200, 30)
    assert np.all((np.abs(s) >= 0.5) & (np.abs(s) <= 1.0))
    assert 0.45 < np.mean(s > 0) < 0.55
    g = get_perturbation("gaussian").sample(rng, 400, 30)
    assert abs(g.std() - 1.0) < 0.03 and abs(g.mean()) < 0.03
    u = get_perturbation("sphere").sample(rng, 200, 30)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-12)


def test_weights_per_weighting() -> None:
    rng = np.random.default_rng(0)
    dirs = get_perturbation("segmented").sample(rng, 3, 8)
    np.testing.assert_array_equal(get_perturbation("segmented").weights(dirs), 1.0 / dirs)
    signs = get_perturbation("rademacher").sample(rng, 3, 8)
    np.testing.assert_array_equal(get_perturbation("rademacher").weights(signs), 1.0 / signs)
    np.testing.assert_array_equal(get_perturbation("gaussian").weights(dirs), dirs)
    np.testing.assert_array_equal(get_perturbation("sphere").weights(dirs), dirs * 8)
