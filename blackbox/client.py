"""One wrapper around every provider: disk cache, budget ledger, retries, concurrency.

:class:`Client` is itself a :class:`~blackbox.provider.Provider`, so it composes with
anything that takes one. A call goes::

    capability check → per-item cache lookup → ledger reserve (misses only)
      → provider call with retries → ledger commit → cache store → merged result

Batch requests are split into single-item requests for the cache; the misses go to the
provider as *one* batch and the results are merged back in the original order. Cached
results are stored as JSON + safetensors (never pickle), keyed by the sha256 of a canonical
JSON of the provider's identity and the request, with secrets removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields, is_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from .errors import (
    BlackboxError,
    BudgetError,
    BudgetExceededError,
    CapabilityError,
    ConfigError,
    ProviderError,
    TransportError,
    bad_value,
)
from .provider import CALLS, Provider, require
from .secrets import Secret, is_secret, redact, scrub_exception
from .types import (
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

__all__ = [
    "Client", "DiskCache", "Ledger", "Reservation", "RetryPolicy", "DEFAULT_PRICES",
    "cache_key", "encode_result", "decode_result", "estimate_request",
    "split_request", "join_requests", "split_result", "join_results", "count_items",
]

log = logging.getLogger("blackbox.client")
T = TypeVar("T")

RESULT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (ClassifyResult, NextTokenResult, GenerateResult, EmbedResult, HiddenStatesResult, ScoreResult)
}
REQUEST_TO_RESULT: dict[type, type] = {
    ClassifyRequest: ClassifyResult,
    NextTokenRequest: NextTokenResult,
    GenerateRequest: GenerateResult,
    EmbedRequest: EmbedResult,
    HiddenStatesRequest: HiddenStatesResult,
    ScoreRequest: ScoreResult,
}


# =========================================================================================
# cache keys
# =========================================================================================
_DROP = object()
# Fields with these names are dropped from keys even when their value is not a registered secret.
_SECRET_NAMES = re.compile(r"(?i)(api[_-]?key|authorization|password|secret|access[_-]?token)")


def _canon(value: Any, ann: Any = None) -> Any:
    """A JSON-able, deterministic stand-in for ``value``; secrets become ``_DROP``."""
    if isinstance(value, Secret) or is_secret(value):
        return _DROP
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Enum):
        return _canon(value.value)
    if isinstance(value, np.generic):
        return _canon(value.item(), ann)
    if isinstance(value, int):
        # temperature=0 and temperature=0.0 are the same request
        return float(value) if ann in ("float", float) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise bad_value("request", "numpy arrays of numbers (object arrays have no stable bytes)", f"array of dtype {value.dtype}")
        arr = np.ascontiguousarray(value)
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        return {"$ndarray": {"dtype": arr.dtype.str, "shape": list(arr.shape), "sha256": digest}}
    if is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in fields(value):
            if _SECRET_NAMES.search(f.name):
                continue
            c = _canon(getattr(value, f.name), f.type)
            if c is not _DROP:
                out[f.name] = c
        return out
    if isinstance(value, (list, tuple)):
        return [c for c in (_canon(v) for v in value) if c is not _DROP]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, str) and _SECRET_NAMES.search(k):
                continue
            c = _canon(v)
            if c is not _DROP and not is_secret(k):
                out[str(k)] = c
        return out
    if isinstance(value, bytes):
        return {"$bytes": hashlib.sha256(value).hexdigest()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise bad_value("request", "fields of JSON types, numpy arrays or dataclasses", f"a {type(value).__name__}")


def _key_from_identity(identity: Any, request: Any) -> str:
    canon_identity = _canon(identity)
    payload = {
        "provider": None if canon_identity is _DROP else canon_identity,
        "call": type(request).__name__,
        "request": _canon(request),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(provider: Provider, request: Any) -> str:
    """sha256 of the canonical JSON of provider identity, call and request (secrets removed)."""
    return _key_from_identity(provider.cache_identity(), request)


# =========================================================================================
# result (de)serialisation: JSON in the safetensors header, arrays as tensors; never pickle
# =========================================================================================
FORMAT = 1
_META_KEY = "blackbox.result"
_DATACLASSES: dict[str, type] = {**RESULT_TYPES, "Usage": Usage}


def encode_result(result: Any) -> bytes:
    """Bytes for any result dataclass of :mod:`blackbox.types` (JSON + safetensors, no pickle)."""
    if type(result).__name__ not in RESULT_TYPES or RESULT_TYPES[type(result).__name__] is not type(result):
        raise bad_value("result", f"one of {', '.join(RESULT_TYPES)}", f"a {type(result).__name__}")
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}

    def enc(v: Any) -> Any:
        if isinstance(v, np.generic):  # before float: np.float64 is a float subclass
            return enc(v.item())
        if v is None or isinstance(v, (bool, str, int)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"$f": repr(v)}  # -inf log-probs are common
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise bad_value("result", "arrays of bool, int or float", f"an array of dtype {v.dtype}")
            a = np.ascontiguousarray(v)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("="))
            name = f"a{len(arrays)}"
            arrays[name] = a
            return {"$a": name}
        if isinstance(v, tuple):
            return {"$t": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, dict):
            return {"$d": [[enc(k), enc(x)] for k, x in v.items()]}  # pairs keep the (ranked) order
        if is_dataclass(v) and _DATACLASSES.get(type(v).__name__) is type(v):
            return {"$c": type(v).__name__, "f": {f.name: enc(getattr(v, f.name)) for f in fields(v)}}
        raise bad_value("result", "fields of JSON types, numpy arrays, tuples, dicts or Usage", f"a {type(v).__name__}")

    header = {"format": FORMAT, "value": enc(result)}
    meta = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return save(arrays, metadata={_META_KEY: meta})


def decode_result(data: bytes) -> Any:
    """Rebuild a result from :func:`encode_result` bytes; only known dataclasses are created."""
    from safetensors.numpy import load

    def bad(why: str) -> ConfigError:
        return bad_value("data", f"bytes written by encode_result (format {FORMAT})", f"{len(data)} bytes ({why})")

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise bad_value("data", "bytes", f"a {type(data).__name__}")
    data = bytes(data)
    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n])["__metadata__"][_META_KEY]
        header = json.loads(meta)
        arrays = load(data)
    except Exception as exc:  # noqa: BLE001 - any corruption is the same failure
        raise bad(f"{type(exc).__name__}: {exc}") from exc
    if header.get("format") != FORMAT:
        raise bad(f"format {header.get('format')!r}")

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "$a" in v:
            return arrays[v["$a"]]
        if "$f" in v:
            return float(v["$f"])
        if "$t" in v:
            return tuple(dec(x) for x in v["$t"])
        if "$d" in v:
            return {dec(k): dec(x) for k, x in v["$d"]}
        if "$c" in v:
            cls = _DATACLASSES.get(v["$c"])
            if cls is None:
                raise bad(f"unknown type {v['$c']!r}")
            return cls(**{k: dec(x) for k, x in v["f"].items()})
        raise bad(f"unknown tag in {sorted(v)}")

    try:
        value = dec(header["value"])
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise bad(f"{type(exc).__name__}: {exc}") from exc
    if type(value).__name__ not in RESULT_TYPES:
        raise bad(f"holds a {type(value).__name__}, not a result")
    return value


# =========================================================================================
# per-item split / join, one small set of pure functions per request type
# =========================================================================================
def _texts(request: Any, name: str) -> tuple[str, ...]:
    value = getattr(request, name)
    # A bare string would otherwise be split into characters.
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(t, str) for t in value):
        raise bad_value(f"{type(request).__name__}.{name}", "a tuple of str", value)
    return tuple(value)


def _rows(array: Any, where: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise bad_value(where, "a numpy array with one row per item", "a 0-d array" if isinstance(array, np.ndarray) else array)
    return array


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts, axis=0)


def _optional_join(parts: Sequence[Any], what: str, join: Callable[[Sequence[Any]], Any]) -> Any:
    present = [p is not None for p in parts]
    if all(present):
        return join(parts)
    if not any(present):
        return None
    raise ProviderError(f"{what}: some items have it and some do not (cache entries from a different provider setup?)")


# classify ---------------------------------------------------------------------------------
def _count_classify(r: ClassifyRequest) -> int:
    return len(_rows(r.inputs, "ClassifyRequest.inputs"))


def _split_classify(r: ClassifyRequest) -> list[ClassifyRequest]:
    return [replace(r, inputs=r.inputs[i : i + 1]) for i in range(_count_classify(r))]


def _join_classify(items: Sequence[ClassifyRequest]) -> ClassifyRequest:
    return replace(items[0], inputs=_concat([it.inputs for it in items]))


def _rcount_classify(r: ClassifyResult) -> int:
    return len(_rows(r.scores, "ClassifyResult.scores"))


def _rsplit_classify(r: ClassifyResult) -> list[ClassifyResult]:
    return [ClassifyResult(scores=r.scores[i : i + 1], output=r.output) for i in range(_rcount_classify(r))]


def _rjoin_classify(items: Sequence[ClassifyResult], usage: Usage) -> ClassifyResult:
    return ClassifyResult(scores=_concat([it.scores for it in items]), output=items[0].output, usage=usage)


# next token -------------------------------------------------------------------------------
def _count_prompts(r: Any) -> int:
    return len(_texts(r, "prompts"))


def _split_prompts(r: Any) -> list[Any]:
    return [replace(r, prompts=(p,)) for p in _texts(r, "prompts")]


def _join_prompts(items: Sequence[Any]) -> Any:
    return replace(items[0], prompts=tuple(p for it in items for p in _texts(it, "prompts")))


def _rcount_next(r: NextTokenResult) -> int:
    if r.logits is not None:
        return len(_rows(r.logits, "NextTokenResult.logits"))
    if r.top_logprobs is not None:
        return len(r.top_logprobs)
    raise ProviderError("NextTokenResult: neither logits nor top_logprobs were returned")


def _rsplit_next(r: NextTokenResult) -> list[NextTokenResult]:
    n = _rcount_next(r)
    if r.top_logprobs is not None and len(r.top_logprobs) != n:
        raise ProviderError(f"NextTokenResult: {n} rows of logits but {len(r.top_logprobs)} top_logprobs")
    return [
        NextTokenResult(
            logits=None if r.logits is None else r.logits[i : i + 1],
            top_logprobs=None if r.top_logprobs is None else (r.top_logprobs[i],),
        )
        for i in range(n)
    ]


def _rjoin_next(items: Sequence[NextTokenResult], usage: Usage) -> NextTokenResult:
    return NextTokenResult(
        logits=_optional_join([it.logits for it in items], "NextTokenResult.logits", _concat),
        top_logprobs=_optional_join([it.top_logprobs for it in items], "NextTokenResult.top_logprobs", _flatten),
        usage=usage,
    )


def _flatten(parts: Sequence[tuple]) -> tuple:
    return tuple(x for p in parts for x in p)


# generate ---------------------------------------------------------------------------------
def _rcount_generate(r: GenerateResult) -> int:
    return len(r.texts)


def _rsplit_generate(r: GenerateResult) -> list[GenerateResult]:
    n = len(r.texts)
    for name in ("token_logprobs", "top_logprobs"):
        value = getattr(r, name)
        if value is not None and len(value) != n:
            raise ProviderError(f"GenerateResult.{name}: expected one entry per text ({n}), received {len(value)}")
    if len(r.finish_reasons) not in (0, n):
        raise ProviderError(f"GenerateResult.finish_reasons: expected 0 or {n} entries, received {len(r.finish_reasons)}")
    return [
        GenerateResult(
            texts=(r.texts[i],),
            token_logprobs=None if r.token_logprobs is None else (r.token_logprobs[i],),
            top_logprobs=None if r.top_logprobs is None else (r.top_logprobs[i],),
            finish_reasons=r.finish_reasons[i : i + 1],
        )
        for i in range(n)
    ]


def _rjoin_generate(items: Sequence[GenerateResult], usage: Usage) -> GenerateResult:
    reasons: tuple[str, ...] = ()
    if any(it.finish_reasons for it in items):
        # An item without a reason (older cache entry) gets "" so positions stay aligned.
        reasons = tuple((it.finish_reasons or ("",))[0] for it in items)
    return GenerateResult(
        texts=_flatten([it.texts for it in items]),
        token_logprobs=_optional_join([it.token_logprobs for it in items], "GenerateResult.token_logprobs", _flatten),
        top_logprobs=_optional_join([it.top_logprobs for it in items], "GenerateResult.top_logprobs", _flatten),
        finish_reasons=reasons,
        usage=usage,
    )


# embed ------------------------------------------------------------------------------------
def _count_texts(r: Any) -> int:
    return len(_texts(r, "texts"))


def _split_texts(r: Any) -> list[Any]:
    return [replace(r, texts=(t,)) for t in _texts(r, "texts")]


def _join_texts(items: Sequence[Any]) -> Any:
    return replace(items[0], texts=tuple(t for it in items for t in _texts(it, "texts")))


def _rcount_embed(r: EmbedResult) -> int:
    return len(_rows(r.vectors, "EmbedResult.vectors"))


def _rsplit_embed(r: EmbedResult) -> list[EmbedResult]:
    return [EmbedResult(vectors=r.vectors[i : i + 1]) for i in range(_rcount_embed(r))]


def _rjoin_embed(items: Sequence[EmbedResult], usage: Usage) -> EmbedResult:
    return EmbedResult(vectors=_concat([it.vectors for it in items]), usage=usage)


# hidden states ----------------------------------------------------------------------------
def _rcount_hidden(r: HiddenStatesResult) -> int:
    return len(r.states)


def _rsplit_hidden(r: HiddenStatesResult) -> list[HiddenStatesResult]:
    return [HiddenStatesResult(states=(s,)) for s in r.states]


def _rjoin_hidden(items: Sequence[HiddenStatesResult], usage: Usage) -> HiddenStatesResult:
    return HiddenStatesResult(states=_flatten([it.states for it in items]), usage=usage)


# score ------------------------------------------------------------------------------------
def _count_score(r: ScoreRequest) -> int:
    prompts, conts = _texts(r, "prompts"), _texts(r, "continuations")
    if len(prompts) != len(conts):
        raise bad_value("ScoreRequest.continuations", f"one continuation per prompt ({len(prompts)})", f"{len(conts)} continuations")
    return len(prompts)


def _split_score(r: ScoreRequest) -> list[ScoreRequest]:
    _count_score(r)
    return [ScoreRequest(prompts=(p,), continuations=(c,)) for p, c in zip(r.prompts, r.continuations)]


def _join_score(items: Sequence[ScoreRequest]) -> ScoreRequest:
    return ScoreRequest(
        prompts=tuple(p for it in items for p in it.prompts),
        continuations=tuple(c for it in items for c in it.continuations),
    )


def _rcount_score(r: ScoreResult) -> int:
    n = len(_rows(r.logprobs, "ScoreResult.logprobs"))
    if len(_rows(r.n_tokens, "ScoreResult.n_tokens")) != n:
        raise ProviderError(f"ScoreResult: {n} logprobs but {len(r.n_tokens)} n_tokens")
    return n


def _rsplit_score(r: ScoreResult) -> list[ScoreResult]:
    return [ScoreResult(logprobs=r.logprobs[i : i + 1], n_tokens=r.n_tokens[i : i + 1]) for i in range(_rcount_score(r))]


def _rjoin_score(items: Sequence[ScoreResult], usage: Usage) -> ScoreResult:
    return ScoreResult(
        logprobs=_concat([it.logprobs for it in items]), n_tokens=_concat([it.n_tokens for it in items]), usage=usage
    )


@dataclass(frozen=True)
class _Items:
    count: Callable[[Any], int]
    split: Callable[[Any], list]
    join: Callable[[Sequence[Any]], Any]
    result_count: Callable[[Any], int]
    split_result: Callable[[Any], list]
    join_results: Callable[[Sequence[Any], Usage], Any]


_ITEMS: dict[type, _Items] = {
    ClassifyRequest: _Items(_count_classify, _split_classify, _join_classify, _rcount_classify, _rsplit_classify, _rjoin_classify),
    NextTokenRequest: _Items(_count_prompts, _split_prompts, _join_prompts, _rcount_next, _rsplit_next, _rjoin_next),
    GenerateRequest: _Items(_count_prompts, _split_prompts, _join_prompts, _rcount_generate, _rsplit_generate, _rjoin_generate),
    EmbedRequest: _Items(_count_texts, _split_texts, _join_texts, _rcount_embed, _rsplit_embed, _rjoin_embed),
    HiddenStatesRequest: _Items(_count_texts, _split_texts, _join_texts, _rcount_hidden, _rsplit_hidden, _rjoin_hidden),
    ScoreRequest: _Items(_count_score, _split_score, _join_score, _rcount_score, _rsplit_score, _rjoin_score),
}
_RESULT_ITEMS: dict[type, _Items] = {REQUEST_TO_RESULT[k]: v for k, v in _ITEMS.items()}


def _items_for(obj: Any, table: dict[type, _Items], what: str) -> _Items:
    try:
        return table[type(obj)]
    except KeyError:
        names = ", ".join(t.__name__ for t in table)
        raise bad_value(what, f"one of {names}", f"a {type(obj).__name__}") from None


def count_items(request: Any) -> int:
    """Number of items (rows, prompts, texts, pairs) in a batch request."""
    return _items_for(request, _ITEMS, "request").count(request)


def split_request(request: Any) -> list[Any]:
    """One single-item request per item of a batch request, in order."""
    return _items_for(request, _ITEMS, "request").split(request)


def join_requests(items: Sequence[Any]) -> Any:
    """The batch request made of single-item ``items`` (same type and settings), in order."""
    if not items:
        raise bad_value("items", "at least one request", list(items))
    return _items_for(items[0], _ITEMS, "items[0]").join(items)


def split_result(result: Any) -> list[Any]:
    """One single-item result per item of a batch result (usage is not carried over)."""
    return _items_for(result, _RESULT_ITEMS, "result").split_result(result)


def join_results(items: Sequence[Any], usage: Usage | None = None) -> Any:
    """The batch result made of single-item ``items``, in order, carrying ``usage``."""
    if not items:
        raise bad_value("items", "at least one result", list(items))
    return _items_for(items[0], _RESULT_ITEMS, "items[0]").join_results(items, usage or Usage())


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
# disk cache
# =========================================================================================
class DiskCache:
    """A key → bytes store in one SQLite file (WAL); safe across threads and processes."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0) -> None:
        memory = os.fspath(path) == ":memory:"
        self.path = os.fspath(path) if memory else Path(path)
        if not memory:
            if self.path.is_dir():
                raise bad_value("path", "a cache file path (not a directory)", str(self.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection shared by all threads, used under a lock
        self.hits = 0
        self.misses = 0
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=timeout, check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes of this process
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value BLOB NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            raise bad_value("path", "an SQLite cache file or a new path", f"{self.path} ({exc})") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ProviderError(f"cache {self.path}: closed")
        return self._conn

    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None (counted as a hit or a miss)."""
        with self._lock:
            row = self._db().execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return bytes(row[0])

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (replacing any previous value)."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise bad_value("value", "bytes", f"a {type(value).__name__}")
        with self._lock:
            self._db().execute(
                "INSERT OR REPLACE INTO results (key, value, created) VALUES (?, ?, ?)", (key, bytes(value), time.time())
            )

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return self._db().execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def delete(self, key: str) -> None:
        """Remove one entry (no error when absent)."""
        with self._lock:
            self._db().execute("DELETE FROM results WHERE key = ?", (key,))

    def clear(self) -> None:
        """Remove every entry and reset the hit/miss counters."""
        with self._lock:
            self._db().execute("DELETE FROM results")
            self.hits = self.misses = 0

    def stats(self) -> dict[str, int]:
        """Hits, misses and number of entries."""
        return {"hits": self.hits, "misses": self.misses, "entries": len(self)}

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "DiskCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskCache({str(self.path)!r})"


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

    def commit(self, reservation: Reservation, usage: Usage) -> float:
        """Replace a reservation by what the call really used; returns the cost charged."""
        if not isinstance(usage, Usage):
            raise bad_value("usage", "a blackbox.types.Usage", usage)
        with self._lock:
            if self._open.get(reservation.id) is not reservation:
                raise bad_value("reservation", "an open reservation of this ledger", f"reservation #{reservation.id} ({reservation.state})")
            del self._open[reservation.id]
            reservation.state = "committed"
            cost = float(usage.cost) if usage.cost > 0 else self.price(reservation.model, usage.prompt_tokens, usage.completion_tokens)
            if cost is None:
                cost = 0.0
                if usage.prompt_tokens or usage.completion_tokens:
                    self.unpriced.add(reservation.model or "(unknown model)")
            self.queries += int(usage.queries)
            self.prompt_tokens += int(usage.prompt_tokens)
            self.completion_tokens += int(usage.completion_tokens)
            self.cost += cost
            return cost

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
            cache_hits, unpriced = self.cache_hits, sorted(self.unpriced)
        return {
            **used,
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

    def run(self, fn: Callable[[], T], *, what: str = "call") -> T:
        """Call ``fn`` until it succeeds, retrying TransportErrors; then raise a chained TransportError."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except TransportError as exc:
                last, reason = exc, None
                if not self.should_retry(exc):
                    reason = "not retryable"
                elif attempt >= self.max_attempts:
                    reason = f"max_attempts={self.max_attempts} reached"
                elif exc.retry_after is not None and exc.retry_after > self.max_retry_after:
                    reason = f"server asked to wait {exc.retry_after:g}s, more than max_retry_after={self.max_retry_after:g}s"
                if reason is None:
                    wait_s = max(0.0, exc.retry_after) if exc.retry_after is not None else self.backoff(attempt)
                    log.info("%s", redact(f"{what}: attempt {attempt} failed ({exc}); retrying in {wait_s:.3f}s"))
                    self.sleep(wait_s)
                    continue
            break
        raise TransportError(
            redact(f"{what} failed: {_base_message(last)} ({reason})"),
            status=last.status,
            request_id=last.request_id,
            retry_after=last.retry_after,
            attempts=attempt,
            retryable=last.retryable,
        ) from last

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, base_delay={self.base_delay}, max_delay={self.max_delay}, "
            f"jitter={self.jitter}, retry_statuses={tuple(sorted(self.retry_statuses))})"
        )


def _base_message(exc: TransportError) -> str:
    """The message a TransportError was built with, without the status/id/... suffix it appends."""
    return exc.message


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
    ) -> None:
        # Provider.__init__ is not called: it would pin ``capabilities``, which here follow the
        # wrapped provider (a provider may learn at run time that it lacks e.g. logprobs).
        if not isinstance(provider, Provider):
            raise bad_value("provider", "a blackbox.provider.Provider instance", f"a {type(provider).__name__}")
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
        return frozenset(self.provider.capabilities)

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
        handler = _ITEMS[type(request)]
        n = handler.count(request)
        with self._stats_lock:
            self._stats["calls"] += 1
            self._stats["items"] += n
        if not (use_cache and self.cache is not None and n > 0 and _cacheable(request)):
            return self._send(request, method, handler, n)

        items = handler.split(request)
        identity = self.provider.cache_identity()
        keys = [_key_from_identity(identity, it) for it in items]
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
        fresh = self._send(handler.join([items[missing[k][0]] for k in order]), method, handler, len(order))
        for key, item in zip(order, handler.split_result(fresh)):
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

    def _send(self, request: Any, method: str, handler: _Items, n: int) -> Any:
        """One provider call for ``request`` (n items): reserve, call with retries, commit."""
        reservation = None
        if self.ledger is not None:
            q, p, c = estimate_request(request)
            reservation = self.ledger.reserve(q, p, c, model=self._model, what=_describe_request(request))
        what = f"provider {self.name}: {method}()"
        try:
            result = self.retry.run(lambda: getattr(self.provider, method)(request), what=what)
        except BlackboxError:
            if reservation is not None:
                self.ledger.release(reservation)  # type: ignore[union-attr]
            raise
        except Exception as exc:
            if reservation is not None:
                self.ledger.release(reservation)  # type: ignore[union-attr]
            raise ProviderError(redact(f"{what} raised {type(exc).__name__}: {exc}")) from exc
        except BaseException:
            if reservation is not None:
                self.ledger.release(reservation)  # type: ignore[union-attr]
            raise
        with self._stats_lock:
            self._stats["provider_calls"] += 1

        usage = getattr(result, "usage", None)
        if not isinstance(usage, Usage):
            usage = Usage()
        if usage.queries == 0 and not usage.cached:
            usage = replace(usage, queries=n)  # a provider that reports nothing still spent n queries
        if reservation is not None:
            # Committed before the result is checked: a malformed answer was still paid for.
            cost = self.ledger.commit(reservation, usage)  # type: ignore[union-attr]
            if cost and not usage.cost:
                usage = replace(usage, cost=cost)
        expected = REQUEST_TO_RESULT[type(request)]
        if not isinstance(result, expected):
            raise ProviderError(f"{what}: expected a {expected.__name__}, received a {type(result).__name__}")
        got = handler.result_count(result)
        if got != n:
            raise ProviderError(f"{what}: expected {n} results (one per item), received {got}")
        return replace(result, usage=usage)

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
            handler = _items_for(r, _ITEMS, "request")
            if not (self.use_cache and self.cache is not None and handler.count(r) > 0 and _cacheable(r)):
                pending.append(r)
                continue
            items = handler.split(r)
            misses = [it for it in items if _key_from_identity(identity, it) not in self.cache]
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


def _check_concurrency(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_value(name, "an integer >= 1", value)
    return value
