"""The client against a real fault-injecting HTTP server on 127.0.0.1.

The server answers scripted sequences per prompt — 429 with Retry-After, 500, responses
slower than the client's timeout, malformed JSON, dropped connections, a 401 that echoes the
key — and counts what it did. A minimal HTTP provider (http.client, used only here) maps each
failure to a TransportError; wrapped in a Client with concurrency 4, every request must end in
exactly one result or one typed error, and the ledger must count exactly the server's
successful answers. The shipped ``openai`` provider is tested the same way, through a fault
proxy in front of the real llama.cpp server, in test_openai_faults.py.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from blackbox.client import Client, DiskCache, Ledger, RetryPolicy
from blackbox.errors import TransportError
from blackbox.provider import Provider
from blackbox.secrets import Secret
from blackbox.types import Capability, GenerateRequest, GenerateResult, Usage

KEY = "sk-fault-test-7f3a9c1e5b2d4680"
SLOW_S = 0.6  # how long a "slow" answer takes; the client gives up after CLIENT_TIMEOUT_S
CLIENT_TIMEOUT_S = 0.25
MAX_REQUESTS = 300  # the server refuses to do more than this, whatever the client does


# =========================================================================================
# the server
# =========================================================================================
class FaultServer:
    """Scripted answers per prompt; default "ok". Counts every outcome it produced."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scripts: dict[str, list[str]] = {}
        self.counts: Counter[str] = Counter()
        self.ok_items = 0  # prompts answered in complete 200 responses with valid JSON
        self.active = 0
        self.requests = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self  # type: ignore[attr-defined]
        self.httpd.handle_error = lambda request, address: self._count("handler_error")  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def script(self, scripts: dict[str, list[str]]) -> None:
        with self.lock:
            self.scripts = {k: list(v) for k, v in scripts.items()}

    def _count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def next_action(self, prompt: str) -> tuple[str, int]:
        with self.lock:
            self.requests += 1
            if self.requests > MAX_REQUESTS:
                return "over_limit", self.requests
            queue = self.scripts.get(prompt)
            return (queue.pop(0) if queue else "ok"), self.requests

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until no handler is running, e.g. a slow one still sleeping."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.active == 0:
                    return
            time.sleep(0.01)
        raise AssertionError("fault server: handlers still running after the timeout")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a drop only affects its request

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802
        state: FaultServer = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.active += 1
        try:
            self._handle(state)
        except OSError:
            state._count("client_gone")  # a client that timed out closed its end
        finally:
            with state.lock:
                state.active -= 1

    def _handle(self, state: FaultServer) -> None:
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        prompts = payload["prompts"]
        action, n = state.next_action(prompts[0])
        rid = {"x-request-id": f"srv-{n}"}
        auth_ok = self.headers.get("Authorization") == f"Bearer {KEY}"
        if action == "leak" or not auth_ok:
            # A badly behaved server that echoes the credentials it got.
            body = json.dumps({"error": f"invalid credentials: {self.headers.get('Authorization')}"}).encode()
            state._count("401")
            return self._reply(401, body, rid)
        if action.startswith("429"):
            state._count("429")
            return self._reply(429, b'{"error": "rate limited"}', {**rid, "Retry-After": action.partition(":")[2] or "0"})
        if action in ("500", "over_limit"):
            state._count(action)
            return self._reply(500, b'{"error": "internal"}', rid)
        if action == "drop":
            state._count("drop")
            self.close_connection = True
            return  # no status line at all: the client sees the connection closed
        if action == "malformed":
            state._count("malformed")
            return self._reply(200, b'{"texts": ["unterminated', rid)
        body = json.dumps(
            {"texts": [p[::-1] for p in prompts], "usage": {"prompt_tokens": sum(len(p) for p in prompts), "completion_tokens": len(prompts)}}
        ).encode()
        if action == "slow":
            time.sleep(SLOW_S)  # longer than the client waits: this answer is never received
            state._count("late")
            return self._reply(200, body, rid)
        assert action == "ok", action
        self._reply(200, body, rid)
        with state.lock:
            state.counts["ok"] += 1
            state.ok_items += len(prompts)


@pytest.fixture
def server():
    srv = FaultServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.wait_idle(timeout=5.0)
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5.0)


# =========================================================================================
# a minimal HTTP provider (translation apart from transport)
# =========================================================================================
RETRYABLE = {408, 409, 429} | set(range(500, 600))


def to_wire(request: GenerateRequest) -> dict[str, Any]:
    """Our request → the server's JSON body."""
    return {"prompts": list(request.prompts), "max_tokens": request.max_tokens}


def from_wire(status: int, headers: dict[str, str], body: bytes, n: int) -> GenerateResult:
    """The server's answer → a result, or the TransportError it amounts to."""
    rid = headers.get("x-request-id")
    if status != 200:
        raise TransportError(
            f"server error: {body[:200].decode('utf-8', 'replace')}",
            status=status, request_id=rid, retry_after=parse_retry_after(headers.get("retry-after")),
            retryable=status in RETRYABLE,
        )
    try:
        payload = json.loads(body)
        texts = tuple(str(t) for t in payload["texts"])
        usage = payload["usage"]
    except (ValueError, KeyError, TypeError) as exc:
        # A truncated body is usually a transient proxy failure: worth another try.
        raise TransportError(f"malformed JSON response ({type(exc).__name__})", status=status, request_id=rid, retryable=True) from exc
    if len(texts) != n:
        raise TransportError(f"expected {n} texts, received {len(texts)}", status=status, request_id=rid)
    return GenerateResult(
        texts=texts, finish_reasons=("stop",) * n,
        usage=Usage(queries=n, prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"], request_id=rid),
    )


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class EchoHTTPProvider(Provider):
    """Text generation over HTTP from the fault server (one POST per call)."""

    name = "http-echo"
    declared_capabilities = frozenset({Capability.TEXT})

    def __init__(self, base_url: str, api_key: Secret, timeout: float = CLIENT_TIMEOUT_S) -> None:
        super().__init__()
        parts = urlsplit(base_url)
        self.base_url, self.host, self.port = base_url, parts.hostname, parts.port
        self.api_key, self.timeout = api_key, timeout

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "model": "echo-1", "endpoint": self.base_url}

    def generate(self, request: GenerateRequest) -> GenerateResult:
        body = json.dumps(to_wire(request)).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key.reveal()}"}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", "/v1/generate", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        except TimeoutError as exc:
            raise TransportError(f"timed out after {self.timeout:g}s", retryable=True) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"connection error ({type(exc).__name__})", retryable=True) from exc
        finally:
            conn.close()
        return from_wire(resp.status, resp_headers, data, len(request.prompts))


# =========================================================================================
# tests
# =========================================================================================
def test_wire_translation_is_pure():
    assert to_wire(GenerateRequest(prompts=("a",), max_tokens=3)) == {"prompts": ["a"], "max_tokens": 3}
    ok = from_wire(200, {"x-request-id": "r"}, b'{"texts": ["x"], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}', 1)
    assert ok.texts == ("x",) and ok.usage == Usage(queries=1, prompt_tokens=2, completion_tokens=1, request_id="r")
    with pytest.raises(TransportError) as info:
        from_wire(503, {"x-request-id": "r2", "retry-after": "2"}, b"busy", 1)
    assert (info.value.status, info.value.request_id, info.value.retry_after, info.value.retryable) == (503, "r2", 2.0, True)
    assert parse_retry_after(email.utils.formatdate(time.time() + 30, usegmt=True)) == pytest.approx(30, abs=2)
    assert parse_retry_after("soon") is None and parse_retry_after("-3") == 0.0


def test_each_fault_maps_to_a_typed_transport_error(server):
    provider = EchoHTTPProvider(server.url, Secret(KEY))
    server.script({"a": ["429:1.5"], "b": ["500"], "c": ["slow"], "d": ["malformed"], "e": ["drop"], "f": ["leak"]})
    expected = {
        "a": (429, 1.5, True), "b": (500, None, True), "c": (None, None, True),
        "d": (200, None, True), "e": (None, None, True), "f": (401, None, False),
    }
    for prompt, (status, retry_after, retryable) in expected.items():
        with pytest.raises(TransportError) as info:
            provider.generate(GenerateRequest(prompts=(prompt,)))
        err = info.value
        assert (err.status, err.retry_after, err.retryable) == (status, retry_after, retryable), prompt
        assert (err.request_id or "").startswith("srv-") == (status is not None), prompt
    assert provider.generate(GenerateRequest(prompts=("hello",))).texts == ("olleh",)
    server.wait_idle()
    counts = Counter({k: v for k, v in server.counts.items() if k != "client_gone"})  # the late write may or may not fail
    assert counts == Counter({"429": 1, "500": 1, "late": 1, "malformed": 1, "drop": 1, "401": 1, "ok": 1})


def test_client_over_faulty_http_every_request_ends_once_and_ledger_matches_server(server, tmp_path):
    server.script({
        "p08": ["429:0.05", "ok"], "p09": ["500", "ok"], "p10": ["slow", "ok"], "p11": ["malformed", "ok"],
        "p12": ["drop", "ok"],
        "p13": ["429:0.02"] * 3, "p14": ["500"] * 3, "p15": ["drop"] * 3, "p16": ["slow"] * 3,
        "p17": ["leak"], "p18": ["malformed"] * 3,
    })
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(min(seconds, 0.1))  # bounded, whatever a server asks for

    ledger = Ledger(max_queries=100)
    cache_path = tmp_path / "http-cache.sqlite"
    client = Client(
        EchoHTTPProvider(server.url, Secret(KEY)),
        cache=cache_path, ledger=ledger, concurrency=4,
        retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, sleep=sleep),
    )
    prompts = [f"p{i:02d}" for i in range(20)]
    requests = [GenerateRequest(prompts=(p,), max_tokens=4) for p in prompts]
    t0 = time.monotonic()
    out = client.map(requests, return_exceptions=True)
    elapsed = time.monotonic() - t0
    server.wait_idle()

    assert len(out) == len(requests)
    failures = {"p13": (429, 0.02), "p14": (500, None), "p15": (None, None), "p16": (None, None), "p17": (401, None), "p18": (200, None)}
    for prompt, o in zip(prompts, out):
        if prompt in failures:
            assert isinstance(o, TransportError), (prompt, o)
            assert (o.status, o.retry_after) == failures[prompt], prompt
            assert o.attempts == (1 if prompt == "p17" else 3), prompt
            assert isinstance(o.__cause__, TransportError)
            if o.status is not None:
                assert o.request_id and o.request_id.startswith("srv-"), prompt
        else:
            assert isinstance(o, GenerateResult) and o.texts == (prompt[::-1],), (prompt, o)
    n_ok = len(prompts) - len(failures)
    assert server.ok_items == server.counts["ok"] == ledger.queries == n_ok
    assert ledger.snapshot()["in_flight"]["queries"] == 0
    assert 0.05 in slept and slept.count(0.02) == 2  # Retry-After honoured
    assert server.counts["over_limit"] == 0 and server.requests < MAX_REQUESTS
    assert elapsed < 15

    # The key reached the server (and came back in the 401 body), but not our errors or files.
    leak = out[prompts.index("p17")]
    assert "invalid credentials: Bearer ***" in str(leak)
    for o in out:
        if isinstance(o, Exception):
            assert KEY not in str(o) and KEY not in repr(o) and KEY not in str(o.__cause__)

    # Second pass: the successes come from the cache (no server call, no budget); the scripts
    # of the failures are used up, so those now succeed — and are counted once each.
    again = client.map(requests, return_exceptions=True)
    server.wait_idle()
    assert all(isinstance(o, GenerateResult) for o in again)
    assert sum(o.usage.cached for o in again) == n_ok
    assert server.ok_items == ledger.queries == len(prompts)
    assert ledger.snapshot()["cache_hits"] == n_ok
    client.close()
    for f in tmp_path.iterdir():
        assert KEY.encode() not in f.read_bytes(), f
    with DiskCache(cache_path) as cache:
        assert len(cache) == len(prompts)
    assert KEY not in json.dumps(ledger.to_json())
