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

from .errors import BlackboxError

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPT = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")
PROGRESS_OPT = typer.Option(None, "--progress/--no-progress", help="Show a progress bar on stderr (default: when stderr is a terminal).")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def handle_errors(fn: F) -> F:
    """Turn library errors into one stderr line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BlackboxError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; the run keeps its last checkpoint (resume with `blackbox runs resume DIR`)")

    return wrapper  # type: ignore[return-value]


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["a=0.1", "q=4"]`` → ``{"a": "0.1", "q": "4"}`` (values are coerced by the config)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BlackboxError(f"--set: expected key=value, received {item!r}")
        out[key.strip()] = value.strip()
    return out


def _show_progress(flag: Optional[bool]) -> bool:
    return sys.stderr.isatty() if flag is None else flag


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
