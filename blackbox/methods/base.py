"""The method protocol: what every method (built-in or plugin) looks like to the rest of the toolkit.

A method is registered as a :class:`MethodInfo` (cheap: names and import paths only, so
``blackbox --help`` imports no torch) and implemented by a class following :class:`Method`:

- ``Config``: its config dataclass (a :class:`blackbox.config.Config`: ``--set`` parsing,
  ``describe()`` for ``options``, validation in ``__post_init__``);
- ``requires``: the capabilities its main provider must have (checked before any query);
- ``fit(config, run_dir, **inputs) -> dict``: learn, writing everything to ``run_dir``;
- ``evaluate(run_dir, data, **options) -> dict``: metrics of a fitted run on new data;
- ``load(run_dir, **options)``: the fitted thing, a predictor or a provider;
- ``owns(run_dir)``, ``show(run_dir)`` and ``resume_hint(run_dir)``: the run lifecycle
  that ``blackbox runs show/resume`` and Ctrl-C messages share across methods.

The CLI mounts each method's typer group from ``MethodInfo.cli``; a third-party method
publishes a ``MethodInfo`` under the ``blackbox.methods`` entry-point group and gets its
command group the same way (see ``examples/blackbox-hello-method``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from blackbox.errors import ConfigError, RunError


@dataclass(frozen=True)
class MethodInfo:
    """Where a method lives and how the CLI reaches it (import paths are ``module:attribute``)."""

    name: str
    module: str
    cli_group: str
    summary: str
    cli: str = ""
    """``module:attribute`` of the typer app mounted as ``blackbox CLI_GROUP``."""
    method: str = ""
    """``module:attribute`` of the class implementing :class:`Method`."""
    capabilities: tuple[str, ...] = field(default=())
    """Capabilities its main provider needs (informational; ``Method.requires`` is checked)."""

    def load_cli(self) -> Any:
        """The method's typer app (imports the CLI module, which imports no torch at top level)."""
        return _import(self.cli, f"method {self.name}: cli")

    def load_method(self) -> "Method":
        """An instance of the method's protocol class."""
        return _import(self.method, f"method {self.name}: method")()


def _import(path: str, what: str) -> Any:
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{what}: expected 'module:attribute', received {path!r}")
    return getattr(importlib.import_module(module), attr)


@runtime_checkable
class Method(Protocol):
    """The shape every method implements (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    requires: ClassVar[frozenset]

    def fit(self, config: Any, run_dir: str | Path, **inputs: Any) -> dict[str, Any]:
        """Learn from ``inputs`` (provider specs, data files); everything lands in ``run_dir``."""
        ...

    def evaluate(self, run_dir: str | Path, data: Any, **options: Any) -> dict[str, Any]:
        """Metrics of the fitted run on ``data``."""
        ...

    def load(self, run_dir: str | Path, **options: Any) -> Any:
        """The fitted predictor or provider."""
        ...

    def owns(self, run_dir: Path) -> bool:
        """Whether ``run_dir`` is a run directory of this method."""
        ...

    def show(self, run_dir: Path) -> dict[str, Any]:
        """Status of a run: ``method``, ``finished``, ``progress`` (one line) and ``metrics``."""
        ...

    def resume_hint(self, run_dir: Path) -> str:
        """How to continue this run, as an instruction ("run `blackbox runs resume DIR`")."""
        ...


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/config.json`` as a dict, or None when absent or unreadable."""
    try:
        data = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def method_of(run_dir: str | Path) -> "Method | None":
    """The method that owns ``run_dir`` (None for an ``optimize`` run or an unknown folder)."""
    from blackbox.registry import methods

    path = Path(run_dir)
    for entry in methods.entries():
        info = entry.obj
        if not getattr(info, "method", ""):
            continue
        try:
            impl = info.load_method()
        except ImportError:
            continue  # an optional extra is missing: that method cannot own a run here
        if impl.owns(path):
            return impl
    return None


def require_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, refusing a missing folder with one line."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"run_dir: expected a run directory, received {str(run_dir)!r}, which does not exist")
    return path
