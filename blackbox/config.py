"""One base for every configuration: optimizers and methods alike.

A config is a dataclass that inherits :class:`Config`. Every field carries its help text in
``metadata['help']`` (or a docstring-style string after it, read by :meth:`Config.describe`),
validation lives in ``__post_init__`` and raises :func:`~blackbox.errors.bad_value`'s
message (``name: expected X, received Y``), and ``--set key=value`` strings become typed
values through one coercer, :func:`coerce`, whatever the config:

- booleans: ``1/true/yes/on`` and ``0/false/no/off`` (any case);
- ``int``, ``float``, ``str`` by the field's declared type;
- ``None`` from ``none``/``null`` where the field admits None (and ``auto`` for optional
  numbers, where None means "choose for me");
- tuples from a JSON array (``["a", "b"]``, which can hold any string, escapes included) or
  a comma-separated list (``0.1,1,10``), each item coerced to the tuple's item type.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable, Mapping, TypeVar

from .errors import bad_value

C = TypeVar("C", bound="Config")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_SCALARS = ("bool", "int", "float", "str")


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """``["a=0.1", "q=4"]`` → ``{"a": "0.1", "q": "4"}`` (values are coerced by the config)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise bad_value("--set", "key=value", item)
        out[key.strip()] = value.strip()
    return out


def _kind(annotation: Any, default: Any) -> tuple[str, bool, str | None]:
    """(scalar kind, optional?, tuple item kind or None) from a field's type and default.

    The declared type decides (``o: float = 1`` takes "1.5"); the default's type is the
    fallback for fields declared without a scalar type.
    """
    ann = str(annotation or "")
    optional = default is None or bool(re.search(r"\bNone\b|Optional\[", ann))
    tup = re.search(r"\btuple\[\s*(\w+)", ann)
    if isinstance(default, tuple) or tup:
        item = tup.group(1) if tup and tup.group(1) in _SCALARS else (
            type(default[0]).__name__ if isinstance(default, tuple) and default else "str"
        )
        return "tuple", optional, item
    declared = next((t for t in _SCALARS if re.search(rf"\b{t}\b", ann)), None)
    if declared is None and default is not None and type(default).__name__ in _SCALARS:
        declared = type(default).__name__
    return declared or "str", optional, None


def _scalar(name: str, text: str, kind: str, optional: bool, raw: Any) -> Any:
    low = text.lower()
    if kind == "bool":
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise bad_value(name, "a boolean (true/false)", raw)
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise bad_value(name, "an integer" + (" or none" if optional else ""), raw) from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise bad_value(name, "a number" + (" or none" if optional else ""), raw) from None
    return text


def coerce(name: str, raw: Any, default: Any = None, annotation: Any = None) -> Any:
    """Turn a ``--set`` string into the field's type; non-strings pass through unchanged."""
    if not isinstance(raw, str):
        return tuple(raw) if isinstance(raw, list) else raw
    text = raw.strip()
    kind, optional, item = _kind(annotation, default)
    # "auto" means "calibrate / choose for me" for optional numbers; strings keep it verbatim.
    nones = ("none", "null") if kind in ("str", "tuple") else ("none", "null", "auto")
    if optional and text.lower() in nones:
        return None
    if kind != "tuple":
        return _scalar(name, text, kind, optional, raw)
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            raise bad_value(name, "a JSON array or a comma-separated list", raw) from None
        if not isinstance(items, list):
            raise bad_value(name, "a JSON array or a comma-separated list", raw)
        return tuple(items if item == "str" else (_scalar(name, str(v), item or "str", False, raw) for v in items))
    parts = [p.strip() for p in text.split(",")] if text else []
    return tuple(_scalar(name, p, item or "str", False, raw) for p in parts)


def _help(f: dataclasses.Field) -> str:
    return str(f.metadata.get("help", ""))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class Config:
    """Mixin for config dataclasses: ``--set`` parsing, help listing and a JSON round trip."""

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]

    @classmethod
    def from_overrides(cls: type[C], overrides: Mapping[str, Any] | Iterable[str] = (), **base: Any) -> C:
        """Build from ``{name: value}`` or ``["name=value", ...]``; string values are coerced.

        ``base`` holds values set by dedicated command-line flags; ``--set`` overrides win.
        """
        if not isinstance(overrides, Mapping):
            overrides = parse_sets(overrides)
        known = cls._fields()
        values = dict(base)
        for key, raw in overrides.items():
            if key not in known:
                raise bad_value("--set", f"a key among {', '.join(sorted(known))}", key)
            f = known[key]
            default = f.default if f.default is not dataclasses.MISSING else None
            if default is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            values[key] = coerce(key, raw, default, f.type)
        return cls(**values)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming the valid ones."""
        if not isinstance(data, Mapping):
            raise bad_value(cls.__name__, "a JSON object", data)
        known = cls._fields()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise bad_value(cls.__name__, f"keys among {', '.join(sorted(known))}", ", ".join(unknown))
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Every field with its default and help text (for ``options`` and ``--help``)."""
        out = []
        for f in cls._fields().values():
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append({"name": f.name, "default": default, "help": _help(f)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """Field values as a JSON-ready dict (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

