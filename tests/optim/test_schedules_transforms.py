"""Gain schedules and update transforms: values, reference rewrites, state layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blackbox import testing as T
from blackbox.optim import (
    Constant,
    Cosine,
    PowerDecay,
    chain,
    gradient_correction,
    identity,
    momentum,
    scale_by_schedule,
)
from blackbox.optim.schedules import from_dict, to_dict
from blackbox.registry import optimizers

# --- schedules --------------------------------------------------------------------------


def test_power_decay_values() -> None:
    s = PowerDecay(2.0, 0.5, 3.0)  # 2 / sqrt(k + 3)
    assert s(1) == pytest.approx(1.0)
    assert s(6) == pytest.approx(2.0 / 3.0)
    assert s(13) == pytest.approx(0.5)
    c = PowerDecay(0.2, 0.101)  # Spall's c_k = c / k^gamma
    assert c(1) == pytest.approx(0.2)
    assert c(10) == pytest.approx(0.2 / 10**0.101)
    a = PowerDecay(0.16, 0.602, 10.0)
    assert a(1) == pytest.approx(0.16 / 11**0.602)
    assert a(100) == pytest.approx(0.16 / 110**0.602)
    # Strictly decreasing for a positive exponent; flat for exponent 0.
    vals = [a(k) for k in range(1, 50)]
    assert all(x > y for x, y in zip(vals, vals[1:]))
    assert PowerDecay(3.0, 0.0, 5.0)(17) == pytest.approx(3.0)


def test_constant_values() -> None:
    s = Constant(0.25)
    assert [s(k) for k in (0, 1, 2, 1000)] == [0.25] * 4


def test_cosine_values() -> None:
    s = Cosine(init=1.0, steps=4, final=0.1)
    assert s(1) == pytest.approx(1.0)  # t = 0
    assert s(2) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert s(3) == pytest.approx(0.55)  # halfway
    assert s(5) == pytest.approx(0.1)  # t = 1
    assert s(50) == pytest.approx(0.1)  # flat after the horizon
    assert s(0) == pytest.approx(1.0)  # clipped below
    vals = [s(k) for k in range(1, 6)]
    assert all(x > y for x, y in zip(vals, vals[1:]))
    assert Cosine(2.0, 10)(11) == pytest.approx(0.0)


@pytest.mark.parametrize("s", [PowerDecay(0.3, 0.6, 7.0), Constant(1.5), Cosine(1.0, 9, 0.01)])
def test_schedule_dict_round_trip(s) -> None:
    d = to_dict(s)
    assert d["kind"] in ("power", "constant", "cosine")
    back = from_dict(d)
    assert back == s and type(back) is type(s)
    assert [back(k) for k in range(1, 12)] == [s(k) for k in range(1, 12)]


# --- transforms --------------------------------------------------------------------------

GRADS = [np.array([1.0, 2.0]), np.array([3.0, -1.0]), np.array([0.0, 4.0])]


def _apply(t, grads, theta0):
    state = t.init(theta0)
    theta = theta0.copy()
    out = []
    for g in grads:
        upd, state = t.update(g, state)
        theta = theta + upd
        out.append(theta.copy())
    return out, state


def test_gradient_correction_hand_computed() -> None:
    # beta = 0.5, a = 0.1:
    #   m1 = [1, 2];      u1 = g1 + .5 m1 = [1.5, 3];     θ1 = [-.15, -.3]
    #   m2 = [3.5, 0];    u2 = [4.75, -1];                θ2 = [-.625, -.2]
    #   m3 = [1.75, 4];   u3 = [0.875, 6];                θ3 = [-.7125, -.8]
    t = chain(gradient_correction(0.5), scale_by_schedule(Constant(0.1)))
    thetas, state = _apply(t, GRADS, np.zeros(2))
    np.testing.assert_allclose(thetas[0], [-0.15, -0.3], atol=1e-15)
    np.testing.assert_allclose(thetas[1], [-0.625, -0.2], atol=1e-15)
    np.testing.assert_allclose(thetas[2], [-0.7125, -0.8], atol=1e-15)
    np.testing.assert_allclose(state["0.m"], [1.75, 4.0], atol=1e-15)
    assert state["1.count"] == 3


def test_gradient_correction_matches_reference_rewrite_randomised() -> None:
    """m ← βm + g; θ ← θ − a_k(g + βm), against a plain loop, with a decaying schedule."""
    rng = np.random.default_rng(0)
    beta, sched = 0.9, PowerDecay(0.05, 0.4, 3.0)
    grads = [rng.standard_normal(6) for _ in range(25)]
    theta0 = rng.standard_normal(6)
    thetas, _ = _apply(chain(gradient_correction(beta), scale_by_schedule(sched)), grads, theta0)
    m, theta = np.zeros(6), theta0.copy()
    for k, g in enumerate(grads, start=1):
        m = beta * m + g
        theta = theta - sched(k) * (g + beta * m)
        np.testing.assert_allclose(thetas[k - 1], theta, rtol=1e-12, atol=1e-12)


def test_momentum_hand_computed() -> None:
    # m1 = [1, 2], m2 = [3.5, 0], m3 = [1.75, 4]; θ3 = −0.1 (m1 + m2 + m3) = [−.625, −.6]
    t = chain(momentum(0.5), scale_by_schedule(Constant(0.1)))
    thetas, state = _apply(t, GRADS, np.zeros(2))
    np.testing.assert_allclose(thetas[0], [-0.1, -0.2], atol=1e-15)
    np.testing.assert_allclose(thetas[1], [-0.45, -0.2], atol=1e-15)
    np.testing.assert_allclose(thetas[2], [-0.625, -0.6], atol=1e-15)
    np.testing.assert_allclose(state["0.m"], [1.75, 4.0], atol=1e-15)


def test_momentum_and_gc_differ_from_plain_sgd() -> None:
    plain, _ = _apply(chain(identity(), scale_by_schedule(Constant(0.1))), GRADS, np.zeros(2))
    np.testing.assert_allclose(plain[2], [-0.4, -0.5], atol=1e-15)
    mom, _ = _apply(chain(momentum(0.5), scale_by_schedule(Constant(0.1))), GRADS, np.zeros(2))
    gc, _ = _apply(chain(gradient_correction(0.5), scale_by_schedule(Constant(0.1))), GRADS, np.zeros(2))
    assert not np.allclose(plain[2], mom[2]) and not np.allclose(mom[2], gc[2])
    # beta = 0 reduces both to plain SGD.
    for tr in (momentum(0.0), gradient_correction(0.0)):
        same, _ = _apply(chain(tr, scale_by_schedule(Constant(0.1))), GRADS, np.zeros(2))
        np.testing.assert_allclose(same[2], plain[2], atol=1e-15)


def test_transforms_are_pure() -> None:
    t = chain(momentum(0.9), scale_by_schedule(Constant(1.0)))
    s0 = t.init(np.zeros(3))
    g = np.ones(3)
    _, s1 = t.update(g, s0)
    np.testing.assert_array_equal(s0["0.m"], np.zeros(3))
    assert s0["1.count"] == 0
    np.testing.assert_array_equal(g, np.ones(3))
    # The same state gives the same result twice.
    u_a, s_a = t.update(np.arange(3.0), s1)
    u_b, s_b = t.update(np.arange(3.0), s1)
    np.testing.assert_array_equal(u_a, u_b)
    np.testing.assert_array_equal(s_a["0.m"], s_b["0.m"])


def test_chain_state_keys() -> None:
    theta = np.zeros(4)
    s = chain(momentum(0.9), scale_by_schedule(Constant(1.0))).init(theta)
    assert set(s) == {"0.m", "1.count"}
    assert s["0.m"].shape == (4,) and s["0.m"].dtype == np.float64
    s = chain(gradient_correction(0.9), scale_by_schedule(Constant(1.0))).init(theta)
    assert set(s) == {"0.m", "1.count"}
    s = chain(identity(), scale_by_schedule(Constant(1.0))).init(theta)
    assert set(s) == {"1.count"}
    s = chain(scale_by_schedule(Constant(1.0)), momentum(0.5), momentum(0.5)).init(theta)
    assert set(s) == {"0.count", "1.m", "2.m"}
    t = chain(identity(), momentum(0.5), scale_by_schedule(Constant(1.0)))
    _, s = t.update(np.ones(4), t.init(theta))
    assert set(s) == {"1.m", "2.count"}


def test_chain_applies_in_order() -> None:
    # scale first then momentum is not the same as momentum then scale with a decaying schedule.
    sched = PowerDecay(1.0, 1.0)  # 1/k
    a = chain(momentum(0.5), scale_by_schedule(sched))
    b = chain(scale_by_schedule(sched), momentum(0.5))
    ta, _ = _apply(a, GRADS[:2], np.zeros(2))
    tb, _ = _apply(b, GRADS[:2], np.zeros(2))
    # a: −(1·m1 + ½·m2) with m2 = [3.5, 0] → [−2.75, −2]
    np.testing.assert_allclose(ta[1], [-2.75, -2.0])
    # b: momentum over scaled grads: s1 = −g1, s2 = −g2/2 → m1 = −[1,2], m2 = −[2, 0.5]
    np.testing.assert_allclose(tb[1], [-3.0, -2.5])


def test_scale_by_schedule_counts_from_one() -> None:
    seen: list[int] = []

    def sched(k: int) -> float:
        seen.append(k)
        return 1.0 / k

    t = scale_by_schedule(sched)
    s = t.init(np.zeros(2))
    assert s == {"count": 0}
    u, s = t.update(np.array([2.0, -4.0]), s)
    np.testing.assert_allclose(u, [-2.0, 4.0])  # descent: −a_1 · g with a_1 = 1
    assert s == {"count": 1}
    u, s = t.update(np.array([2.0, -4.0]), s)
    np.testing.assert_allclose(u, [-1.0, 2.0])  # a_2 = 1/2
    assert s == {"count": 2}
    assert seen == [1, 2]


def test_identity_passes_through() -> None:
    t = identity()
    s = t.init(np.zeros(3))
    assert s == {}
    g = np.array([1.0, -2.0, 3.0])
    u, s2 = t.update(g, s)
    np.testing.assert_array_equal(u, g)
    assert s2 == {}


# --- the transforms inside the optimizer -----------------------------------------------


@pytest.mark.parametrize(
    "recipe, schedule, momentum_name",
    [("spsa-gc", "power", "gc"), ("spsa", "power", "heavy-ball"), ("spsa", "constant", "none")],
)
def test_optimizer_update_matches_reference_loop(recipe: str, schedule: str, momentum_name: str) -> None:
    """With explicit gains, each step of the optimizer is the textbook rewrite, recomputed
    here from the probes it asked for and the losses it was told."""
    a, c, o, beta, d = 0.002, 0.05, 2.0, 0.9, 8
    # Built from the config class directly: make_optimizer cannot pass momentum="none"
    # (see test_bad_config.py::test_from_overrides_keeps_none_as_a_valid_choice).
    cls = optimizers.get(recipe)
    config = cls.Config(a=a, c=c, o=o, momentum=momentum_name, schedule=schedule, guard=False, beta=beta)
    opt = cls(config, np.zeros(d), seed=3)
    cfg = opt.config
    assert opt.phase == "run"
    theta = np.zeros(d)
    m = np.zeros(d)
    for k in range(1, 11):
        X = opt.ask()
        np.testing.assert_allclose((X[0] + X[1]) / 2, theta, atol=1e-12)
        ck = c / k**cfg.gamma
        delta = (X[0] - theta) / ck
        L = T.sphere(X)
        g = (L[0] - L[1]) / (2 * ck) / delta
        ak = a if schedule == "constant" else a / (k + o) ** cfg.alpha
        if momentum_name == "gc":
            m = beta * m + g
            theta = theta - ak * (g + beta * m)
        elif momentum_name == "heavy-ball":
            m = beta * m + g
            theta = theta - ak * m
        else:
            theta = theta - ak * g
        info = opt.tell(L)
        assert info.step == k
        np.testing.assert_allclose(opt.recommend(), theta, rtol=1e-10, atol=1e-12)
        assert info.extras["c_k"] == pytest.approx(ck)


class _ComposedUpdate:
    """Mixin: the update through ``tx.chain`` (allocating, dict state), as before the fused path."""

    def _apply(self, g: np.ndarray) -> None:
        # The schedule's scale is a times the adaptive gain (the composed form rebuilds it).
        upd, self._tstate = self._transform(self.a_effective).update(g, self._tstate)
        self.theta = self.theta + upd


@pytest.mark.parametrize("recipe, overrides", [
    ("spsa-gc", {}), ("spsa", {"momentum": "heavy-ball"}), ("spsa", {}), ("zo-sgd", {}),
    ("spsa-gc", {"q": 3, "two_sided": False}),
])
def test_fused_update_is_bit_identical_to_composed_transforms(recipe: str, overrides: dict) -> None:
    """The in-place update of the optimizer equals the composed transforms exactly, including
    through calibration and the guard's backoffs (rosenbrock from 0 with the default step)."""
    cls = optimizers.get(recipe)
    composed = type("Composed", (_ComposedUpdate, cls), {})
    runs = []
    for kind in (cls, composed):
        opt = kind(cls.Config.from_overrides(overrides), np.zeros(30), seed=4, budget=3000)
        while opt.can_ask():
            opt.tell(T.rosenbrock(opt.ask()))
        runs.append(opt)
    fused, ref = runs
    assert fused.backoffs > 0  # the guard fired, so resets of the state were exercised
    assert fused.tests > 0 and fused.gain != 1.0  # the adaptive gain moved, so it was exercised
    np.testing.assert_array_equal(fused.recommend(), ref.recommend())
    np.testing.assert_array_equal(fused.best_x, ref.best_x)
    assert fused.state_dict()[1] == ref.state_dict()[1]
