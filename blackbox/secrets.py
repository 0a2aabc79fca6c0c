"""Secrets (API keys) that never show up in a repr, a log line, an artifact or an error.

:class:`Secret` wraps a value so that ``str``/``repr``/``format`` print ``***`` and only
:meth:`Secret.reveal` gives it back. Every secret is also registered process-wide, so
:func:`redact` can scrub it (and any ``Bearer <token>``) from text produced anywhere —
the client passes every message it raises or logs through it.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from typing import Any, Iterable
from urllib.parse import quote

from .errors import bad_value

MASK = "***"

# Shorter values cannot be a real API key, and scrubbing e.g. "ab" from every message
# would mangle all output, so they are not registered globally (explicit redact() still works).
MIN_REGISTERED_LENGTH = 4

# Credentials that must go whatever their value: "Bearer <token>" (8+ characters, so prose
# such as "bearer tokens" is left alone), ``api_key=<value>`` and JSON ``"api_key": "<value>"``.
# The bare "api_key: ..." form is not matched: it is how our own error messages name a parameter.
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEY_FIELD = re.compile(
    r"(?i)((?:api[_-]?key|x-api-key|access[_-]?token|authorization)(?:\s*=\s*|[\"']\s*:\s*[\"']))"
    r"(?!\*\*\*)(?!bearer\b)[^\s\"'&,;}]{8,}"
)

_lock = threading.Lock()
_registered: set[str] = set()
_pattern: re.Pattern[str] | None = None


class Secret:
    """A string that prints as ``***``; ``reveal()`` returns the value (registered for redaction)."""

    __slots__ = ("_value",)

    def __init__(self, value: "str | Secret") -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            # Never echo the value: it may be a key of the wrong type (e.g. bytes).
            raise bad_value("secret", "a str", f"<{type(value).__name__}>")
        object.__setattr__(self, "_value", value)
        register_secret(value)

    def reveal(self) -> str:
        """The wrapped value; call it only where the key is sent (a request header)."""
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())  # constant time

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Secret is immutable")

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: dict) -> "Secret":
        return self

    def __reduce__(self) -> Any:
        # Pickling would write the key into whatever file or pipe receives the bytes.
        raise TypeError("Secret: refusing to pickle an API key; pass it by environment variable instead")


def register_secret(value: "str | Secret") -> bool:
    """Scrub ``value`` from everything :func:`redact` sees; False when too short to register."""
    if isinstance(value, Secret):
        value = value.reveal()
    if not isinstance(value, str):
        raise bad_value("value", "a str or Secret", f"<{type(value).__name__}>")
    if len(value) < MIN_REGISTERED_LENGTH:
        return False
    global _pattern
    with _lock:
        if value not in _registered:
            _registered.add(value)
            _pattern = None  # rebuilt lazily on the next redact()
    return True


def is_secret(value: Any) -> bool:
    """True for a :class:`Secret` or a string equal to a registered secret."""
    if isinstance(value, Secret):
        return True
    if isinstance(value, str) and len(value) >= MIN_REGISTERED_LENGTH:
        with _lock:
            return value in _registered
    return False


def _variants(values: Iterable[str]) -> set[str]:
    out = set()
    for v in values:
        if v:
            out.add(v)
            out.add(quote(v, safe=""))  # as it appears in a URL query string
    return out


def _compile(values: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first, so a key that contains another key is masked whole.
    ordered = sorted(_variants(values), key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None


def _registered_pattern() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _registered:
            _pattern = _compile(_registered)
        return _pattern


def redact(text: Any, *secrets: "str | Secret") -> str:
    """``str(text)`` with every registered and given secret, and any ``Bearer`` token, as ``***``."""
    out = text if isinstance(text, str) else str(text)
    extra = [s.reveal() if isinstance(s, Secret) else s for s in secrets if s is not None]
    for pattern in (_compile([s for s in extra if isinstance(s, str)]), _registered_pattern()):
        if pattern is not None:
            out = pattern.sub(MASK, out)
    out = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", out)
    return _KEY_FIELD.sub(lambda m: m.group(1) + MASK, out)


def scrub_exception(exc: BaseException, *secrets: "str | Secret") -> BaseException:
    """Scrub ``exc`` and every exception chained to it (cause and context), in place.

    String arguments and string attributes are redacted; bodies (dicts, lists) are replaced by
    redacted copies; HTTP request/response objects (anything with ``headers``, e.g. an SDK
    error's ``.request``/``.response``, which hold the ``Authorization`` header and the raw
    body) are dropped, since they cannot be redacted reliably.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        try:
            cur.args = tuple(_scrubbed(a, secrets) for a in cur.args)
        except Exception:  # noqa: BLE001 - some C exceptions refuse new args; keep going
            pass
        for name, value in list(getattr(cur, "__dict__", {}).items()):
            try:
                setattr(cur, name, _scrubbed(value, secrets))
            except Exception:  # noqa: BLE001 - read-only attributes stay as they are
                pass
        todo.extend(e for e in (cur.__cause__, cur.__context__) if e is not None)
    return exc


def _scrubbed(value: Any, secrets: tuple, depth: int = 0) -> Any:
    """``value`` with secrets redacted (strings, containers) or dropped (HTTP objects)."""
    if isinstance(value, str):
        return redact(value, *secrets)
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "replace")
        clean = redact(text, *secrets)
        return value if clean == text else clean.encode()
    if value is None or isinstance(value, (bool, int, float, BaseException)) or depth > 20:
        return value  # chained exceptions are walked by the caller
    if isinstance(value, dict):
        return {_scrubbed(k, secrets, depth + 1): _scrubbed(v, secrets, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrubbed(v, secrets, depth + 1) for v in value) if type(value) in (list, tuple) else value
    if hasattr(value, "headers"):
        return None  # an HTTP request or response: headers and body may hold the key
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from each record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


_filtered: set[str] = set()


def redact_loggers(names: Iterable[str]) -> None:
    """Add a :class:`RedactingFilter` to each named logger, once. A logger's filters see only
    the records logged on it (not its children's), so name the loggers that log, e.g. an HTTP
    stack's ``httpcore.http11``, which at DEBUG prints response headers a server may echo."""
    with _lock:
        todo = [n for n in names if n not in _filtered]
        _filtered.update(todo)
    for name in todo:
        logging.getLogger(name).addFilter(RedactingFilter())
