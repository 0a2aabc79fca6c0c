"""Invalid configuration and misuse of the ask/tell protocol give precise, typed errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blackbox import testing as T
from blackbox.errors import BlackboxError, BudgetError, ConfigError, ObjectiveError, UnknownComponentError
from blackbox.optim import make_optimizer
from blackbox.optim.cma import CMAConfig
from blackbox.optim.recipes import SPSAConfig, SPSAGCConfig, ZOSGDConfig


def _check_message(exc: BaseException, name: str, expected: str, received: object) -> None:
    msg = str(exc)
    assert msg.startswith(f"{name}: "), msg
    assert f"expected {expected}" in msg, msg
    assert f"received {received!r}" in msg, msg


# --- hyperparameter ranges ---------------------------------------------------------------

FD_BAD = [
    ("a", 0, "a finite number > 0"),
    ("a", -1.5, "a finite number > 0"),
    ("a", math.nan, "a finite number > 0"),
    ("a", math.inf, "a finite number > 0"),
    ("c", 0.0, "a finite number > 0"),
    ("c", -0.1, "a finite number > 0"),
    ("alpha", -0.1, "a number in [0.0, 1.0]"),
    ("alpha", 1.5, "a number in [0.0, 1.0]"),
    ("gamma", 0.6, "a number in [0.0, 0.5]"),
    ("gamma", -0.01, "a number in [0.0, 0.5]"),
    ("q", 0, "an integer >= 1"),
    ("q", -3, "an integer >= 1"),
    ("q", 2.5, "an integer >= 1"),
    ("q", True, "an integer >= 1"),
    ("beta", 1, "a number in [0.0, 1.0)"),
    ("beta", 1.0, "a number in [0.0, 1.0)"),
    ("beta", -0.1, "a number in [0.0, 1.0)"),
    ("o", -1.0, "a number in [0.0, inf)"),
    ("backoff", 0.0, "a number in (0.0, 1.0)"),
    ("backoff", 1.0, "a number in (0.0, 1.0)"),
    ("step0", 0.0, "a finite number > 0"),
    ("step0_factor", -2.0, "a finite number > 0"),
    ("calibration_samples", 0, "an integer >= 1"),
    ("noise_samples", 0, "an integer >= 1"),
    ("c_min", 0.0, "a finite number > 0"),
    ("c_max", 0.001, "a number >= c_min (0.01)"),
    ("schedule", "cosine", "one of power, constant"),
    ("momentum", "nesterov", "one of none, heavy-ball, gc"),
    ("on_nonfinite", "ignore", "one of error, skip"),
]


@pytest.mark.parametrize("name, value, expected", FD_BAD, ids=[f"{n}={v!r}" for n, v, _ in FD_BAD])
@pytest.mark.parametrize("recipe", ["spsa", "spsa-gc", "zo-sgd"])
def test_invalid_fd_hyperparameter(recipe: str, name: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_optimizer(recipe, 5, **{name: value})
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, BlackboxError)
    _check_message(exc.value, name, expected, value)


@pytest.mark.parametrize("cls", [SPSAConfig, SPSAGCConfig, ZOSGDConfig])
def test_config_classes_validate_on_construction(cls) -> None:
    with pytest.raises(ConfigError, match=r"^alpha: expected a number in \[0.0, 1.0\], received 2.0$"):
        cls(alpha=2.0)
    with pytest.raises(ConfigError, match=r"^q: expected an integer >= 1, received 0$"):
        cls(q=0)
    cls(a=0.1, c=0.1, alpha=0.0, gamma=0.5, beta=0.0, o=0.0)  # the closed ends are allowed


@pytest.mark.parametrize("name, value", [("alpha", 0.0), ("alpha", 1.0), ("gamma", 0.0), ("gamma", 0.5), ("beta", 0.0), ("beta", 0.999), ("o", 0.0)])
def test_boundary_values_are_accepted(name: str, value: float) -> None:
    assert getattr(make_optimizer("spsa", 3, **{name: value}).config, name) == value


CMA_BAD = [
    ("sigma", 0.0, "a finite number > 0"),
    ("sigma", -1.0, "a finite number > 0"),
    ("popsize", 1, "an integer >= 2 or None"),
    ("popsize", 4.5, "an integer >= 2 or None"),
    ("variant", "diag", "one of auto, full, sep"),
    ("on_nonfinite", "raise", "one of error, skip"),
]


@pytest.mark.parametrize("name, value, expected", CMA_BAD, ids=[f"{n}={v!r}" for n, v, _ in CMA_BAD])
def test_invalid_cma_hyperparameter(name: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_optimizer("cma-es", 5, **{name: value})
    assert isinstance(exc.value, ValueError)
    _check_message(exc.value, name, expected, value)


def test_unknown_perturbation_lists_valid_names() -> None:
    with pytest.raises(UnknownComponentError) as exc:
        make_optimizer("spsa", 5, perturbation="uniform")
    msg = str(exc.value)
    assert "perturbation" in msg and "'uniform'" in msg
    for valid in ("rademacher", "segmented", "gaussian", "sphere"):
        assert valid in msg
    assert exc.value.valid == ["gaussian", "rademacher", "segmented", "sphere"]
    assert isinstance(exc.value, LookupError) and isinstance(exc.value, BlackboxError)


def test_unknown_optimizer_lists_the_builtins() -> None:
    with pytest.raises(UnknownComponentError) as exc:
        make_optimizer("adam", 5)
    msg = str(exc.value)
    assert msg.startswith("unknown optimizer 'adam'"), msg
    for name in ("spsa", "spsa-gc", "zo-sgd", "cma-es"):
        assert name in exc.value.valid
        assert name in msg
    assert isinstance(exc.value, LookupError)


@pytest.mark.parametrize(
    "x0, received",
    [
        (np.zeros((2, 3)), "received an array of shape (2, 3)"),
        (np.zeros(0), "received an array of shape (0,)"),
        (np.array([0.0, np.nan]), "received an array containing NaN or inf"),
        (np.array([np.inf, 1.0]), "received an array containing NaN or inf"),
    ],
)
def test_invalid_x0(x0: np.ndarray, received: str) -> None:
    for recipe in ("spsa", "cma-es"):
        with pytest.raises(ConfigError) as exc:
            make_optimizer(recipe, x0)
        assert str(exc.value).startswith("x0: expected ")
        assert received in str(exc.value)


def test_invalid_dim_seed_budget() -> None:
    with pytest.raises(ConfigError) as exc:
        make_optimizer("spsa", 0)
    _check_message(exc.value, "dim", "an integer >= 1", 0)
    with pytest.raises(ConfigError) as exc:
        make_optimizer("spsa", 3, seed=-1)
    _check_message(exc.value, "seed", "an integer >= 0", -1)
    with pytest.raises(ConfigError) as exc:
        make_optimizer("spsa", 3, budget=0)
    _check_message(exc.value, "budget", "a positive integer number of queries", 0)
    with pytest.raises(ConfigError):
        make_optimizer("spsa", 3, budget=100.5)


# --- budgets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kw, minimum, detail",
    [
        ("spsa", {}, 14, "(12 for calibration + 2 for one step)"),
        ("spsa-gc", {"q": 5}, 54, "(44 for calibration + 10 for one step)"),
        ("spsa", {"q": 3, "two_sided": False}, 24, "(20 for calibration + 4 for one step)"),
        ("zo-sgd", {"c": 0.1}, 10, "(8 for calibration + 2 for one step)"),
        ("spsa", {"a": 0.1}, 6, "(4 for calibration + 2 for one step)"),
        ("spsa", {"a": 0.1, "c": 0.1}, 2, "(0 for calibration + 2 for one step)"),
        ("cma-es", {}, 8, "(one generation)"),
        ("cma-es", {"popsize": 20}, 20, "(one generation)"),
    ],
)
def test_budget_below_calibration_plus_one_step(name: str, kw: dict, minimum: int, detail: str) -> None:
    with pytest.raises(BudgetError) as exc:
        make_optimizer(name, 5, budget=minimum - 1, **kw)
    msg = str(exc.value)
    assert msg == f"budget: expected at least {minimum} queries {detail}, received {minimum - 1}"
    assert isinstance(exc.value, ValueError)
    opt = make_optimizer(name, 5, budget=minimum, **kw)  # exactly enough is fine
    assert opt.min_budget() == minimum
    while opt.can_ask():
        info = opt.tell(T.sphere(opt.ask()))
    assert opt.queries == minimum and info.phase == "run"  # it did reach one real step


# --- tell() misuse -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name, kw", [("spsa", {}), ("spsa", {"a": 0.01, "c": 0.1}), ("cma-es", {})])
def test_nonfinite_loss_is_an_objective_error_by_default(name: str, kw: dict, bad: float) -> None:
    opt = make_optimizer(name, 4, seed=0, **kw)
    X = opt.ask()
    L = T.sphere(X)
    L[1] = bad
    with pytest.raises(ObjectiveError) as exc:
        opt.tell(L)
    msg = str(exc.value)
    assert "expected a finite loss" in msg and f"received {bad!r} for candidate 1 in round 0" in msg
    assert "on_nonfinite=skip" in msg
    assert isinstance(exc.value, ValueError)
    # Nothing was consumed: the same round can be told again with good losses.
    assert opt.queries == 0 and opt.round == 0
    np.testing.assert_array_equal(opt.ask(), X)
    opt.tell(T.sphere(X))
    assert opt.queries == X.shape[0] and opt.round == 1


def test_nonfinite_loss_is_skipped_with_on_nonfinite_skip() -> None:
    opt = make_optimizer("spsa", 4, seed=0, a=0.01, c=0.1, on_nonfinite="skip")
    opt.tell(T.sphere(opt.ask()))  # one normal step
    theta = opt.recommend()
    step, best = opt.state_dict()[1]["opt"]["step"], opt.best_loss
    X = opt.ask()
    info = opt.tell(np.array([math.nan, -5.0]))
    assert info.skipped and info.to_json()["skipped"] is True
    np.testing.assert_array_equal(opt.recommend(), theta)  # no update
    assert info.step == step == opt.state_dict()[1]["opt"]["step"]
    assert opt.queries == 4 and opt.round == 2  # the queries were still spent
    assert info.loss == -5.0  # the mean of the finite losses
    assert opt.best_loss == -5.0 and np.array_equal(opt.best_x, X[1])  # finite ones still count
    assert best > -5.0
    info = opt.tell(T.sphere(opt.ask()))  # and the run goes on with fresh directions
    assert not info.skipped and info.step == step + 1
    assert not np.array_equal(opt.recommend(), theta)
    # All non-finite: loss is NaN, best is unchanged.
    opt.ask()
    info = opt.tell([math.inf, math.nan])
    assert info.skipped and math.isnan(info.loss) and opt.best_loss == -5.0


def test_skipped_calibration_round_is_repeated() -> None:
    opt = make_optimizer("spsa", 4, seed=0, on_nonfinite="skip")
    opt.ask()
    info = opt.tell([1.0, math.nan, 1.0, 1.0])
    assert info.skipped and info.phase == "noise"
    assert opt.phase == "noise" and opt.resolved_hyperparameters()["c"] is None
    assert opt.next_cost() == 4
    opt.tell(T.sphere(opt.ask()))
    assert opt.phase == "gain" and opt.resolved_hyperparameters()["c"] == 0.01


def test_cma_nonfinite_skip_keeps_the_distribution() -> None:
    opt = make_optimizer("cma-es", 4, seed=0, on_nonfinite="skip")
    mean = opt.recommend()
    X = opt.ask()
    info = opt.tell(np.full(X.shape[0], math.nan))
    assert info.skipped
    np.testing.assert_array_equal(opt.recommend(), mean)
    assert opt.queries == X.shape[0]
    info = opt.tell(T.sphere(opt.ask()))
    assert not info.skipped and not np.array_equal(opt.recommend(), mean)


@pytest.mark.parametrize("name", ["spsa", "cma-es"])
def test_wrong_number_of_losses(name: str) -> None:
    opt = make_optimizer(name, 4, seed=0)
    X = opt.ask()
    n = X.shape[0]
    for bad in (np.zeros(n + 1), np.zeros(n - 1), np.zeros((n, 1)), 0.5):
        with pytest.raises(ObjectiveError) as exc:
            opt.tell(bad)
        assert str(exc.value).startswith(f"losses: expected shape ({n},) (one per candidate), received shape ")
        assert str(np.shape(bad)) in str(exc.value)
    assert opt.queries == 0
    opt.tell(T.sphere(X))  # the pending round survives the bad calls
    assert opt.queries == n


@pytest.mark.parametrize("name", ["spsa", "cma-es"])
def test_tell_without_ask(name: str) -> None:
    opt = make_optimizer(name, 4, seed=0)
    with pytest.raises(ConfigError, match=r"^tell: expected a preceding ask\(\)"):
        opt.tell([1.0, 2.0])
    X = opt.ask()
    opt.tell(T.sphere(X))
    with pytest.raises(ConfigError, match="no pending candidates"):
        opt.tell(T.sphere(X))  # twice for one ask
    assert opt.queries == X.shape[0]


# --- string overrides (--set) ------------------------------------------------------------


def test_from_overrides_coerces_strings() -> None:
    cfg = SPSAConfig.from_overrides(
        {"alpha": "0.5", "two_sided": "true", "a": "none", "c": " 0.05 ", "q": "3",
         "guard": "off", "perturbation": "gaussian", "o": "null", "step0": "1e-2"}
    )
    assert cfg.alpha == 0.5 and isinstance(cfg.alpha, float)
    assert cfg.two_sided is True
    assert cfg.a is None and cfg.o is None
    assert cfg.c == 0.05
    assert cfg.q == 3 and isinstance(cfg.q, int)
    assert cfg.guard is False
    assert cfg.perturbation == "gaussian"
    assert cfg.step0 == 0.01
    for text, value in [("TRUE", True), ("yes", True), ("1", True), ("on", True),
                        ("false", False), ("No", False), ("0", False)]:
        assert SPSAConfig.from_overrides({"two_sided": text}).two_sided is value
    # Non-string values pass through; make_optimizer takes the same strings.
    assert SPSAConfig.from_overrides({"alpha": 0.25}).alpha == 0.25
    opt = make_optimizer("spsa", 3, alpha="0.5", two_sided="false", a="none", q="2")
    assert (opt.config.alpha, opt.config.two_sided, opt.config.a, opt.config.q) == (0.5, False, None, 2)
    assert opt.next_cost() == 4  # noise round; then one-sided q=2 estimates
    assert CMAConfig.from_overrides({"sigma": "0.3", "variant": "sep"}) == CMAConfig(sigma=0.3, variant="sep")


def test_from_overrides_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        SPSAConfig.from_overrides({"alpha": "0.5", "lr": "0.1"})
    msg = str(exc.value)
    assert msg.startswith("--set: expected a key among ") and msg.endswith(", received 'lr'")
    for key in ("a", "alpha", "beta", "c", "gamma", "q", "two_sided"):
        assert key in msg.split("a key among ")[1].split(", received")[0].split(", ")
    with pytest.raises(ConfigError, match="--set: expected a key among .*, received 'lr'"):
        make_optimizer("spsa", 3, lr="0.1")
    with pytest.raises(ConfigError, match="--set: expected a key among .*sigma.*, received 'alpha'"):
        make_optimizer("cma-es", 3, alpha="0.5")


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("q", "abc", "an integer"),
        ("q", "2.5", "an integer"),
        ("two_sided", "maybe", "a boolean (true/false)"),
        ("alpha", "fast", "a number"),
        ("a", "1e-3x", "a number"),
        ("calibration_samples", "", "an integer"),
    ],
)
def test_from_overrides_bad_strings(key: str, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        SPSAConfig.from_overrides({key: text})
    _check_message(exc.value, key, expected, text)


@pytest.mark.parametrize(
    "key, text, expected, received",
    [
        ("alpha", "1.5", "a number in [0.0, 1.0]", 1.5),  # parsed, then range-checked
        ("alpha", "none", "a number", "none"),  # 'none' where None is not allowed: not parsed
        ("a", "-0.5", "a finite number > 0", -0.5),
        ("a", "nan", "a finite number > 0", math.nan),
        ("a", "fast", "a number or none", "fast"),
        ("beta", "1", "a number in [0.0, 1.0)", 1.0),
        ("q", "0", "an integer >= 1", 0),
    ],
)
def test_from_overrides_values_are_range_checked(key: str, text: str, expected: str, received: object) -> None:
    with pytest.raises(ConfigError) as exc:
        SPSAConfig.from_overrides({key: text})
    msg = str(exc.value)
    assert msg.startswith(f"{key}: expected {expected}, received "), msg
    assert msg.endswith(repr(received)), msg


@pytest.mark.parametrize(
    "cls, key, text",
    [(SPSAGCConfig, "momentum", "none"), (CMAConfig, "variant", "auto")],
    ids=["SPSAGCConfig-momentum-none", "CMAConfig-variant-auto"],
)
def test_from_overrides_keeps_none_as_a_valid_choice(cls, key: str, text: str) -> None:
    assert getattr(cls.from_overrides({key: text}), key) == text


def test_from_overrides_parses_integer_popsize() -> None:
    cfg = CMAConfig.from_overrides({"popsize": "8"})
    assert cfg.popsize == 8 and isinstance(cfg.popsize, int)
