"""Update rules as pairs of pure functions, optax style.

A :class:`Transform` has ``init(params) -> state`` and
``update(grad, state) -> (update, state)``. States are flat ``dict[str, ndarray | float |
int]`` so they serialise to safetensors + JSON without custom code. :func:`chain`
composes transforms, prefixing each child's keys with its index.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .schedules import Schedule

State = dict[str, "np.ndarray | float | int"]


class Transform(NamedTuple):
    """An update rule: ``init`` builds the state, ``update`` maps a gradient to a step."""

    init: Callable[[np.ndarray], State]
    update: Callable[[np.ndarray, State], tuple[np.ndarray, State]]


def momentum(beta: float) -> Transform:
    """Heavy-ball momentum: ``m ← βm + g``; the update is ``m``."""

    def init(params: np.ndarray) -> State:
        return {"m": np.zeros_like(params, dtype=np.float64)}

    def update(g: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        m = beta * state["m"] + g
        return m, {"m": m}

    return Transform(init, update)


def gradient_correction(beta: float) -> Transform:
    """SPSA-GC's Nesterov correction in the reference's rewrite.

    ``m ← βm + ĝ``; the update direction is ``ĝ + βm``. The paper's form evaluates the
    estimate at a look-ahead point (``v ← βv − a_k ĝ(θ + βv)``, ``θ ← θ + v``); with the change
    of variables ``φ = θ + βv`` the two are the same iteration **only for a constant gain**
    ``a_k = a`` (then ``v = −a·m``). With a decaying schedule, or the adaptive gain of
    ``finite_difference``, the momentum here sums unscaled estimates while the paper's sums
    ``a_j``-scaled steps, so the trajectories differ (not measured against each other).
    """

    def init(params: np.ndarray) -> State:
        return {"m": np.zeros_like(params, dtype=np.float64)}

    def update(g: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        m = beta * state["m"] + g
        return g + beta * m, {"m": m}

    return Transform(init, update)


def scale_by_schedule(schedule: Schedule) -> Transform:
    """Descent step ``−a_k · u`` with ``a_k = schedule(k)``; ``k`` counts from 1 in the state."""

    def init(params: np.ndarray) -> State:
        return {"count": 0}

    def update(u: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        k = int(state["count"]) + 1
        return u * (-schedule(k)), {"count": k}

    return Transform(init, update)


def identity() -> Transform:
    """Pass the gradient through unchanged (no momentum)."""
    return Transform(lambda params: {}, lambda g, state: (g, state))


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order; child ``i``'s state keys are stored as ``"i.key"``."""

    def init(params: np.ndarray) -> State:
        out: State = {}
        for i, t in enumerate(transforms):
            out.update({f"{i}.{k}": v for k, v in t.init(params).items()})
        return out

    def update(g: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        new: State = {}
        for i, t in enumerate(transforms):
            prefix = f"{i}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            g, sub = t.update(g, sub)
            new.update({prefix + k: v for k, v in sub.items()})
        return g, new

    return Transform(init, update)
