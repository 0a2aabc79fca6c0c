"""The budget ledger: queries, tokens and money, reserved before a call and committed after."""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import BudgetError, BudgetExceededError, ConfigError, bad_value
from ..items import count_items
from ..types import ClassifyRequest, GenerateRequest, NextTokenRequest, ScoreRequest
from ..types import Usage

__all__ = ["DEFAULT_PRICES", "Reservation", "Ledger", "estimate_request"]


# =========================================================================================
# cost estimates
# =========================================================================================
def _tokens(text: str) -> int:
    return -(-len(text) // 4)  # ceil(len/4): the usual ~4 characters per token


def estimate_request(request: Any) -> tuple[int, int, int]:
    """``(queries, prompt_tokens, completion_tokens)`` for one request: ``len(text)/4`` (+ max_tokens)."""
    n = count_items(request)
    if isinstance(request, ClassifyRequest):
        return n, 0, 0
    if isinstance(request, NextTokenRequest):
        return n, sum(_tokens(p) for p in request.prompts), n  # one token's distribution each
    if isinstance(request, GenerateRequest):
        return n, sum(_tokens(p) for p in request.prompts), n * int(request.max_tokens)
    if isinstance(request, ScoreRequest):
        return n, sum(_tokens(p) + _tokens(c) for p, c in zip(request.prompts, request.continuations)), 0
    return n, sum(_tokens(t) for t in request.texts), 0  # embed, hidden states


# =========================================================================================
# budget ledger
# =========================================================================================
# US$ per 1M tokens, as published by OpenAI in 2025. Prices change: pass ``prices=`` to
# Ledger to override or extend (a dated snapshot such as gpt-4o-mini-2024-07-18 uses the
# entry of its base name). Models not listed cost 0 and are reported as unpriced.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o": {"prompt": 2.50, "completion": 10.00},
    "gpt-4o-mini": {"prompt": 0.15, "completion": 0.60},
    "gpt-4.1": {"prompt": 2.00, "completion": 8.00},
    "gpt-4.1-mini": {"prompt": 0.40, "completion": 1.60},
    "gpt-4.1-nano": {"prompt": 0.10, "completion": 0.40},
    "gpt-3.5-turbo": {"prompt": 0.50, "completion": 1.50},
    "davinci-002": {"prompt": 2.00, "completion": 2.00},
    "babbage-002": {"prompt": 0.40, "completion": 0.40},
    "text-embedding-3-small": {"prompt": 0.02, "completion": 0.0},
    "text-embedding-3-large": {"prompt": 0.13, "completion": 0.0},
}
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
_LIMITS = ("max_queries", "max_prompt_tokens", "max_completion_tokens", "max_cost")
_USED = {"max_queries": "queries", "max_prompt_tokens": "prompt_tokens", "max_completion_tokens": "completion_tokens", "max_cost": "cost"}


@dataclass
class Reservation:
    """Budget set aside for one provider call, until it is committed or released."""

    id: int
    queries: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    model: str | None = None
    what: str = "request"
    state: str = "open"  # open → committed | released


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise bad_value(name, "an integer >= 0", value)
    return int(value)


def _check_money(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) or value < 0:
        raise bad_value(name, "a finite number >= 0", value)
    return float(value)


def _check_prices(prices: Any) -> dict[str, dict[str, float]]:
    if prices is None:
        return {}
    if not isinstance(prices, dict):
        raise bad_value("prices", "a dict model id -> {'prompt': $ per 1M tokens, 'completion': $ per 1M}", prices)
    out = {}
    for model, entry in prices.items():
        if not isinstance(model, str) or not isinstance(entry, dict) or "prompt" not in entry or set(entry) - {"prompt", "completion"}:
            raise bad_value(f"prices[{model!r}]", "{'prompt': $ per 1M tokens, 'completion': $ per 1M tokens}", entry)
        out[model] = {
            "prompt": _check_money(f"prices[{model!r}]['prompt']", entry["prompt"]),
            "completion": _check_money(f"prices[{model!r}]['completion']", entry.get("completion", 0.0)),
        }
    return out


class Ledger:
    """Counts queries, tokens and money; refuses, before sending, a call that could pass a limit."""

    def __init__(
        self,
        max_queries: int | None = None,
        max_prompt_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        max_cost: float | None = None,
        prices: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.limits: dict[str, float | int | None] = {
            "max_queries": None if max_queries is None else _check_count("max_queries", max_queries),
            "max_prompt_tokens": None if max_prompt_tokens is None else _check_count("max_prompt_tokens", max_prompt_tokens),
            "max_completion_tokens": None if max_completion_tokens is None else _check_count("max_completion_tokens", max_completion_tokens),
            "max_cost": None if max_cost is None else _check_money("max_cost", max_cost),
        }
        self.prices: dict[str, dict[str, float]] = {**DEFAULT_PRICES, **_check_prices(prices)}
        self._lock = threading.Lock()
        self.queries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.cache_hits = 0
        self.unpriced: set[str] = set()
        # The part of the used amounts that is the client's estimate, not the server's report:
        # answers without ``usage`` and calls whose answer was lost after sending (billed in
        # full, conservatively). Always included in queries/tokens/cost above.
        self.estimated: dict[str, float] = {"queries": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        self._open: dict[int, Reservation] = {}
        self._next_id = 0

    # prices ----------------------------------------------------------------------------
    def price_of(self, model: str | None) -> dict[str, float] | None:
        """The price entry for ``model`` (exact id, else its undated base name), or None."""
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        return self.prices.get(_DATE_SUFFIX.sub("", model))

    def price(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
        """US$ for that many tokens of ``model``; None when the model is unpriced."""
        entry = self.price_of(model)
        if entry is None:
            return None
        return (prompt_tokens * entry["prompt"] + completion_tokens * entry["completion"]) / 1e6

    # reserve / commit / release ----------------------------------------------------------
    def _in_flight(self) -> dict[str, float]:
        out = {"queries": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        for r in self._open.values():
            out["queries"] += r.queries
            out["prompt_tokens"] += r.prompt_tokens
            out["completion_tokens"] += r.completion_tokens
            out["cost"] += r.cost
        return out

    def _used(self) -> dict[str, float]:
        return {"queries": self.queries, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cost": self.cost}

    def reserve(
        self,
        queries: int,
        est_prompt_tokens: int = 0,
        est_completion_tokens: int = 0,
        *,
        model: str | None = None,
        what: str = "request",
    ) -> Reservation:
        """Set budget aside for a call; raises :class:`BudgetExceededError` if it could pass a limit."""
        need = {
            "queries": _check_count("queries", queries),
            "prompt_tokens": _check_count("est_prompt_tokens", est_prompt_tokens),
            "completion_tokens": _check_count("est_completion_tokens", est_completion_tokens),
        }
        cost = self.price(model, need["prompt_tokens"], need["completion_tokens"])
        if cost is None and self.limits["max_cost"] is not None and (need["prompt_tokens"] or need["completion_tokens"]):
            # A money limit that cannot be checked must not silently become "unlimited".
            raise BudgetError(
                f"ledger: max_cost={self.limits['max_cost']} is set but model {model!r} has no price; "
                f"add it with Ledger(prices={{{model!r}: {{'prompt': ..., 'completion': ...}}}}) ($ per 1M tokens)"
            )
        need["cost"] = cost or 0.0
        with self._lock:
            used, flight = self._used(), self._in_flight()
            for limit_name in _LIMITS:
                limit = self.limits[limit_name]
                key = _USED[limit_name]
                if limit is not None and used[key] + flight[key] + need[key] > limit:
                    raise BudgetExceededError(
                        f"ledger: {what} needs {_fmt(key, need[key])} but {limit_name}={_fmt(key, limit)} would be "
                        f"exceeded (used {_fmt(key, used[key])}, {_fmt(key, flight[key])} reserved by calls in flight); "
                        "nothing was sent"
                    )
            self._next_id += 1
            res = Reservation(self._next_id, need["queries"], need["prompt_tokens"], need["completion_tokens"], need["cost"], model, what)
            self._open[res.id] = res
            return res

    def commit(self, reservation: Reservation, usage: "Usage | Sequence[Usage]") -> float:
        """Replace a reservation by what the call really used; returns the cost charged.

        ``usage`` may be a list: one entry per piece of server work (e.g. the calls of a
        fanned-out request, or a failed call's billed estimate). Entries marked
        ``estimated`` are also added to :attr:`estimated`.
        """
        usages = [usage] if isinstance(usage, Usage) else list(usage) if isinstance(usage, (list, tuple)) else [usage]
        for u in usages:
            if not isinstance(u, Usage):
                raise bad_value("usage", "a blackbox.types.Usage or a list of them", u)
        with self._lock:
            if self._open.get(reservation.id) is not reservation:
                raise bad_value("reservation", "an open reservation of this ledger", f"reservation #{reservation.id} ({reservation.state})")
            del self._open[reservation.id]
            reservation.state = "committed"
            total = 0.0
            for u in usages:
                cost = float(u.cost) if u.cost > 0 else self.price(reservation.model, u.prompt_tokens, u.completion_tokens)
                if cost is None:
                    cost = 0.0
                    if u.prompt_tokens or u.completion_tokens:
                        self.unpriced.add(reservation.model or "(unknown model)")
                self.queries += int(u.queries)
                self.prompt_tokens += int(u.prompt_tokens)
                self.completion_tokens += int(u.completion_tokens)
                self.cost += cost
                if u.estimated:
                    for key, value in (("queries", u.queries), ("prompt_tokens", u.prompt_tokens),
                                       ("completion_tokens", u.completion_tokens), ("cost", cost)):
                        self.estimated[key] += value
                total += cost
            return total

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call failed (idempotent; nothing is counted)."""
        with self._lock:
            if self._open.pop(reservation.id, None) is not None:
                reservation.state = "released"

    def record_cache_hits(self, n: int) -> None:
        """Count items served from the cache (free; kept for reporting)."""
        with self._lock:
            self.cache_hits += _check_count("n", n)

    # reporting ---------------------------------------------------------------------------
    def remaining(self) -> dict[str, float | None]:
        """Per limit: what is left after used and in-flight amounts (None = no limit)."""
        with self._lock:
            used, flight = self._used(), self._in_flight()
            return {
                name: None if lim is None else lim - used[_USED[name]] - flight[_USED[name]]
                for name, lim in self.limits.items()
            }

    def estimate(self, requests: Iterable[Any], model: str | None = None) -> dict[str, Any]:
        """Queries, tokens (``len(text)/4 + max_tokens``) and cost of ``requests``, and whether they fit."""
        q = p = c = 0
        for r in requests:
            dq, dp, dc = estimate_request(r)
            q, p, c = q + dq, p + dp, c + dc
        cost = self.price(model, p, c)
        need = {"queries": q, "prompt_tokens": p, "completion_tokens": c, "cost": cost or 0.0}
        left = self.remaining()
        fits = all(left[name] is None or need[_USED[name]] <= left[name] for name in _LIMITS)
        return {**need, "model": model, "priced": cost is not None, "fits": fits}

    def snapshot(self) -> dict[str, Any]:
        """Used, in-flight, limits and remaining amounts as a plain dict."""
        with self._lock:
            used, flight = self._used(), self._in_flight()
            cache_hits, unpriced, estimated = self.cache_hits, sorted(self.unpriced), dict(self.estimated)
        return {
            **used,
            "estimated": estimated,
            "cache_hits": cache_hits,
            "in_flight": flight,
            "limits": dict(self.limits),
            "remaining": self.remaining(),
            "unpriced": unpriced,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-ready state (limits, prices, used amounts); in-flight reservations are not saved."""
        with self._lock:
            return {
                "format": 1,
                "limits": dict(self.limits),
                "prices": {k: dict(v) for k, v in sorted(self.prices.items())},
                "used": self._used(),
                "estimated": dict(self.estimated),
                "cache_hits": self.cache_hits,
                "unpriced": sorted(self.unpriced),
            }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> "Ledger":
        """Rebuild a ledger from :meth:`to_json` output (a dict or its JSON text)."""
        try:
            obj = json.loads(data) if isinstance(data, str) else data
            ledger = cls(**obj["limits"], prices=obj["prices"])
            used = obj["used"]
            ledger.queries = _check_count("used.queries", used["queries"])
            ledger.prompt_tokens = _check_count("used.prompt_tokens", used["prompt_tokens"])
            ledger.completion_tokens = _check_count("used.completion_tokens", used["completion_tokens"])
            ledger.cost = _check_money("used.cost", used["cost"])
            ledger.cache_hits = _check_count("cache_hits", obj.get("cache_hits", 0))
            ledger.unpriced = set(obj.get("unpriced", []))
            est = obj.get("estimated", {})  # absent in ledgers saved before it existed
            for key in ("queries", "prompt_tokens", "completion_tokens"):
                ledger.estimated[key] = _check_count(f"estimated.{key}", est.get(key, 0))
            ledger.estimated["cost"] = _check_money("estimated.cost", est.get("cost", 0.0))
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise bad_value("data", "a dict written by Ledger.to_json()", f"{type(exc).__name__}: {exc}") from exc
        return ledger

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v}" for k, v in self.limits.items() if v is not None) or "no limits"
        return f"<Ledger queries={self.queries} cost=${self.cost:.4f} ({limits})>"


def _fmt(key: str, value: float) -> str:
    if key == "cost":
        return f"${value:.6f}"
    return f"{int(value)} {key.replace('_', ' ')}"
