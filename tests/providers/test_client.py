"""Client: cache keys, result encoding, split/merge, disk cache, ledger, retries, map, secrets."""

from __future__ import annotations

import json
import logging
import math
import pickle
import random
import threading
import time
from dataclasses import fields, replace

import numpy as np
import pytest

from blackbox.client import (
    DEFAULT_PRICES,
    Client,
    DiskCache,
    Ledger,
    RetryPolicy,
    cache_key,
    count_items,
    decode_result,
    encode_result,
    estimate_request,
    join_requests,
    join_results,
    split_request,
    split_result,
)
from blackbox.errors import (
    BudgetError,
    BudgetExceededError,
    CapabilityError,
    ConfigError,
    DeadlineExceededError,
    InvalidResponseError,
    PartialResultError,
    ProviderError,
    TransportError,
)
from blackbox.provider import Provider
from blackbox.secrets import RedactingFilter, Secret, is_secret, redact, register_secret, scrub_exception
from blackbox.types import (
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

from conftest import API_KEY, FakeProvider

PROMPTS = ("alpha", "beta beta", "gamma gamma gamma", "delta")


def every_request() -> dict[str, object]:
    return {
        "classify": ClassifyRequest(inputs=np.arange(12, dtype=np.float32).reshape(4, 3)),
        "classify_logits": ClassifyRequest(inputs=np.arange(8, dtype=np.float64).reshape(4, 2), output="logits"),
        "next_token": NextTokenRequest(prompts=PROMPTS),
        "next_token_top": NextTokenRequest(prompts=PROMPTS, top_k=3),
        "generate": GenerateRequest(prompts=PROMPTS, max_tokens=5, top_logprobs=2),
        "embed": EmbedRequest(texts=PROMPTS, normalize=True),
        "hidden_states": HiddenStatesRequest(texts=PROMPTS, layer=2),
        "score": ScoreRequest(prompts=PROMPTS, continuations=("x", "yy", "zzz z", "w")),
    }


ALL = every_request()


def same(a: object, b: object) -> bool:
    """Exact equality, arrays included (dtype, shape, bits; NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    return a == b


def same_values(a: object, b: object) -> bool:
    """Equal apart from usage."""
    return same(replace(a, usage=Usage()), replace(b, usage=Usage()))


# =========================================================================================
# secrets
# =========================================================================================
def test_secret_never_prints_its_value():
    s = Secret("sk-live-abcdefgh12345678")
    assert str(s) == "***" and repr(s) == "Secret('***')" and f"{s}" == "***" and f"{s:>5}" == "  ***"
    assert "abcdefgh" not in repr([s]) + repr({"k": s}) + "%s %r" % (s, s)
    assert s.reveal() == "sk-live-abcdefgh12345678" and s == Secret("sk-live-abcdefgh12345678") and s
    with pytest.raises(TypeError, match="refusing to pickle"):
        pickle.dumps(s)
    with pytest.raises(AttributeError):
        s._value = "x"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="secret: expected a str, received '<bytes>'"):
        Secret(b"sk-raw-bytes-key")  # type: ignore[arg-type]


def test_redact_registered_given_bearer_and_encoded_forms():
    key = "sk-proj-Zy9/+xq77wZZ"
    Secret(key)  # registers it
    text = f"GET /v1?api_key={key.replace('/', '%2F').replace('+', '%2B')} Authorization: Bearer {key} raw={key}"
    out = redact(text)
    assert key not in out and "Zy9" not in out and out.count("***") == 3
    assert redact("Authorization: Bearer unknown-token-123") == "Authorization: Bearer ***"
    assert redact("bearer tokens are fine") == "bearer tokens are fine"
    assert redact('{"api_key": "unregistered-value-1"}') == '{"api_key": "***"}'
    assert redact("api_key: expected a str") == "api_key: expected a str"  # our own message format survives
    assert redact("hello world", "world") == "hello ***"
    assert is_secret(key) and not is_secret("world")


def test_short_values_are_not_registered_globally():
    assert register_secret("ab") is False and not is_secret("ab")
    assert redact("a cab ride") == "a cab ride"
    assert register_secret("longer-value-xyz") is True and redact("x longer-value-xyz") == "x ***"


def test_scrub_exception_walks_the_chain_and_logging_filter_redacts(caplog):
    Secret(API_KEY)  # registers it
    try:
        try:
            raise ValueError(f"bad key {API_KEY}")
        except ValueError as inner:
            raise ProviderError(f"wrapped {API_KEY}") from inner
    except ProviderError as exc:
        scrub_exception(exc)
        assert API_KEY not in str(exc) and API_KEY not in str(exc.__cause__)
    exc2 = scrub_exception(RuntimeError("unregistered-value-42 here"), "unregistered-value-42")
    assert str(exc2) == "*** here"
    logger = logging.getLogger("test.redact")
    handler_filter = RedactingFilter()
    logger.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger="test.redact"):
            logger.info("using %s", API_KEY)
    finally:
        logger.removeFilter(handler_filter)
    assert "using ***" in caplog.text and API_KEY not in caplog.text


# =========================================================================================
# cache keys
# =========================================================================================
def test_cache_key_is_canonical_and_sensitive_to_what_matters(fake):
    r = GenerateRequest(prompts=("a", "b"), max_tokens=4)
    k = cache_key(fake, r)
    assert len(k) == 64 and k == cache_key(fake, GenerateRequest(prompts=["a", "b"], max_tokens=4))  # type: ignore[arg-type]
    assert k == cache_key(fake, GenerateRequest(prompts=("a", "b"), max_tokens=4, temperature=0))  # 0 == 0.0
    assert k != cache_key(fake, GenerateRequest(prompts=("b", "a"), max_tokens=4))
    assert k != cache_key(fake, GenerateRequest(prompts=("a", "b"), max_tokens=5))
    assert k != cache_key(fake, NextTokenRequest(prompts=("a", "b")))
    assert k != cache_key(FakeProvider(model="other"), r)
    # Arrays: by dtype, shape and bytes.
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    kx = cache_key(fake, ClassifyRequest(inputs=x))
    assert kx == cache_key(fake, ClassifyRequest(inputs=x.copy(order="F")))
    assert kx != cache_key(fake, ClassifyRequest(inputs=x.astype(np.float64)))
    assert kx != cache_key(fake, ClassifyRequest(inputs=x.reshape(3, 2)))
    with pytest.raises(ConfigError, match="object arrays"):
        cache_key(fake, ClassifyRequest(inputs=np.array([object()])))


def test_cache_key_drops_secrets(fake):
    r = EmbedRequest(texts=("t",))
    other_key = FakeProvider(api_key="sk-another-key-999999")
    no_key = FakeProvider(api_key=None)
    assert cache_key(fake, r) == cache_key(other_key, r) == cache_key(no_key, r)

    class RawKey(FakeProvider):
        def __init__(self, token: str) -> None:
            super().__init__(api_key=None)
            self.token = token

        def cache_identity(self):  # a careless provider that puts the raw strings in
            return {**self.describe(), "token": self.token, "headers": {"Authorization": f"Bearer {self.token}"}}

    # Registered values and fields named like credentials are dropped, whatever their value.
    assert cache_key(RawKey(API_KEY), r) == cache_key(RawKey("sk-another-key-999999"), r)
    assert cache_key(RawKey(API_KEY), r) != cache_key(RawKey("not-a-registered-value"), r)


# =========================================================================================
# result encoding
# =========================================================================================
def every_result() -> dict[str, object]:
    usage = Usage(queries=3, prompt_tokens=10, completion_tokens=7, cached=False, request_id="r-1", cost=0.0125)
    return {
        "classify": ClassifyResult(scores=np.array([[0.1, 0.9], [np.nan, -np.inf]], np.float32), output="probs", usage=usage),
        "next_logits": NextTokenResult(logits=np.arange(6, dtype=np.float16).reshape(2, 3), top_logprobs=None),
        "next_top": NextTokenResult(logits=None, top_logprobs=({"b": -0.1, "a": -2.5}, {"é": float("-inf")}), usage=usage),
        "generate": GenerateResult(
            texts=("one", "two"),
            token_logprobs=((-0.5, -1.0), ()),
            top_logprobs=(({"x": -0.1},), ()),
            finish_reasons=("stop", "length"),
            usage=usage,
        ),
        "generate_plain": GenerateResult(texts=("",)),
        "embed": EmbedResult(vectors=np.zeros((0, 4), np.float64)),
        "hidden": HiddenStatesResult(states=(np.ones((2, 3), np.float32), np.arange(3, dtype=np.int64).reshape(1, 3))),
        "score": ScoreResult(logprobs=np.array([-1.5, -2.25]), n_tokens=np.array([1, 3], np.int32), usage=usage),
    }


@pytest.mark.parametrize("name", list(every_result()))
def test_encode_decode_round_trips_exactly(name):
    result = every_result()[name]
    data = encode_result(result)
    back = decode_result(data)
    assert type(back) is type(result) and same(back, result)
    assert b"pickle" not in data and encode_result(back) == data  # deterministic too


def test_decode_rejects_garbage_and_unknown_types():
    with pytest.raises(ConfigError, match="data: expected bytes written by encode_result"):
        decode_result(b"not a safetensors blob")
    good = encode_result(EmbedResult(vectors=np.zeros((1, 2))))
    evil = good.replace(b'"$c\\":\\"EmbedResult', b'"$c\\":\\"Xvil_Result')
    assert evil != good
    with pytest.raises(ConfigError, match="unknown type"):
        decode_result(evil)
    with pytest.raises(ConfigError, match="result: expected one of ClassifyResult"):
        encode_result(Usage())
    with pytest.raises(ConfigError, match="arrays of bool, int or float"):
        encode_result(EmbedResult(vectors=np.array([["a"]])))


# =========================================================================================
# split / join
# =========================================================================================
@pytest.mark.parametrize("name", list(ALL))
def test_split_join_request_and_result_round_trip(name, fake):
    request = ALL[name]
    items = split_request(request)
    assert len(items) == count_items(request) == 4 and all(count_items(it) == 1 for it in items)
    joined = join_requests(items)
    assert same(joined, request)
    result = fake.call(request)
    parts = split_result(result)
    assert len(parts) == 4
    for part, item in zip(parts, items):  # each part is what the item alone would give
        assert same_values(part, fake.call(item))
    merged = join_results(parts, result.usage)
    assert same(merged, result)
    # Partial joins keep order: items 3, 1.
    assert same_values(join_results([parts[3], parts[1]]), fake.call(join_requests([items[3], items[1]])))


def test_split_rejects_a_bare_string_and_mismatched_pairs():
    with pytest.raises(ConfigError, match=r"GenerateRequest.prompts: expected a tuple of str, received 'hello'"):
        split_request(GenerateRequest(prompts="hello"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ScoreRequest.continuations: expected one continuation per prompt \(2\)"):
        count_items(ScoreRequest(prompts=("a", "b"), continuations=("x",)))
    with pytest.raises(ConfigError, match="request: expected one of ClassifyRequest"):
        split_request("generate this")
    with pytest.raises(ProviderError, match="some items have it and some do not"):
        join_results([NextTokenResult(logits=np.zeros((1, 2)), top_logprobs=None), NextTokenResult(logits=None, top_logprobs=({},))])


def test_estimate_request_uses_len_over_4_plus_max_tokens():
    assert estimate_request(GenerateRequest(prompts=("abcdefgh", "abc"), max_tokens=10)) == (2, 3, 20)
    assert estimate_request(ClassifyRequest(inputs=np.zeros((5, 2)))) == (5, 0, 0)
    assert estimate_request(ScoreRequest(prompts=("abcd",), continuations=("abcde",))) == (1, 3, 0)
    assert estimate_request(EmbedRequest(texts=("a" * 9,))) == (1, 3, 0)


# =========================================================================================
# disk cache
# =========================================================================================
def test_disk_cache_basics_persistence_and_threads(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    with DiskCache(path) as c:
        assert c.get("k") is None and len(c) == 0
        c.put("k", b"v1")
        c.put("k", b"v2")
        assert c.get("k") == b"v2" and len(c) == 1 and "k" in c and "x" not in c
        assert c.stats() == {"hits": 1, "misses": 1, "entries": 1}
        mode = c._conn.execute("PRAGMA journal_mode").fetchone()[0]  # type: ignore[union-attr]
        assert mode == "wal"

        read_back: list[tuple[bytes | None, bytes]] = []  # checked in the main thread: a failed
        lock = threading.Lock()                           # assert in a worker would only warn

        def worker(t: int) -> None:
            for i in range(50):
                c.put(f"{t}-{i}", bytes([t, i]))
                got = c.get(f"{t}-{i}")
                with lock:
                    read_back.append((got, bytes([t, i])))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(read_back) == 400 and all(got == want for got, want in read_back)
        assert len(c) == 401
    with DiskCache(path) as again:
        assert again.get("7-49") == bytes([7, 49]) and len(again) == 401
        again.clear()
        assert len(again) == 0 and again.stats()["hits"] == 0
    with pytest.raises(ConfigError, match="path: expected a cache file path"):
        DiskCache(tmp_path)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="path: expected an SQLite cache file"):
        DiskCache(bad)


# =========================================================================================
# client: cache behaviour
# =========================================================================================
def test_cache_hit_costs_no_budget_and_no_provider_call(fake, tmp_path):
    ledger = Ledger(max_queries=4)
    client = Client(fake, cache=tmp_path / "c.sqlite", ledger=ledger)
    req = GenerateRequest(prompts=("a", "b"), max_tokens=3)
    first = client.generate(req)
    assert first.usage.queries == 2 and not first.usage.cached and first.usage.request_id == "req-1"
    assert ledger.queries == 2 and len(fake.calls) == 1
    second = client.generate(req)
    assert second.usage == Usage(cached=True, queries=0, cost=0.0)
    assert same_values(first, second) and ledger.queries == 2 and len(fake.calls) == 1
    # The budget is spent up to its limit; cached requests still work, new ones are refused.
    client.generate(GenerateRequest(prompts=("c", "d"), max_tokens=3))
    assert ledger.queries == 4
    assert client.generate(req).usage.cached
    with pytest.raises(BudgetExceededError):
        client.generate(GenerateRequest(prompts=("e",), max_tokens=3))
    assert len(fake.calls) == 2 and ledger.snapshot()["cache_hits"] == 4
    client.close()


def test_use_cache_false_bypasses_reads_and_writes(fake, tmp_path):
    cache = DiskCache(tmp_path / "c.sqlite")
    req = EmbedRequest(texts=("a",))
    off = Client(fake, cache=cache, use_cache=False)
    off.embed(req)
    off.embed(req)
    assert len(fake.calls) == 2 and len(cache) == 0
    on = Client(fake, cache=cache)
    on.embed(req)
    on.embed(req)
    assert len(fake.calls) == 3 and len(cache) == 1
    on.call(req, use_cache=False)  # per call
    assert len(fake.calls) == 4
    assert Client(fake).embed(req).usage.queries == 1 and len(fake.calls) == 5  # no cache at all


@pytest.mark.parametrize("name", list(ALL))
def test_partial_hits_send_only_the_misses_as_one_batch_and_keep_order(name, tmp_path):
    fake = FakeProvider()
    reference = FakeProvider().call(ALL[name])
    client = Client(fake, cache=tmp_path / "c.sqlite")
    items = split_request(ALL[name])
    client.call(join_requests([items[0], items[2]]))  # warm items 0 and 2
    assert len(fake.calls) == 1
    merged = client.call(ALL[name])
    assert len(fake.calls) == 2
    sent = fake.calls[1][1]
    assert same(sent, join_requests([items[1], items[3]]))  # one batch: the misses, in order
    assert same_values(merged, reference)
    assert merged.usage.queries == 2 and not merged.usage.cached
    assert client.stats()["cache_hits"] == 2


def test_duplicate_items_are_sent_once(fake, tmp_path):
    client = Client(fake, cache=tmp_path / "c.sqlite", ledger=Ledger())
    out = client.generate(GenerateRequest(prompts=("x", "y", "x", "x")))
    assert fake.calls[0][1].prompts == ("x", "y")
    assert out.texts == tuple(f"{p}|32|0.0" for p in ("x", "y", "x", "x"))
    assert client.ledger.queries == 2  # type: ignore[union-attr]


def test_sampling_without_seed_is_never_cached(fake, tmp_path):
    client = Client(fake, cache=tmp_path / "c.sqlite")
    sampled = GenerateRequest(prompts=("a",), temperature=0.7)
    client.generate(sampled)
    client.generate(sampled)
    assert len(fake.calls) == 2
    seeded = replace(sampled, seed=1)
    client.generate(seeded)
    client.generate(seeded)
    assert len(fake.calls) == 3


def test_corrupt_cache_entry_is_a_miss_and_gets_rewritten(fake, tmp_path, caplog):
    cache = DiskCache(tmp_path / "c.sqlite")
    client = Client(fake, cache=cache)
    req = EmbedRequest(texts=("a",))
    good = client.embed(req)
    cache.put(cache_key(fake, req), b"garbage")
    with caplog.at_level(logging.WARNING, logger="blackbox.client"):
        again = client.embed(req)
    assert "treated as a miss" in caplog.text and len(fake.calls) == 2 and same_values(good, again)
    assert client.embed(req).usage.cached


def test_composed_clients_share_identity(fake, tmp_path):
    inner = Client(fake, cache=tmp_path / "inner.sqlite", ledger=Ledger())
    outer = Client(inner, cache=tmp_path / "outer.sqlite", ledger=Ledger())
    assert isinstance(outer, Provider) and outer.name == "fake" and outer.describe() == fake.describe()
    assert outer.capabilities == fake.capabilities and cache_key(outer, ALL["embed"]) == cache_key(fake, ALL["embed"])
    outer.embed(ALL["embed"])
    inner_only = Client(inner)
    assert inner_only.embed(ALL["embed"]).usage.cached  # the inner cache answered
    assert outer.ledger.queries == 4 and inner.ledger.queries == 4  # type: ignore[union-attr]
    assert len(fake.calls) == 1


def test_client_passes_the_provider_conformance_check(fake, tmp_path):
    from blackbox.testing import check_provider

    client = Client(fake, cache=tmp_path / "c.sqlite", ledger=Ledger())
    check_provider(client)
    check_provider(client)  # the second round is served from the cache
    assert client.stats()["cache_hits"] > 0


# =========================================================================================
# client: capabilities
# =========================================================================================
def test_missing_capability_fails_before_any_query(tmp_path):
    text_only = FakeProvider(capabilities=["text"])
    ledger = Ledger()
    client = Client(text_only, cache=tmp_path / "c.sqlite", ledger=ledger)
    with pytest.raises(CapabilityError, match=r"classify\(\): needs (probs or logits|logits or probs), but provider fake has only text"):
        client.classify(ALL["classify"])
    top_only = Client(FakeProvider(capabilities=["top_logprobs"]), ledger=ledger)
    with pytest.raises(CapabilityError, match=r"next_token\(top_k=None\): needs logits"):
        top_only.next_token(NextTokenRequest(prompts=("a",)))
    top_only.next_token(NextTokenRequest(prompts=("a",), top_k=2))
    with pytest.raises(CapabilityError, match="request: expected one of ClassifyRequest"):
        client.call("a string")
    assert text_only.attempts == 0 and ledger.queries == 1


def test_constructor_validates_its_arguments(fake):
    with pytest.raises(ConfigError, match="provider: expected a blackbox.provider.Provider instance, received 'a str'"):
        Client("openai:gpt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="concurrency: expected an integer >= 1, received 0"):
        Client(fake, concurrency=0)
    with pytest.raises(ConfigError, match="cache: expected None, a file path or a DiskCache"):
        Client(fake, cache=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_attempts: expected an integer >= 1"):
        RetryPolicy(max_attempts=0)


# =========================================================================================
# ledger
# =========================================================================================
def test_ledger_prices_defaults_overrides_and_unpriced():
    ledger = Ledger(prices={"my-model": {"prompt": 1.0, "completion": 2.0}, "gpt-4o-mini": {"prompt": 1.0}})
    assert ledger.price("my-model", 1_000_000, 500_000) == pytest.approx(2.0)
    assert ledger.price("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(1.0)  # override, completion 0
    assert ledger.price("gpt-4o-2024-08-06", 1_000_000, 0) == DEFAULT_PRICES["gpt-4o"]["prompt"]  # dated snapshot
    assert ledger.price("unknown", 10, 10) is None
    r = ledger.reserve(1, 10, 10, model="unknown")
    assert ledger.commit(r, Usage(queries=1, prompt_tokens=10, completion_tokens=10)) == 0.0
    assert ledger.snapshot()["unpriced"] == ["unknown"]
    r = ledger.reserve(1, model="my-model")
    assert ledger.commit(r, Usage(queries=1, prompt_tokens=1000, completion_tokens=0, cost=0.5)) == 0.5  # provider's own cost wins
    with pytest.raises(ConfigError, match=r"prices\['x'\]\['prompt'\]: expected a finite number >= 0, received -1"):
        Ledger(prices={"x": {"prompt": -1}})
    with pytest.raises(ConfigError, match="max_queries: expected an integer >= 0, received 1.5"):
        Ledger(max_queries=1.5)  # type: ignore[arg-type]


def test_ledger_refuses_before_sending_and_names_limit_used_and_request():
    ledger = Ledger(max_queries=5, max_completion_tokens=100)
    r = ledger.reserve(3, what="GenerateRequest of 3 prompts")
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve(3, what="GenerateRequest of 3 prompts")
    msg = str(info.value)
    assert "max_queries=5 queries" in msg and "used 0 queries, 3 queries reserved" in msg and "GenerateRequest of 3 prompts" in msg
    assert isinstance(info.value, BudgetError) and isinstance(info.value, ValueError)
    ledger.commit(r, Usage(queries=3))
    with pytest.raises(ConfigError, match="reservation: expected an open reservation"):
        ledger.commit(r, Usage(queries=3))  # never counted twice
    with pytest.raises(BudgetExceededError, match="max_completion_tokens=100"):
        ledger.reserve(1, 0, 101)
    r2 = ledger.reserve(2)
    ledger.release(r2)
    ledger.release(r2)  # idempotent
    assert ledger.queries == 3 and ledger.snapshot()["in_flight"]["queries"] == 0
    money = Ledger(max_cost=1.0)
    with pytest.raises(BudgetError, match="max_cost=1.0 is set but model 'mystery' has no price"):
        money.reserve(1, 10, 0, model="mystery")
    with pytest.raises(BudgetExceededError, match=r"max_cost=\$1.000000"):
        money.reserve(1, 2_000_000, 0, model="gpt-4o-mini") and money.reserve(1, 5_000_000, 0, model="gpt-4o-mini")


def test_ledger_estimate_snapshot_and_json_round_trip():
    ledger = Ledger(max_queries=10, prices={"m": {"prompt": 10.0, "completion": 20.0}})
    reqs = [GenerateRequest(prompts=("abcd" * 10,), max_tokens=5), EmbedRequest(texts=("abcd",))]
    est = ledger.estimate(reqs, model="m")
    assert est["queries"] == 2 and est["prompt_tokens"] == 11 and est["completion_tokens"] == 5
    assert est["cost"] == pytest.approx((11 * 10 + 5 * 20) / 1e6) and est["priced"] and est["fits"]
    assert not ledger.estimate(reqs * 6, model="m")["fits"]
    assert ledger.estimate(reqs)["priced"] is False
    r = ledger.reserve(2, 11, 5, model="m")
    ledger.commit(r, Usage(queries=2, prompt_tokens=11, completion_tokens=5))
    ledger.record_cache_hits(3)
    data = json.loads(json.dumps(ledger.to_json()))
    back = Ledger.from_json(data)
    assert back.to_json() == ledger.to_json() and Ledger.from_json(json.dumps(data)).queries == 2
    snap = back.snapshot()
    assert snap["queries"] == 2 and snap["remaining"]["max_queries"] == 8 and snap["cache_hits"] == 3
    with pytest.raises(ConfigError, match="data: expected a dict written by Ledger.to_json"):
        Ledger.from_json({"limits": {}})


def test_ledger_hard_stop_is_never_exceeded_by_16_threads():
    ledger = Ledger(max_queries=300, max_prompt_tokens=1000)
    barrier = threading.Barrier(16)
    granted = []
    refused = []
    committed_plus_reserved = []  # seen by the workers, asserted in the main thread below
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(60):
            try:
                r = ledger.reserve(1, 3)
            except BudgetExceededError:
                with lock:
                    refused.append(1)
                continue
            snap = ledger.snapshot()
            with lock:
                committed_plus_reserved.append(snap["queries"] + snap["in_flight"]["queries"])
            ledger.commit(r, Usage(queries=1, prompt_tokens=3))
            with lock:
                granted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A failed assert inside a worker thread only warns; the invariant is checked here.
    assert len(committed_plus_reserved) == 300 and max(committed_plus_reserved) <= 300
    assert len(granted) == ledger.queries == 300 and ledger.prompt_tokens == 900
    assert len(refused) == 16 * 60 - 300


def test_client_hard_stop_under_concurrency_matches_provider_count():
    max_q = 37
    ledger = Ledger(max_queries=max_q)
    peak = []

    def check(provider, request):
        snap = ledger.snapshot()
        peak.append(snap["queries"] + snap["in_flight"]["queries"])

    fake = FakeProvider(delay=0.002, on_call=check)
    client = Client(fake, ledger=ledger, concurrency=16)
    reqs = [EmbedRequest(texts=(f"t{i}",)) for i in range(100)]
    out = client.map(reqs, return_exceptions=True)
    ok = [o for o in out if isinstance(o, EmbedResult)]
    refused = [o for o in out if isinstance(o, BudgetExceededError)]
    assert len(out) == 100 and len(ok) == max_q and len(refused) == 100 - max_q
    assert fake.items_served == ledger.queries == max_q and max(peak) <= max_q


def test_failed_call_releases_its_reservation(fake, sleeps):
    ledger = Ledger(max_queries=2)
    fake.script = [TransportError("bad request", status=400)]
    client = Client(fake, ledger=ledger, retry=RetryPolicy(sleep=sleeps))
    with pytest.raises(TransportError):
        client.embed(EmbedRequest(texts=("a", "b")))
    assert ledger.queries == 0 and ledger.snapshot()["in_flight"]["queries"] == 0
    client.embed(EmbedRequest(texts=("a", "b")))  # the budget is still whole
    assert ledger.queries == 2


def test_cost_is_computed_from_the_price_table_and_reported(tmp_path):
    fake = FakeProvider(model="gpt-4o-mini")
    ledger = Ledger()
    client = Client(fake, ledger=ledger, cache=tmp_path / "c.sqlite")
    out = client.generate(GenerateRequest(prompts=("abcdefgh",), max_tokens=4))
    expected = (out.usage.prompt_tokens * 0.15 + out.usage.completion_tokens * 0.60) / 1e6
    assert out.usage.cost == pytest.approx(expected) and ledger.cost == pytest.approx(expected)
    est = client.estimate([GenerateRequest(prompts=("abcdefgh", "new"), max_tokens=4)])
    assert est["cached_items"] == 1 and est["queries"] == 1 and est["completion_tokens"] == 4


def test_provider_that_reports_no_usage_still_counts_queries():
    fake = FakeProvider(report_usage=False)
    ledger = Ledger()
    out = Client(fake, ledger=ledger).embed(EmbedRequest(texts=("a", "b", "c")))
    assert out.usage.queries == 3 and ledger.queries == 3


# =========================================================================================
# retries
# =========================================================================================
def test_retry_after_is_honoured(fake, sleeps):
    fake.script = [TransportError("slow down", status=429, retry_after=1.5, request_id="r-429"), None]
    client = Client(fake, retry=RetryPolicy(sleep=sleeps))
    out = client.embed(EmbedRequest(texts=("a",)))
    assert sleeps.delays == [1.5] and fake.attempts == 2 and out.vectors.shape == (1, 4)


def test_exponential_backoff_capped_and_bounded(fake, sleeps):
    fake.script = [TransportError("boom", status=500, request_id=f"r-{i}") for i in range(10)]
    policy = RetryPolicy(max_attempts=5, base_delay=0.25, max_delay=1.0, jitter=False, sleep=sleeps)
    client = Client(fake, retry=policy)
    with pytest.raises(TransportError) as info:
        client.embed(EmbedRequest(texts=("a",)))
    err = info.value
    assert sleeps.delays == [0.25, 0.5, 1.0, 1.0] and fake.attempts == 5
    assert err.status == 500 and err.request_id == "r-4" and err.attempts == 5 and not err.retryable
    assert isinstance(err.__cause__, TransportError) and err.__cause__.request_id == "r-4"
    assert str(err).startswith("provider fake: embed() failed: boom (max_attempts=5 reached); status 500; request id r-4")
    assert str(err).endswith("after 5 attempts") and str(err).count("status 500") == 1


def test_final_error_carries_retry_after_and_full_jitter_stays_in_bounds(fake, sleeps):
    fake.script = [TransportError("limited", status=429, retry_after=0.5, request_id="q")] * 3
    with pytest.raises(TransportError) as info:
        Client(fake, retry=RetryPolicy(max_attempts=3, sleep=sleeps)).embed(EmbedRequest(texts=("a",)))
    assert info.value.retry_after == 0.5 and info.value.status == 429 and info.value.attempts == 3
    assert sleeps.delays == [0.5, 0.5]
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0, rng=random.Random(0))
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        draws = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in draws) and max(draws) > cap * 0.8
    assert RetryPolicy(rng=random.Random(1)).backoff(2) == RetryPolicy(rng=random.Random(1)).backoff(2)


def test_connection_errors_retry_client_errors_do_not(fake, sleeps):
    fake.script = [TransportError("connection reset", retryable=True), TransportError("timed out", status=None, retryable=True), None]
    Client(fake, retry=RetryPolicy(sleep=sleeps)).embed(EmbedRequest(texts=("a",)))
    assert fake.attempts == 3 and len(sleeps.delays) == 2
    fake.script = [TransportError("unauthorised", status=401)]
    with pytest.raises(TransportError, match=r"\(not retryable\); status 401") as info:
        Client(fake, retry=RetryPolicy(sleep=sleeps)).embed(EmbedRequest(texts=("b",)))
    assert info.value.attempts == 1 and fake.attempts == 4
    for status in (408, 409, 429, 500, 501, 502, 503, 504, 599):
        assert RetryPolicy().should_retry(TransportError("x", status=status))
    assert not RetryPolicy().should_retry(TransportError("x", status=404)) and not RetryPolicy().should_retry(ValueError())
    # The error's own verdict wins over its status (a server's `x-should-retry: false` on a 503).
    assert not RetryPolicy().should_retry(TransportError("x", status=503, retryable=False))
    assert RetryPolicy().should_retry(TransportError("x", status=404, retryable=True))
    fake.script = [TransportError("overloaded, do not retry", status=503, retryable=False), None]
    fake.attempts = 0
    with pytest.raises(TransportError, match=r"status 503") as info:
        Client(fake, retry=RetryPolicy(sleep=sleeps)).embed(EmbedRequest(texts=("c",)))
    assert info.value.attempts == 1 and fake.attempts == 1


def test_excessive_retry_after_gives_up_at_once(fake, sleeps):
    fake.script = [TransportError("come back tomorrow", status=429, retry_after=86400)]
    with pytest.raises(TransportError, match="more than max_retry_after=60s") as info:
        Client(fake, retry=RetryPolicy(sleep=sleeps)).embed(EmbedRequest(texts=("a",)))
    assert sleeps.delays == [] and info.value.retry_after == 86400


def test_other_provider_exceptions_become_provider_errors(fake):
    fake.script = [KeyError("weird")]
    with pytest.raises(ProviderError, match="provider fake: embed\\(\\) raised KeyError") as info:
        Client(fake).embed(EmbedRequest(texts=("a",)))
    assert isinstance(info.value.__cause__, KeyError) and fake.attempts == 1


def test_wrong_result_length_is_a_provider_error_but_still_paid(fake, tmp_path):
    class Short(FakeProvider):
        def embed(self, request):
            out = super().embed(request)
            return replace(out, vectors=out.vectors[:1])

    ledger = Ledger()
    with pytest.raises(ProviderError, match=r"expected 2 results \(one per item\), received 1"):
        Client(Short(), ledger=ledger, cache=tmp_path / "c.sqlite").embed(EmbedRequest(texts=("a", "b")))
    assert ledger.queries == 2


# =========================================================================================
# secrets around the client
# =========================================================================================
def test_secrets_never_leak_into_errors_logs_reprs_or_cache_files(tmp_path, caplog, sleeps):
    fake = FakeProvider()
    leak = f"invalid key {API_KEY}; header was Authorization: Bearer {API_KEY}"
    fake.script = [TransportError(leak, status=503, request_id="r-x"), TransportError(leak, status=401)]
    ledger = Ledger()
    client = Client(fake, cache=tmp_path / "c.sqlite", ledger=ledger, retry=RetryPolicy(sleep=sleeps))
    with caplog.at_level(logging.DEBUG, logger="blackbox.client"):
        with pytest.raises(TransportError) as info:
            client.generate(GenerateRequest(prompts=("p",)))
    texts = [str(info.value), repr(info.value), str(info.value.__cause__), caplog.text]
    fake.script = [ValueError(f"bad {API_KEY}")]
    with pytest.raises(ProviderError) as info2:
        client.generate(GenerateRequest(prompts=("q",)))
    texts += [str(info2.value), str(info2.value.__cause__), repr(client), repr(fake), json.dumps(ledger.to_json())]
    for _ in range(3):
        client.generate(GenerateRequest(prompts=("r", "s")))
    texts.append(str(client.describe()))
    assert all(API_KEY not in t for t in texts), texts
    assert "***" in texts[0] and "retrying" in caplog.text
    client.close()
    for f in tmp_path.iterdir():
        assert API_KEY.encode() not in f.read_bytes(), f
    assert len(DiskCache(tmp_path / "c.sqlite")) == 2


# =========================================================================================
# map
# =========================================================================================
@pytest.mark.parametrize("concurrency", [1, 4])
def test_map_keeps_order_and_returns_one_outcome_per_request(concurrency, sleeps, tmp_path):
    fake = FakeProvider(delay=0.001)
    for i in (3, 7, 11):  # persistent failures
        fake.fail_for[f"p{i}"] = [TransportError("down", status=503, request_id=f"x{i}")] * 10
    fake.fail_for["p5"] = [TransportError("busy", status=429, retry_after=0.01)]  # one transient failure
    ledger = Ledger()
    client = Client(fake, ledger=ledger, cache=tmp_path / "c.sqlite", retry=RetryPolicy(max_attempts=3, sleep=sleeps))
    reqs = [GenerateRequest(prompts=(f"p{i}",), max_tokens=2) for i in range(16)]
    out = client.map(reqs, concurrency=concurrency, return_exceptions=True)
    assert len(out) == 16
    for i, o in enumerate(out):
        if i in (3, 7, 11):
            assert isinstance(o, TransportError) and o.request_id == f"x{i}" and o.attempts == 3
        else:
            assert isinstance(o, GenerateResult) and o.texts == (f"p{i}|2|0.0",)
    assert fake.items_served == len(fake.calls) == ledger.queries == 13
    again = client.map(reqs, concurrency=concurrency, return_exceptions=True)
    assert fake.items_served == 13 + 3 - 3 and ledger.queries == 13  # cached ones free; failed ones fail again
    assert sum(isinstance(o, GenerateResult) and o.usage.cached for o in again) == 13


def test_map_without_return_exceptions_raises_the_first_error(fake, sleeps):
    fake.fail_for["p2"] = [TransportError("nope", status=400)]
    client = Client(fake, concurrency=2, retry=RetryPolicy(sleep=sleeps))
    with pytest.raises(TransportError, match="nope"):
        client.map([EmbedRequest(texts=(f"p{i}",)) for i in range(6)])
    assert client.map([]) == [] and client.map([EmbedRequest(texts=("z",))])[0].vectors.shape == (1, 4)
    with pytest.raises(ConfigError, match="concurrency: expected an integer >= 1"):
        client.map([], concurrency=-1)


def test_close_is_idempotent_and_closes_what_it_owns(fake, tmp_path):
    client = Client(fake, cache=tmp_path / "c.sqlite")
    with client:
        client.embed(EmbedRequest(texts=("a",)))
    client.close()
    assert fake.closed == 1 and client.cache._conn is None  # type: ignore[union-attr]
    with pytest.raises(ProviderError, match="closed"):
        client.embed(EmbedRequest(texts=("a",)))
    shared = DiskCache(tmp_path / "shared.sqlite")
    Client(FakeProvider(), cache=shared).close()
    assert len(shared) == 0  # still open: the client did not own it


# =========================================================================================
# exact spend: retries at the unit that failed, billing failed work, the cap, validation
# =========================================================================================
class FanOutFake(FakeProvider):
    """Embeds each text in its own "call" (as an HTTP provider fans out); a failing text makes
    the request raise PartialResultError with the others' results, as the openai provider does."""

    def embed(self, request: EmbedRequest) -> EmbedResult:
        results, errors = {}, {}
        for i, text in enumerate(request.texts):
            try:
                results[i] = super().embed(replace(request, texts=(text,)))
            except TransportError as exc:
                errors[i] = exc
        if errors:
            raise PartialResultError(results, errors, n_items=len(request.texts))
        return join_results([results[i] for i in range(len(request.texts))],
                            Usage(queries=len(results), prompt_tokens=sum(r.usage.prompt_tokens for r in results.values())))


TEXTS = ("a", "bb", "ccc", "dddd")


def test_only_the_failed_item_of_a_fanned_out_request_is_retried_and_the_rest_is_kept(tmp_path, sleeps):
    clean = FanOutFake().embed(EmbedRequest(texts=TEXTS))
    fake = FanOutFake()
    fake.fail_for["ccc"] = [TransportError("boom", status=500)]
    ledger = Ledger()
    client = Client(fake, ledger=ledger, cache=tmp_path / "c.sqlite", retry=RetryPolicy(sleep=sleeps))
    out = client.embed(EmbedRequest(texts=TEXTS))
    assert same(out.vectors, clean.vectors)
    # 5 calls: the 4 of the first attempt, then "ccc" alone; the 500 did no work and is not billed.
    assert fake.attempts == 5 and fake.calls[-1][1].texts == ("ccc",) and len(sleeps.delays) == 1
    assert ledger.queries == fake.items_served == out.usage.queries == 4
    assert len(client.cache) == 4 and ledger.snapshot()["in_flight"]["queries"] == 0


def test_work_done_in_a_failed_call_is_billed_and_marked_estimated(sleeps):
    fake = FanOutFake()
    lost = Usage(queries=1, prompt_tokens=1, completion_tokens=0, estimated=True)
    fake.fail_for["bb"] = [TransportError("connection dropped after sending", retryable=True, billed=lost)]
    ledger = Ledger()
    out = Client(fake, ledger=ledger, retry=RetryPolicy(sleep=sleeps)).embed(EmbedRequest(texts=TEXTS))
    assert ledger.queries == 5 == out.usage.queries and out.usage.estimated
    assert ledger.estimated["queries"] == 1 and ledger.estimated["prompt_tokens"] == 1
    assert Ledger.from_json(json.loads(json.dumps(ledger.to_json()))).estimated == ledger.estimated


def test_the_cap_is_checked_before_every_retry_and_kept_items_resume_free(tmp_path, sleeps):
    fake = FanOutFake()
    lost = Usage(queries=1, estimated=True)
    fake.fail_for["dddd"] = [TransportError("dropped", retryable=True, billed=lost)]
    ledger = Ledger(max_queries=4)
    cache = tmp_path / "c.sqlite"
    client = Client(fake, ledger=ledger, cache=cache, retry=RetryPolicy(sleep=sleeps))
    with pytest.raises(BudgetExceededError, match=r"nothing was sent \(retry 1 of provider fake: embed\(\); the 3 of 4 items that arrived are kept in the cache\)") as info:
        client.embed(EmbedRequest(texts=TEXTS))
    assert "\n" not in str(info.value)
    assert fake.attempts == 4 and ledger.queries == 4  # the retry was refused before it was sent
    again = Client(fake, ledger=Ledger(max_queries=1), cache=cache).embed(EmbedRequest(texts=TEXTS))
    assert fake.attempts == 5 and fake.calls[-1][1].texts == ("dddd",) and again.usage.queries == 1


def test_giving_up_on_one_item_keeps_the_others_cached(tmp_path, sleeps):
    fake = FanOutFake()
    fake.fail_for["bb"] = [TransportError("bad request", status=400)]
    client = Client(fake, ledger=Ledger(), cache=tmp_path / "c.sqlite", retry=RetryPolicy(sleep=sleeps))
    with pytest.raises(TransportError, match=r"bad request \(not retryable\); status 400") as info:
        client.embed(EmbedRequest(texts=TEXTS))
    assert info.value.attempts == 1 and client.ledger.queries == 3 and len(client.cache) == 3
    client.embed(EmbedRequest(texts=TEXTS))
    assert fake.calls[-1][1].texts == ("bb",)  # the three kept items were not sent again


class NoLogprobs(FakeProvider):
    """Answers generate() without the logprobs it was asked for, ``broken`` times."""

    broken = 1

    def generate(self, request: GenerateRequest) -> GenerateResult:
        out = super().generate(request)
        if self.broken > 0:
            self.broken -= 1
            return replace(out, token_logprobs=None, top_logprobs=None)
        return out


def test_a_result_missing_requested_logprobs_is_retried_billed_and_never_cached(tmp_path, sleeps):
    fake = NoLogprobs()
    ledger = Ledger()
    client = Client(fake, ledger=ledger, cache=tmp_path / "c.sqlite", retry=RetryPolicy(sleep=sleeps))
    out = client.generate(GenerateRequest(prompts=("p",), top_logprobs=2))
    assert out.top_logprobs is not None and fake.attempts == 2 and ledger.queries == 2 == out.usage.queries
    fake2 = NoLogprobs()
    fake2.broken = 5
    client2 = Client(fake2, ledger=Ledger(), cache=tmp_path / "c2.sqlite", retry=RetryPolicy(max_attempts=2, sleep=sleeps))
    with pytest.raises(InvalidResponseError, match=r"logprobs were requested \(top_logprobs=2\)") as info:
        client2.generate(GenerateRequest(prompts=("p",), top_logprobs=2))
    assert info.value.attempts == 2 and client2.ledger.queries == 2 and len(client2.cache) == 0


def test_deadline_spans_the_retries_and_reaches_the_provider(sleeps):
    from blackbox.client.deadline import time_left

    seen = []
    fake = FakeProvider(on_call=lambda p, r: seen.append(time_left()))
    fake.script = [TransportError("busy", status=503)] * 5
    client = Client(fake, deadline=0.5, retry=RetryPolicy(base_delay=1.0, jitter=False, sleep=sleeps))
    with pytest.raises(DeadlineExceededError, match=r"busy \(deadline: 0.\d+s left, less than the 1s wait") as info:
        client.embed(EmbedRequest(texts=("a",)))
    # The 1 s backoff would outlast the 0.5 s deadline: one attempt, no wait.
    assert info.value.attempts == 1 and info.value.status == 503 and sleeps.delays == [] and 0 < seen[0] <= 0.5
    slow = FakeProvider(delay=0.3)
    slow.script = [TransportError("busy", status=503)] * 5
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError, match=r"busy \(deadline passed\); status 503; after 2 attempts"):
        Client(slow, deadline=0.5, retry=RetryPolicy(base_delay=0.0, sleep=sleeps)).embed(EmbedRequest(texts=("a",)))
    assert time.monotonic() - t0 < 0.9 and slow.attempts == 2
    assert time_left() is None  # the deadline does not leak out of the call
    for bad in (0, -1.0, float("inf"), "5", True):
        with pytest.raises(ConfigError, match="deadline: expected seconds > 0 or None"):
            Client(FakeProvider(), deadline=bad)


def test_scrub_exception_reaches_bodies_http_objects_and_the_context_chain():
    class Response:
        def __init__(self):
            self.headers = {"authorization": f"Bearer {API_KEY}"}
            self.text = f"echo {API_KEY}"

    inner = RuntimeError("socket closed")
    inner.request = Response()  # type: ignore[attr-defined]
    try:
        try:
            raise inner
        except RuntimeError:
            err = ValueError(f"bad key {API_KEY}")
            err.body = {"error": {"message": f"Incorrect API key {API_KEY}", "codes": [API_KEY.encode()]}}  # type: ignore[attr-defined]
            err.response = Response()  # type: ignore[attr-defined]
            raise err
    except ValueError as exc:
        caught = exc
    scrub_exception(caught)
    assert caught.response is None and caught.__context__.request is None  # type: ignore[attr-defined]
    assert API_KEY not in repr(caught.body) and API_KEY not in str(caught)  # type: ignore[attr-defined]
    assert caught.body["error"]["message"] == "Incorrect API key ***"  # type: ignore[attr-defined]


def test_client_calls_provider_init_and_its_capabilities_follow_the_provider(fake):
    client = Client(fake)
    fake.capabilities = frozenset({Capability.TEXT})
    assert client.capabilities == {Capability.TEXT}
    with pytest.raises(AttributeError, match="follows the wrapped provider"):
        client.capabilities = frozenset()  # type: ignore[misc]


def test_retry_policy_run_alone_retries_and_chains_the_last_error(sleeps):
    errors = [TransportError("busy", status=503, request_id="a"), InvalidResponseError("cut short", status=200, endpoint="POST /x")]
    calls = []

    def flaky() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "ok"

    assert RetryPolicy(sleep=sleeps, jitter=False, base_delay=0.1).run(flaky, what="job") == "ok"
    assert len(calls) == 3 and sleeps.delays == [0.1, 0.2]
    always_bad = InvalidResponseError("cut short", status=200, endpoint="POST /x")
    with pytest.raises(InvalidResponseError, match=r"job failed: cut short \(max_attempts=2 reached\)") as info:
        RetryPolicy(max_attempts=2, sleep=sleeps).run(lambda: (_ for _ in ()).throw(always_bad), what="job")
    assert info.value.__cause__ is always_bad and info.value.endpoint == "POST /x" and info.value.attempts == 2


# --- input-embedding edits (inputs_embeds: ECO's corrupted prefill) through the Client ----------
class _Embeds(Provider):
    """A fake local model: a prompt's 'embeddings' are its character codes; the text it generates
    is their sum after the edit, so an edit is visible in the output."""

    name = "fake-embeds"
    declared_capabilities = frozenset({Capability.TEXT, Capability.INPUTS_EMBEDS})

    def __init__(self, fail_first: int = 0) -> None:
        super().__init__()
        self.calls, self.fail_first = 0, fail_first
        self.tokenizer = type("Tok", (), {"chat_template": "{{ m }}"})()

    def prompt_text(self, prompt, chat=False):
        return f"<user>{prompt}" if chat else prompt

    def encode(self, prompt, chat=False):
        return [ord(c) for c in self.prompt_text(prompt, chat)]

    def token_embeddings(self, text, chat=False):
        ids = np.array(self.encode(text, chat))
        return ids, ids[:, None].astype(np.float32), [(i, i + 1) for i in range(len(ids))]

    def generate_with_embeds(self, request, edit):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise TransportError("flaky", retryable=True)
        texts = []
        for p in request.prompts:
            ids, emb, offsets = self.token_embeddings(p, request.chat)
            out = emb if edit is None else edit(ids, emb, offsets)
            texts.append(str(float(np.sum(out))))
        return GenerateResult(texts=tuple(texts), usage=Usage(queries=len(texts)))

    def generate(self, request):
        return self.generate_with_embeds(request, None)


def test_client_forwards_embed_edits_through_ledger_and_retries_never_the_cache(tmp_path):
    base = _Embeds(fail_first=1)
    client = Client(base, cache=tmp_path / "c.sqlite", ledger=Ledger(), retry=RetryPolicy(base_delay=0.0, jitter=False))
    req = GenerateRequest(prompts=("ab", "c"), max_tokens=1)
    double = lambda ids, emb, offsets: emb * 2  # noqa: E731
    got = client.generate_with_embeds(req, double)
    assert got.texts == (str(float(2 * (97 + 98))), str(float(2 * 99)))
    assert base.calls == 2 and client.ledger.queries == 2  # retried once; billed once
    again = client.generate_with_embeds(req, double)
    assert again.texts == got.texts and base.calls == 3 and client.ledger.queries == 4  # an edit is never served from the cache
    assert client.generate(req).texts == (str(float(97 + 98)), str(float(99)))  # a plain call is cached as usual
    assert client.generate(req).usage.cached and client.ledger.queries == 6
    # the token helpers are the provider's own
    assert client.prompt_text("x", True) == "<user>x" and client.encode("x") == [120] and client.tokenizer is base.tokenizer
    with pytest.raises(ConfigError, match="request: expected a GenerateRequest, received 'ScoreRequest'"):
        client.generate_with_embeds(ScoreRequest(("a",), ("b",)), double)


def test_client_offers_embed_calls_only_when_its_provider_does():
    from blackbox.methods.eco.guarded import require_embeds

    class TextOnly(Provider):
        name = "text-only"
        declared_capabilities = frozenset({Capability.TEXT})

    client = Client(TextOnly())
    assert not hasattr(client, "generate_with_embeds") and not hasattr(client, "encode") and not hasattr(client, "tokenizer")
    with pytest.raises(CapabilityError, match=r"provider text-only lacks token_embeddings, generate_with_embeds"):
        require_embeds(client)  # ECO's check reads a Client as it reads the provider
    assert hasattr(Client(_Embeds()), "score_with_embeds") is False  # the fake has no scoring
    with pytest.raises(AttributeError):
        Client(_Embeds()).model_forward  # noqa: B018 - internals are not forwarded
