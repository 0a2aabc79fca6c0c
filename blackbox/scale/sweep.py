"""Sweeps: a grid of runs of any command, one run directory each, resumable by construction.

A sweep spec (TOML)::

    command = "optimize"              # any command: "optimize", "blackvip train", "unlearn fit", ...
    metric = "best_loss"              # the result key reported (each built-in group has a default)
    goal = "min"                      # optional: min or max (defaults per command)

    [options]                         # fixed options, named as on the command line without "--"
    objective = "sphere"
    dim = 10
    budget = 2000
    set = ["a=0.1"]                   # a list repeats the option; true/false give --flag/--no-flag

    [grid]                            # every combination of these is one run
    seed = [0, 1, 2]
    optimizer = ["spsa", "spsa-gc"]
    "set.c" = [0.01, 0.1]             # "set.KEY" sweeps --set KEY=VALUE

``DIR/sweep.json`` records the spec and the run names; ``DIR/runs/NAME/`` is each run's own
directory, ``DIR/logs/NAME.log`` its output and ``DIR/logs/NAME.json`` its last exit and JSON
result. Started again on the same DIR, a sweep skips finished runs, resumes the others that
kept progress (``blackbox runs resume`` for an ``optimize`` checkpoint; the command itself for
a method's run, which resumes a run directory of the same settings) and starts the rest. What
"finished" means is each method's own (``Method.show`` of the method protocol): ECO's
artifact, CrossTune's model, BlackVIP's result; for ``optimize`` its ``result.json``.

Each run is a ``blackbox`` subprocess: with ``backend="local"`` on this machine, at most
``max_parallel`` at once; with ``backend="ray"`` each is a Ray task (one CPU each), so the runs
spread over a cluster whose nodes share the sweep directory.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import BlackboxError, ConfigError, RunError, bad_value
from ..runs import atomic_write_json

__all__ = ["SweepSpec", "load_spec", "plan", "run_sweep", "summarize", "plot_summary", "HEADLINES"]

SWEEP = "sweep.json"
# The headline metric of each command's result (a key of its JSON result, dotted for a nested
# one, and which way is better). Other commands name theirs with `metric` in the spec.
HEADLINES: dict[str, tuple[str, str]] = {
    "optimize": ("best_loss", "min"),
    "blackvip train": ("test_accuracy", "max"),
    "unlearn fit": ("forget_accuracy_after", "min"),  # the guard's job; retain_accuracy_after shows the collateral
    "crosstune fit": ("train_info.val_acc", "max"),  # accuracy on held-out shots (out of fold), never a test split
}
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec: the command, fixed options, the grid, and the headline metric."""

    command: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    metric: str | None = None
    goal: str = "min"

    def to_json(self) -> dict[str, Any]:
        """The spec as stored in ``sweep.json``."""
        # Pairs, not objects: sweep.json is written with sorted keys, and the grid's order names the runs.
        return {"command": " ".join(self.command), "options": [[k, v] for k, v in self.options.items()],
                "grid": [[k, v] for k, v in self.grid.items()], "metric": self.metric, "goal": self.goal}


def _scalar_ok(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec TOML file; every error names the key and what was expected."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"spec: expected a TOML file, received {str(path)!r}, which does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"spec: expected valid TOML in {str(path)!r}, received a parse error: {exc}") from None
    return spec_from_dict(raw)


def spec_from_dict(raw: dict[str, Any]) -> SweepSpec:
    """Validate a spec given as a dict (the TOML's content)."""
    unknown = sorted(set(raw) - {"command", "options", "grid", "metric", "goal"})
    if unknown:
        raise bad_value("spec", "keys among command, options, grid, metric, goal", ", ".join(unknown))
    command = raw.get("command")
    if not isinstance(command, str) or not command.split():
        raise bad_value("command", "a command such as 'optimize' or 'blackvip train'", command)
    words = tuple(command.split())
    options = raw.get("options", {})
    grid = raw.get("grid", {})
    if isinstance(options, list) and all(isinstance(p, list) and len(p) == 2 for p in options):
        options = {k: v for k, v in options}  # as stored in sweep.json
    if isinstance(grid, list) and all(isinstance(p, list) and len(p) == 2 for p in grid):
        grid = {k: v for k, v in grid}
    if not isinstance(options, dict):
        raise bad_value("options", "a table of option = value", options)
    if not isinstance(grid, dict) or not grid:
        raise bad_value("grid", "a table of option = [values...] with at least one option", grid)
    for key, value in options.items():
        if not (_scalar_ok(value) or (isinstance(value, list) and all(_scalar_ok(v) for v in value))):
            raise bad_value(f"options.{key}", "a string, number, boolean or a list of them", value)
    for key, values in grid.items():
        if not isinstance(values, list) or not values or not all(_scalar_ok(v) for v in values):
            raise bad_value(f"grid.{key}", "a non-empty list of strings, numbers or booleans", values)
        if len({json.dumps(v) for v in values}) != len(values):
            raise bad_value(f"grid.{key}", "distinct values", values)
    for key in ("run-dir", "run_dir", "json", "progress"):
        if key in options or key in grid:
            raise bad_value(f"options.{key}", "not set in a sweep (the sweep chooses it)", options.get(key, grid.get(key)))
    default = HEADLINES.get(" ".join(words), (None, "min"))
    metric = raw.get("metric", default[0])
    goal = raw.get("goal", default[1])
    if metric is not None and not isinstance(metric, str):
        raise bad_value("metric", "the name of a key in the command's JSON result", metric)
    if goal not in ("min", "max"):
        raise bad_value("goal", "min or max", goal)
    return SweepSpec(words, dict(options), {k: list(v) for k, v in grid.items()}, metric, goal)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _args(key: str, value: Any) -> list[str]:
    if key.startswith("set."):
        return ["--set", f"{key[4:]}={_text(value)}"]
    if isinstance(value, bool):
        return [_flag(key) if value else "--no-" + key.replace("_", "-")]
    if isinstance(value, list):
        return [a for v in value for a in _args(key, v)]
    return [_flag(key), _text(value)]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def run_name(settings: dict[str, Any]) -> str:
    """A directory name for one grid point, e.g. ``optimizer=spsa,seed=0``."""
    text = ",".join(f"{k}={_text(v)}" for k, v in settings.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)[:200]


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: its settings, name and command-line arguments (without --run-dir)."""

    name: str
    settings: dict[str, Any]
    args: tuple[str, ...]


def plan(spec: SweepSpec) -> list[PlannedRun]:
    """Every grid point, in the grid's order (the last key varies fastest)."""
    base = [a for k, v in spec.options.items() for a in _args(k, v)]
    keys = list(spec.grid)
    out = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        settings = dict(zip(keys, combo))
        args = base + [a for k, v in settings.items() for a in _args(k, v)]
        out.append(PlannedRun(run_name(settings), settings, tuple(args)))
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise bad_value("grid", "values that give distinct run names", ", ".join(sorted({n for n in names if names.count(n) > 1})))
    return out


def _owner(rd: Path) -> Any:
    """The method whose run ``rd`` is (None for an ``optimize`` run or a folder nothing owns yet)."""
    if not rd.is_dir():
        return None
    from ..registry import methods  # the core reaches methods through their registry (lazy import paths)

    for entry in methods.entries():
        try:
            impl = entry.obj.load_method() if getattr(entry.obj, "method", "") else None
        except ImportError:
            continue  # an optional extra is missing: that method cannot own a run here
        if impl is not None and impl.owns(rd):
            return impl
    return None


def _finished(rd: Path, owner: Any) -> bool:
    """A method's run by its own word (``Method.show``); an ``optimize`` run by its result.json."""
    if owner is None:
        return (rd / "result.json").is_file()
    try:
        return bool(owner.show(rd).get("finished"))
    except (OSError, ValueError, KeyError, BlackboxError):
        return False  # half-written or unreadable: not finished, resumed by its command


def status_of(sweep_dir: Path, run: PlannedRun) -> str:
    """finished, failed (last exit non-zero), checkpointed (progress kept: resumable), started, or pending.

    Any command group: a method's run directory says through the method protocol
    (``Method.show``, reached through the methods registry) whether it is finished (ECO: its artifact;
    CrossTune: its model; BlackVIP: its result), and one that holds its settings resumes;
    an ``optimize`` run is finished with its result.json and resumable with its checkpoint.
    """
    rd = sweep_dir / "runs" / run.name
    owner = _owner(rd)
    if _finished(rd, owner):
        return "finished"
    record = _read_json(sweep_dir / "logs" / f"{run.name}.json")
    if record and record.get("returncode") not in (0, None):
        return "failed"
    if owner is not None or (rd / "state.safetensors").is_file():
        return "checkpointed"
    return "started" if rd.exists() else "pending"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def command_for(spec: SweepSpec, run: PlannedRun, sweep_dir: Path) -> list[str]:
    """The ``blackbox`` arguments that start or resume ``run`` (after ``python -m blackbox.cli``)."""
    rd = sweep_dir / "runs" / run.name
    tail = ["--json", "--no-progress"]
    if spec.command == ("optimize",):
        if (rd / "config.json").is_file():
            return ["runs", "resume", str(rd), *tail]
        if rd.exists():
            shutil.rmtree(rd)  # killed before it wrote its config: nothing to keep
        return ["optimize", *run.args, "--run-dir", str(rd), *tail]
    if rd.exists() and _owner(rd) is None:
        shutil.rmtree(rd)  # killed before it wrote its settings: nothing to keep, start clean
    # Methods resume a run directory of the same settings (ECO replays its evaluations, CrossTune
    # its generations, BlackVIP its checkpoint) when given the same command again.
    return [*spec.command, *run.args, "--run-dir", str(rd), *tail]


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    # A run dies with the process that started it, so a killed sweep leaves no orphan writing
    # into a run directory that the restarted sweep resumes (Linux only; elsewhere a no-op).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def execute(argv: list[str], cwd: str, log_path: str) -> dict[str, Any]:
    """Run ``blackbox ARGV`` in ``cwd``, appending its output to ``log_path``; exit code, JSON result, last error."""
    cmd = [sys.executable, "-m", "blackbox.cli", *argv]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ blackbox {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=_set_pdeathsig if os.name == "posix" else None)
        log.write(proc.stdout + proc.stderr)
    result = None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    errors = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    return {"returncode": proc.returncode, "result": result, "error": errors[-1] if errors else None, "argv": argv}


def _ray_execute(argv: list[str], cwd: str, log_path: str) -> dict[str, Any]:
    return execute(argv, cwd, log_path)


def _prepare(spec: SweepSpec, sweep_dir: Path) -> list[PlannedRun]:
    runs = plan(spec)
    record = {"spec": spec.to_json(), "runs": [r.name for r in runs]}
    path = sweep_dir / SWEEP
    if path.exists():
        old = _read_json(path)
        if old is None or old.get("spec") != record["spec"]:
            raise RunError(f"run_dir: {str(sweep_dir)!r} holds a different sweep (its {SWEEP} has another spec); "
                           "use another --run-dir, or the spec it was started with")
    elif sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise RunError(f"run_dir: expected a new or empty directory, or a sweep to restart, received {str(sweep_dir)!r}, which holds other files")
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    if not path.exists():
        atomic_write_json(path, record)
    return runs


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, *, backend: str = "local", max_parallel: int = 1,
              address: str | None = None, on_done: Callable[[PlannedRun, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) every run of ``spec`` under ``sweep_dir``; returns :func:`summarize`'s dict.

    Finished runs are skipped; the others are started or resumed, at most ``max_parallel`` at a
    time, locally or as Ray tasks (``address`` as in :func:`blackbox.scale.connect`).
    """
    if backend not in BACKENDS:
        raise bad_value("backend", "local or ray", backend)
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
        raise bad_value("max_parallel", "an integer >= 1", max_parallel)
    sweep_dir = Path(sweep_dir).absolute()
    ray = None
    if backend == "ray":
        from ._ray import connect

        ray = connect(address)
    runs = _prepare(spec, sweep_dir)
    todo = [r for r in runs if status_of(sweep_dir, r) != "finished"]
    cwd = os.getcwd()

    def record(run: PlannedRun, out: dict[str, Any]) -> None:
        atomic_write_json(sweep_dir / "logs" / f"{run.name}.json", _finite(out))
        if on_done:
            on_done(run, out)

    def job(run: PlannedRun) -> tuple[list[str], str, str]:
        return command_for(spec, run, sweep_dir), cwd, str(sweep_dir / "logs" / f"{run.name}.log")

    if ray is None:
        with ThreadPoolExecutor(max_workers=max_parallel) as pool:
            futures = {}
            queue = list(todo)
            while queue or futures:
                while queue and len(futures) < max_parallel:
                    run = queue.pop(0)
                    futures[pool.submit(execute, *job(run))] = run
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for f in done:
                    record(futures.pop(f), f.result())
    else:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
        inflight: dict[Any, PlannedRun] = {}
        queue = list(todo)
        try:
            while queue or inflight:
                while queue and len(inflight) < max_parallel:
                    run = queue.pop(0)
                    inflight[remote.remote(*job(run))] = run
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    record(inflight.pop(ref), ray.get(ref))
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
    return summarize(sweep_dir)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    return obj


def _lookup(data: Any, metric: str) -> Any:
    """``data[metric]``, or ``data[a][b]`` for ``metric = "a.b"`` (None when absent)."""
    if isinstance(data, dict) and metric in data:
        return data[metric]
    head, dot, rest = metric.partition(".")
    if dot and isinstance(data, dict) and isinstance(data.get(head), dict):
        return _lookup(data[head], rest)
    return None


def _metric(sweep_dir: Path, run: PlannedRun, metric: str | None) -> Any:
    """The headline from the run's result.json, its command's JSON output, or its method's ``show``
    (a finished run the sweep skipped has no output of this sweep's, e.g. an ECO artifact)."""
    if metric is None:
        return None
    rd = sweep_dir / "runs" / run.name
    log = _read_json(sweep_dir / "logs" / f"{run.name}.json") or {}
    for data in (_read_json(rd / "result.json"), log.get("result")):
        value = _lookup(data, metric)
        if value is not None:
            return value
    owner = _owner(rd)
    if owner is not None:
        try:
            return _lookup(owner.show(rd).get("metrics"), metric)
        except (OSError, ValueError, KeyError, BlackboxError):
            return None
    return None


def summarize(sweep_dir: str | Path) -> dict[str, Any]:
    """One row per run: settings, status, headline metric, run directory (and the best run)."""
    sweep_dir = Path(sweep_dir)
    record = _read_json(sweep_dir / SWEEP)
    if record is None:
        raise RunError(f"run_dir: expected a sweep directory containing {SWEEP}, received {str(sweep_dir)!r}")
    spec = spec_from_dict(record["spec"])
    rows = []
    for run in plan(spec):
        log = _read_json(sweep_dir / "logs" / f"{run.name}.json") or {}
        rows.append({"name": run.name, "settings": run.settings, "status": status_of(sweep_dir, run),
                     "metric": _metric(sweep_dir, run, spec.metric), "run_dir": str(sweep_dir / "runs" / run.name),
                     "error": log.get("error") if log.get("returncode") not in (0, None) else None})
    scored = [r for r in rows if isinstance(r["metric"], (int, float)) and not isinstance(r["metric"], bool)]
    best = None
    if scored:
        best = (min if spec.goal == "min" else max)(scored, key=lambda r: r["metric"])["name"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "checkpointed", "started", "pending")}
    return {"sweep_dir": str(sweep_dir), "command": " ".join(spec.command), "metric": spec.metric, "goal": spec.goal,
            "swept": list(spec.grid), "runs": rows, "counts": counts, "best": best}


def plot_summary(summary: dict[str, Any], path: str | Path) -> Path | None:
    """Plot the headline metric against each swept setting (one panel per setting); None if nothing to plot."""
    rows = [r for r in summary["runs"] if isinstance(r["metric"], (int, float)) and not isinstance(r["metric"], bool)]
    if not rows or not summary["metric"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = summary["swept"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r["settings"][key] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        order = sorted(set(values), key=lambda v: (str(type(v)), v))
        xs = values if numeric else [order.index(v) for v in values]
        ax.scatter(xs, [r["metric"] for r in rows], alpha=0.8)
        if not numeric:
            ax.set_xticks(range(len(order)), [str(v) for v in order], rotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(summary["metric"])
        ax.grid(alpha=0.3)
    fig.suptitle(f"{summary['command']}: {summary['metric']} ({summary['goal']} is better)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
