"""Finite-difference optimizers: SPSA, SPSA-GC and ZO-SGD are configurations of this one.

A step = one gradient estimate (``estimators``) along fresh random directions
(``perturbations``) → an update transform (momentum or SPSA-GC correction) → a gain
schedule. Before the first step, gains left unset are calibrated from the objective itself,
following Spall's practical guidelines; every calibration query counts against the budget
and the calibrated values are reported by :meth:`resolved_hyperparameters`.

* ``c`` (perturbation size), when unset: the loss at ``x0`` is measured ``noise_samples``
  times with distinct objective seeds; ``c`` is that noise's standard deviation, clipped to
  ``[c_min, c_max]`` (a deterministic objective gets ``c_min``).
* ``a`` (step size), when unset: ``calibration_samples`` gradient estimates at ``x0`` give
  the mean per-coordinate magnitude ``G`` of an estimate; ``a`` is set so that the first
  step moves each coordinate by about ``step0`` (``a = step0·(1+o)^α / G``, further divided
  by ``sqrt(1/(1-β))`` when momentum is on).
* ``step0``, when unset, starts deliberately large (``step0_factor · c_1``) and is cut by
  the divergence guard until the run is stable. The guard fires on a blow-up (a step's
  mean probe loss exceeds the loss at ``x0`` by more than ``|loss(x0)|``), an overflow (a
  loss of +inf after calibration) or a lack of progress (after 20 steps, the running
  average of the loss is still above the loss at ``x0`` plus its noise, the larger of the
  noise at ``x0`` and the noise measured during the run). It returns the
  parameters to the best iterate seen (to ``x0`` on a lack of progress when that iterate
  beat ``x0`` by no more than 3 noise sds: a lucky minibatch, not a better point), clears
  momentum and multiplies ``a`` by ``backoff``.
  The default never diverges but is not the best step everywhere (``bench/optimizers.py``
  measures it against a small step0 grid); an explicit ``step0`` or ``a`` always wins.
* ``o`` (stability constant), when unset: 10% of the steps the budget allows (Spall's
  ``A``), at least 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BudgetError, ConfigError, bad_value
from . import estimators as est
from . import transforms as tx
from .base import Optimizer, OptimizerConfig, RoundRNG, StepInfo, check_positive, check_range, round_seed
from .perturbations import get_perturbation
from .schedules import Constant, PowerDecay, Schedule

_MOMENTUM = ("none", "heavy-ball", "gc")
_TESTS = ("slope", "ends", "hybrid")
_EMA = 0.9  # smoothing of the per-step mean loss watched by the guard (~10-step horizon)
_EMA_WARMUP = 20  # steps after a (re)start before "no progress" can fire
MAX_BACKOFFS = 40  # past this the guard stands down (a = a0 * 0.25^40 is negligible anyway)
# E[(w·g)·d] / E[d²] for a directional difference d = Δ·g: converts the measured d² into the
# first-order decrease g·ĝ that a step along the estimate predicts (sphere: d, set per run).
_LAMBDA = {"rademacher": 1.0, "gaussian": 1.0, "segmented": 12.0 / 7.0}
_GAIN_RANGE = (1e-8, 1e8)  # the adaptive multiplier stays within this range of a
_NOISE_Z = 3.0  # a test waits until the predicted decrease exceeds this many loss-noise sds
_NOISE_HORIZON = 50.0  # steps over which the level noise is averaged
_MAX_WINDOW = 20  # ... but at most this many times adapt_window steps (then it restarts, no change)


@dataclass(frozen=True)
class FDConfig(OptimizerConfig):
    """Hyperparameters of the finite-difference family (None means: calibrate)."""

    a: float | None = field(default=None, metadata={"help": "step-size scale a in a_k = a/(k+o)^alpha; None calibrates it"})
    c: float | None = field(default=None, metadata={"help": "perturbation size c in c_k = c/k^gamma; None calibrates it from the loss noise at x0"})
    alpha: float = field(default=0.602, metadata={"help": "step-size decay exponent alpha, in [0, 1]"})
    gamma: float = field(default=0.101, metadata={"help": "perturbation decay exponent gamma, in [0, 0.5]"})
    o: float | None = field(default=None, metadata={"help": "stability constant o >= 0 in a/(k+o)^alpha; None = 10% of the steps the budget allows"})
    q: int = field(default=1, metadata={"help": "random directions averaged per estimate (q >= 1)"})
    two_sided: bool = field(default=True, metadata={"help": "two-sided differences (2q queries/step) or one-sided with a shared pivot (q+1)"})
    perturbation: str = field(default="rademacher", metadata={"help": "direction distribution: rademacher, segmented, gaussian, sphere"})
    momentum: str = field(default="none", metadata={"help": "update transform: none, heavy-ball, gc (SPSA-GC Nesterov correction)"})
    beta: float = field(default=0.9, metadata={"help": "momentum coefficient beta in [0, 1) (unused when momentum=none)"})
    schedule: str = field(default="power", metadata={"help": "step-size schedule: power (a/(k+o)^alpha) or constant (a)"})
    step0: float | None = field(default=None, metadata={"help": "per-coordinate size of the first steps used to calibrate a; None = step0_factor * c_1"})
    step0_factor: float = field(default=30.0, metadata={"help": "first-step size in units of c_1 when step0 is unset (the guard cuts it if unstable)"})
    guard: bool = field(default=True, metadata={"help": "divergence guard: on a blow-up, return to the best iterate and multiply a by backoff"})
    backoff: float = field(default=0.25, metadata={"help": "factor applied to a at each divergence, in (0, 1)"})
    calibration_samples: int = field(default=4, metadata={"help": "gradient estimates at x0 used to measure the estimate's magnitude"})
    noise_samples: int = field(default=4, metadata={"help": "repeated evaluations at x0 used to calibrate c"})
    c_min: float = field(default=0.01, metadata={"help": "lower bound for a calibrated c (and c for noise-free objectives)"})
    c_max: float = field(default=0.2, metadata={"help": "upper bound for a calibrated c"})
    adapt: bool | None = field(default=None, metadata={"help": "adapt the gain during the run by a loss-decrease test; None = on unless a is given"})
    adapt_target: float = field(default=0.35, metadata={"help": "target ratio of measured to predicted loss decrease, in (0, 1): above it the gain grows, below it shrinks"})
    adapt_rate: float = field(default=1.0, metadata={"help": "log-gain change per unit of ratio error at each test (> 0)"})
    adapt_grow: bool = field(default=True, metadata={"help": "grow the gain when a test window stays below the noise for 20 windows' length (steps too small to measure)"})
    adapt_window: int = field(default=5, metadata={"help": "steps per loss-decrease test at least (longer while the predicted decrease is below 3x the loss noise)"})
    adapt_test: str = field(default="slope", metadata={"help": "how a test window measures the loss decrease: slope (least squares over every level in the window), ends (first and last level) or hybrid (ends; slope only for a window ends cannot close)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("a", self.a)
        check_positive("c", self.c)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("gamma", self.gamma, 0.0, 0.5)
        if self.o is not None:
            check_range("o", self.o, 0.0, math.inf, hi_open=True)
        get_perturbation(self.perturbation)
        if self.momentum not in _MOMENTUM:
            raise bad_value("momentum", f"one of {', '.join(_MOMENTUM)}", self.momentum)
        check_range("beta", self.beta, 0.0, 1.0, hi_open=True)
        if self.schedule not in ("power", "constant"):
            raise bad_value("schedule", "one of power, constant", self.schedule)
        check_positive("step0", self.step0)
        check_positive("step0_factor", self.step0_factor, allow_none=False)
        check_range("backoff", self.backoff, 0.0, 1.0, lo_open=True, hi_open=True)
        for name in ("q", "calibration_samples", "noise_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad_value(name, "an integer >= 1", v)
        check_positive("c_min", self.c_min, allow_none=False)
        check_positive("c_max", self.c_max, allow_none=False)
        if self.c_max < self.c_min:
            raise bad_value("c_max", f"a number >= c_min ({self.c_min})", self.c_max)
        if self.adapt is not None and not isinstance(self.adapt, bool):
            raise bad_value("adapt", "true, false or None", self.adapt)
        check_range("adapt_target", self.adapt_target, 0.0, 1.0, lo_open=True, hi_open=True)
        check_positive("adapt_rate", self.adapt_rate, allow_none=False)
        if not isinstance(self.adapt_window, int) or isinstance(self.adapt_window, bool) or self.adapt_window < 1:
            raise bad_value("adapt_window", "an integer >= 1", self.adapt_window)
        if self.adapt_test not in _TESTS:
            raise bad_value("adapt_test", f"one of {', '.join(_TESTS)}", self.adapt_test)


class FiniteDifferenceOptimizer(Optimizer):
    """SPSA-style optimizer with ask/tell, gain calibration, and exact checkpoints."""

    name = "finite-difference"
    Config = FDConfig

    def __init__(self, config: FDConfig, x0: np.ndarray, *, seed: int = 0, budget: int | None = None) -> None:
        super().__init__(config, x0, seed=seed, budget=budget)
        self.config: FDConfig = config
        self.x0 = np.asarray(x0, dtype=np.float64).copy()
        self.theta = self.x0.copy()
        self._pert = get_perturbation(config.perturbation)
        self._cost = est.queries_per_estimate(config.q, config.two_sided)
        # Gains given or calibrated; None until known.
        self.c: float | None = config.c
        self.a: float | None = config.a
        self.step0: float | None = config.step0
        self.noise_std: float | None = None
        self.grad_scale: float | None = None
        self.o: float | None = config.o
        self.step = 0  # optimisation steps taken (k in the schedules)
        self._tstate: tx.State = {}
        self._dirs: np.ndarray | None = None
        self._tx_cache: tuple[float, tx.Transform] | None = None
        self._scratch: np.ndarray | None = None
        self._rng = RoundRNG()
        # Divergence guard: reference loss at x0, best iterate so far, backoffs taken.
        self.ref_loss: float | None = None
        self.anchor_loss = math.inf
        self.anchor_theta = self.theta.copy()
        self.backoffs = 0
        self.loss_ema: float | None = None
        self.ema_steps = 0
        # Gain adaptation (loss-decrease test): the multiplier of a, the open test window
        # (loss level at its start, steps and predicted decrease since), and the scalar
        # shadow of the momentum that predicts how much a step should lower the loss.
        self.adaptive = config.adapt if config.adapt is not None else config.a is None
        self._lam = float(self.dim) if config.perturbation == "sphere" else _LAMBDA.get(config.perturbation, 1.0)
        self.gain = 1.0
        self.win_start: float | None = None
        self.win_steps = 0
        self.win_pred = 0.0
        self.win_noise = 0.0
        self.win_fit = [0.0, 0.0, 0.0, 0.0, 0.0]  # levels in the window: n, mean x, mean y, Sxx, Sxy
        self.pred_m = 0.0
        self.tests = 0
        self.c_index = 1  # the step whose c_k the probes use while adapting
        self.levels: list[float] = []  # the last two loss levels (noise estimate)
        self.level_var = 0.0  # running mean of squared second differences of the levels / 6
        self.level_n = 0
        if self.budget is not None and self.budget < self.min_budget():
            raise BudgetError(
                f"budget: expected at least {self.min_budget()} queries "
                f"({self.min_budget() - self._cost} for calibration + {self._cost} for one step), "
                f"received {self.budget}"
            )
        if self.o is None:
            self.o = self._auto_o()
        if self.phase == "run":
            self._tstate = self._transform(self.a).init(self.theta)

    # --- phases ---------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        """``noise`` (calibrating c), ``gain`` (calibrating a) or ``run``."""
        if self.c is None:
            return "noise"
        if self.a is None:
            return "gain"
        return "run"

    def _calibration_cost(self) -> int:
        cfg = self.config
        cost = cfg.noise_samples if cfg.c is None else 0
        if cfg.a is None:
            cost += cfg.calibration_samples * self._cost
        return cost

    def min_budget(self) -> int:
        return self._calibration_cost() + self._cost

    def _auto_o(self) -> float:
        if self.budget is None:
            return 1.0
        steps = max(1, (self.budget - self._calibration_cost()) // self._cost)
        return float(max(1, round(0.1 * steps)))

    def c_k(self, k: int) -> float:
        """Perturbation size at step ``k`` (1-based)."""
        return self.c / k ** self.config.gamma  # PowerDecay(c, gamma), inlined: hot path

    def _probe_c(self) -> float:
        """The perturbation size of this step's probes. With gain adaptation, c follows its
        schedule in steps that change only between loss-decrease tests, so the O(c²) offset
        of the probes' mean loss is the same at both ends of a test window."""
        return self.c_k(self.c_index if self.adaptive else self.step + 1)

    def a_schedule(self, a: float | None = None) -> Schedule:
        """The step-size schedule for scale ``a`` (default: the calibrated one)."""
        a = self.a if a is None else a
        assert a is not None and self.o is not None
        if self.config.schedule == "constant":
            return Constant(a)
        return PowerDecay(a, self.config.alpha, self.o)

    def _transform(self, a: float) -> tx.Transform:
        cached = self._tx_cache
        if cached is not None and cached[0] == a:
            return cached[1]
        cfg = self.config
        first = {
            "none": tx.identity,
            "heavy-ball": lambda: tx.momentum(cfg.beta),
            "gc": lambda: tx.gradient_correction(cfg.beta),
        }[cfg.momentum]()
        t = tx.chain(first, tx.scale_by_schedule(self.a_schedule(a)))
        self._tx_cache = (a, t)
        return t

    def gain_for(self, step0: float) -> float:
        """The ``a`` whose first step moves each coordinate by about ``step0``."""
        cfg = self.config
        # Momentum sums past estimates: their signal adds up ~1/(1-β) but their noise only
        # ~1/sqrt(1-β²); dividing by the square root (measured better than the full 1/(1-β))
        # keeps early steps stable without starving the run.
        amplification = 1.0 if cfg.momentum == "none" else (1.0 / (1.0 - cfg.beta)) ** 0.5
        scale = self.grad_scale if self.grad_scale and math.isfinite(self.grad_scale) else 1.0
        first = step0 / scale / amplification
        return float(first * ((1 + self.o) ** cfg.alpha if cfg.schedule == "power" else 1.0))

    # --- ask/tell ---------------------------------------------------------------------------
    def next_cost(self) -> int:
        cfg = self.config
        phase = self.phase
        if phase == "noise":
            return cfg.noise_samples
        if phase == "gain":
            return cfg.calibration_samples * self._cost
        return self._cost

    def _directions(self, n: int) -> np.ndarray:
        return self._pert.sample(self._rng(self.seed, self.round), n, self.dim)

    def _ask(self) -> np.ndarray:
        cfg = self.config
        phase = self.phase
        if phase == "noise":
            return np.repeat(self.theta[None, :], cfg.noise_samples, axis=0)
        if phase == "gain":
            n = cfg.calibration_samples
            self._dirs = self._directions(n * cfg.q)
            c1 = self.c_k(1)
            return np.concatenate(
                [est.probe_points(self.theta, c1, self._dirs[i * cfg.q:(i + 1) * cfg.q], cfg.two_sided) for i in range(n)]
            )
        self._dirs = self._directions(cfg.q)
        return est.probe_points(self.theta, self._probe_c(), self._dirs, cfg.two_sided)

    def candidate_seeds(self) -> np.ndarray:
        """Objective seeds per pending candidate: distinct while measuring noise or estimate
        magnitudes (independent samples), shared within each estimate otherwise (common
        random numbers)."""
        n = 0 if self._pending is None else self._pending.shape[0]
        if self.phase == "noise":
            return np.array([round_seed(self.seed, self.round, i) for i in range(n)], dtype=np.int64)
        if self.phase == "gain":
            per = [round_seed(self.seed, self.round, i) for i in range(self.config.calibration_samples)]
            return np.repeat(per, self._cost).astype(np.int64)
        return super().candidate_seeds()

    def _tell(self, X: np.ndarray, losses: np.ndarray, skipped: bool) -> StepInfo:
        cfg = self.config
        phase = self.phase
        extras: dict[str, float] = {}
        # With the guard on, an overflowing (+inf) run step is a divergence, not an error.
        guarded = phase == "run" and skipped and self._accepts_nonfinite(losses)
        if skipped and not guarded:
            pass
        elif phase == "noise":
            self.noise_std = float(np.std(losses, ddof=1)) if losses.size > 1 else 0.0
            self.c = float(min(max(self.noise_std, cfg.c_min), cfg.c_max))
            extras = {"noise_std": self.noise_std, "c": self.c}
            if self.a is not None:
                self._tstate = self._transform(self.a).init(self.theta)
        elif phase == "gain":
            c1 = self.c_k(1)
            mags = []
            for i in range(cfg.calibration_samples):
                dirs = self._dirs[i * cfg.q:(i + 1) * cfg.q]
                g = est.estimate_gradient(losses[i * self._cost:(i + 1) * self._cost], c1, self._pert.weights(dirs), cfg.two_sided)
                mags.append(np.mean(np.abs(g)))
            self.grad_scale = float(np.mean(mags))
            self.ref_loss = float(np.mean(losses))
            if self.step0 is None:
                self.step0 = float(cfg.step0_factor * c1)
            self.a = self.gain_for(self.step0)
            self._tstate = self._transform(self.a).init(self.theta)
            extras = {"grad_scale": self.grad_scale, "a": self.a, "step0": self.step0}
        else:
            ck = self._probe_c()
            mean_loss = math.inf if skipped else float(losses.sum()) / losses.size
            if self.ref_loss is None:  # gains were given: the first step is the reference
                self.ref_loss = mean_loss
            reason = self._divergence(mean_loss)
            if reason:
                if reason == "no-progress" and self.ref_loss - self.anchor_loss <= _NOISE_Z * self._level_noise():
                    # The best iterate beat the start by less than the noise: one lucky
                    # minibatch, not a better point (the run around it just averaged worse
                    # than the start). Back to x0 instead, whose loss is the reference.
                    np.copyto(self.anchor_theta, self.x0)
                    self.anchor_loss = self.ref_loss
                # Back to the best iterate, momentum cleared, smaller steps; the schedule's
                # clock (chain slot 1) keeps counting as if the step had been taken.
                self.theta = self.anchor_theta.copy()
                self.a = float(self.a * cfg.backoff)
                self._tstate = self._transform(self.a).init(self.theta)
                self._tstate["1.count"] = self.step + 1
                self.backoffs += 1
                self.loss_ema, self.ema_steps = None, 0
                self.win_start, self.win_steps, self.win_pred, self.pred_m = None, 0, 0.0, 0.0
                self.levels = []
                extras = {"c_k": ck, "backoff": float(self.backoffs), "a": self.a, "reason": reason}
            else:
                if mean_loss < self.anchor_loss:
                    self.anchor_loss = mean_loss
                    np.copyto(self.anchor_theta, self.theta)
                self.loss_ema = mean_loss if self.loss_ema is None else _EMA * self.loss_ema + (1 - _EMA) * mean_loss
                self.ema_steps += 1
                if self.adaptive:
                    # The loss at θ_k: the pivot (one-sided) or the probes' mean (two-sided,
                    # f(θ) + O(c²) with the same O(c²) bias at every step).
                    self._adapt_gain(float(losses[0]) if not cfg.two_sided else mean_loss)
                g = self._gradient(losses, ck)
                if self.adaptive:
                    dd = est.finite_differences(losses, ck, cfg.q, cfg.two_sided)
                    self._predict(self._lam * float(dd @ dd) / cfg.q)
                self._apply(g)
                extras = {"c_k": ck, "gain": self.gain} if self.adaptive else {"c_k": ck}
            self.step += 1
        self._dirs = None
        finite = losses if not skipped else losses[np.isfinite(losses)]
        return StepInfo(
            round=self.round,
            step=self.step,
            phase=phase,
            queries=self.queries,
            budget=self.budget,
            loss=float(finite.sum()) / finite.size if finite.size else math.nan,
            best_loss=self.best_loss,
            skipped=skipped and not guarded,
            extras=extras,
        )

    def _gradient(self, losses: np.ndarray, ck: float) -> np.ndarray:
        """This step's estimate as a fresh array (the update below reuses it as scratch)."""
        cfg = self.config
        w = self._pert.weights(self._dirs)
        if cfg.q > 1:
            return est.estimate_gradient(losses, ck, w, cfg.two_sided)
        # One direction: the average is one scaled copy of w (bit-identical to the matvec).
        diff = est.finite_differences(losses, ck, 1, cfg.two_sided)[0]
        if w is self._dirs:
            return w[0] * diff
        w0 = w[0]
        w0 *= diff
        return w0

    def _apply(self, g: np.ndarray) -> None:
        """θ ← θ − a_k·u(ĝ) in place, where u is ĝ, the momentum or the GC direction.

        The same arithmetic, in the same order, as ``tx.chain(<momentum>, scale_by_schedule)``
        (so results are bit-identical to the composed transforms, which tests check), without
        the per-step temporaries and state dictionaries that dominate the cost at d ≳ 10^4.
        """
        cfg = self.config
        st = self._tstate
        k = int(st["1.count"]) + 1
        st["1.count"] = k
        if cfg.momentum != "none":
            m = st["0.m"]
            m *= cfg.beta
            m += g
            if cfg.momentum == "heavy-ball":
                np.copyto(g, m)
            else:  # gc: ĝ + βm
                if self._scratch is None or self._scratch.shape != m.shape:
                    self._scratch = np.empty_like(m)
                np.multiply(m, cfg.beta, out=self._scratch)
                g += self._scratch
        g *= self._schedule(k)
        self.theta -= g

    @property
    def a_effective(self) -> float | None:
        """The gain scale in use now: ``a`` times the adaptive multiplier."""
        return None if self.a is None else self.a * self.gain

    def _schedule(self, k: int) -> float:
        cfg = self.config
        a = self.a * self.gain
        if cfg.schedule == "constant":
            return float(a)
        return a / (k + self.o) ** cfg.alpha  # PowerDecay(a·gain, alpha, o), inlined: hot path

    def _predict(self, dd: float) -> None:
        """Add this step's predicted first-order loss decrease ``a_k g·u`` to the open test.

        ``dd`` is the decrease a unit step along the estimate predicts (``g·ĝ`` ≈ the squared
        directional differences); momentum sums past estimates, so a scalar shadow of it
        (the same β) predicts ``g·m`` assuming the gradient changed little since.
        """
        cfg = self.config
        if cfg.momentum == "none":
            u = dd
        else:
            self.pred_m = cfg.beta * self.pred_m + dd
            u = self.pred_m if cfg.momentum == "heavy-ball" else dd + cfg.beta * self.pred_m
        self.win_pred += self._schedule(self.step + 1) * u
        self.win_steps += 1

    def _adapt_gain(self, level: float) -> None:
        """Loss-decrease test: compare the loss drop over the last window with its prediction.

        The ratio ρ = (measured drop) / (predicted first-order drop) is ≈ 1 when steps are far
        too small (the loss falls as the linear model says), ≈ 1 − a·ΔᵀHΔ/2 in general, and
        negative when steps overshoot. The gain moves by ``exp(rate·(clip(ρ, −1, 1) − target))``.
        ``adapt_test=slope`` (default) reads ρ as minus the least-squares slope of the window's
        levels against the cumulative predicted drop, and closes the window once that slope's
        standard error is below sqrt(2)/``_NOISE_Z``; ``ends`` uses start level − end level
        over the predicted drop and closes once the prediction is ``_NOISE_Z`` noise sds;
        ``hybrid`` is ``ends``, except that a window ``ends`` leaves open for ``_MAX_WINDOW``
        windows' length is read by its slope (when resolved) instead of growing the gain.
        """
        cfg = self.config
        lv = self.levels
        if len(lv) == 2:
            # Second differences of successive levels remove a smooth trend and leave
            # 6x the level's noise variance: objective noise and the random c²·ΔᵀHΔ/2
            # probe offset alike. Running mean over ~_NOISE_HORIZON steps.
            s2 = lv[0] - 2.0 * lv[1] + level
            self.level_n += 1
            w = max(1.0 / self.level_n, 1.0 / _NOISE_HORIZON)
            self.level_var += w * (s2 * s2 / 6.0 - self.level_var)
            lv[0], lv[1] = lv[1], level
        else:
            lv.append(level)
        if self.win_start is None:
            # The noise read when the window opens: a divergence inside the window inflates
            # the running estimate and must not hide behind it.
            self.win_start, self.win_steps, self.win_pred = level, 0, 0.0
            self.win_noise = math.sqrt(max(self.level_var, (self.noise_std or 0.0) ** 2))
            self.win_fit = [0.0, 0.0, 0.0, 0.0, 0.0]
        slope = cfg.adapt_test != "ends"
        if slope:
            # Least squares of the level on the cumulative predicted decrease x (Welford
            # updates): ρ = −slope uses every level of the window, so its noise falls like
            # 1/sqrt(window) where the two ends alone stay at sqrt(2)·σ. Over a long window
            # this tells a noise floor (ρ ≈ 0: shrink) from steps too small to see (ρ ≈ 1).
            fit = self.win_fit
            fit[0] += 1.0
            dx = self.win_pred - fit[1]
            fit[1] += dx / fit[0]
            fit[2] += (level - fit[2]) / fit[0]
            fit[3] += dx * (self.win_pred - fit[1])
            fit[4] += dx * (level - fit[2])
        if self.win_steps < cfg.adapt_window:
            return
        sigma = math.sqrt(max(self.level_var, (self.noise_std or 0.0) ** 2))
        # A divergence (the loss more than doubles beyond the noise read at the window's
        # start) is a test too, whatever the running noise estimate has become since.
        rise = level - self.win_start
        diverging = rise > max(_NOISE_Z * self.win_noise, abs(self.win_start))
        ends_ok = self.win_pred > _NOISE_Z * sigma and self.win_pred > 0.0
        if slope:
            # Resolved once ρ's standard error σ/sqrt(Sxx) is below sqrt(2)/_NOISE_Z, the
            # error of the two-ends ratio at its gate (a predicted drop of _NOISE_Z·σ).
            resolved = self.win_fit[3] > 0.0 and self.win_pred > 0.0 and self.win_fit[3] * 2.0 > (_NOISE_Z * sigma) ** 2
            if cfg.adapt_test == "hybrid":
                if ends_ok:
                    resolved, slope = True, False
                elif self.win_steps < _MAX_WINDOW * cfg.adapt_window:
                    resolved = False
        else:
            resolved = ends_ok
        if resolved or diverging:
            if slope and resolved and not diverging:
                rho = -self.win_fit[4] / self.win_fit[3]
            else:
                rho = (self.win_start - level) / self.win_pred if self.win_pred > 0.0 else -1.0
            rho = min(max(rho, -1.0), 1.0)
            self.gain = float(min(max(self.gain * math.exp(cfg.adapt_rate * (rho - cfg.adapt_target)), _GAIN_RANGE[0]), _GAIN_RANGE[1]))
            self.tests += 1
        elif self.win_steps < _MAX_WINDOW * cfg.adapt_window:
            return
        elif cfg.adapt_grow:
            # Steps too small for their effect to rise above the noise in all this time:
            # grow as if the test had found ρ = 1 (a later test cuts the gain if too far).
            self.gain = float(min(self.gain * math.exp(cfg.adapt_rate * (1.0 - cfg.adapt_target)), _GAIN_RANGE[1]))
            self.tests += 1
        # The next window starts at the next step's level, measured with the next c_k.
        self.win_start, self.win_steps, self.win_pred = None, 0, 0.0
        if self.c_k(self.step + 2) != self.c_k(self.c_index):
            self.levels = []  # a new c offsets the levels: no second difference across it
        self.c_index = self.step + 2

    def _accepts_nonfinite(self, losses: np.ndarray) -> bool:
        # Only overflow (+inf, no NaN) is divergence; NaN stays an objective error.
        return (
            self.phase == "run"
            and not np.isnan(losses).any()
            and self.config.guard
            and self.ref_loss is not None
            and math.isfinite(self.ref_loss)
            and self.backoffs < MAX_BACKOFFS
        )

    def _divergence(self, mean_loss: float) -> str:
        """Why the guard fires this step ("" when it does not)."""
        if not self.config.guard or self.ref_loss is None or self.backoffs >= MAX_BACKOFFS:
            return ""
        ref = self.ref_loss
        if not math.isfinite(mean_loss):
            return "overflow"
        if mean_loss > ref + max(abs(ref), 1e-12):
            return "blow-up"
        # Sustained lack of progress: on average worse than the start for a while. The
        # tolerance is the loss noise measured now, not only at x0: a minibatch loss can be
        # noise-free at x0 (logistic at w = 0) and noisy everywhere else, and a zero
        # tolerance then reads every unlucky minibatch as "no progress" and cuts a to 0.
        tol = self._level_noise()
        if self.loss_ema is not None and self.ema_steps >= _EMA_WARMUP and self.loss_ema > ref + tol:
            return "no-progress"
        return ""

    def _level_noise(self) -> float:
        """The loss noise: the larger of the noise at x0 and the run's level-noise estimate."""
        return math.sqrt(max(self.level_var, (self.noise_std or 0.0) ** 2))

    def recommend(self) -> np.ndarray:
        return self.theta.copy()

    def resolved_hyperparameters(self) -> dict[str, Any]:
        out = self.config.to_dict()
        out.update({"a": self.a, "c": self.c, "o": self.o, "step0": self.step0, "adapt": self.adaptive,
                    "gain": self.gain if self.adaptive else None})
        out["calibrated"] = {
            "a": self.config.a is None,
            "c": self.config.c is None,
            "o": self.config.o is None,
            "step0": self.config.step0 is None and self.config.a is None,
            "backoffs": self.backoffs,
            "noise_std": self.noise_std,
            "grad_scale": self.grad_scale,
            "queries": self._calibration_cost(),
            "gain_tests": self.tests,
        }
        return out

    # --- state ----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        # Copies: the optimizer updates these buffers in place on the next step.
        arrays: dict[str, np.ndarray] = {"theta": self.theta.copy(), "anchor_theta": self.anchor_theta.copy()}
        scalars: dict[str, Any] = {}
        for k, v in self._tstate.items():
            if isinstance(v, np.ndarray):
                arrays[f"t.{k}"] = v.copy()
            else:
                scalars[k] = v
        meta = {
            "step": self.step,
            "a": self.a,
            "c": self.c,
            "o": self.o,
            "step0": self.step0,
            "noise_std": self.noise_std,
            "grad_scale": self.grad_scale,
            "ref_loss": self.ref_loss,
            "anchor_loss": _enc(self.anchor_loss),
            "backoffs": self.backoffs,
            "loss_ema": self.loss_ema,
            "ema_steps": self.ema_steps,
            "gain": self.gain,
            "win_start": self.win_start,
            "win_steps": self.win_steps,
            "win_pred": self.win_pred,
            "win_noise": self.win_noise,
            "win_fit": list(self.win_fit),
            "pred_m": self.pred_m,
            "tests": self.tests,
            "c_index": self.c_index,
            "levels": list(self.levels),
            "level_var": self.level_var,
            "level_n": self.level_n,
            "scalars": scalars,
        }
        return arrays, meta

    def _load(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        theta = arrays["theta"]
        if theta.shape != (self.dim,):
            raise ConfigError(f"state theta: expected shape ({self.dim},), received shape {theta.shape}")
        if "gain" not in meta or "c_index" not in meta:
            # Written before the gains adapted: resuming would follow another path than the run
            # that wrote it, so exact resume cannot hold.
            raise ConfigError("state: expected a checkpoint with the adaptive-gain state, received one written by an "
                              "earlier version of blackbox (no 'gain'); start a new run")
        self.theta = np.array(theta, dtype=np.float64)
        self.step = int(meta["step"])
        self.a, self.c, self.o, self.step0 = meta["a"], meta["c"], meta["o"], meta["step0"]
        self.noise_std, self.grad_scale = meta["noise_std"], meta["grad_scale"]
        self.ref_loss, self.anchor_loss = meta["ref_loss"], float(meta["anchor_loss"])
        self.backoffs = int(meta["backoffs"])
        self.loss_ema, self.ema_steps = meta["loss_ema"], int(meta["ema_steps"])
        self.gain, self.win_start = float(meta["gain"]), meta["win_start"]
        self.win_steps, self.win_pred = int(meta["win_steps"]), float(meta["win_pred"])
        self.win_noise = float(meta["win_noise"])
        self.win_fit = [float(v) for v in meta.get("win_fit", [0.0] * 5)]
        self.pred_m, self.tests = float(meta["pred_m"]), int(meta["tests"])
        self.c_index = int(meta["c_index"])
        self.levels = [float(v) for v in meta["levels"]]
        self.level_var, self.level_n = float(meta["level_var"]), int(meta["level_n"])
        self.anchor_theta = np.array(arrays["anchor_theta"], dtype=np.float64)
        tstate: tx.State = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("t.")}
        tstate.update(meta["scalars"])
        self._tstate = tstate


def _enc(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)
