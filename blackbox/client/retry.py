"""Retry policy: exponential backoff with full jitter, Retry-After, bounded attempts."""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, Iterable, TypeVar

from ..errors import DeadlineExceededError, InvalidResponseError, TransportError, bad_value
from ..secrets import redact
from .ledger import _check_money

__all__ = ["DEFAULT_RETRY_STATUSES", "RetryPolicy"]

log = logging.getLogger("blackbox.client")
T = TypeVar("T")


# =========================================================================================
# retries
# =========================================================================================
DEFAULT_RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)


class RetryPolicy:
    """Exponential backoff with full jitter; honours Retry-After; bounded attempts."""

    def __init__(
        self,
        max_attempts: int = 4,
        base_delay: float = 0.25,
        max_delay: float = 8.0,
        jitter: bool = True,
        retry_statuses: Iterable[int] = DEFAULT_RETRY_STATUSES,
        *,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], Any] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise bad_value("max_attempts", "an integer >= 1 (1 = no retries)", max_attempts)
        self.max_attempts = max_attempts
        self.base_delay = _check_money("base_delay", base_delay)
        self.max_delay = _check_money("max_delay", max_delay)
        self.max_retry_after = _check_money("max_retry_after", max_retry_after)
        self.jitter = bool(jitter)
        self.retry_statuses = frozenset(int(s) for s in retry_statuses)
        if not callable(sleep):
            raise bad_value("sleep", "a callable taking seconds", sleep)
        self.sleep = sleep
        self.rng = rng if rng is not None else random.Random()

    def should_retry(self, exc: BaseException) -> bool:
        """A TransportError's own verdict when it has one (``retryable`` True/False, e.g. from
        a server's ``x-should-retry``); otherwise its status: a retry status or any 5xx."""
        if not isinstance(exc, TransportError):
            return False
        if exc.retryable is not None:
            return bool(exc.retryable)
        return exc.status is not None and (exc.status in self.retry_statuses or 500 <= exc.status < 600)

    def backoff(self, attempt: int) -> float:
        """Delay after the ``attempt``-th failure: ``min(max_delay, base·2^(attempt−1))``, full jitter."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return self.rng.random() * cap if self.jitter else cap

    def decide(self, exc: BaseException, attempt: int, time_left: float | None = None) -> tuple[float | None, str | None]:
        """After the ``attempt``-th failure: ``(seconds to wait, None)`` to retry, or
        ``(None, reason)`` to give up. ``time_left`` (seconds until a deadline) gives up when
        the wait would outlast it."""
        if not self.should_retry(exc):
            return None, "not retryable"
        assert isinstance(exc, TransportError)  # should_retry is False for anything else
        if attempt >= self.max_attempts:
            return None, f"max_attempts={self.max_attempts} reached"
        if exc.retry_after is not None and exc.retry_after > self.max_retry_after:
            return None, f"server asked to wait {exc.retry_after:g}s, more than max_retry_after={self.max_retry_after:g}s"
        wait_s = max(0.0, exc.retry_after) if exc.retry_after is not None else self.backoff(attempt)
        if time_left is not None and time_left <= 0:
            return None, "deadline passed"
        if time_left is not None and wait_s >= time_left:
            return None, f"deadline: {time_left:.3g}s left, less than the {wait_s:.3g}s wait before a retry"
        return wait_s, None

    def give_up(self, last: TransportError, what: str, reason: str, attempts: int) -> TransportError:
        """The error raised after the last attempt: ``last``'s status, ids and kind, chained by the caller."""
        if reason.startswith("deadline"):
            cls: type[TransportError] = DeadlineExceededError
        else:
            cls = type(last) if type(last) in _KEEP_TYPE else TransportError
        return cls(
            redact(f"{what} failed: {last.message} ({reason})"),
            status=last.status,
            request_id=last.request_id,
            retry_after=last.retry_after,
            attempts=attempts,
            retryable=last.retryable,
            endpoint=last.endpoint,
        )

    def run(self, fn: Callable[[], T], *, what: str = "call") -> T:
        """Call ``fn`` until it succeeds, retrying TransportErrors; then raise a chained TransportError."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except TransportError as exc:
                last = exc
                wait_s, reason = self.decide(exc, attempt)
                if reason is None:
                    log.info("%s", redact(f"{what}: attempt {attempt} failed ({exc}); retrying in {wait_s:.3f}s"))
                    self.sleep(wait_s)
                    continue
            break
        raise self.give_up(last, what, reason, attempt) from last

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, base_delay={self.base_delay}, max_delay={self.max_delay}, "
            f"jitter={self.jitter}, retry_statuses={tuple(sorted(self.retry_statuses))})"
        )


# A final error keeps these kinds (an invalid body stays an InvalidResponseError).
_KEEP_TYPE = (InvalidResponseError, DeadlineExceededError)
