"""One exception tree for the toolkit.

Every class derives from :class:`BlackboxError` *and* from the builtin a caller would
naturally catch (``ValueError`` for bad input, ``LookupError`` for unknown names, ...), so
``except ValueError`` keeps working for code that does not know this library.
"""

from __future__ import annotations

from typing import Any


class BlackboxError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(BlackboxError, ValueError):
    """A parameter has a value outside what is allowed."""


def bad_value(name: str, expected: str, received: Any) -> ConfigError:
    """Build the standard message: which parameter, what was expected, what was received."""
    return ConfigError(f"{name}: expected {expected}, received {received!r}")


class UnknownComponentError(BlackboxError, LookupError):
    """A name was not found in a registry; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid) or '(none)'}")

    def __str__(self) -> str:  # LookupError/KeyError would quote the whole message
        return self.args[0]


class BudgetError(BlackboxError, ValueError):
    """A query budget is too small for what was asked, or would be exceeded."""


class ObjectiveError(BlackboxError, ValueError):
    """The objective returned something unusable (NaN/inf, wrong shape, wrong type)."""


class ObjectiveImportError(BlackboxError, ImportError):
    """An objective given as ``MODULE:FUNCTION`` could not be imported."""


class RunError(BlackboxError, ValueError):
    """A run directory is missing, is not a run, or does not match the requested config."""


class PluginWarning(UserWarning):
    """A third-party plugin failed to load; the rest of the toolkit keeps working."""


class SpecError(ConfigError):
    """A provider spec string is malformed or names an unknown provider option."""


class CapabilityError(BlackboxError, TypeError):
    """A component needs a capability the provider does not have (raised before any query)."""


class ProviderError(BlackboxError, RuntimeError):
    """A provider call failed (model error, server error, bad response)."""


class TransportError(ProviderError):
    """An HTTP/transport failure, after retries; carries status, request id and retry-after.

    Messages never contain API keys (see :func:`blackbox.secrets.redact`).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        retryable: bool | None = None,
    ) -> None:
        self.message = message  # without the status/request-id suffix, for re-wrapping
        self.status, self.request_id, self.retry_after = status, request_id, retry_after
        self.attempts, self.retryable = attempts, retryable
        parts = [message]
        if status is not None:
            parts.append(f"status {status}")
        if request_id:
            parts.append(f"request id {request_id}")
        if retry_after is not None:
            parts.append(f"retry-after {retry_after:g}s")
        if attempts > 1:
            parts.append(f"after {attempts} attempts")
        super().__init__("; ".join(parts))


class BudgetExceededError(BudgetError):
    """A provider call would exceed the ledger's hard limit; nothing was sent."""
