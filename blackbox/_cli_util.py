"""Shared pieces of the command line: error handling, JSON output, ``--set`` parsing, progress.

Method command groups (``blackbox.methods.*.cli``) import these rather than ``blackbox.cli``
so that the main app can mount them without an import cycle.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, Optional, TypeVar

import typer

from .config import parse_sets  # noqa: F401 - re-exported for the command groups
from .errors import BlackboxError

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPT = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")
PROGRESS_OPT = typer.Option(None, "--progress/--no-progress", help="Show a progress bar on stderr (default: when stderr is a terminal).")


SEED_OPT = typer.Option(0, "--seed", help="Seed; the same seed gives the same run.")
SET_OPT = typer.Option([], "--set", help="Any other setting as key=value (repeatable; `options` lists them).")
# Scale-out (docs/scaling.md): the model a command queries served by Ray replicas; results do not change.
REPLICAS_OPT = typer.Option(1, "--replicas", help="Ray replicas of the model; the rows of each batched call are split across them (needs the [ray] extra when > 1).")
RAY_ADDRESS_OPT = typer.Option(None, "--ray-address", help="Ray cluster for the replicas: auto, local or HOST:PORT (default: a local cluster).")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# What Ctrl-C should tell the user about the run in progress: a command sets it once it knows
# its run directory; the callable is asked at interrupt time, when a checkpoint may exist.
_interrupt_hint: list[Callable[[], str]] = []


def on_interrupt(hint: Callable[[], str]) -> None:
    """Register what an interrupt of the current command should print after "interrupted; "."""
    _interrupt_hint[:] = [hint]


def handle_errors(fn: F) -> F:
    """Turn library errors into one stderr line and exit code 1 (Ctrl-C: how to resume this run)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _interrupt_hint.clear()
        try:
            return fn(*args, **kwargs)
        except BlackboxError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            hint = _interrupt_hint[0]() if _interrupt_hint else "nothing was saved"
            _fail(f"interrupted; {hint}")
        except OSError as exc:
            # A path the user gave cannot be written or read (e.g. --output /proc/x): one line.
            where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
            _fail(f"{type(exc).__name__}{where}: {exc.strerror or exc}")

    return wrapper  # type: ignore[return-value]


def quiet_third_party(progress: bool) -> None:
    """Silence other libraries' progress bars and info logs unless our own bar is shown."""
    if progress:
        return
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers" in sys.modules:  # already imported: its env var was read at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _show_progress(flag: Optional[bool], as_json: bool = False) -> bool:
    """Whether to draw our bar (default: stderr is a terminal and no --json); off also quiets
    other libraries' bars and logs."""
    shown = (sys.stderr.isatty() and not as_json) if flag is None else flag
    quiet_third_party(shown)
    return shown


class ProgressBar:
    """A rich progress bar on stderr with free-form fields; a no-op when disabled.

    ``with ProgressBar(total, "queries", enabled) as bar: bar.update(done, loss="0.3")``.
    """

    def __init__(self, total: int, label: str, enabled: bool, done: int = 0) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task(label, total=total, completed=done, info="")

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, completed: int, **fields: Any) -> None:
        """Set the count done and show ``key value`` pairs beside the bar."""
        if self.enabled:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            self.progress.update(self.task, completed=completed, info=info)


def run_with_query_bar(show: bool, budget: int, done: int, fit: Callable[[Callable[[dict[str, Any]], None]], Any]) -> Any:
    """Run ``fit(on_step)`` under a queries bar fed by step rows (``queries``, ``loss``, and
    ``test_accuracy`` when a row has one)."""
    last: dict[str, Any] = {"acc": "-"}
    with ProgressBar(budget, "queries", show, done=done) as bar:

        def on_step(row: dict[str, Any]) -> None:
            if "test_accuracy" in row:
                last["acc"] = f"{row['test_accuracy']:.1%}"
            bar.update(row["queries"], loss=f"{row['loss']:.3f}", test=last["acc"])

        return fit(on_step)
