"""One wrapper around every provider: disk cache, budget ledger, retries, concurrency.

:class:`Client` is itself a :class:`~blackbox.provider.Provider`, so it composes with
anything that takes one. The package is split by concern:

* :mod:`.cache` — cache keys (sha256 of a canonical JSON, secrets removed) and :class:`DiskCache`;
* :mod:`.codec` — results as JSON + safetensors bytes (never pickle);
* :mod:`.ledger` — :class:`Ledger` (queries, tokens, money, hard limits) and request estimates;
* :mod:`.retry` — :class:`RetryPolicy`;
* :mod:`.client` — :class:`Client` itself.

The per-item split/join of requests and results lives beside the types, in :mod:`blackbox.items`.
"""

from __future__ import annotations

# REQUEST_TO_RESULT, RESULT_TYPES, FORMAT and DEFAULT_RETRY_STATUSES stay importable from here, as
# they were from the single-module blackbox.client.
from ..items import (  # noqa: F401
    REQUEST_TO_RESULT,
    RESULT_TYPES,
    count_items,
    join_requests,
    join_results,
    split_request,
    split_result,
)
from .cache import DiskCache, cache_key
from .client import Client
from .codec import FORMAT, decode_result, encode_result  # noqa: F401
from .ledger import DEFAULT_PRICES, Ledger, Reservation, estimate_request
from .retry import DEFAULT_RETRY_STATUSES, RetryPolicy  # noqa: F401

__all__ = [
    "Client", "DiskCache", "Ledger", "Reservation", "RetryPolicy", "DEFAULT_PRICES",
    "cache_key", "encode_result", "decode_result", "estimate_request",
    "split_request", "join_requests", "split_result", "join_results", "count_items",
]
