"""Loading and calling user objectives: ``MODULE:FUNCTION`` or a built-in name.

An objective maps a 1-D float vector to a float loss. It may declare ``batched = True``
(then it receives a 2-D batch, one row per candidate, and returns one loss per row) and may
accept a keyword ``seed`` (then every candidate of one estimate gets the same seed, so a
stochastic objective can use common random numbers, e.g. the same minibatch).
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ObjectiveError, ObjectiveImportError


@dataclass
class Objective:
    """A validated callable objective with its calling convention resolved."""

    fn: Callable[..., Any]
    spec: str
    batched: bool
    accepts_seed: bool

    def __call__(self, X: np.ndarray, seeds: np.ndarray | None = None) -> np.ndarray:
        """Losses for the rows of ``X``; rows that share a seed are evaluated together."""
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        if self.batched:
            if self.accepts_seed and seeds is not None and n:
                out = np.empty(n)
                for s in np.unique(seeds):
                    idx = np.flatnonzero(seeds == s)
                    out[idx] = self._check(self.fn(X[idx], seed=int(s)), len(idx))
                return out
            return self._check(self.fn(X), n)
        vals = []
        for i in range(n):
            if self.accepts_seed and seeds is not None:
                v = self.fn(X[i], seed=int(seeds[i]))
            else:
                v = self.fn(X[i])
            vals.append(self._scalar(v))
        return np.asarray(vals, dtype=np.float64)

    def _scalar(self, v: Any) -> float:
        arr = np.asarray(v)
        if arr.dtype.kind not in "fiub" or arr.size != 1:
            raise ObjectiveError(
                f"objective {self.spec}: expected a float loss, received "
                f"{type(v).__name__}{' of shape ' + str(arr.shape) if arr.ndim else ''}"
            )
        return float(arr.reshape(()))

    def _check(self, v: Any, n: int) -> np.ndarray:
        arr = np.asarray(v)
        if arr.dtype.kind not in "fiub" or arr.shape != (n,):
            raise ObjectiveError(
                f"objective {self.spec}: declared batched, so expected {n} losses of shape ({n},), "
                f"received {type(v).__name__} of shape {arr.shape}"
            )
        return arr.astype(np.float64)


def load_objective(spec: str) -> Objective:
    """Resolve ``spec``: a built-in name (:mod:`blackbox.testing`, or a suite problem of
    :mod:`blackbox.problems` at instance 0) or ``MODULE:FUNCTION``."""
    from . import problems, testing

    if not isinstance(spec, str) or not spec:
        raise ObjectiveImportError(f"objective: expected a built-in name or MODULE:FUNCTION, received {spec!r}")
    if spec in testing.OBJECTIVES:
        fn = testing.OBJECTIVES[spec]
    elif spec in problems.SUITE:
        fn = problems.objective(spec)
    elif ":" in spec:
        mod_name, _, attr = spec.partition(":")
        if not mod_name or not attr:
            raise ObjectiveImportError(f"objective: expected MODULE:FUNCTION, received {spec!r}")
        # Objectives next to the user's working directory should import like scripts do.
        cwd = str(Path.cwd())
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(mod_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is the user's objective
            raise ObjectiveImportError(
                f"objective: could not import module {mod_name!r} from {spec!r}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            fn = module
            for part in attr.split("."):
                fn = getattr(fn, part)
        except AttributeError:
            raise ObjectiveImportError(f"objective: module {mod_name!r} has no attribute {attr!r}") from None
    else:
        raise ObjectiveImportError(
            f"objective: expected one of {', '.join([*sorted(testing.OBJECTIVES), *problems.SUITE])} "
            f"or MODULE:FUNCTION, received {spec!r}"
        )
    if not callable(fn):
        raise ObjectiveImportError(f"objective: expected a callable at {spec!r}, received {type(fn).__name__}")
    return wrap_objective(fn, spec)


def wrap_objective(fn: Callable[..., Any], spec: str = "<callable>") -> Objective:
    """Wrap a Python callable, detecting ``batched`` and a ``seed`` keyword."""
    try:
        params = inspect.signature(fn).parameters
        accepts_seed = "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        accepts_seed = False
    return Objective(fn, spec, bool(getattr(fn, "batched", False)), accepts_seed)


def is_finite(x: float) -> bool:
    """True for a finite float."""
    return math.isfinite(x)
