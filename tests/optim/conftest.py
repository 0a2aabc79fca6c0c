"""Shared helpers for the blackbox.optim tests.

Full CMA-ES at d=100 does an eigendecomposition every generation; with several BLAS
threads on a loaded 2-core machine that is an order of magnitude slower than with one, so
ask for single-threaded BLAS when nothing has set it yet (only effective when numpy is not
imported yet; harmless otherwise).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def evaluate(f: Callable[..., Any], X: np.ndarray, opt: Any) -> np.ndarray:
    """Evaluate the pending candidates ``X`` of ``opt``; stochastic objectives get the
    optimizer's per-candidate seeds (one batched call per distinct seed)."""
    if getattr(f, "stochastic", False):
        seeds = opt.candidate_seeds()
        assert seeds.shape == (X.shape[0],)
        out = np.empty(X.shape[0])
        for s in np.unique(seeds):
            idx = np.flatnonzero(seeds == s)
            out[idx] = f(X[idx], seed=int(s))
        return out
    return np.asarray(f(X), dtype=np.float64)


def drive(opt: Any, f: Callable[..., Any], rounds: int | None = None) -> list[Any]:
    """Run ask/evaluate/tell until the budget is spent (or ``rounds`` rounds); return the StepInfos."""
    infos = []
    while opt.can_ask() and (rounds is None or len(infos) < rounds):
        X = opt.ask()
        infos.append(opt.tell(evaluate(f, X, opt)))
    return infos


def serialise(opt: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """state_dict() through the real on-disk formats: safetensors bytes and strict JSON."""
    from safetensors.numpy import load, save

    arrays, meta = opt.state_dict()
    blob = save(arrays)
    text = json.dumps(meta, allow_nan=False)
    return load(blob), json.loads(text)


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers above, as a fixture (test modules do not import conftest)."""
    return SimpleNamespace(drive=drive, evaluate=evaluate, serialise=serialise)
