"""The Client: one wrapper around every provider (disk cache, budget ledger, retries, concurrency).

A call goes::

    capability check → per-item cache lookup → ledger reserve (misses only)
      → provider call → ledger commit of the server's work → cache store → merged result
      (on failure: keep and cache the items that arrived, retry only the failed ones,
       reserving again before each attempt, within the request's deadline)

Batch requests are split into single-item requests for the cache; the misses go to the
provider as *one* batch and the results are merged back in the original order.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any, Callable, Iterable

from ..errors import (
    BlackboxError,
    BudgetExceededError,
    CapabilityError,
    ConfigError,
    DeadlineExceededError,
    InvalidResponseError,
    PartialResultError,
    ProviderError,
    TransportError,
    bad_value,
)
from ..items import ITEM_OPS, REQUEST_TO_RESULT, ItemOps, count_items, item_ops, merge_usage
from ..provider import CALLS, Provider, require
from ..secrets import redact, scrub_exception
from ..types import (
    Capability,
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    HiddenStatesRequest,
    HiddenStatesResult,
    NextTokenRequest,
    NextTokenResult,
    ScoreRequest,
    ScoreResult,
    Usage,
)
from .cache import DiskCache, key_from_identity
from .codec import decode_result, encode_result
from .deadline import call_deadline
from .ledger import Ledger, Reservation, estimate_request
from .retry import RetryPolicy

__all__ = ["Client"]

log = logging.getLogger("blackbox.client")

# Calls that take ``(request, edit)`` (a provider with inputs_embeds): the request type each
# serves, and the read-only token helpers a caller of them needs. A Client (and a ReplicaPool)
# offers each only when its provider does.
EMBED_CALLS: dict[str, type] = {"generate_with_embeds": GenerateRequest, "next_token_with_embeds": NextTokenRequest,
                                "score_with_embeds": ScoreRequest}
TOKEN_HELPERS = ("token_embeddings", "prompt_text", "encode", "tokenizer")


def _cacheable(request: Any) -> bool:
    # Sampling without a seed must give a fresh sample on each call, so it is never cached.
    if isinstance(request, GenerateRequest) and request.temperature > 0 and request.seed is None:
        return False
    return True


def _describe_request(request: Any) -> str:
    try:
        n = count_items(request)
    except ConfigError:
        return type(request).__name__
    unit = {ClassifyRequest: "input", EmbedRequest: "text", HiddenStatesRequest: "text", ScoreRequest: "pair"}.get(type(request), "prompt")
    return f"{type(request).__name__} of {n} {unit}{'s' if n != 1 else ''}"



# =========================================================================================
# the client
# =========================================================================================
def _model_id(provider: Provider) -> str | None:
    desc = provider.describe()
    for key in ("model", "model_id"):
        value = desc.get(key) if isinstance(desc, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


class Client(Provider):
    """Wraps a provider with a disk cache, a budget ledger, retries and bounded concurrency."""

    def __init__(
        self,
        provider: Provider,
        *,
        cache: "None | str | os.PathLike | DiskCache" = None,
        use_cache: bool = True,
        ledger: Ledger | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        deadline: float | None = None,
    ) -> None:
        if not isinstance(provider, Provider):
            raise bad_value("provider", "a blackbox.provider.Provider instance", f"a {type(provider).__name__}")
        self._initialising = True
        super().__init__()  # its ``capabilities`` assignment is absorbed by the setter below
        self._initialising = False
        if ledger is not None and not isinstance(ledger, Ledger):
            raise bad_value("ledger", "a Ledger or None", f"a {type(ledger).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise bad_value("retry", "a RetryPolicy or None (None = RetryPolicy())", f"a {type(retry).__name__}")
        self.provider = provider
        self.name = provider.name  # type: ignore[misc] - instance value shadows the ClassVar on purpose
        self.summary = provider.summary  # type: ignore[misc]
        self.cache, self._owns_cache = self._open_cache(cache)
        self.use_cache = bool(use_cache)
        self.ledger = ledger
        self.retry = retry if retry is not None else RetryPolicy()
        self.concurrency = _check_concurrency("concurrency", concurrency)
        # Seconds one request may take, all retries and waits included; None: the provider's
        # own ``deadline`` (e.g. the openai spec's ``deadline=``), else no limit.
        if deadline is None:
            deadline = getattr(provider, "deadline", None)
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0 or not math.isfinite(deadline)):
            raise bad_value("deadline", "seconds > 0 or None", deadline)
        self.deadline = None if deadline is None else float(deadline)
        self._model = _model_id(provider)
        self._stats_lock = threading.Lock()
        self._stats = {"calls": 0, "provider_calls": 0, "items": 0, "cache_hits": 0, "cache_misses": 0}
        self._closed = False

    @staticmethod
    def _open_cache(cache: Any) -> tuple[DiskCache | None, bool]:
        if cache is None:
            return None, False
        if isinstance(cache, DiskCache):
            return cache, False
        if isinstance(cache, (str, os.PathLike)):
            return DiskCache(cache), True
        raise bad_value("cache", "None, a file path or a DiskCache", f"a {type(cache).__name__}")

    # identity: the same as the wrapped provider, so wrappers compose and share cache keys ---
    @property
    def capabilities(self) -> frozenset[Capability]:  # type: ignore[override]
        """The wrapped provider's capabilities, read live (a provider may learn at run time that
        it lacks e.g. logprobs), so a Client never pins its own copy."""
        return frozenset(self.provider.capabilities)

    @capabilities.setter
    def capabilities(self, value: Any) -> None:
        # Provider.__init__ assigns the declared set; that one assignment is expected and ignored.
        if not getattr(self, "_initialising", False):
            raise AttributeError("Client.capabilities follows the wrapped provider; set it on the provider")

    def describe(self) -> dict[str, Any]:
        """The wrapped provider's description."""
        return self.provider.describe()

    def cache_identity(self) -> dict[str, Any]:
        """The wrapped provider's cache identity."""
        return self.provider.cache_identity()

    def example_inputs(self) -> Any:
        """The wrapped provider's example classify inputs."""
        return self.provider.example_inputs()

    def __repr__(self) -> str:
        cache = "off" if self.cache is None else repr(self.cache)
        return redact(f"<Client {self.provider!r} cache={cache} ledger={self.ledger!r} concurrency={self.concurrency}>")

    # calls ---------------------------------------------------------------------------------
    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Class probabilities or logits, through cache, ledger and retries."""
        return self.call(request)

    def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        """Next-token logits or top-k log-probabilities, through cache, ledger and retries."""
        return self.call(request)

    def generate(self, request: GenerateRequest) -> GenerateResult:
        """Text continuations, through cache, ledger and retries."""
        return self.call(request)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        """One vector per text, through cache, ledger and retries."""
        return self.call(request)

    def hidden_states(self, request: HiddenStatesRequest) -> HiddenStatesResult:
        """Token-level hidden states, through cache, ledger and retries."""
        return self.call(request)

    def score(self, request: ScoreRequest) -> ScoreResult:
        """Continuation log-likelihoods, through cache, ledger and retries."""
        return self.call(request)

    # step-by-step decoding: no cache (each step extends a KV cache), billed step by step ----
    def decode_width(self) -> int:
        """The wrapped provider's logits per decode step."""
        require(self.provider, [Capability.STEP_DECODE], "decode_width()")
        return self.provider.decode_width()

    def decode_start(self, seqs: Any, *, use_cache: bool = True) -> Any:
        """The wrapped provider's ``decode_start``, billed as one query per row and the ids read."""
        return self._decode_call("decode_start", len(seqs), sum(len(s) for s in seqs), lambda: self.provider.decode_start(seqs, use_cache=use_cache))

    def decode_step(self, state: Any, next_ids: Any) -> Any:
        """The wrapped provider's ``decode_step``, billed as one query and one token read per row."""
        return self._decode_call("decode_step", len(next_ids), len(next_ids), lambda: self.provider.decode_step(state, next_ids))

    def metered_decode(self, method: str, rows: int, tokens: int, run: Callable[[], Any]) -> Any:
        """``run()``: a forward pass on the wrapped provider made outside ``decode_start``/``decode_step``
        (the serve engine batches KV caches itself), billed as ``method`` bills: ``rows`` queries, ``tokens`` read."""
        return self._decode_call(method, rows, tokens, run)

    def _decode_call(self, method: str, rows: int, tokens: int, run: Callable[[], Any]) -> Any:
        if self._closed:
            raise ProviderError(f"client for provider {self.name}: closed; create a new Client")
        require(self.provider, [Capability.STEP_DECODE], f"{method}()")
        with self._stats_lock:
            self._stats["calls"] += 1
            self._stats["provider_calls"] += 1
            self._stats["items"] += rows
        reservation = None if self.ledger is None else self.ledger.reserve(rows, tokens, 0, model=self._model, what=f"{method}() of {rows} rows")
        try:
            out = run()
        except BaseException:
            self._settle(reservation, [])
            raise
        self._settle(reservation, [Usage(queries=rows, prompt_tokens=tokens)])
        return out

    def call(self, request: Any, *, use_cache: bool | None = None) -> Any:
        """Serve one typed request: cache, then budget, then the provider with retries."""
        try:
            return self._call(request, self.use_cache if use_cache is None else bool(use_cache))
        except BaseException as exc:
            scrub_exception(exc)  # whatever goes up, the key does not
            raise

    def _method_for(self, request: Any) -> str:
        try:
            method, caps = CALLS[type(request)]
        except KeyError:
            raise CapabilityError(
                f"request: expected one of {', '.join(t.__name__ for t in CALLS)}, received {type(request).__name__}"
            ) from None
        require(self.provider, caps, f"{method}()", any_of=True)
        # Some settings need one capability in particular: full logits cannot come from top-k.
        if isinstance(request, ClassifyRequest) and request.output == "logits":
            require(self.provider, [Capability.LOGITS], "classify(output='logits')")
        if isinstance(request, NextTokenRequest) and request.top_k is None:
            require(self.provider, [Capability.LOGITS], "next_token(top_k=None)")
        return method

    def _call(self, request: Any, use_cache: bool) -> Any:
        if self._closed:
            raise ProviderError(f"client for provider {self.name}: closed; create a new Client")
        method = self._method_for(request)
        handler = ITEM_OPS[type(request)]
        n = handler.count(request)
        with self._stats_lock:
            self._stats["calls"] += 1
            self._stats["items"] += n
        if not (use_cache and self.cache is not None and n > 0 and _cacheable(request)):
            return self._send(request, method, handler, n)

        items = handler.split(request)
        identity = self.provider.cache_identity()
        keys = [key_from_identity(identity, it) for it in items]
        found: list[Any] = [None] * n
        missing: dict[str, list[int]] = {}  # key → positions; equal items are sent once
        for i, key in enumerate(keys):
            hit = self._cache_get(key) if key not in missing else None
            if hit is None:
                missing.setdefault(key, []).append(i)
            else:
                found[i] = hit
        hits = n - sum(len(v) for v in missing.values())
        with self._stats_lock:
            self._stats["cache_hits"] += hits
            self._stats["cache_misses"] += n - hits
        if self.ledger is not None and hits:
            self.ledger.record_cache_hits(hits)
        if not missing:
            return handler.join_results(found, Usage(cached=True, queries=0, cost=0.0))

        order = list(missing)
        kept: set[int] = set()

        def keep(j: int, item: Any) -> None:
            # A call that succeeded inside a request that is still retrying others: cached at
            # once, so neither a later failure nor a rerun pays for it again.
            self._cache_put(order[j], item)
            kept.add(j)

        fresh = self._send(handler.join([items[missing[k][0]] for k in order]), method, handler, len(order), keep)
        for j, (key, item) in enumerate(zip(order, handler.split_result(fresh))):
            if j not in kept:
                self._cache_put(key, item)
            for i in missing[key]:
                found[i] = item
        return handler.join_results(found, replace(fresh.usage, cached=False))

    def _cache_get(self, key: str) -> Any | None:
        assert self.cache is not None
        try:
            blob = self.cache.get(key)
            return None if blob is None else decode_result(blob)
        except (sqlite3.Error, ConfigError) as exc:
            # A broken entry is a miss (and is overwritten), never a failed call.
            log.warning("%s", redact(f"cache {self.cache.path}: unreadable entry {key[:12]}… treated as a miss ({exc})"))
            return None

    def _cache_put(self, key: str, item: Any) -> None:
        assert self.cache is not None
        try:
            self.cache.put(key, encode_result(replace(item, usage=Usage())))
        except (sqlite3.Error, ConfigError) as exc:
            # The call is paid for already: failing it because the cache is full would waste it.
            log.warning("%s", redact(f"cache {self.cache.path}: could not store a result ({exc})"))

    def _send(self, request: Any, method: str, handler: ItemOps, n: int, keep: Callable[[int, Any], None] | None = None,
              fn: Callable[[Any], Any] | None = None) -> Any:
        """Serve ``request`` (n items) from the provider, with retries at the unit that failed.

        Each attempt reserves budget for the items still pending (so the ledger's limits are
        checked before every call, retries included), bills what the server did — also in a
        failed attempt — and keeps the items that succeeded (``keep(position, item)``); only
        the failed items are sent again. ``fn(sub)`` serves a sub-request (default: the
        provider's ``method``).
        """
        fn = fn if fn is not None else getattr(self.provider, method)
        what = f"provider {self.name}: {method}()"
        deadline_at = None if self.deadline is None else time.monotonic() + self.deadline
        pending = list(range(n))  # positions in ``request`` still to be served
        done: dict[int, Any] = {}  # position → single-item result, from partial successes
        spent: list[Usage] = []  # usage of every attempt's billed work, for the final result
        items: list[Any] | None = None
        attempt = 0
        while True:
            attempt += 1
            if len(pending) == n:
                sub = request
            else:
                items = items if items is not None else handler.split(request)
                sub = handler.join([items[i] for i in pending])
            left = None if deadline_at is None else deadline_at - time.monotonic()
            if left is not None and left <= 0:
                raise DeadlineExceededError(
                    f"{what}: deadline={self.deadline:g}s passed after {attempt - 1} attempt(s)", attempts=max(1, attempt - 1)
                )
            try:
                reservation = self._reserve(sub)  # BudgetExceededError: this attempt is not sent
            except BudgetExceededError as exc:
                if attempt == 1:
                    raise
                kept = f"; the {len(done)} of {n} items that arrived are kept" + (" in the cache" if keep and done else "")
                raise BudgetExceededError(f"{exc} (retry {attempt - 1} of {what}{kept})") from None
            failure: BaseException | None = None
            try:
                with call_deadline(deadline_at):
                    result = fn(sub)
            except TransportError as exc:  # PartialResultError included
                failure = exc
            except BlackboxError:
                self._settle(reservation, [])
                raise
            except Exception as exc:
                self._settle(reservation, [])
                raise ProviderError(redact(f"{what} raised {type(exc).__name__}: {exc}")) from exc
            except BaseException:
                self._settle(reservation, [])
                raise
            with self._stats_lock:
                self._stats["provider_calls"] += 1

            if failure is None:
                usage = getattr(result, "usage", None)
                if not isinstance(usage, Usage):
                    usage = Usage()
                if usage.queries == 0 and not usage.cached:
                    usage = replace(usage, queries=len(pending))  # a provider that reports nothing still spent them
                # Billed before the result is checked: a malformed answer was still paid for.
                cost = self._settle(reservation, [usage])
                if cost and not usage.cost:
                    usage = replace(usage, cost=cost)
                spent.append(usage)
                if len(spent) > 1:
                    usage = merge_usage(spent)  # the result reports everything this request was billed
                expected = REQUEST_TO_RESULT[type(request)]
                if not isinstance(result, expected):
                    raise ProviderError(f"{what}: expected a {expected.__name__}, received a {type(result).__name__}")
                got = handler.result_count(result)
                if got != len(pending):
                    raise ProviderError(f"{what}: expected {len(pending)} results (one per item), received {got}")
                failure = _missing_content(sub, result, what)
                if failure is None:
                    if not done:
                        return replace(result, usage=usage)
                    for pos, item in zip(pending, handler.split_result(result)):
                        done[pos] = item
                    return handler.join_results([done[i] for i in range(n)], usage)
                errors: dict[int, BaseException] = {j: failure for j in range(len(pending))}
            else:
                # What the server did in this attempt: the calls that succeeded, plus the work
                # of failed ones (an unusable body, a request sent before the connection dropped).
                partial = failure.results if isinstance(failure, PartialResultError) else {}
                errors = failure.errors if isinstance(failure, PartialResultError) else {j: failure for j in range(len(pending))}
                billed = [_item_usage(r) for r in partial.values()]
                billed += [e.billed for e in _distinct(errors.values()) if isinstance(getattr(e, "billed", None), Usage)]
                cost = self._settle(reservation, billed)
                if billed:
                    spent.append(replace(merge_usage(billed), cost=cost))
                for j in sorted(partial):
                    pos = pending[j]
                    done[pos] = replace(partial[j], usage=Usage())
                    if keep is not None:
                        keep(pos, done[pos])
                pending = [pos for j, pos in enumerate(pending) if j not in partial]
                if not pending:  # every item arrived after all
                    return handler.join_results([done[i] for i in range(n)], merge_usage(spent))

            failed = _distinct(errors[j] for j in sorted(errors))
            unretryable = [e for e in failed if not self.retry.should_retry(e)]
            if unretryable and not isinstance(unretryable[0], TransportError):
                final = unretryable[0]  # e.g. a ProviderError for one item: not a transport problem
                if isinstance(final, BlackboxError):
                    raise final
                raise ProviderError(redact(f"{what} raised {type(final).__name__}: {final}")) from final
            # Decide on the failure that asks for the longest wait (Retry-After), so one rule
            # covers Retry-After, max_retry_after and the deadline.
            last = unretryable[0] if unretryable else max(failed, key=lambda e: e.retry_after or 0.0)
            left = None if deadline_at is None else deadline_at - time.monotonic()
            wait_s, reason = self.retry.decide(last, attempt, left)
            if reason is None:
                log.info("%s", redact(f"{what}: attempt {attempt} failed for {len(pending)} of {n} items ({last}); retrying in {wait_s:.3f}s"))
                self.retry.sleep(wait_s)
                continue
            raise self.retry.give_up(last, what, reason, attempt) from last

    def _reserve(self, request: Any) -> Reservation | None:
        if self.ledger is None:
            return None
        q, p, c = estimate_request(request)
        return self.ledger.reserve(q, p, c, model=self._model, what=_describe_request(request))

    def _settle(self, reservation: Reservation | None, billed: list[Usage]) -> float:
        """Commit ``billed`` against the reservation (release it when the server did nothing)."""
        if reservation is None or self.ledger is None:
            return 0.0
        if not billed:
            self.ledger.release(reservation)
            return 0.0
        return self.ledger.commit(reservation, billed)

    # input-embedding edits (capability inputs_embeds, e.g. ECO's corrupted prefill) ----------
    def __getattr__(self, name: str) -> Any:
        # Only what the wrapped provider has: ``hasattr(client, "encode")`` answers as for it.
        provider = self.__dict__.get("provider")
        if provider is not None and name in EMBED_CALLS:
            getattr(provider, name)  # AttributeError when the provider has no such call
            return functools.partial(self._call_with_embeds, name)
        if provider is not None and name in TOKEN_HELPERS:
            return getattr(provider, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _call_with_embeds(self, method: str, request: Any, edit: Any) -> Any:
        """``provider.METHOD(request, edit)`` through the ledger and retries; never cached (an
        edit is code, not part of a cache key), so every row is a billed query."""
        if self._closed:
            raise ProviderError(f"client for provider {self.name}: closed; create a new Client")
        plain = EMBED_CALLS[method]
        if not isinstance(request, plain):
            raise bad_value("request", f"a {plain.__name__}", type(request).__name__)
        self._method_for(request)
        require(self.provider, [Capability.INPUTS_EMBEDS], f"{method}()")
        handler = ITEM_OPS[type(request)]
        n = handler.count(request)
        with self._stats_lock:
            self._stats["calls"] += 1
            self._stats["items"] += n
        call = getattr(self.provider, method)
        try:
            return self._send(request, method, handler, n, fn=lambda sub: call(sub, edit))
        except BaseException as exc:
            scrub_exception(exc)
            raise

    # many requests -----------------------------------------------------------------------
    def map(self, requests: Iterable[Any], concurrency: int | None = None, *, return_exceptions: bool = False) -> list[Any]:
        """Serve ``requests`` with at most ``concurrency`` in flight; results in request order.

        Every request ends in exactly one result or one error. With ``return_exceptions`` the
        errors take their request's place; otherwise the first failing request's error is
        raised once the calls already running have finished (requests not yet started are dropped).
        """
        reqs = list(requests)
        workers = self.concurrency if concurrency is None else _check_concurrency("concurrency", concurrency)
        if workers == 1 or len(reqs) <= 1:
            out: list[Any] = []
            for r in reqs:
                try:
                    out.append(self.call(r))
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    out.append(exc)
            return out

        pool = ThreadPoolExecutor(max_workers=min(workers, len(reqs)), thread_name_prefix="blackbox-client")
        futures: list[Future] = []
        try:
            futures = [pool.submit(self.call, r) for r in reqs]
            _, pending = wait(futures, return_when=ALL_COMPLETED if return_exceptions else FIRST_EXCEPTION)
            for f in pending:
                f.cancel()  # after a failure: drop requests not started yet; running ones finish below
        except BaseException:
            for f in futures:
                f.cancel()  # e.g. KeyboardInterrupt: spend no more queries
            raise
        finally:
            pool.shutdown(wait=True)
        results: list[Any] = []
        for f in futures:
            if f.cancelled():
                results.append(None)
                continue
            exc = f.exception()
            if exc is None:
                results.append(f.result())
            elif return_exceptions and isinstance(exc, Exception):
                results.append(exc)
            else:
                raise exc
        return results

    def estimate(self, requests: Iterable[Any]) -> dict[str, Any]:
        """What ``requests`` would cost now: cached items are free (see :meth:`Ledger.estimate`)."""
        pending, cached = [], 0
        identity = self.provider.cache_identity()
        for r in requests:
            handler = item_ops(r, ITEM_OPS, "request")
            if not (self.use_cache and self.cache is not None and handler.count(r) > 0 and _cacheable(r)):
                pending.append(r)
                continue
            items = handler.split(r)
            misses = [it for it in items if key_from_identity(identity, it) not in self.cache]
            cached += len(items) - len(misses)
            if misses:
                pending.append(handler.join(misses))
        out = (self.ledger or Ledger()).estimate(pending, model=self._model)
        out["cached_items"] = cached
        return out

    def stats(self) -> dict[str, int]:
        """Requests served, provider calls made, items, cache hits and misses (this client)."""
        with self._stats_lock:
            return dict(self._stats)

    def close(self) -> None:
        """Close the wrapped provider and a cache this client opened itself (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.provider.close()
        finally:
            if self._owns_cache and self.cache is not None:
                self.cache.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _missing_content(request: Any, result: Any, what: str) -> InvalidResponseError | None:
    """An error when ``result`` lacks what ``request`` asked for (checked before caching)."""
    if isinstance(request, GenerateRequest) and request.top_logprobs > 0:
        if result.token_logprobs is None or result.top_logprobs is None:
            return InvalidResponseError(f"{what}: logprobs were requested (top_logprobs={request.top_logprobs}) but the result has none")
    if isinstance(request, NextTokenRequest) and request.top_k is not None and result.logits is None:
        if result.top_logprobs is None or not all(result.top_logprobs):
            return InvalidResponseError(f"{what}: top_k={request.top_k} log-probabilities were requested but some prompts have none")
    return None


def _item_usage(result: Any) -> Usage:
    usage = getattr(result, "usage", None)
    return usage if isinstance(usage, Usage) else Usage()


def _distinct(values: Iterable[Any]) -> list[Any]:
    seen, out = set(), []
    for v in values:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _check_concurrency(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_value(name, "an integer >= 1", value)
    return value

