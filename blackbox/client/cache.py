"""The disk cache: keys (sha256 of a canonical JSON, secrets removed) and the SQLite store."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ProviderError, bad_value
from ..provider import Provider
from ..secrets import Secret, is_secret

__all__ = ["cache_key", "key_from_identity", "DiskCache"]


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


def key_from_identity(identity: Any, request: Any) -> str:
    """The cache key of ``request`` for a provider whose ``cache_identity()`` is ``identity``."""
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
    return key_from_identity(provider.cache_identity(), request)


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
