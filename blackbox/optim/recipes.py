"""Named optimizers: each is the finite-difference core (or CMA-ES) with its own defaults.

=========  ==============================================================================
spsa       Spall's SPSA: Rademacher directions, two-sided, α=0.602, γ=0.101, no momentum.
spsa-gc    BlackVIP's SPSA with Nesterov gradient correction: β=0.9, α=0.4, γ=0.1 (the
           reference code's exponents), Rademacher directions by default (the paper's
           segmented ±U[0.5,1] is ``perturbation=segmented``, which BlackVIP itself uses:
           on generic problems it raises the estimate's variance, see docs/optimizers.md).
zo-sgd     MeZO-style ZO-SGD: Gaussian directions regenerated from the round seed (nothing
           stored), two-sided, constant step size.
cma-es     CMA-ES from the ``cmaes`` package (full or diagonal), as a baseline.
=========  ==============================================================================

Every recipe calibrates unset gains (``a``, ``c``, ``o``) as described in
:mod:`blackbox.optim.finite_difference`; explicit values always win.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..registry import optimizers
from .base import Optimizer
from .cma import CMAES, CMAConfig
from .finite_difference import FDConfig, FiniteDifferenceOptimizer


def _default(name: str, value: Any) -> Any:
    """Re-declare an inherited FDConfig field with a new default, keeping its help text."""
    meta = next(f.metadata for f in dataclasses.fields(FDConfig) if f.name == name)
    return field(default=value, metadata=meta)


@dataclass(frozen=True)
class SPSAConfig(FDConfig):
    """SPSA defaults (Spall's recommended exponents)."""


@dataclass(frozen=True)
class SPSAGCConfig(FDConfig):
    """SPSA-GC defaults (BlackVIP reference exponents, β = 0.9; Rademacher directions)."""

    alpha: float = _default("alpha", 0.4)
    gamma: float = _default("gamma", 0.1)
    momentum: str = _default("momentum", "gc")


@dataclass(frozen=True)
class ZOSGDConfig(FDConfig):
    """ZO-SGD defaults (Gaussian directions, constant gains)."""

    gamma: float = _default("gamma", 0.0)
    perturbation: str = _default("perturbation", "gaussian")
    schedule: str = _default("schedule", "constant")
    # Gaussian directions make the probes' mean loss noisy (ΔᵀHΔ varies), so "too small to
    # measure" is common near a deterministic optimum: growing there stalls at that noise.
    adapt_grow: bool = _default("adapt_grow", False)


class SPSA(FiniteDifferenceOptimizer):
    """SPSA (Spall): two-sided Rademacher estimates, a/(k+o)^0.602 and c/k^0.101 gains."""

    name = "spsa"
    Config = SPSAConfig


class SPSAGC(FiniteDifferenceOptimizer):
    """SPSA-GC (BlackVIP): SPSA with Nesterov gradient correction, β=0.9."""

    name = "spsa-gc"
    Config = SPSAGCConfig


class ZOSGD(FiniteDifferenceOptimizer):
    """ZO-SGD (MeZO-style): Gaussian directions from a per-round seed, constant step size."""

    name = "zo-sgd"
    Config = ZOSGDConfig


class CMAESRecipe(CMAES):
    """CMA-ES baseline wrapping the cmaes package (SepCMA above 200 dimensions)."""

    name = "cma-es"
    Config = CMAConfig


for _cls in (SPSA, SPSAGC, ZOSGD, CMAESRecipe):
    optimizers.register(_cls.name, _cls, summary=(_cls.__doc__ or "").strip().splitlines()[0])


def make_optimizer(
    name: str,
    dim_or_x0: int | np.ndarray,
    *,
    seed: int = 0,
    budget: int | None = None,
    **overrides: Any,
) -> Optimizer:
    """Build a registered optimizer by name; ``overrides`` may be strings (from ``--set``)."""
    cls = optimizers.get(name)
    if isinstance(dim_or_x0, (int, np.integer)):
        from ..errors import bad_value

        if dim_or_x0 < 1:
            raise bad_value("dim", "an integer >= 1", dim_or_x0)
        x0 = np.zeros(int(dim_or_x0))
    else:
        x0 = np.asarray(dim_or_x0, dtype=np.float64)
    config = cls.Config.from_overrides(overrides)
    return cls(config, x0, seed=seed, budget=budget)
