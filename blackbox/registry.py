"""Name -> component registries, one per kind, with lazy entry-point discovery.

Built-ins register themselves when their module is imported. Third-party packages publish
entry points in the groups ``blackbox.optimizers``, ``blackbox.providers`` and
``blackbox.methods``; they are looked up the first time a registry is asked for a name it
does not hold (or for its full listing), once per process. A plugin that fails to import
becomes a :class:`~blackbox.errors.PluginWarning`, never a crash.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError, PluginWarning, UnknownComponentError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component and where it came from (``builtin`` or ``plugin``)."""

    name: str
    obj: T
    source: str
    summary: str = ""


class Registry(Generic[T]):
    """A registry for one kind of component (optimizer, provider, method)."""

    def __init__(self, kind: str, group: str, builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.group = group
        self._builtin_modules = builtin_modules
        self._entries: dict[str, Entry[T]] = {}
        self._builtins_loaded = False
        self._plugins_loaded = False
        self._lock = threading.RLock()

    def register(self, name: str, obj: T, *, source: str = "builtin", summary: str = "") -> T:
        """Register ``obj`` under ``name``; re-registering the same object is a no-op."""
        if not name or not isinstance(name, str):
            raise ConfigError(f"{self.kind} name: expected a non-empty string, received {name!r}")
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.obj is not obj:
                raise ConfigError(f"{self.kind} name: {name!r} is already registered ({old.source})")
            self._entries[name] = Entry(name, obj, source, summary)
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a component registered by a test); unknown names list the valid ones."""
        with self._lock:
            if name not in self._entries:
                raise UnknownComponentError(self.kind, name, sorted(self._entries))
            del self._entries[name]

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        with self._lock:
            self._builtins_loaded = True
            for mod in self._builtin_modules:
                importlib.import_module(mod)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        with self._lock:
            if self._plugins_loaded:
                return
            self._plugins_loaded = True
            for ep in entry_points(group=self.group):
                if ep.name in self._entries:
                    continue  # a built-in of the same name wins; plugins cannot shadow it
                try:
                    obj = ep.load()
                except Exception as exc:  # noqa: BLE001 - any plugin failure is a warning
                    warnings.warn(
                        f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to load: "
                        f"{type(exc).__name__}: {exc}",
                        PluginWarning,
                        stacklevel=3,
                    )
                    continue
                self._entries[ep.name] = Entry(ep.name, obj, _source(ep), _declared_summary(obj))

    def get(self, name: str) -> T:
        """Return the component called ``name``; unknown names list the valid ones."""
        self._load_builtins()
        if name not in self._entries:
            self._load_plugins()
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownComponentError(self.kind, name, self.names()) from None

    def entries(self) -> list[Entry[T]]:
        """All components, built-ins and plugins, sorted by name."""
        self._load_builtins()
        self._load_plugins()
        return [self._entries[k] for k in sorted(self._entries)]

    def names(self) -> list[str]:
        """Sorted names of all components."""
        return [e.name for e in self.entries()]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        if name not in self._entries:
            self._load_plugins()
        return name in self._entries

    def reset_plugins(self) -> None:
        """Forget discovered plugins so the next lookup scans entry points again (tests)."""
        with self._lock:
            for k in [k for k, e in self._entries.items() if e.source == "plugin"]:
                del self._entries[k]
            self._plugins_loaded = False


def _source(ep: Any) -> str:
    """``builtin`` for entry points of this distribution (a method's provider), else ``plugin``."""
    dist = getattr(ep, "dist", None)
    return "builtin" if dist is not None and dist.name == "blackbox-adapt" else "plugin"


def _declared_summary(obj: Any) -> str:
    """A component's own ``summary`` string if it has one, else its docstring's first line."""
    declared = getattr(obj, "summary", None)
    return declared if isinstance(declared, str) and declared else _summary(obj)


def _summary(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def register_decorator(registry: Registry[Any], name: str, summary: str = "") -> Callable[[T], T]:
    """Decorator form of :meth:`Registry.register` for built-ins."""

    def deco(obj: T) -> T:
        registry.register(name, obj, summary=summary or _summary(obj))
        return obj

    return deco


optimizers: Registry[Any] = Registry("optimizer", "blackbox.optimizers", ("blackbox.optim.recipes",))
# Providers that a method brings (``eco:RUN_DIR``) are entry points of this distribution, listed
# as built-ins: the core never imports a method.
providers: Registry[Any] = Registry("provider", "blackbox.providers", ("blackbox.providers",))
methods: Registry[Any] = Registry("method", "blackbox.methods", ("blackbox.methods",))
