"""CMA-ES as a baseline, wrapping the ``cmaes`` package (not reimplemented here).

State is checkpointed by reading the wrapped object's attributes (arrays → safetensors,
scalars → JSON, its ``RandomState`` → its MT19937 state), so a resumed run continues
bit-identically without pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import bad_value
from .base import Optimizer, OptimizerConfig, StepInfo, check_positive


@dataclass(frozen=True)
class CMAConfig(OptimizerConfig):
    """Hyperparameters of the CMA-ES baseline."""

    sigma: float = field(default=0.5, metadata={"help": "initial step size sigma0 (> 0), in parameter units"})
    popsize: int | None = field(default=None, metadata={"help": "population per generation; None = 4 + floor(3 ln d)"})
    variant: str = field(default="auto", metadata={"help": "full (CMA), sep (diagonal SepCMA, linear cost in d), auto = sep when d > 200"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("sigma", self.sigma, allow_none=False)
        if self.popsize is not None and (not isinstance(self.popsize, int) or self.popsize < 2):
            raise bad_value("popsize", "an integer >= 2 or None", self.popsize)
        if self.variant not in ("auto", "full", "sep"):
            raise bad_value("variant", "one of auto, full, sep", self.variant)


class CMAES(Optimizer):
    """Ask/tell CMA-ES; one round is one generation (``popsize`` queries)."""

    name = "cma-es"
    Config = CMAConfig

    def __init__(self, config: CMAConfig, x0: np.ndarray, *, seed: int = 0, budget: int | None = None) -> None:
        super().__init__(config, x0, seed=seed, budget=budget)
        import cmaes

        self.config: CMAConfig = config
        variant = config.variant
        if variant == "auto":
            variant = "sep" if self.dim > 200 else "full"
        self.variant = variant
        cls = cmaes.SepCMA if variant == "sep" else cmaes.CMA
        # A copy: cmaes updates its mean in place and must never write into the caller's x0.
        kwargs: dict[str, Any] = {"mean": np.array(x0, dtype=np.float64, copy=True), "sigma": config.sigma, "seed": self.seed}
        if config.popsize is not None:
            kwargs["population_size"] = config.popsize
        self._es = cls(**kwargs)
        if self.budget is not None and self.budget < self._es.population_size:
            from ..errors import BudgetError

            raise BudgetError(
                f"budget: expected at least {self._es.population_size} queries (one generation), received {self.budget}"
            )

    def next_cost(self) -> int:
        return int(self._es.population_size)

    def _ask(self) -> np.ndarray:
        return np.stack([self._es.ask() for _ in range(self._es.population_size)])

    def _tell(self, X: np.ndarray, losses: np.ndarray, skipped: bool) -> StepInfo:
        if not skipped:
            self._es.tell([(X[i], float(losses[i])) for i in range(X.shape[0])])
        finite = losses[np.isfinite(losses)]
        return StepInfo(
            round=self.round,
            step=self.round + 1,
            phase="run",
            queries=self.queries,
            budget=self.budget,
            loss=float(np.mean(finite)) if finite.size else math.nan,
            best_loss=self.best_loss,
            skipped=skipped,
            extras={"sigma": float(self._es._sigma)},
        )

    def recommend(self) -> np.ndarray:
        return np.array(self._es.mean, dtype=np.float64)

    def resolved_hyperparameters(self) -> dict[str, Any]:
        out = self.config.to_dict()
        out.update({"popsize": int(self._es.population_size), "variant": self.variant})
        return out

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        scalars: dict[str, Any] = {}
        for k, v in vars(self._es).items():
            if isinstance(v, np.ndarray):
                arrays[k] = v
            elif isinstance(v, np.random.RandomState):
                name, keys, pos, has_gauss, cached = v.get_state()
                arrays[k + ".keys"] = keys
                scalars[k] = {"rng": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
            elif v is None or isinstance(v, (bool, int, float, np.integer, np.floating)):
                scalars[k] = v.item() if isinstance(v, (np.integer, np.floating)) else v
            else:
                raise TypeError(f"cannot checkpoint CMA attribute {k} of type {type(v).__name__}")
        return arrays, {"es": scalars, "variant": self.variant}

    def _load(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if meta["variant"] != self.variant:
            raise bad_value("state variant", repr(self.variant), meta["variant"])
        es = self._es
        for k, v in meta["es"].items():
            if isinstance(v, dict) and "rng" in v:
                rng = np.random.RandomState()
                rng.set_state((v["rng"], arrays[k + ".keys"], v["pos"], v["has_gauss"], v["cached"]))
                setattr(es, k, rng)
            else:
                setattr(es, k, v)
        for k, v in arrays.items():
            if not k.endswith(".keys"):
                setattr(es, k, np.array(v))
