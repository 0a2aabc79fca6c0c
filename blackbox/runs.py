"""Run directories: one per run, plain files only, atomic writes, exact resume.

Layout::

    config.json         what was asked (sorted keys, library version) + resolved hyperparameters
    state.safetensors   parameters and optimizer tensors; its metadata holds the JSON state,
                        so this one file *is* the checkpoint (written atomically)
    state.json          a readable mirror of that JSON state
    history.jsonl       one line per round (loss, queries, best loss, gains)
    result.json         written when the run finishes

A run killed at any point (even SIGKILL mid-write) resumes from its last checkpoint:
``history.jsonl`` is cut back to the checkpoint's line count and the rounds after it are
replayed. Randomness depends only on ``(seed, round)``, so the finished run is
bit-identical to one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ._version import __version__
from .errors import BlackboxError, ConfigError, ObjectiveError, RunError, bad_value
from .objectives import Objective, load_objective
from .optim.base import Optimizer, StepInfo

Callback = Callable[[StepInfo], None]

CONFIG, STATE, STATE_JSON, HISTORY, RESULT = (
    "config.json", "state.safetensors", "state.json", "history.jsonl", "result.json",
)


# --- atomic file helpers ---------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as pretty, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Atomically write arrays to safetensors with ``meta`` (JSON) in the header."""
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"state": json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, data)


def load_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read what :func:`save_tensors` wrote."""
    from safetensors import safe_open

    arrays = {}
    with safe_open(str(path), framework="numpy") as fh:
        meta = json.loads((fh.metadata() or {})["state"])
        for k in fh.keys():
            arrays[k] = fh.get_tensor(k)
    return arrays, meta


# Settings that change when checkpoints are written, never the result: editable on resume.
_NO_EFFECT = ("checkpoint_every", "checkpoint_seconds")


# --- run directories shared by every command ------------------------------------------------
def trim_history(hist: Path, lines: int) -> None:
    """Keep the first ``lines`` lines of a history log (those a checkpoint covers), so a resumed
    run's log matches an uninterrupted one; fewer lines than that is a damaged run."""
    if not hist.exists():
        if lines:
            raise RunError(f"run_dir: {hist.name} is missing but the checkpoint expects {lines} lines")
        return
    with open(hist, "rb") as fh:
        rows = fh.read().split(b"\n")
    kept = rows[:lines]
    if len(kept) < lines or (lines and not kept[-1]):
        raise RunError(f"run_dir: {hist.name} has fewer lines than the checkpoint expects ({lines})")
    atomic_write_bytes(hist, b"".join(row + b"\n" for row in kept))


def prepare_run_dir(run_dir: str | Path, what: str) -> Path:
    """Create ``run_dir`` (parents too) or accept it when empty or holding a run (``config.json``;
    the method then checks the run is its own with the same settings). Anything else is one line:
    a file in the way, a non-empty folder that is not a run, a path that cannot be created."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise RunError(f"run_dir: expected a directory, received the existing file {str(path)!r}")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG).is_file():
        raise RunError(f"run_dir: expected a new or empty directory (or a {what} run to resume), "
                       f"received {str(path)!r}, which holds other files")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise RunError(f"run_dir: cannot write to {str(path)!r}: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def discard_unless_checkpointed(path: Path, *checkpoints: str) -> Iterator[None]:
    """If the body fails (or is interrupted) before any of ``checkpoints`` exists in ``path``,
    remove what it wrote there, so that the corrected command starts clean rather than meeting
    a half-made run that "exists with different settings". A folder that held files before
    the body started is never removed."""
    had_files = path.is_dir() and any(p.name != ".write-test" for p in path.iterdir())
    try:
        yield
    except BaseException:
        if not had_files and not any((path / c).exists() for c in checkpoints):
            shutil.rmtree(path, ignore_errors=True)
        raise


# --- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    """What a run was asked to do; stored in ``config.json`` and checked on resume."""

    objective: str
    dim: int
    optimizer: str
    budget: int
    seed: int = 0
    x0: float = 0.0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 0
    checkpoint_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise bad_value("dim", "an integer >= 1", self.dim)
        if not isinstance(self.budget, int) or isinstance(self.budget, bool) or self.budget < 1:
            raise bad_value("budget", "a positive integer number of queries", self.budget)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise bad_value("seed", "an integer >= 0", self.seed)
        if not isinstance(self.x0, (int, float)) or not math.isfinite(self.x0):
            raise bad_value("x0", "a finite number (every coordinate starts there)", self.x0)
        if self.checkpoint_every < 0:
            raise bad_value("checkpoint_every", "an integer >= 0 (0 = time-based only)", self.checkpoint_every)
        if not self.checkpoint_seconds > 0:
            raise bad_value("checkpoint_seconds", "a number > 0", self.checkpoint_seconds)

    def build(self) -> tuple[Objective, Optimizer]:
        """Load the objective and construct the optimizer (validates everything, writes nothing)."""
        from .optim.recipes import make_optimizer

        objective = load_objective(self.objective)
        opt = make_optimizer(
            self.optimizer, np.full(self.dim, float(self.x0)), seed=self.seed, budget=self.budget, **self.hyperparameters
        )
        return objective, opt


@dataclass
class RunResult:
    """Summary of a finished (or resumed-to-finish) run."""

    optimizer: str
    queries: int
    budget: int
    best_loss: float
    rounds: int
    run_dir: str
    wall_seconds: float
    resumed: bool
    hyperparameters: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats as strings)."""
        out = asdict(self)
        if not math.isfinite(out["best_loss"]):
            out["best_loss"] = repr(out["best_loss"])
        return out


# --- the run loop ------------------------------------------------------------------------------
class Run:
    """A run directory bound to its objective and optimizer."""

    def __init__(self, path: Path, config: RunConfig, objective: Objective, opt: Optimizer) -> None:
        self.path = Path(path)
        self.config = config
        self.objective = objective
        self.opt = opt
        self.history_lines = 0
        self._buffer: list[str] = []
        self._checkpointed = False

    # creation / loading
    @classmethod
    def create(cls, path: str | Path, config: RunConfig) -> "Run":
        """Validate ``config`` and create a fresh run directory (refuses to overwrite a run)."""
        path = Path(path)
        objective, opt = config.build()  # every user error surfaces before a file is written
        if path.exists() and not path.is_dir():
            raise RunError(f"run_dir: expected a directory, received the existing file {str(path)!r}")
        if path.is_dir() and any(path.iterdir()):
            hint = " (it is a run: use `blackbox runs resume`)" if (path / CONFIG).exists() else ""
            raise RunError(f"run_dir: expected a new or empty directory, received {str(path)!r}, which has files{hint}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"run_dir: cannot create {str(path)!r}: {exc.strerror or exc}") from None
        run = cls(path, config, objective, opt)
        run._write_config()
        return run

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        """Open an existing run directory at its last checkpoint."""
        path = Path(path)
        cfg_file = path / CONFIG
        if not cfg_file.is_file():
            raise RunError(f"run_dir: expected a run directory containing {CONFIG}, received {str(path)!r}")
        try:
            raw = json.loads(cfg_file.read_text())
            config = RunConfig(**raw["request"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RunError(f"run_dir: {cfg_file} is not a valid run config ({type(exc).__name__}: {exc})") from exc
        objective, opt = config.build()
        run = cls(path, config, objective, opt)
        state_file = path / STATE
        if state_file.is_file():
            try:
                arrays, meta = load_tensors(state_file)
            except Exception as exc:  # noqa: BLE001
                raise RunError(f"run_dir: could not read checkpoint {state_file}: {exc}") from exc
            started, now = meta.get("request"), json.loads(json.dumps(asdict(config)))
            changed = [k for k in now if k not in _NO_EFFECT and started is not None and started.get(k) != now[k]]
            if changed:
                changed = ", ".join(f"{k}: {started.get(k)!r} -> {now[k]!r}" for k in changed)
                raise RunError(f"run_dir: {CONFIG} in {str(path)!r} does not match the checkpoint: it was edited after the run started ({changed}); "
                               "restore it, or start a new run with the new settings")
            try:
                opt.load_state_dict(arrays, meta["optimizer_state"])
            except (ConfigError, KeyError) as exc:
                raise RunError(
                    f"run_dir: the checkpoint in {str(path)!r} does not match {CONFIG} "
                    f"(was the config edited?): {exc}"
                ) from exc
            run.history_lines = int(meta["history_lines"])
            run._checkpointed = True
        run._truncate_history()
        return run

    def _write_config(self) -> None:
        atomic_write_json(
            self.path / CONFIG,
            {
                "library_version": __version__,
                "request": asdict(self.config),
                "resolved": _jsonable(self.opt.resolved_hyperparameters()),
            },
        )

    def _truncate_history(self) -> None:
        trim_history(self.path / HISTORY, self.history_lines)

    @property
    def finished(self) -> bool:
        """True when no further round fits in the budget."""
        return not self.opt.can_ask()

    # running
    def checkpoint(self) -> None:
        """Append buffered history, then atomically replace the checkpoint."""
        if self._buffer:
            with open(self.path / HISTORY, "a", encoding="utf-8") as fh:
                fh.write("".join(self._buffer))
                fh.flush()
                os.fsync(fh.fileno())
            self.history_lines += len(self._buffer)
            self._buffer = []
        arrays, meta = self.opt.state_dict()
        arrays = {**arrays, "x": self.opt.recommend()}
        state = {"history_lines": self.history_lines, "optimizer_state": meta, "finished": self.finished,
                 "request": asdict(self.config)}
        save_tensors(self.path / STATE, arrays, state)
        atomic_write_json(self.path / STATE_JSON, _jsonable(state))
        self._checkpointed = True

    def _warnings(self) -> list[str]:
        if math.isfinite(self.opt.best_loss):
            return []
        return [f"no finite loss in {self.opt.queries} queries (on_nonfinite={self.opt.config.on_nonfinite}): "
                "there is no result; the recommended point is the start x0"]

    def _evaluate(self, X: np.ndarray) -> np.ndarray:
        """The objective's losses; its own exceptions become one line naming it (not a traceback)."""
        try:
            return self.objective(X, self.opt.candidate_seeds())
        except BlackboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code may raise anything
            raise ObjectiveError(f"objective {self.config.objective}: raised {type(exc).__name__}: {exc}") from exc

    def execute(self, callbacks: tuple[Callback, ...] = (), *, resumed: bool = False) -> RunResult:
        """Run until the budget is spent, checkpointing as configured."""
        t0 = time.perf_counter()
        last_ckpt = time.monotonic()
        rounds_since = 0
        created_fresh = not self._checkpointed
        calibrated_before = self.opt.resolved_hyperparameters()
        try:
            while self.opt.can_ask():
                X = self.opt.ask()
                losses = self._evaluate(X)
                info = self.opt.tell(losses)
                self._buffer.append(json.dumps(_jsonable(info.to_json()), sort_keys=True) + "\n")
                for cb in callbacks:
                    cb(info)
                rounds_since += 1
                if info.phase != "run" and self.opt.resolved_hyperparameters() != calibrated_before:
                    calibrated_before = self.opt.resolved_hyperparameters()
                    self._write_config()  # calibrated gains belong in the run's config
                due = self.config.checkpoint_every and rounds_since >= self.config.checkpoint_every
                if due or time.monotonic() - last_ckpt >= self.config.checkpoint_seconds:
                    self.checkpoint()
                    last_ckpt, rounds_since = time.monotonic(), 0
        except BaseException as exc:
            if created_fresh and not self._checkpointed:
                shutil.rmtree(self.path, ignore_errors=True)  # nothing half-written
            elif isinstance(exc, BlackboxError):
                exc.args = (f"{exc.args[0]} (run stopped; last checkpoint kept in {str(self.path)!r})",) + exc.args[1:]
            raise
        self._write_config()
        self.checkpoint()
        result = RunResult(
            optimizer=self.config.optimizer,
            queries=self.opt.queries,
            budget=self.config.budget,
            best_loss=self.opt.best_loss,
            rounds=self.opt.round,
            run_dir=str(self.path),
            wall_seconds=time.perf_counter() - t0,
            resumed=resumed,
            hyperparameters=_jsonable(self.opt.resolved_hyperparameters()),
            warnings=self._warnings(),
        )
        atomic_write_json(self.path / RESULT, result.to_json())
        return result


def start_run(run_dir: str | Path, config: RunConfig, callbacks: tuple[Callback, ...] = ()) -> RunResult:
    """Create a run directory and run it to the end of its budget."""
    return Run.create(run_dir, config).execute(callbacks)


def resume_run(run_dir: str | Path, callbacks: tuple[Callback, ...] = ()) -> RunResult:
    """Continue a run from its last checkpoint (a finished run just reports its result)."""
    return Run.load(run_dir).execute(callbacks, resumed=True)


def show_run(run_dir: str | Path) -> dict[str, Any]:
    """Config, progress and (if finished) result of a run, as a dict."""
    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise RunError(f"run_dir: expected a run directory containing {CONFIG}, received {str(path)!r}")
    config = json.loads((path / CONFIG).read_text())
    state = json.loads((path / STATE_JSON).read_text()) if (path / STATE_JSON).is_file() else None
    result = json.loads((path / RESULT).read_text()) if (path / RESULT).is_file() else None
    opt_state = (state or {}).get("optimizer_state", {})
    return {
        "run_dir": str(path),
        "config": config,
        "queries": opt_state.get("queries", 0),
        "budget": config["request"]["budget"],
        "best_loss": opt_state.get("best_loss"),
        "finished": bool(result),
        "result": result,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else repr(f)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
