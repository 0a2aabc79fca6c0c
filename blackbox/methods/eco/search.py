"""Zeroth-order search for the corruption strength (offline).

The objective is a function ``f(strength) -> Measurement`` (one pass over the evaluation
set, e.g. forget-set accuracy under forced corruption). Three searches:

* :func:`bracket_bisect` (default): grow the strength geometrically until the target is met
  (a bracket ``[lo, hi]`` with ``lo`` failing and ``hi`` meeting it), then bisect on the
  cliff. The response of an LM to embedding noise is a cliff (accuracy ~90% → ~7% between
  σ = 0.06 and 0.12 in a probe), where finite differences are zero on both plateaus; the
  bracket never leaves the cliff and returns the smallest strength found that meets the target.
* :func:`central_difference`: the reference rule ``ĝ = (f(σ+ε) − f(σ−ε)) / 2ε``,
  ``σ ← max(σ − clip(η ĝ), σ_min)``, stopping early once the target is met. The step clip
  (``max_step``) keeps it from jumping off the cliff onto the flat region.
* :func:`vector_central_difference`: the same along random unit directions for a vector of
  strengths (e.g. one per corruption parameter), with the probes and the estimate from the
  optimizer core (:mod:`blackbox.optim.estimators`, ``sphere`` perturbations, per-round RNG).

Every evaluation is recorded (strength, value, met, queries), so the model queries spent by
the search are reported exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from blackbox.errors import bad_value


@dataclass(frozen=True)
class Measurement:
    """One objective evaluation: distance to the target, whether it is met, queries spent."""

    value: float
    met: bool
    queries: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """Outcome of a strength search."""

    strength: Any  # float, or a list of floats for the vector search
    value: float
    met: bool
    queries: int
    evaluations: list[dict[str, Any]]
    stopped: str  # "target met", "bisected", "max steps", "max strength", "budget"

    def to_json(self) -> dict[str, Any]:
        return {
            "strength": self.strength, "value": self.value, "met": self.met, "queries": self.queries,
            "n_evaluations": len(self.evaluations), "evaluations": self.evaluations, "stopped": self.stopped,
        }


Objective = Callable[[Any], Measurement]


class _Recorder:
    def __init__(self, f: Objective, max_evals: int | None) -> None:
        self.f, self.max_evals = f, max_evals
        self.evaluations: list[dict[str, Any]] = []
        self.queries = 0

    def full(self) -> bool:
        return self.max_evals is not None and len(self.evaluations) >= self.max_evals

    def __call__(self, s: Any) -> Measurement:
        m = self.f(s)
        self.queries += int(m.queries)
        key = [float(v) for v in s] if isinstance(s, (list, tuple, np.ndarray)) else float(s)
        self.evaluations.append({"strength": key, "value": float(m.value), "met": bool(m.met), "queries": int(m.queries), **m.info})
        return m


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise bad_value(name, "a finite number " + (">= 0" if allow_zero else "> 0"), value)
    return float(value)


def bracket_bisect(
    f: Objective,
    *,
    start: float = 0.05,
    grow: float = 2.0,
    max_strength: float | None = None,
    bisect_steps: int = 6,
    rtol: float = 0.05,
    max_evals: int | None = 40,
) -> SearchResult:
    """Smallest strength meeting the target, to relative precision ``rtol`` (or ``bisect_steps``).

    Starts at ``start``; while the target is not met, multiplies by ``grow`` (capped at
    ``max_strength``); if the start already meets it, divides by ``grow`` until it fails.
    Then bisects the bracket. Returns the best meeting strength (or, if none meets it, the
    evaluated strength with the smallest value, ``met=False``).
    """
    start, grow, rtol = _positive("start", start), _positive("grow", grow), _positive("rtol", rtol)
    if grow <= 1:
        raise bad_value("grow", "a factor > 1", grow)
    if max_strength is not None and _positive("max_strength", max_strength) < start:
        start = float(max_strength)
    rec = _Recorder(f, max_evals)
    lo, hi = 0.0, None
    s = start
    m = rec(s)
    if m.met:
        hi = s
        # walk down until the target fails (the left end of the cliff)
        while not rec.full():
            t = hi / grow
            if t < 1e-6 * start:
                lo = 0.0
                break
            if rec(t).met:
                hi = t
            else:
                lo = t
                break
    else:
        lo = s
        while not rec.full():
            t = lo * grow if max_strength is None else min(lo * grow, max_strength)
            if t <= lo:
                break
            if rec(t).met:
                hi = t
                break
            lo = t
    if hi is None:
        best = min(rec.evaluations, key=lambda e: (e["value"], e["strength"]))
        stopped = "budget" if rec.full() else "max strength"
        return SearchResult(best["strength"], best["value"], False, rec.queries, rec.evaluations, stopped)
    steps = 0
    stopped = "bisected"
    while steps < bisect_steps and (hi - lo) > rtol * hi:
        if rec.full():
            stopped = "budget"
            break
        mid = 0.5 * (lo + hi)
        if rec(mid).met:
            hi = mid
        else:
            lo = mid
        steps += 1
    best = [e for e in rec.evaluations if e["met"] and e["strength"] == hi][-1]
    return SearchResult(hi, best["value"], True, rec.queries, rec.evaluations, stopped)


def central_difference(
    f: Objective,
    *,
    start: float = 0.1,
    eps: float = 0.1,
    lr: float = 100.0,
    floor: float = 1e-3,
    max_step: float | None = None,
    max_steps: int = 10,
) -> SearchResult:
    """The reference scalar rule with a floor; stops as soon as an evaluated point meets the target.

    Each step evaluates ``f(σ+ε)`` and ``f(σ−ε)`` (two passes over the evaluation set; the
    lower probe is floored at ``floor``), steps ``σ ← max(σ − clip(lr·ĝ, ±max_step), floor)``
    and evaluates the new ``σ``. ``max_step=None`` gives the unclipped reference rule.
    """
    s = _positive("start", start)
    eps, lr, floor = _positive("eps", eps), _positive("lr", lr), _positive("floor", floor, allow_zero=True)
    if max_step is not None:
        _positive("max_step", max_step)
    rec = _Recorder(f, None)
    m = rec(s)
    if m.met:
        return SearchResult(s, m.value, True, rec.queries, rec.evaluations, "target met")
    for _ in range(max_steps):
        up, down = s + eps, max(s - eps, floor)
        mu, md = rec(up), rec(down)
        for point, meas in ((down, md), (up, mu)):  # prefer the smaller strength that meets it
            if meas.met:
                return SearchResult(point, meas.value, True, rec.queries, rec.evaluations, "target met")
        g = (mu.value - md.value) / (up - down) if up > down else 0.0
        step = lr * g
        if max_step is not None:
            step = float(np.clip(step, -max_step, max_step))
        s = max(s - step, floor)
        m = rec(s)
        if m.met:
            return SearchResult(s, m.value, True, rec.queries, rec.evaluations, "target met")
    best = min(rec.evaluations, key=lambda e: (e["value"], e["strength"]))
    return SearchResult(best["strength"], best["value"], False, rec.queries, rec.evaluations, "max steps")


def vector_central_difference(
    f: Objective,
    start: Sequence[float],
    *,
    eps: float = 0.1,
    lr: float = 100.0,
    floor: float | Sequence[float] = 1e-3,
    max_step: float | None = None,
    max_steps: int = 10,
    directions: int = 1,
    seed: int = 0,
) -> SearchResult:
    """Central differences along ``directions`` random unit vectors per step (optimizer core).

    ``x ← max(x − clip(lr·ĝ), floor)`` elementwise, with ``ĝ = mean_i (f(x+εu_i) − f(x−εu_i))/2ε · d·u_i``
    (the sphere estimator's weights). Stops early once an evaluated point meets the target.
    """
    from blackbox.optim.base import round_rng
    from blackbox.optim.estimators import estimate_gradient, probe_points
    from blackbox.optim.perturbations import get_perturbation

    x = np.asarray(start, dtype=np.float64).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)) or np.any(x < 0):
        raise bad_value("start", "a non-empty vector of finite strengths >= 0", list(start))
    eps, lr = _positive("eps", eps), _positive("lr", lr)
    lower = np.broadcast_to(np.asarray(floor, dtype=np.float64), x.shape)
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise bad_value("directions", "an int >= 1", directions)
    pert = get_perturbation("sphere")
    rec = _Recorder(f, None)
    m = rec(x.tolist())
    if m.met:
        return SearchResult(x.tolist(), m.value, True, rec.queries, rec.evaluations, "target met")
    for step in range(max_steps):
        rng = round_rng(seed, step)
        u = pert.sample(rng, directions, x.size)
        probes = np.maximum(probe_points(x, eps, u, two_sided=True), lower)
        vals = []
        for p in probes:
            mp = rec(p.tolist())
            if mp.met:
                return SearchResult(p.tolist(), mp.value, True, rec.queries, rec.evaluations, "target met")
            vals.append(mp.value)
        g = estimate_gradient(np.asarray(vals), eps, pert.weights(u), two_sided=True)
        delta = lr * g
        if max_step is not None:
            delta = np.clip(delta, -max_step, max_step)
        x = np.maximum(x - delta, lower)
        m = rec(x.tolist())
        if m.met:
            return SearchResult(x.tolist(), m.value, True, rec.queries, rec.evaluations, "target met")
    best = min(rec.evaluations, key=lambda e: e["value"])
    return SearchResult(best["strength"], best["value"], False, rec.queries, rec.evaluations, "max steps")


SEARCHES = ("bracket", "central", "vector")
