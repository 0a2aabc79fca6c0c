"""A fault-injecting HTTP proxy on loopback (stdlib only), in front of a real server.

Every POST the proxy receives gets an action from ``plan(n, body)`` (``n`` counts POSTs from 1):

==================  ================================================================  ==========
action              what the client sees                                              server work
==================  ================================================================  ==========
``ok``              the server's answer, relayed                                      yes
``500``             500 without asking the server                                     no
``500_echo``        500 whose body and headers echo the request's Authorization       no
``429:S``           429 with ``Retry-After: S``, without asking the server            no
``drop_before``     the connection closes before anything is forwarded                no
``drop_after``      forwarded; the connection closes before any byte of the answer    yes
``truncate``        forwarded; status, headers and half the body, then the            yes
                    connection closes (Content-Length promised more)
``invalid``         forwarded; 200 with the first half of the JSON body (valid HTTP)  yes
``strip``           forwarded; the JSON without ``usage`` and without logprobs        yes
``strip_usage``     forwarded; the JSON without ``usage``                             yes
``slow:S``          forwarded; the answer is held S seconds before it is relayed      yes
==================  ================================================================  ==========

``completions`` counts the server's 200 answers (its work), with their token ``usage``
summed, independently of what the client made of them.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

Plan = Callable[[int, dict], str]


def always(action: str) -> Plan:
    """Every call gets ``action``."""
    return lambda n, body: action


def on_calls(actions: dict[int, str], default: str = "ok") -> Plan:
    """Call number ``n`` (from 1) gets ``actions[n]``; the others ``default``."""
    return lambda n, body: actions.get(n, default)


def every(k: int, action: str) -> Plan:
    """Every ``k``-th call gets ``action``."""
    return lambda n, body: action if n % k == 0 else "ok"


def seeded(rate: float, actions: list[str], seed: int) -> Plan:
    """Each call fails with probability ``rate`` (an action drawn from ``actions``), seeded by call number."""

    def plan(n: int, body: dict) -> str:
        rng = random.Random(seed * 1_000_003 + n)
        return rng.choice(actions) if rng.random() < rate else "ok"

    return plan


def on_prompt(actions: dict[str, list[str]]) -> Plan:
    """The calls whose prompt is a key get that key's actions in turn (then ``ok``)."""
    queues = {k: list(v) for k, v in actions.items()}
    lock = threading.Lock()

    def plan(n: int, body: dict) -> str:
        prompt = body.get("prompt") or "".join(m.get("content", "") for m in body.get("messages", []))
        with lock:
            queue = queues.get(prompt)
            return queue.pop(0) if queue else "ok"

    return plan


class FaultProxy:
    """``url`` (``http://127.0.0.1:PORT/v1``) forwards to ``upstream`` with faults from ``plan``."""

    def __init__(self, upstream: str, plan: Plan | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.plan: Plan = plan or always("ok")
        self.lock = threading.Lock()
        self.reset()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def reset(self, plan: Plan | None = None) -> None:
        """Zero the counters (and set a new plan)."""
        with self.lock:
            if plan is not None:
                self.plan = plan
            self.calls = 0
            self.active = 0
            self.actions: Counter[str] = Counter()
            self.completions = 0  # 200 answers the server produced
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.auth_headers: list[str] = []

    def next_action(self, body: dict, auth: str) -> str:
        with self.lock:
            self.calls += 1
            n = self.calls
            self.auth_headers.append(auth)
        action = self.plan(n, body)
        with self.lock:
            self.actions[action.partition(":")[0]] += 1
        return action

    def record(self, status: int, payload: bytes) -> None:
        if status != 200:
            return
        usage = {}
        try:
            usage = json.loads(payload).get("usage") or {}
        except ValueError:
            pass
        with self.lock:
            self.completions += 1
            self.prompt_tokens += int(usage.get("prompt_tokens", 0))
            self.completion_tokens += int(usage.get("completion_tokens", 0))

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait (bounded) until no request is being handled, e.g. a slow one still held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.active == 0:
                    return
            time.sleep(0.02)
        raise AssertionError("fault proxy: handlers still running after the timeout")

    def close(self) -> None:
        self.wait_idle()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a fault affects only its request

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - /v1/models, relayed without faults
        status, headers, payload = self._forward(b"")
        self._reply(status, headers, payload)

    def do_POST(self) -> None:  # noqa: N802
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        with proxy.lock:
            proxy.active += 1
        try:
            self._handle(proxy)
        except OSError:
            pass  # the client gave up (a timeout) while we were writing
        finally:
            with proxy.lock:
                proxy.active -= 1

    def _handle(self, proxy: FaultProxy) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        auth = self.headers.get("Authorization", "")
        action = proxy.next_action(json.loads(raw), auth)
        name, _, arg = action.partition(":")
        if name == "500":
            return self._reply(500, {}, json.dumps({"error": {"message": "injected fault", "type": "server_error"}}).encode())
        if name == "500_echo":
            body = json.dumps({"error": {"message": f"upstream rejected Authorization: {auth}", "type": "server_error"}})
            return self._reply(500, {"X-Echo-Authorization": auth}, body.encode())
        if name == "429":
            return self._reply(429, {"Retry-After": arg or "0"}, b'{"error": {"message": "slow down"}}')
        if name == "drop_before":
            self.close_connection = True
            return
        status, headers, payload = self._forward(raw)
        proxy.record(status, payload)
        if name == "drop_after":
            self.close_connection = True
            return
        if name == "truncate":
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if name == "invalid":
            return self._reply(status, headers, payload[: len(payload) // 2])
        if name in ("strip", "strip_usage") and status == 200:
            data = json.loads(payload)
            data.pop("usage", None)
            if name == "strip":
                for choice in data.get("choices", []):
                    choice["logprobs"] = None
            payload = json.dumps(data).encode()
        if name == "slow":
            time.sleep(float(arg))
        self._reply(status, headers, payload)

    def _forward(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
            conn.request(self.command, self.path, body=raw or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            keep = {k: v for k, v in resp.getheaders() if k.lower() in ("content-type", "x-request-id")}
            return resp.status, keep, payload
        finally:
            conn.close()

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        extra = {k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-length")}
        for k, v in {"Content-Type": "application/json", **extra, "Content-Length": str(len(payload))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
