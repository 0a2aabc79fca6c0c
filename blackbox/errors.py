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
        endpoint: str | None = None,
        billed: Any = None,
    ) -> None:
        self.message = message  # without the status/request-id suffix, for re-wrapping
        self.status, self.request_id, self.retry_after = status, request_id, retry_after
        self.attempts, self.retryable = attempts, retryable
        # ``endpoint``: the call that failed, e.g. "POST /completions at http://127.0.0.1:8080/v1".
        # ``billed``: a blackbox.types.Usage for the work the server did in this failed call
        # (a completion whose body was unusable, a request sent before the connection dropped),
        # None when it did none; the client adds it to the ledger (see docs/providers.md).
        self.endpoint, self.billed = endpoint, billed
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


class InvalidResponseError(TransportError):
    """The server answered, but the answer is unusable: a truncated or malformed body, or one
    missing what was asked for (choices, logprobs). Never cached; retried like a transient
    error unless ``retryable=False``; the completion it stands for is still billed."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("retryable", True)
        super().__init__(message, **kwargs)


class DeadlineExceededError(TransportError):
    """A request's overall ``deadline`` (across all its retries) has passed."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("retryable", False)
        super().__init__(message, **kwargs)


class PartialResultError(TransportError):
    """Some calls of a request that fans out into several calls failed, the others succeeded.

    ``results`` maps an item's position in the request to its single-item result (with the
    usage of the call that produced it); ``errors`` maps each failed item's position to its
    error. The client keeps (and caches) the results, bills every call's work and retries only
    the failed items. Status, retry-after and retryable summarise the errors.
    """

    def __init__(self, results: dict[int, Any], errors: dict[int, BaseException], n_items: int) -> None:
        self.results, self.errors, self.n_items = dict(results), dict(errors), n_items
        first = self.errors[min(self.errors)]
        transport = [e for e in self.errors.values() if isinstance(e, TransportError)]
        waits = [e.retry_after for e in transport if e.retry_after is not None]
        super().__init__(
            f"{len(self.errors)} of {n_items} items failed, first: {getattr(first, 'message', None) or first}",
            status=getattr(first, "status", None),
            request_id=getattr(first, "request_id", None),
            retry_after=max(waits) if waits else None,
            # Retrying helps only when every failure is worth retrying.
            retryable=bool(transport) and len(transport) == len(self.errors) and all(e.retryable is not False for e in transport),
            endpoint=getattr(first, "endpoint", None),
        )
