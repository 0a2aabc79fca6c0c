"""A minimal method plugin: fits the mean of a zeroth-order objective's best point.

It shows the method protocol end to end: a config (``blackbox.config.Config``), a class with
``fit``/``evaluate``/``load``/``owns``/``show``/``resume_hint``, and a typer group whose
``fit`` command takes the common options (``--seed``, ``--budget``, ``--run-dir``,
``--set``, ``--json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import typer

from blackbox._cli_util import JSON_OPT, SEED_OPT, SET_OPT, _emit_json, handle_errors
from blackbox.config import Config
from blackbox.errors import bad_value
from blackbox.methods.base import MethodInfo, read_config
from blackbox.optim import make_optimizer
from blackbox.runs import atomic_write_json, prepare_run_dir


@dataclass(frozen=True)
class HelloConfig(Config):
    """Settings of the hello method."""

    dim: int = field(default=4, metadata={"help": "parameters to fit"})
    target: float = field(default=1.0, metadata={"help": "every coordinate's optimum"})
    budget: int = field(default=400, metadata={"help": "objective queries"})
    seed: int = field(default=0, metadata={"help": "seed of the optimizer"})

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise bad_value("dim", "an integer >= 1", self.dim)


class HelloMethod:
    """Minimise ||x - target||^2 with spsa-gc; the fitted thing is the best point."""

    name = "hello"
    Config = HelloConfig
    requires = frozenset()

    def fit(self, config: HelloConfig, run_dir: str | Path, **inputs: Any) -> dict[str, Any]:
        path = prepare_run_dir(run_dir, "hello")
        opt = make_optimizer("spsa-gc", np.zeros(config.dim), seed=config.seed, budget=config.budget)
        while opt.can_ask():
            X = opt.ask()
            opt.tell(((X - config.target) ** 2).sum(axis=1))
        result = {"best_loss": float(opt.best_loss), "queries": int(opt.queries)}
        atomic_write_json(path / "config.json", {"method": "hello", "config": config.to_dict()})
        atomic_write_json(path / "result.json", {**result, "x": opt.recommend().tolist()})
        return result

    def evaluate(self, run_dir: str | Path, data: Any = None, **options: Any) -> dict[str, Any]:
        return {"best_loss": json.loads((Path(run_dir) / "result.json").read_text())["best_loss"]}

    def load(self, run_dir: str | Path, **options: Any) -> np.ndarray:
        return np.asarray(json.loads((Path(run_dir) / "result.json").read_text())["x"])

    def owns(self, run_dir: Path) -> bool:
        cfg = read_config(run_dir)
        return cfg is not None and cfg.get("method") == "hello"

    def show(self, run_dir: Path) -> dict[str, Any]:
        done = (Path(run_dir) / "result.json").is_file()
        return {"method": "hello", "finished": done, "metrics": self.evaluate(run_dir) if done else {},
                "progress": "fitted" if done else "not fitted"}

    def resume_hint(self, run_dir: Path) -> str:
        return f"re-run `blackbox hello fit --run-dir {run_dir}`"


app = typer.Typer(help="Hello: an example method plugin.", no_args_is_help=True)


@app.command()
@handle_errors
def fit(
    run_dir: str = typer.Option(..., "--run-dir", help="Run directory."),
    budget: int = typer.Option(400, "--budget", help="Objective queries."),
    seed: int = SEED_OPT,
    sets: list[str] = SET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Fit the hello method."""
    config = HelloConfig.from_overrides(sets, budget=budget, seed=seed)
    result = HelloMethod().fit(config, run_dir)
    if as_json:
        _emit_json(result)
    else:
        typer.echo(f"best loss {result['best_loss']:.4g} after {result['queries']} queries")


@app.command()
def options() -> None:
    """Every setting with its default."""
    for row in HelloConfig.describe():
        typer.echo(f"{row['name']:<8} {row['default']!s:<6} {row['help']}")


INFO = MethodInfo("hello", "blackbox_hello", "hello", "Hello: an example method plugin",
                  cli="blackbox_hello:app", method="blackbox_hello:HelloMethod")
