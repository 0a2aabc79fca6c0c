"""ReplicaPool: one provider served by N Ray actors, and itself a Provider.

A call's rows (a ClassifyRequest's inputs, a GenerateRequest's prompts, ...; see
:mod:`blackbox.items`) are cut into at most N contiguous shards, one per replica, evaluated
concurrently and joined back in order. Wrap the pool in a :class:`~blackbox.client.Client` and
the cache, the retries and the budget ledger stay in the driver: the pool reports the usage of
exactly one successful evaluation per row, so every query is billed once.

Faults: a replica whose process dies (or that does not answer within ``timeout`` seconds) is
killed, replaced by a fresh actor built from the same source, and its shard is sent again;
the other shards' results are kept. Errors raised *by the provider* inside a replica are not
faults: they go up as the provider's own exception (wrapped as a
:class:`~blackbox.errors.PartialResultError` carrying the shards that succeeded, so a Client
bills their work and retries only what failed).

Requests and results travel between driver and replicas through Ray's object store (Ray
serialises them with pickle); nothing of that is ever written to a run directory.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import replace
from typing import Any

from ..client.client import EMBED_CALLS, TOKEN_HELPERS
from ..errors import BlackboxError, CapabilityError, PartialResultError, ProviderError, TransportError, bad_value
from ..items import ITEM_OPS, merge_usage
from ..provider import CALLS, Provider
from ..types import Capability, Usage
from ._ray import connect

__all__ = ["ReplicaPool", "shard_bounds"]

Source = "str | Callable[[], Provider]"


class _Replica:
    """The actor body: one provider instance built in the replica's own process."""

    def __init__(self, source: Any, threads: int = 1, chat_template: str | None = None) -> None:
        import sys

        from ..provider import load_provider

        # Thread pools sized to the CPUs reserved, the same in every replica (Ray reuses worker
        # processes and sets OMP_NUM_THREADS only for whole CPUs): a CPU torch model's rows can
        # change in the last bits with the thread count. A provider's own setting still wins.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        self.provider = source() if callable(source) else load_provider(source)
        if chat_template is not None:
            self.set_chat_template(chat_template)

    def info(self) -> dict[str, Any]:
        p = self.provider
        names = getattr(p, "class_names", None)
        return {"name": p.name, "summary": getattr(p, "summary", ""), "capabilities": sorted(str(c) for c in p.capabilities),
                "describe": p.describe(), "cache_identity": p.cache_identity(), "pid": os.getpid(),
                "class_names": None if names is None else list(names),
                "extras": [n for n in (*EMBED_CALLS, *TOKEN_HELPERS) if hasattr(p, n)]}

    def example_inputs(self) -> Any:
        return self.provider.example_inputs()

    def call(self, request: Any, method: str | None = None, *args: Any) -> Any:
        # ``method``: a call taking extra arguments, e.g. generate_with_embeds(request, edit).
        return self.provider.call(request) if method is None else getattr(self.provider, method)(request, *args)

    def invoke(self, name: str, *args: Any) -> Any:
        """A token helper (prompt_text, encode, token_embeddings) or, without args, an attribute."""
        value = getattr(self.provider, name)
        return value(*args) if callable(value) and name != "tokenizer" else value

    def set_chat_template(self, template: str) -> None:
        """Put ``template`` on this replica's tokenizer (``provider.tokenizer.chat_template``)."""
        self.provider.tokenizer.chat_template = template

    def close(self) -> None:
        self.provider.close()


def shard_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` contiguous ``[start, stop)`` ranges covering ``range(n)``, sizes differing by at most one."""
    k = max(1, min(k, n))
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


class ReplicaPool(Provider):
    """``replicas`` Ray actors each holding a provider built from ``source`` (a spec or a factory).

    ``address``: ``None``/``"local"`` (a local cluster sized to the machine), ``"auto"``, or
    ``HOST:PORT`` (see :func:`blackbox.scale.connect`). ``timeout``: seconds a shard may take
    before its replica counts as hung (None: no limit). ``max_replacements``: replicas replaced
    within one call before the call fails. ``num_cpus``: CPUs Ray reserves per replica; each
    replica runs ``max(1, int(num_cpus))`` OpenMP/torch threads unless its provider sets its own.
    """

    def __init__(self, source: Any, replicas: int, *, address: str | None = None, timeout: float | None = None,
                 max_replacements: int = 3, num_cpus: float = 1.0, start_timeout: float = 300.0) -> None:
        if not (isinstance(source, str) or callable(source)):
            raise bad_value("source", "a provider spec string or a picklable factory returning a Provider", type(source).__name__)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise bad_value("replicas", "an integer >= 1", replicas)
        for name, value in (("timeout", timeout), ("start_timeout", start_timeout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value)):
                raise bad_value(name, "seconds > 0 or None", value)
        if isinstance(max_replacements, bool) or not isinstance(max_replacements, int) or max_replacements < 0:
            raise bad_value("max_replacements", "an integer >= 0", max_replacements)
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0:
            raise bad_value("num_cpus", "a number >= 0", num_cpus)
        self.source = source
        self.timeout = None if timeout is None else float(timeout)
        self.start_timeout = float(start_timeout)
        self.max_replacements = max_replacements
        self.ray = connect(address)
        total = float(self.ray.cluster_resources().get("CPU", 0.0))
        if replicas * num_cpus > total:
            raise BlackboxError(f"replicas: {replicas} replicas x {num_cpus:g} CPU need {replicas * num_cpus:g} CPUs, but the Ray "
                                f"cluster has {total:g}; use fewer replicas, a bigger cluster, or fewer CPUs per replica "
                                "(num_cpus=, or cpus_per_replica= in a ray: spec) for a provider that mostly waits")
        self._actor_cls = self.ray.remote(num_cpus=num_cpus, max_restarts=0, max_task_retries=0)(_Replica)
        self._lock = threading.Lock()
        self.replacements: list[dict[str, Any]] = []  # one entry per replaced replica: slot, reason, pids
        self._closed = False
        self.threads = max(1, int(num_cpus))  # torch/OpenMP threads per replica
        self._chat_template: str | None = None  # put on every replica's tokenizer, replacements included
        self._actors: list[Any] = [self._actor_cls.remote(source, self.threads) for _ in range(replicas)]
        self._infos: list[dict[str, Any]] = self._wait_ready(self._actors)
        info = self._infos[0]
        super().__init__()
        self.name = info["name"]  # type: ignore[misc] - the wrapped kind's name, so errors and caches read the same
        self.summary = info["summary"]  # type: ignore[misc]
        self.capabilities = frozenset(Capability(c) for c in info["capabilities"])
        self._describe, self._identity = info["describe"], info["cache_identity"]
        self.class_names = None if info["class_names"] is None else tuple(info["class_names"])
        self._extras = frozenset(info.get("extras", ()))
        self._memo: dict[tuple[Any, ...], Any] = {}

    # -- replicas -----------------------------------------------------------------------------
    def _wait_ready(self, actors: list[Any]) -> list[dict[str, Any]]:
        refs = [a.info.remote() for a in actors]
        try:
            return self.ray.get(refs, timeout=self.start_timeout)
        except self.ray.exceptions.GetTimeoutError:
            self._kill(actors)
            raise BlackboxError(f"replicas: {len(actors)} replica(s) of {self._source_name()} did not start within "
                                f"{self.start_timeout:g} s (not enough free CPUs in the cluster? each takes num_cpus)") from None
        except self.ray.exceptions.RayTaskError as exc:
            self._kill(actors)
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
            if isinstance(cause, BlackboxError):
                raise type(cause)(*cause.args) from None
            raise BlackboxError(f"replicas: building {self._source_name()} in a replica failed: {cause or exc}") from None
        except self.ray.exceptions.RayActorError as exc:
            self._kill(actors)
            raise BlackboxError(f"replicas: a replica of {self._source_name()} died while starting: {exc}") from None

    def _source_name(self) -> str:
        return self.source if isinstance(self.source, str) else getattr(self.source, "__name__", repr(self.source))

    def _kill(self, actors: list[Any]) -> None:
        for a in actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _replace(self, slot: int, reason: str) -> Any:
        """Kill the replica in ``slot`` and start a fresh one there (waits until it is ready)."""
        with self._lock:
            old, old_pid = self._actors[slot], self._infos[slot]["pid"]
            self._kill([old])
            fresh = self._actor_cls.remote(self.source, self.threads, self._chat_template)
            info = self._wait_ready([fresh])[0]
            self._actors[slot], self._infos[slot] = fresh, info
            self.replacements.append({"slot": slot, "reason": reason, "old_pid": old_pid, "new_pid": info["pid"]})
            return fresh

    def set_chat_template(self, template: str) -> None:
        """Put ``template`` on every replica's tokenizer, now and on replicas started later.

        ``pool.tokenizer`` is a copy of replica 0's: a template set on it alone would never reach the
        replicas that render chat prompts (ECO's automatic Gemma template, ``--chat-template``)."""
        if not isinstance(template, str) or not template:
            raise bad_value("chat_template", "a non-empty Jinja template string", template)
        with self._lock:
            self._chat_template = template
        for slot in range(self.size):
            try:
                self.ray.get(self._actors[slot].set_chat_template.remote(template), timeout=self.start_timeout)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError) as exc:
                self._replace(slot, f"set_chat_template() failed ({type(exc).__name__})")  # the fresh one starts with it
            except self.ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                raise cause if isinstance(cause, BaseException) else ProviderError(str(exc).splitlines()[0]) from None
        self._memo.clear()  # the tokenizer copy and prompts rendered under the old template

    @property
    def size(self) -> int:
        """Number of replicas."""
        return len(self._actors)

    def pids(self) -> list[int]:
        """Process id of each replica, by slot."""
        return [int(i["pid"]) for i in self._infos]

    # -- identity: the wrapped provider's, so a Client's cache keys match the single-process run
    def describe(self) -> dict[str, Any]:
        """The replicated provider's description."""
        return dict(self._describe)

    def cache_identity(self) -> dict[str, Any]:
        """The replicated provider's cache identity (replica count does not change outputs)."""
        return dict(self._identity)

    def example_inputs(self) -> Any:
        """Replica 0's example classify inputs."""
        return self.ray.get(self._actors[0].example_inputs.remote(), timeout=self.start_timeout)

    def __repr__(self) -> str:
        return f"<ReplicaPool {self._source_name()} x{self.size}>"

    # -- calls --------------------------------------------------------------------------------
    def classify(self, request: Any) -> Any:
        """Class scores, rows split across replicas."""
        return self.call(request)

    def next_token(self, request: Any) -> Any:
        """Next-token distributions, prompts split across replicas."""
        return self.call(request)

    def generate(self, request: Any) -> Any:
        """Continuations, prompts split across replicas."""
        return self.call(request)

    def embed(self, request: Any) -> Any:
        """Vectors, texts split across replicas."""
        return self.call(request)

    def hidden_states(self, request: Any) -> Any:
        """Hidden states, texts split across replicas."""
        return self.call(request)

    def score(self, request: Any) -> Any:
        """Log-likelihoods, pairs split across replicas."""
        return self.call(request)

    # inputs_embeds calls and token helpers, offered when the replicated provider has them ----
    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("_extras", frozenset())
        if name in extras and name in EMBED_CALLS:
            return lambda request, edit: self.call(request, name, edit)
        if name in extras and name == "tokenizer":
            return self.invoke("tokenizer")
        if name in extras:
            return lambda *args: self.invoke(name, *args)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def invoke(self, name: str, *args: Any) -> Any:
        """``provider.NAME(*args)`` (an attribute when it is not callable, or the tokenizer) on replica 0:
        every replica holds the same provider. prompt_text, encode and the tokenizer are memoised; a
        dead or hung replica 0 is replaced once."""
        key = (name, *args)
        if name in ("prompt_text", "encode", "tokenizer") and key in self._memo:
            value = self._memo[key]
            return list(value) if isinstance(value, list) else value
        for attempt in (0, 1):
            try:
                value = self.ray.get(self._actors[0].invoke.remote(name, *args), timeout=self.timeout)
                break
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError) as exc:
                if attempt:
                    raise TransportError(f"replica pool for {self._source_name()}: {name}() failed twice ({type(exc).__name__})") from None
                self._replace(0, f"{name}() failed ({type(exc).__name__})")
            except self.ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                raise cause if isinstance(cause, BaseException) else ProviderError(str(exc).splitlines()[0]) from None
        if name in ("prompt_text", "encode", "tokenizer") and len(self._memo) < 65536:
            self._memo[key] = value
        return list(value) if isinstance(value, list) else value

    def call(self, request: Any, method: str | None = None, *args: Any) -> Any:
        """Serve ``request``: split by rows over the replicas, gather in order, replace faulty replicas.

        ``method`` names a call taking extra ``args`` after the request (``generate_with_embeds``,
        ...: the edit function travels to every replica with its shard)."""
        if method is not None and method not in self._extras:
            raise CapabilityError(f"provider {self.name}: has no {method}()")
        if self._closed:
            raise ProviderError(f"replica pool for {self._source_name()}: closed")
        if type(request) not in CALLS:
            raise CapabilityError(f"request: expected one of {', '.join(t.__name__ for t in CALLS)}, received {type(request).__name__}")
        handler = ITEM_OPS[type(request)]
        n = handler.count(request)
        bounds = shard_bounds(n, self.size) if n else [(0, 0)]
        if len(bounds) == 1:
            shards = [request]
        else:
            items = handler.split(request)
            shards = [handler.join(items[a:b]) for a, b in bounds]
        results, errors = self._run(shards, method, args)
        if errors:
            raise self._partial(handler, bounds, results, errors, n)
        if len(results) == 1:
            return results[0]
        parts = [results[i] for i in range(len(shards))]
        rows = [row for r in parts for row in handler.split_result(r)]
        return handler.join_results(rows, merge_usage([self._usage(r, b - a) for r, (a, b) in zip(parts, bounds)]))

    def map_rows(self, method: str, rows: Any) -> list[Any]:
        """``provider.METHOD(shard)`` on contiguous shards of ``rows``, one per replica, each returning
        one entry per row; the entries joined in order. For work that is not one typed call (e.g.
        fusion's whole decode of a prompt set, ``blackbox.methods.fusion.replicas``); faults are handled as
        for typed calls, and an error the method raises goes up as it is."""
        if self._closed:
            raise ProviderError(f"replica pool for {self._source_name()}: closed")
        rows = list(rows)
        if not rows:
            return []
        bounds = shard_bounds(len(rows), self.size)
        results, errors = self._run([rows[a:b] for a, b in bounds], method, ())
        if errors:
            raise errors[min(errors)]
        out: list[Any] = []
        for i, (a, b) in enumerate(bounds):
            part = list(results[i])
            if len(part) != b - a:
                raise ProviderError(f"replica pool for {self._source_name()}: {method}() returned {len(part)} entries for {b - a} rows")
            out += part
        return out

    @staticmethod
    def _usage(result: Any, n: int) -> Usage:
        usage = getattr(result, "usage", None)
        usage = usage if isinstance(usage, Usage) else Usage()
        return replace(usage, queries=n) if usage.queries == 0 and not usage.cached else usage

    def _partial(self, handler: Any, bounds: list[tuple[int, int]], results: dict[int, Any], errors: dict[int, BaseException], n: int) -> BaseException:
        """The provider errors of some shards, with the rows that succeeded (billed once by a Client)."""
        kept: dict[int, Any] = {}
        for i, res in results.items():
            a, b = bounds[i]
            rows = handler.split_result(res)
            for j, row in enumerate(rows):
                kept[a + j] = replace(row, usage=self._usage(res, b - a) if j == 0 else Usage())
        failed = {pos: err for i, err in errors.items() for pos in range(*bounds[i])}
        if not kept and len(errors) == 1:
            return next(iter(errors.values()))
        return PartialResultError(kept, failed, n)

    def _run(self, shards: list[Any], method: str | None = None, args: tuple[Any, ...] = ()) -> tuple[dict[int, Any], dict[int, BaseException]]:
        """Send shard i to replica i; gather; replace dead or hung replicas and resend their shard."""
        ray = self.ray
        actors = list(self._actors)
        pending: dict[Any, int] = {}
        started: dict[int, float] = {}
        for i, shard in enumerate(shards):
            pending[actors[i].call.remote(shard, method, *args)] = i
            started[i] = time.monotonic()
        results: dict[int, Any] = {}
        errors: dict[int, BaseException] = {}
        replaced = 0

        def resend(i: int, reason: str) -> None:
            nonlocal replaced
            replaced += 1
            if replaced > self.max_replacements:
                raise TransportError(f"replica pool for {self._source_name()}: gave up after replacing {replaced - 1} "
                                     f"replica(s) in one call (last: {reason})", retryable=False)
            fresh = self._replace(i, reason)
            pending[fresh.call.remote(shards[i], method, *args)] = i
            started[i] = time.monotonic()

        try:
            while pending:
                wait_s = None
                if self.timeout is not None:
                    wait_s = max(0.0, min(started[i] for i in pending.values()) + self.timeout - time.monotonic())
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        results[i] = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        errors[i] = cause if isinstance(cause, BaseException) else ProviderError(str(exc).splitlines()[0])
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as exc:
                        resend(i, f"died ({type(exc).__name__})")
                if not ready and self.timeout is not None:
                    now = time.monotonic()
                    for ref, i in list(pending.items()):
                        if now - started[i] >= self.timeout:
                            del pending[ref]
                            resend(i, f"no answer within timeout={self.timeout:g}s")
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001
                    pass
            raise
        return results, errors

    def close(self) -> None:
        """Stop every replica (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._kill(self._actors)

    def __enter__(self) -> "ReplicaPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
