"""The ask/tell front shared by every optimizer, and its explicit, serialisable state.

An optimizer proposes all candidate points of one round with :meth:`Optimizer.ask` (so a
caller can evaluate them in one batch or concurrently), consumes their losses with
:meth:`Optimizer.tell`, and gives its current answer with :meth:`Optimizer.recommend`.
Budgets are counted in objective evaluations ("queries"); ``ask`` refuses a round that
would exceed the budget, so a run can never overshoot it.

All randomness is derived from ``(seed, round)`` with :class:`numpy.random.SeedSequence`,
never from a long-lived generator, so the state to checkpoint is small and a resumed run
replays exactly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..config import Config
from ..errors import BudgetError, ConfigError, ObjectiveError, bad_value

_NONFINITE = ("error", "skip")


_MASK64 = (1 << 64) - 1


def _mix64(*values: int) -> int:
    """SplitMix64-style hash of a few integers (cheap, well mixed, deterministic)."""
    z = 0x632BE59BD9B4E019
    for v in values:
        z = (z + (int(v) & _MASK64) * 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z


class RoundRNG:
    """Counter-based generator (Philox) re-positioned per ``(seed, round, stream)``.

    Philox is keyed by ``(seed, stream)`` and its counter starts at the round number, so the
    numbers of a round depend on nothing else; re-positioning one cached generator costs a
    few microseconds, where building a seeded generator per round costs tens.
    """

    def __init__(self) -> None:
        self._gen = np.random.Generator(np.random.Philox(key=[0, 0]))
        self._state = self._gen.bit_generator.state

    def __call__(self, seed: int, rnd: int, stream: int = 0) -> np.random.Generator:
        st = self._state
        st["state"]["key"] = np.array([seed & _MASK64, stream & _MASK64], dtype=np.uint64)
        st["state"]["counter"] = np.array([0, 0, rnd & _MASK64, 0], dtype=np.uint64)
        st["buffer_pos"] = 4  # drop anything buffered from the previous position
        st["has_uint32"] = 0
        self._gen.bit_generator.state = st
        return self._gen


def round_rng(seed: int, rnd: int, stream: int = 0) -> np.random.Generator:
    """A generator determined by ``(seed, round, stream)`` alone."""
    return RoundRNG()(seed, rnd, stream)


def round_seed(seed: int, rnd: int, index: int = 0) -> int:
    """An integer seed (< 2**31) for the objective (minibatch / noise) in a given round."""
    return _mix64(seed, rnd, 1, index) >> 33


@dataclass(frozen=True)
class StepInfo:
    """What one completed round did, handed to callbacks and written to history."""

    round: int
    step: int
    phase: str
    queries: int
    budget: int | None
    loss: float
    best_loss: float
    skipped: bool = False
    extras: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of ``history.jsonl``)."""
        out = {
            "round": self.round,
            "step": self.step,
            "phase": self.phase,
            "queries": self.queries,
            "loss": self.loss,
            "best_loss": self.best_loss,
        }
        if self.skipped:
            out["skipped"] = True
        out.update(self.extras)
        return out


@dataclass(frozen=True)
class OptimizerConfig(Config):
    """Base class of optimizer configs: every field has ``metadata['help']``; ``--set``
    parsing, ``describe`` and ``to_dict`` come from :class:`blackbox.config.Config`."""

    on_nonfinite: str = field(
        default="error",
        metadata={"help": "what a NaN/inf loss does: 'error' stops the run; 'skip' drops that round's update"},
    )

    def __post_init__(self) -> None:
        if self.on_nonfinite not in _NONFINITE:
            raise bad_value("on_nonfinite", f"one of {', '.join(_NONFINITE)}", self.on_nonfinite)


def check_positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    """Raise a ConfigError unless ``value`` is a finite number > 0 (or None when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise bad_value(name, "a finite number > 0", value)


def check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise a ConfigError unless ``value`` lies in the interval (open/closed as given)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise bad_value(name, f"a number in {interval}", value)


class Optimizer(ABC):
    """Ask/tell optimizer over a flat float64 parameter vector."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[OptimizerConfig]] = OptimizerConfig

    def __init__(self, config: OptimizerConfig, x0: np.ndarray, *, seed: int = 0, budget: int | None = None) -> None:
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.ndim != 1 or x0.size == 0:
            raise ConfigError(f"x0: expected a non-empty 1-D vector, received an array of shape {x0.shape}")
        if not np.all(np.isfinite(x0)):
            raise ConfigError("x0: expected finite values, received an array containing NaN or inf")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise bad_value("seed", "an integer >= 0", seed)
        if budget is not None and (not isinstance(budget, (int, np.integer)) or budget < 1):
            raise bad_value("budget", "a positive integer number of queries", budget)
        self.config = config
        self.dim = int(x0.size)
        self.seed = int(seed)
        self.budget = None if budget is None else int(budget)
        self.queries = 0
        self.round = 0
        self.best_loss = math.inf
        self.best_x = x0.copy()
        self._pending: np.ndarray | None = None

    # --- subclass hooks -------------------------------------------------------------
    @abstractmethod
    def next_cost(self) -> int:
        """Queries the next :meth:`ask` will return."""

    @abstractmethod
    def _ask(self) -> np.ndarray:
        """Candidate points ``(n, dim)`` of the current round."""

    @abstractmethod
    def _tell(self, X: np.ndarray, losses: np.ndarray, skipped: bool) -> StepInfo:
        """Consume the round's losses and advance the state."""

    @abstractmethod
    def recommend(self) -> np.ndarray:
        """The optimizer's current answer (a copy)."""

    @abstractmethod
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Subclass state as (arrays, JSON-able meta)."""

    @abstractmethod
    def _load(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what :meth:`_state` returned."""

    def _accepts_nonfinite(self, losses: np.ndarray) -> bool:
        """True when these non-finite losses are handled by the optimizer (e.g. overflow as divergence)."""
        return False

    def resolved_hyperparameters(self) -> dict[str, Any]:
        """Hyperparameters actually in use, including values calibrated at run time."""
        return self.config.to_dict()

    def min_budget(self) -> int:
        """The smallest budget that allows at least one optimisation step."""
        return self.next_cost()

    # --- public front ------------------------------------------------------------------
    @property
    def remaining(self) -> int | None:
        """Queries left in the budget (None when unbounded)."""
        return None if self.budget is None else self.budget - self.queries

    def can_ask(self) -> bool:
        """True when the next round fits in the remaining budget."""
        return self.budget is None or self.queries + self.next_cost() <= self.budget

    def ask(self) -> np.ndarray:
        """All candidate points of this round as one ``(n, dim)`` array; call :meth:`tell` next."""
        if self._pending is not None:
            return self._pending.copy()
        if not self.can_ask():
            raise BudgetError(
                f"budget: the next round needs {self.next_cost()} queries but only "
                f"{self.remaining} of {self.budget} remain"
            )
        self._pending = self._ask()
        return self._pending.copy()

    def candidate_seeds(self) -> np.ndarray:
        """One objective seed per pending candidate (equal within an estimate: common random numbers)."""
        n = 0 if self._pending is None else self._pending.shape[0]
        return np.full(n, round_seed(self.seed, self.round), dtype=np.int64)

    def tell(self, losses: Any) -> StepInfo:
        """Report the losses of the candidates from :meth:`ask`, in the same order."""
        if self._pending is None:
            raise ConfigError("tell: expected a preceding ask(), received losses with no pending candidates")
        X = self._pending
        arr = np.asarray(losses, dtype=np.float64)
        if arr.shape != (X.shape[0],):
            raise ObjectiveError(
                f"losses: expected shape ({X.shape[0]},) (one per candidate), received shape {arr.shape}"
            )
        # The common case (every loss finite) checked on Python floats: for the handful of
        # losses of a step that is several times cheaper than ufunc calls.
        finite = True if all(map(math.isfinite, arr.tolist())) else np.isfinite(arr)
        skipped = False
        if finite is not True:
            if self.config.on_nonfinite == "error" and not self._accepts_nonfinite(arr):
                bad = int(np.flatnonzero(~finite)[0])
                raise ObjectiveError(
                    f"objective: expected a finite loss, received {float(arr[bad])!r} for candidate {bad} "
                    f"in round {self.round} (set on_nonfinite=skip to drop such rounds)"
                )
            skipped = True
        if not skipped or finite.any():
            i = int(arr.argmin()) if not skipped else int(np.where(finite, arr, np.inf).argmin())
            if arr[i] < self.best_loss:
                self.best_loss = float(arr[i])
                self.best_x = X[i].copy()
        self.queries += X.shape[0]
        info = self._tell(X, arr, skipped)
        self.round += 1
        self._pending = None
        return info

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to continue exactly: (arrays for safetensors, meta for JSON)."""
        if self._pending is not None:
            raise ConfigError("state_dict: expected no pending ask(); call tell() first")
        arrays, meta = self._state()
        arrays = {f"opt.{k}": np.ascontiguousarray(v) for k, v in arrays.items()}
        arrays["best_x"] = self.best_x
        meta = {
            "optimizer": self.name,
            "queries": self.queries,
            "round": self.round,
            "best_loss": _json_float(self.best_loss),
            "opt": meta,
        }
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`'s output."""
        if meta.get("optimizer") != self.name:
            raise ConfigError(f"state: expected optimizer {self.name!r}, received {meta.get('optimizer')!r}")
        best_x = arrays["best_x"]
        if best_x.shape != (self.dim,):
            raise ConfigError(f"state: expected parameters of shape ({self.dim},), received {best_x.shape}")
        self.queries = int(meta["queries"])
        self.round = int(meta["round"])
        self.best_loss = _from_json_float(meta["best_loss"])
        self.best_x = np.array(best_x, dtype=np.float64)
        self._load({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}, meta["opt"])
        self._pending = None


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)


def _from_json_float(x: float | str) -> float:
    return float(x)
