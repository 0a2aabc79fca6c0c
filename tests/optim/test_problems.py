"""The public problem suite (blackbox.problems): what each problem promises, checked cheaply."""

from __future__ import annotations

import numpy as np
import pytest

from blackbox.errors import ConfigError, ObjectiveError
from blackbox.objectives import load_objective
from blackbox.problems import SUITE, make_problem

CHEAP = [n for n in SUITE if n not in ("mlp_digits", "logistic_far")]  # f* by L-BFGS takes seconds there


def _grad_norm(p, h: float = 1e-6) -> float:
    E = np.eye(p.d)
    return float(np.linalg.norm((p.clean(h * E) - p.clean(-h * E)) / (2 * h)))


def test_suite_spans_what_breaks_fixed_gains() -> None:
    assert len(SUITE) >= 10
    dims = [make_problem(n).d for n in SUITE]
    assert min(dims) == 10 and max(dims) == 10_000
    # Gradient norm at x0 over more than six orders of magnitude.
    flat, steep = _grad_norm(make_problem("quad_flat")), _grad_norm(make_problem("quad_steep"))
    assert steep / flat > 1e6, (flat, steep)
    stochastic = {n for n in SUITE if make_problem(n).stochastic}
    assert stochastic == {"noisy_quad", "minibatch_logistic"}


@pytest.mark.parametrize("name", CHEAP)
def test_each_problem_starts_above_its_optimum(name: str) -> None:
    p = make_problem(name)
    assert p.f0() > p.f_star and p.f_star_how
    assert p.excess(np.zeros(p.d))[0] == pytest.approx(p.f0() - p.f_star)
    X = np.zeros((3, p.d))
    out = p.fn(X, seed=1) if p.stochastic else p.fn(X)
    assert np.asarray(out).shape == (3,)


def test_quadratic_distances_and_conditioning_are_as_stated() -> None:
    # f = ½|x − x*|² for quad_far / quad_near: f(x0) = |x*|²/2.
    assert make_problem("quad_far").f0() == pytest.approx(0.5 * 100.0**2)
    near = make_problem("quad_near")
    assert 0.5 * 0.1 * 0.1**2 < near.f0() < 0.5 * 10 * 0.1**2
    p = make_problem("ellipsoid")
    # For a quadratic, H_ij = f(e_i + e_j) − f(e_i) − f(e_j) + f(0) exactly.
    d = p.d
    E = np.eye(d)
    f0, fi = p.clean(np.zeros((1, d)))[0], p.clean(E)
    fij = p.clean((E[:, None, :] + E[None, :, :]).reshape(d * d, d)).reshape(d, d)
    H = fij - fi[:, None] - fi[None, :] + f0
    ev = np.linalg.eigvalsh((H + H.T) / 2)
    assert ev.max() / ev.min() == pytest.approx(1e4, rel=1e-3)


def test_noise_is_per_point_and_reproducible() -> None:
    p = make_problem("noisy_quad")
    x = np.zeros((2, p.d))
    x[1, 0] = 1e-9
    a, b = p.fn(x, seed=3), p.fn(x, seed=3)
    np.testing.assert_array_equal(a, b)  # same seed, same points: same values (exact resume)
    assert abs((a[0] - a[1]) - (p.clean(x)[0] - p.clean(x)[1])) > 1e-3  # different points: independent noise
    assert p.fn(x[:1], seed=4)[0] != a[0]


def test_minibatch_problem_shares_a_batch_within_a_seed() -> None:
    p = make_problem("minibatch_logistic")
    x = np.zeros((2, p.d))
    x[1] += 0.01
    same = p.fn(x, seed=5)
    assert same[0] == p.fn(x[:1], seed=5)[0]
    assert p.fn(x[:1], seed=6)[0] == same[0]  # at x = 0 every minibatch gives log 2 ...
    assert p.fn(x[1:], seed=6)[0] != same[1]  # ... elsewhere the batch matters


def test_instances_differ_and_bad_input_is_named() -> None:
    assert make_problem("quad_steep", 1).f0() != make_problem("quad_steep", 0).f0()
    with pytest.raises(ConfigError, match="problem: expected one of"):
        make_problem("nope")
    with pytest.raises(ConfigError, match="instance: expected an integer >= 0, received -1"):
        make_problem("l1", -1)
    with pytest.raises(ObjectiveError, match=r"expected points of dimension d = 300 \(--dim 300\)"):
        make_problem("l1").fn(np.zeros(7))


def test_suite_problems_are_built_in_objectives() -> None:
    obj = load_objective("rosenbrock_10")
    assert obj.batched and not obj.accepts_seed
    assert obj(np.zeros((1, 10)))[0] == pytest.approx(9.0)
    assert load_objective("noisy_quad").accepts_seed


def test_mlp_digits_is_a_tiny_network_on_real_digits() -> None:
    pytest.importorskip("sklearn")
    p = make_problem("mlp_digits")
    assert p.d == 64 * 16 + 16 + 16 * 10 + 10
    assert 2.0 < p.f0() < 3.0  # cross-entropy of a random init over 10 classes ≈ log 10
