"""An overall deadline for one request, visible to the provider while the client calls it.

The client sets it around each provider call (:func:`call_deadline`); an HTTP provider reads
:func:`time_left` to cap each call's timeout, so no single call outlives the request's
deadline, whatever its own timeout. A context variable, so concurrent requests (threads) each
see their own; a provider that fans out over a thread pool copies the context per task.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

__all__ = ["call_deadline", "time_left"]

_DEADLINE: ContextVar[float | None] = ContextVar("blackbox_deadline", default=None)


@contextmanager
def call_deadline(at: float | None) -> Iterator[None]:
    """Within the block, the deadline is ``at`` (a ``time.monotonic()`` value) or an earlier
    one already set by an outer caller; ``None`` keeps the outer one."""
    outer = _DEADLINE.get()
    effective = outer if at is None else at if outer is None else min(at, outer)
    token = _DEADLINE.set(effective)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds until the current deadline (may be <= 0), or None when there is none."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()
