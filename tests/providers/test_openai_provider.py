"""The ``openai`` provider.

* translation (request -> SDK kwargs, SDK response -> result) with fake response objects;
* error mapping and the key policy, offline (SDK exceptions built from fake responses, an
  in-process transport double, a loopback server that answers 401);
* integration against a real llama.cpp server with SmolLM2-135M (``slow``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import traceback
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_server import llama_server  # noqa: E402,F401  (module-scoped fixture)

from blackbox.errors import (  # noqa: E402
    CapabilityError, ConfigError, InvalidResponseError, PartialResultError, ProviderError, TransportError,
)
from blackbox.provider import load_provider  # noqa: E402
from blackbox.types import (  # noqa: E402
    Capability, EmbedRequest, GenerateRequest, NextTokenRequest, ScoreRequest, Usage,
)
from blackbox.providers import openai_provider as op  # noqa: E402

FAKE_KEY = "sk-fake-0123456789abcdefSECRET"
REPO = Path(__file__).resolve().parents[2]


def _needs_openai():
    return pytest.importorskip("openai", reason="the openai SDK (extra 'api') is not installed")


# ---------------------------------------------------------------------------------------------
# translation: requests -> kwargs
# ---------------------------------------------------------------------------------------------
def test_chat_kwargs_carry_sampling_and_logprobs():
    req = GenerateRequest(prompts=("x",), max_tokens=7, temperature=0.5, top_p=0.9, stop=("\n",), seed=3, top_logprobs=4)
    kw = op.chat_kwargs("m", "Hello", req)
    assert kw == {
        "model": "m", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 7,
        "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "seed": 3, "logprobs": True, "top_logprobs": 4,
    }
    plain = op.chat_kwargs("m", "Hello", GenerateRequest(prompts=("x",)))
    assert "logprobs" not in plain and "stop" not in plain and "seed" not in plain


def test_completion_next_token_score_and_embed_kwargs():
    kw = op.completion_kwargs("m", "Once", GenerateRequest(prompts=("x",), max_tokens=3, top_logprobs=2))
    assert kw == {"model": "m", "prompt": "Once", "max_tokens": 3, "temperature": 0.0, "top_p": 1.0, "logprobs": 2}
    assert op.next_token_kwargs("m", "p", 5, chat=False) == {
        "model": "m", "prompt": "p", "max_tokens": 1, "temperature": 0.0, "logprobs": 5}
    chat = op.next_token_kwargs("m", "p", 5, chat=True)
    assert chat["messages"] == [{"role": "user", "content": "p"}] and chat["top_logprobs"] == 5 and chat["logprobs"] is True
    sk = op.score_kwargs("m", "The sky is", " blue")
    assert sk["prompt"] == "The sky is blue" and sk["echo"] is True and sk["logprobs"] >= 0 and sk["max_tokens"] == 1
    assert op.embed_kwargs("m", ("a", "b")) == {"model": "m", "input": ["a", "b"], "encoding_format": "float"}


# ---------------------------------------------------------------------------------------------
# translation: responses -> results (fake SDK objects and plain dicts)
# ---------------------------------------------------------------------------------------------
def _chat_response(text="Paris", lps=(-0.1, -0.2), tops=None, request_id="req_1", body_id="chatcmpl-1"):
    tops = tops or [[NS(token="Paris", logprob=-0.1), NS(token="Lyon", logprob=-3.0)],
                    [NS(token=".", logprob=-0.2)]]
    content = [NS(token=f"t{i}", logprob=lp, top_logprobs=t) for i, (lp, t) in enumerate(zip(lps, tops))]
    return NS(
        id=body_id, _request_id=request_id,
        choices=[NS(message=NS(content=text, role="assistant"), finish_reason="stop", logprobs=NS(content=content))],
        usage=NS(prompt_tokens=11, completion_tokens=2, total_tokens=13),
    )


def _completion_dict(text=" Paris.", echo_offsets=None):
    return {
        "id": "cmpl-9",
        "choices": [{
            "text": text, "finish_reason": "length",
            "logprobs": {"tokens": [" Paris", "."], "token_logprobs": [-0.5, -1.5],
                         "top_logprobs": [{" Paris": -0.5, " Lyon": -2.0}, {".": -1.5, "!": -2.5}],
                         "text_offset": echo_offsets or [0, 6]},
        }],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
    }


def test_parse_chat_with_logprobs_and_usage():
    resp = _chat_response()
    text, finish, lps, tops = op.parse_chat(resp)
    assert (text, finish, lps) == ("Paris", "stop", (-0.1, -0.2))
    assert tops == ({"Paris": -0.1, "Lyon": -3.0}, {".": -0.2})
    usage = op.response_usage(resp)
    assert usage == Usage(queries=1, prompt_tokens=11, completion_tokens=2, request_id="req_1")
    # no x-request-id header: fall back to the body's id
    assert op.response_usage(_chat_response(request_id=None)).request_id == "chatcmpl-1"


def test_parse_chat_without_logprobs():
    resp = NS(choices=[NS(message=NS(content="hi"), finish_reason="length", logprobs=None)], usage=None)
    assert op.parse_chat(resp) == ("hi", "length", None, None)
    assert op.response_usage(resp) == Usage(queries=1)


def test_parse_completion_and_next_token_from_dicts():
    resp = _completion_dict()
    text, finish, lps, tops = op.parse_completion(resp)
    assert (text, finish, lps) == (" Paris.", "length", (-0.5, -1.5))
    assert tops[0] == {" Paris": -0.5, " Lyon": -2.0}
    assert op.parse_next_token(resp, chat=False) == {" Paris": -0.5, " Lyon": -2.0}
    assert op.parse_next_token(_chat_response(), chat=True) == {"Paris": -0.1, "Lyon": -3.0}
    # most likely first, trimmed to k (a server may append the sampled token)
    extra = {"choices": [{"text": "b", "logprobs": {"token_logprobs": [-3.0], "top_logprobs": [{"b": -3.0, "a": -0.1, "c": -1.0}]}}]}
    assert list(op.parse_next_token(extra, chat=False, top_k=2).items()) == [("a", -0.1), ("c", -1.0)]


def test_duplicate_top_tokens_keep_the_most_likely():
    tops = [[NS(token="\ufffd", logprob=-4.0), NS(token="a", logprob=-1.0), NS(token="\ufffd", logprob=-2.0)]]
    resp = _chat_response(lps=(-1.0,), tops=tops)
    assert op.parse_next_token(resp, chat=True) == {"a": -1.0, "\ufffd": -2.0}


def test_parse_score_sums_continuation_tokens_by_offset():
    prompt, cont = "The sky is", " blue"
    resp = {"choices": [{"text": "The sky is blue.", "logprobs": {
        "tokens": ["The", " sky", " is", " blue", "."],
        "token_logprobs": [None, -3.0, -1.0, -0.25, -0.5],  # first token has no logprob
        "text_offset": [0, 3, 7, 10, 15],                  # "." is the generated extra token
        "top_logprobs": [None, {}, {}, {}, {}],
    }}]}
    assert op.parse_score(resp, prompt, cont) == (-0.25, 1)
    with pytest.raises(ProviderError, match="no text_offset"):
        op.parse_score({"choices": [{"text": "x", "logprobs": None}]}, prompt, cont)


def test_parse_embeddings_orders_by_index():
    resp = NS(data=[NS(index=1, embedding=[0.0, 1.0]), NS(index=0, embedding=[1.0, 0.0])], usage=NS(prompt_tokens=2))
    np.testing.assert_array_equal(op.parse_embeddings(resp, 2), [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ProviderError, match="expected 3 vectors, received 2"):
        op.parse_embeddings(resp, 3)


@pytest.mark.parametrize(
    "resp, match",
    [
        ("not json at all", "no choices"),
        ({"choices": []}, "no choices"),
        ({"choices": [{"message": None}]}, "no message content"),
        (NS(choices=[NS(message=NS(content="x"), logprobs=NS(content=[NS(logprob="nan?", top_logprobs=[])]))]), "not a number"),
    ],
)
def test_malformed_chat_responses_are_provider_errors(resp, match):
    with pytest.raises(ProviderError, match=match) as info:
        op.parse_chat(resp)
    assert not isinstance(info.value, TransportError)


def test_merge_usage_sums_calls():
    a = Usage(queries=1, prompt_tokens=3, completion_tokens=1, request_id="a")
    b = Usage(queries=1, prompt_tokens=4, completion_tokens=2, request_id="b")
    assert op.merge_usage([a, b]) == Usage(queries=2, prompt_tokens=7, completion_tokens=3, request_id="a,b")


# ---------------------------------------------------------------------------------------------
# error mapping
# ---------------------------------------------------------------------------------------------
def test_parse_retry_after_forms():
    now = time.time()
    assert op.parse_retry_after({"retry-after": "3"}) == 3.0
    assert op.parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert op.parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc) + timedelta(seconds=20), usegmt=True)
    assert 18 <= op.parse_retry_after({"retry-after": date}, now=now) <= 21
    assert op.parse_retry_after({"retry-after": "soon"}) is None
    assert op.parse_retry_after({"retry-after": "-1"}) is None
    assert op.parse_retry_after({}) is None and op.parse_retry_after(None) is None


@pytest.mark.parametrize("status, retryable", [(400, False), (401, False), (404, False), (408, True), (409, True),
                                               (422, False), (429, True), (500, True), (503, True)])
def test_retryable_statuses(status, retryable):
    assert op.is_retryable_status(status) is retryable
    assert op.is_retryable_status(status, {"x-should-retry": "false"}) is False
    assert op.is_retryable_status(status, {"x-should-retry": "true"}) is True


def _status_error(status, headers=None, body=None):
    openai = _needs_openai()
    import httpx2

    req = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    resp = httpx2.Response(status, headers=headers or {}, json=body or {"error": {"message": "nope"}}, request=req)
    return openai.OpenAI(api_key="x", base_url="http://127.0.0.1:1/v1", max_retries=0)._make_status_error_from_response(resp)


def test_map_status_error_carries_status_request_id_and_retry_after():
    exc = _status_error(429, {"x-request-id": "req_42", "retry-after": "7"}, {"error": {"message": "Rate limit reached"}})
    err = op.map_error(exc, where="POST /chat/completions at http://h/v1")
    assert isinstance(err, TransportError)
    assert (err.status, err.request_id, err.retry_after, err.retryable) == (429, "req_42", 7.0, True)
    assert "Rate limit reached" in str(err) and "\n" not in str(err)
    err = op.map_error(_status_error(400), where="w")
    assert (err.status, err.retryable) == (400, False)
    assert op.map_error(_status_error(502, {"retry-after-ms": "1500"}), where="w").retry_after == 1.5


def test_map_connection_and_timeout_errors():
    openai = _needs_openai()
    import httpx2

    req = httpx2.Request("POST", "http://127.0.0.1:1/v1/completions")
    for exc in (openai.APIConnectionError(request=req), openai.APITimeoutError(request=req)):
        err = op.map_error(exc, where="w")
        assert isinstance(err, TransportError) and err.status is None and err.retryable is True


def test_map_error_redacts_secrets():
    exc = _status_error(401, body={"error": {"message": f"Incorrect API key provided: {FAKE_KEY}"}})
    err = op.map_error(exc, where="w", secrets=[FAKE_KEY])
    assert FAKE_KEY not in str(err) and "***" in str(err)


# ---------------------------------------------------------------------------------------------
# configuration and the key policy
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MY_KEY_VAR"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_import_does_not_import_openai():
    code = "import sys, blackbox.providers.openai_provider; print('openai' in sys.modules, 'httpx2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_registered_with_truthful_declared_capabilities():
    from blackbox.registry import providers

    cls = providers.get("openai")
    assert cls is op.OpenAIProvider
    assert Capability.LOGITS not in cls.declared_capabilities


def test_missing_key_names_the_variable(clean_env):
    _needs_openai()
    with pytest.raises(ConfigError, match="environment variable OPENAI_API_KEY is not set"):
        load_provider("openai:gpt-4o-mini")
    with pytest.raises(ConfigError, match="environment variable MY_KEY_VAR is not set"):
        load_provider("openai:m?api_key_env=MY_KEY_VAR")
    with pytest.raises(ConfigError, match="MY_KEY_VAR is not set"):  # explicit variable, even on loopback
        load_provider("openai:m?base_url=http://127.0.0.1:8080/v1&api_key_env=MY_KEY_VAR")


def test_default_key_is_not_sent_to_a_foreign_base_url(clean_env):
    _needs_openai()
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    with pytest.raises(ConfigError, match="api_key_env=VAR") as info:
        load_provider("openai:m?base_url=https://llm.example.com/v1")
    assert FAKE_KEY not in str(info.value)
    # ...but it is when the base_url also comes from the environment, or the variable is named
    clean_env.setenv("OPENAI_BASE_URL", "https://llm.example.com/v1")
    assert load_provider("openai:m")._key.reveal() == FAKE_KEY
    clean_env.delenv("OPENAI_BASE_URL")
    clean_env.setenv("MY_KEY_VAR", FAKE_KEY)
    assert load_provider("openai:m?base_url=https://llm.example.com/v1&api_key_env=MY_KEY_VAR")._key.reveal() == FAKE_KEY
    # loopback: a placeholder, never the OpenAI key
    p = load_provider("openai:m?base_url=http://localhost:8080/v1")
    assert p._key == op.PLACEHOLDER_KEY


def test_api_key_none_allows_a_keyless_remote_server(clean_env):
    _needs_openai()
    p = load_provider("openai:m?base_url=http://10.0.0.5:8000/v1&api_key=none")
    assert p._key == op.PLACEHOLDER_KEY
    with pytest.raises(ConfigError, match="api_key=none needs a base_url"):
        load_provider("openai:m?api_key=none")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("openai:m?base_url=http://127.0.0.1:1/v1&colour=red", "unknown option 'colour'; valid options: api_key, api_key_env"),
        ("openai:m?base_url=http://127.0.0.1:1/v1&timeout=soon", "option timeout: expected seconds > 0"),
        ("openai:m?base_url=http://127.0.0.1:1/v1&timeout=0", "timeout: expected seconds > 0"),
        ("openai:m?base_url=http://127.0.0.1:1/v1&max_connections=0", "max_connections: expected an integer >= 1"),
        ("openai:m?base_url=http://127.0.0.1:1/v1&embeddings=maybe", "option embeddings: expected 1/0"),
        ("openai:m?base_url=http://127.0.0.1:1/v1&score=1", "score=1 needs completions=1"),
        ("openai:m?base_url=ftp://127.0.0.1/v1", "base_url: expected an http"),
        ("openai:m?base_url=http://127.0.0.1:http/v1", "base_url: invalid port"),
        ("openai:m?base_url=http://user:pw@127.0.0.1:1/v1", "must not carry credentials"),
        ("openai", "expected a model name"),
    ],
)
def test_bad_options_are_clear(spec, match, clean_env):
    _needs_openai()
    with pytest.raises(ConfigError, match=match):
        load_provider(spec)


def test_describe_and_repr_never_show_the_key(clean_env):
    _needs_openai()
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    p = load_provider("openai:gpt-4o-mini?completions=1")
    desc = p.describe()
    assert desc == {"provider": "openai", "model": "gpt-4o-mini", "base_url": "https://api.openai.com/v1",
                    "completions": True, "embeddings": False, "score": False}
    for text in (repr(p), str(p), json.dumps(desc), repr(vars(p).get("_key"))):
        assert FAKE_KEY not in text
    p2 = load_provider(f"openai:m?base_url=http://127.0.0.1:1/v1&api_key={FAKE_KEY}")
    assert FAKE_KEY not in repr(p2) and FAKE_KEY not in json.dumps(p2.describe())
    p.close(), p2.close()


class _Echo401(BaseHTTPRequestHandler):
    """A server that rejects every key and (badly) echoes it back in the error body and headers."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        auth = self.headers.get("authorization", "")
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {auth.split()[-1]} ({auth})",
                                     "type": "invalid_request_error"}}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("x-request-id", "req_401")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo401():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo401)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("how", ["env", "option"])
def test_key_never_appears_in_errors(echo401, clean_env, how):
    _needs_openai()
    clean_env.setenv("MY_KEY_VAR", FAKE_KEY)
    spec = f"openai:m?base_url={echo401}&" + ("api_key_env=MY_KEY_VAR" if how == "env" else f"api_key={FAKE_KEY}")
    p = load_provider(spec)
    with pytest.raises(TransportError) as info:
        p.generate(GenerateRequest(prompts=("hi",), max_tokens=2))
    err = info.value
    assert (err.status, err.request_id, err.retryable) == (401, "req_401", False)
    assert "Incorrect API key provided: ***" in str(err)
    full = "".join(traceback.format_exception(err)) + repr(err) + repr(p) + str(p)
    assert FAKE_KEY not in full
    assert isinstance(err.__cause__, _needs_openai().AuthenticationError)  # chained from the SDK error
    p.close()


def test_unreachable_base_url_is_one_clear_line(clean_env):
    _needs_openai()
    p = load_provider("openai:m?base_url=http://127.0.0.1:9/v1&timeout=5")
    with pytest.raises(TransportError) as info:
        p.generate(GenerateRequest(prompts=("hi",)))
    msg = str(info.value)
    assert "\n" not in msg and "cannot connect" in msg and "http://127.0.0.1:9/v1" in msg
    assert info.value.retryable and info.value.status is None
    p.close()


# ---------------------------------------------------------------------------------------------
# transport, offline: an in-process double of an OpenAI-compatible server
# ---------------------------------------------------------------------------------------------
class FakeServer:
    """A transport double (``httpx2.MockTransport``) answering chat/completions/embeddings."""

    def __init__(self, fail=None):
        self.calls: list[dict] = []
        self.fail = fail or {}
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0

    def __call__(self, request):
        import httpx2

        body = json.loads(request.content)
        with self.lock:
            self.calls.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            prompt = body.get("prompt") or (body.get("messages") or [{}])[-1].get("content") or body.get("input")
            time.sleep(0.02 * (hash(str(prompt)) % 3))  # finish out of order
            if str(prompt) in self.fail:
                status, headers = self.fail[str(prompt)]
                return httpx2.Response(status, headers=headers, json={"error": {"message": f"failed {prompt}"}})
            path = request.url.path
            if path.endswith("/embeddings"):
                data = [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(body["input"])]
                return httpx2.Response(200, json={"data": data, "usage": {"prompt_tokens": len(data)}})
            if path.endswith("/chat/completions"):
                choice = {"message": {"role": "assistant", "content": prompt.upper()}, "finish_reason": "stop"}
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": [{"token": "A", "logprob": -0.5, "top_logprobs": [
                        {"token": "A", "logprob": -0.5}, {"token": "B", "logprob": -1.5}][: body["top_logprobs"]]}]}
            else:
                choice = {"text": prompt[::-1], "finish_reason": "length"}
                if body.get("logprobs"):
                    choice["logprobs"] = {"tokens": ["x"], "token_logprobs": [-0.25],
                                          "top_logprobs": [{"x": -0.25, "y": -2.0}], "text_offset": [0]}
            return httpx2.Response(200, headers={"x-request-id": f"req-{prompt}"},
                                   json={"id": "c", "choices": [choice], "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}})
        finally:
            with self.lock:
                self.in_flight -= 1


def _fake_provider(server, **kw):
    _needs_openai()
    import httpx2

    kw.setdefault("base_url", "http://127.0.0.1:1/v1")
    return op.OpenAIProvider("fake", transport=httpx2.MockTransport(server), **kw)


def test_batch_fans_out_concurrently_and_keeps_order():
    server = FakeServer()
    p = _fake_provider(server, max_connections=4, completions=True)
    prompts = tuple(f"prompt {i}" for i in range(12))
    res = p.generate(GenerateRequest(prompts=prompts, max_tokens=1, top_logprobs=2))
    assert res.texts == tuple(s[::-1] for s in prompts)
    assert res.token_logprobs == ((-0.25,),) * 12 and res.top_logprobs[0] == ({"x": -0.25, "y": -2.0},)
    assert res.usage.queries == 12 and res.usage.prompt_tokens == sum(map(len, prompts))
    assert res.usage.request_id.split(",") == [f"req-{s}" for s in prompts]
    assert len(server.calls) == 12 and 1 < server.max_in_flight <= 4
    p.close()


def test_chat_generate_and_next_token_paths():
    server = FakeServer()
    p = _fake_provider(server)  # completions=0: everything goes through chat
    res = p.generate(GenerateRequest(prompts=("hi", "yo")))
    assert res.texts == ("HI", "YO") and res.token_logprobs is None and res.finish_reasons == ("stop", "stop")
    nt = p.next_token(NextTokenRequest(prompts=("a", "b"), top_k=2))
    assert nt.logits is None and nt.top_logprobs == ({"A": -0.5, "B": -1.5},) * 2 and nt.usage.queries == 2
    assert server.calls[-1]["max_tokens"] == 1 and server.calls[-1]["top_logprobs"] == 2
    with pytest.raises(CapabilityError, match="full-vocabulary logits"):
        p.next_token(NextTokenRequest(prompts=("a",)))
    with pytest.raises(CapabilityError, match="does not support score"):
        p.score(ScoreRequest(prompts=("a",), continuations=("b",)))
    with pytest.raises(CapabilityError, match="does not support embed"):
        p.embed(EmbedRequest(texts=("a",)))
    p.close()


def test_embeddings_chunk_and_normalize(monkeypatch):
    server = FakeServer()
    p = _fake_provider(server, embeddings=True)
    assert Capability.EMBED in p.capabilities
    monkeypatch.setattr(op, "EMBED_CHUNK", 2)
    res = p.embed(EmbedRequest(texts=("a", "bb", "ccc"), normalize=True))
    assert res.vectors.shape == (3, 2) and res.usage.queries == 2
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0)
    p.close()


def test_embeddings_probe_reports_truthfully():
    _needs_openai()
    import httpx2

    assert Capability.EMBED in _fake_provider(FakeServer(), embeddings="probe").capabilities
    no_embed = lambda r: httpx2.Response(404, json={"detail": "Not Found"}) if r.url.path.endswith("/embeddings") else FakeServer()(r)  # noqa: E731
    assert Capability.EMBED not in _fake_provider(no_embed, embeddings="probe").capabilities


def test_provider_never_retries_and_maps_statuses():
    server = FakeServer(fail={"busy": (429, {"retry-after-ms": "1500", "x-request-id": "req_b"}),
                              "boom": (503, {}), "bad": (400, {})})
    p = _fake_provider(server)
    for prompt, status, retryable in (("busy", 429, True), ("boom", 503, True), ("bad", 400, False)):
        n = len(server.calls)
        with pytest.raises(TransportError) as info:
            p.generate(GenerateRequest(prompts=(prompt,)))
        assert (info.value.status, info.value.retryable) == (status, retryable)
        assert len(server.calls) == n + 1  # exactly one HTTP call: the Client retries, not us
    with pytest.raises(TransportError) as info:
        p.generate(GenerateRequest(prompts=("busy",)))
    assert info.value.retry_after == 1.5 and info.value.request_id == "req_b"
    p.close()


def test_failed_calls_of_a_batch_come_back_with_the_items_that_arrived():
    server = FakeServer(fail={"p3": (500, {}), "p5": (400, {})})
    p = _fake_provider(server, max_connections=8)
    with pytest.raises(PartialResultError, match="2 of 8 items failed, first: .*failed p3") as info:
        p.generate(GenerateRequest(prompts=tuple(f"p{i}" for i in range(8))))
    err = info.value
    assert len(server.calls) == 8  # one failure does not cancel the other calls
    assert sorted(err.results) == [0, 1, 2, 4, 6, 7] and sorted(err.errors) == [3, 5]
    assert err.results[4].texts == ("P4",) and err.results[4].usage.queries == 1
    assert (err.errors[3].status, err.errors[5].status) == (500, 400) and not err.retryable  # a 400 is among them
    p.close()


def test_malformed_server_response_is_a_typed_billed_retryable_error():
    _needs_openai()
    import httpx2

    p = _fake_provider(lambda r: httpx2.Response(200, text="<html>proxy error</html>"))
    with pytest.raises(InvalidResponseError, match="server answered with an invalid body: malformed chat completion response") as info:
        p.generate(GenerateRequest(prompts=("abcdefg",), max_tokens=5))
    err = info.value
    # The server produced an answer, so the call is billed (estimated: the body has no usage).
    assert (err.status, err.retryable, err.endpoint) == (200, True, "POST /chat/completions at http://127.0.0.1:1/v1")
    assert err.billed == Usage(queries=1, prompt_tokens=2, completion_tokens=5, estimated=True)
    # A truncated JSON body is the same kind of error, not a bare json.JSONDecodeError.
    p.close()
    p = _fake_provider(lambda r: httpx2.Response(200, headers={"content-type": "application/json", "x-request-id": "r-7"},
                                                 content=b'{"choices": [{"message": {"content": "Par'))
    with pytest.raises(InvalidResponseError, match=r"invalid body \(JSONDecodeError") as info:
        p.generate(GenerateRequest(prompts=("x",), max_tokens=3))
    assert (info.value.status, info.value.request_id, info.value.billed.queries) == (200, "r-7", 1)
    assert info.value.__cause__ is None and info.value.__context__ is None
    p.close()
    with pytest.raises(ProviderError, match="used after close"):
        p.generate(GenerateRequest(prompts=("x",)))


class FakeLM:
    """A character-level 'model' behind the legacy completions endpoint, with ``echo``.

    ``log p(c at position i) = -0.1 * ((ord(c) + i) % 7 + 1)``; the greedy next token is
    ``"!"``. ``shifted=True`` reproduces llama-cpp-python 0.3.x: each echoed token gets its
    logprob under the distribution of the *next* position.
    """

    def __init__(self, shifted=False):
        self.shifted = shifted

    @staticmethod
    def lp(c, i):
        return -0.1 * ((ord(c) + i) % 7 + 1)

    def __call__(self, request):
        import httpx2

        body = json.loads(request.content)
        prompt = body["prompt"]
        gen = "!"
        if body.get("echo"):
            shift = 1 if self.shifted else 0
            toks = list(prompt)
            lps = [None] + [self.lp(c, i + shift) for i, c in enumerate(toks) if i > 0]
            logprobs = {"tokens": toks, "token_logprobs": lps, "text_offset": list(range(len(toks))),
                        "top_logprobs": [None] + [{} for _ in toks[1:]]}
            text = prompt + gen
        else:
            lp = self.lp(gen, len(prompt))
            logprobs = {"tokens": [gen], "token_logprobs": [lp], "text_offset": [len(prompt)], "top_logprobs": [{gen: lp}]}
            text = gen
        return httpx2.Response(200, json={"id": "c", "choices": [{"text": text, "finish_reason": "length", "logprobs": logprobs}],
                                          "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}})


def test_score_is_offered_only_after_the_echo_probe_agrees():
    p = _fake_provider(FakeLM(), completions=True, score="probe")
    assert Capability.SCORE in p.capabilities
    res = p.score(ScoreRequest(prompts=("ab", "xyz"), continuations=("cd", "")))
    np.testing.assert_allclose(res.logprobs, [FakeLM.lp("c", 2) + FakeLM.lp("d", 3), 0.0])
    np.testing.assert_array_equal(res.n_tokens, [2, 0])
    assert res.usage.queries == 2
    with pytest.raises(ConfigError, match="as many continuations as prompts"):
        p.score(ScoreRequest(prompts=("a", "b"), continuations=("c",)))
    p.close()
    # a server whose echoed logprobs are one position off: probe drops it, score=1 refuses
    assert Capability.SCORE not in _fake_provider(FakeLM(shifted=True), completions=True, score="probe").capabilities
    with pytest.raises(ConfigError, match="cannot score continuations: .*misaligned"):
        _fake_provider(FakeLM(shifted=True), completions=True, score=True)


def test_conformance_against_the_double():
    from blackbox.testing import check_provider

    p = _fake_provider(FakeServer(), completions=True, embeddings=True)
    check_provider(p)
    p.close()


# ---------------------------------------------------------------------------------------------
# integration: a real llama.cpp server (llama-cpp-python) with SmolLM2-135M, on loopback
# ---------------------------------------------------------------------------------------------
PROMPTS = ("The capital of France is", "One, two, three,", "The opposite of hot is", "Water boils at",
           "My favourite colour is", "The sun rises in the", "A cat says", "Monday comes before")


def _live(server, **options):
    _needs_openai()
    opts = "&".join(f"{k}={v}" for k, v in {"base_url": server.base_url, **options}.items())
    return load_provider(f"openai:smollm?{opts}")


def _sdk(server):
    openai = _needs_openai()
    return openai.OpenAI(base_url=server.base_url, api_key="no-key-required", max_retries=0)


@pytest.mark.slow
def test_live_chat_text(llama_server):
    p = _live(llama_server)
    res = p.generate(GenerateRequest(prompts=("What is the capital of France?",), max_tokens=8, chat=True))
    assert res.texts[0].strip() and res.finish_reasons[0] in ("stop", "length")
    assert res.token_logprobs is None
    u = res.usage
    assert u.queries == 1 and u.prompt_tokens > 5 and 0 < u.completion_tokens <= 8 and u.request_id
    p.close()


@pytest.mark.slow
def test_live_completions_with_logprobs(llama_server):
    p = _live(llama_server, completions=1)
    res = p.generate(GenerateRequest(prompts=(PROMPTS[0],), max_tokens=3, top_logprobs=3))
    assert res.texts[0].startswith(" Paris")
    lps, tops = res.token_logprobs[0], res.top_logprobs[0]
    assert len(lps) == len(tops) == res.usage.completion_tokens == 3
    for lp, top in zip(lps, tops):
        assert 1 <= len(top) <= 4 and all(v <= 0 for v in top.values())
        assert max(top.values()) == pytest.approx(lp, abs=1e-6)  # greedy: the chosen token is the top one
    p.close()


@pytest.mark.slow
def test_live_top_logprobs_next_token_and_chat(llama_server):
    p = _live(llama_server, completions=1)
    nt = p.next_token(NextTokenRequest(prompts=PROMPTS[:2], top_k=5))
    assert nt.logits is None and [len(d) for d in nt.top_logprobs] == [5, 5] and nt.usage.queries == 2
    first = p.generate(GenerateRequest(prompts=PROMPTS[:2], max_tokens=1))
    assert [max(d, key=d.get) for d in nt.top_logprobs] == list(first.texts)
    p.close()
    chat = _live(llama_server)  # completions=0: top logprobs of the reply's first token
    res = chat.generate(GenerateRequest(prompts=("Say yes.",), max_tokens=2, chat=True, top_logprobs=2))
    assert len(res.top_logprobs[0]) == res.usage.completion_tokens and all(len(d) == 2 for d in res.top_logprobs[0])
    assert len(chat.next_token(NextTokenRequest(prompts=("Say yes.",), top_k=3)).top_logprobs[0]) == 3
    chat.close()


@pytest.mark.slow
def test_live_capabilities_are_truthful(llama_server):
    # llama-cpp-python returns token-level (unpooled) embeddings for SmolLM2, which the provider
    # mean-pools into one vector per text, so embed is claimed; its echoed logprobs are one
    # position off, so score may not be.
    p = _live(llama_server, completions=1, embeddings="probe", score="probe")
    assert p.capabilities == {Capability.TEXT, Capability.TOP_LOGPROBS, Capability.EMBED}
    vecs = p.embed(EmbedRequest(texts=("a cat", "a dog sat here"))).vectors
    assert vecs.shape[0] == 2 and vecs.ndim == 2 and np.all(np.isfinite(vecs))
    with pytest.raises(ConfigError, match="echo logprobs are misaligned"):
        _live(llama_server, completions=1, score=1)
    from blackbox.testing import check_provider

    check_provider(p)
    p.close()


@pytest.mark.slow
def test_live_concurrent_map_equals_sequential(llama_server, tmp_path):
    from blackbox.client import Client

    reqs = [GenerateRequest(prompts=(q,), max_tokens=2, top_logprobs=2) for q in PROMPTS]
    seq = Client(_live(llama_server, completions=1), concurrency=1)
    before = llama_server.count("POST /v1/completions")
    expected = seq.map(reqs)
    par = Client(_live(llama_server, completions=1, max_connections=8), concurrency=8)
    got = par.map(reqs)
    assert [r.texts for r in got] == [r.texts for r in expected]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(np.concatenate(a.token_logprobs), np.concatenate(b.token_logprobs), atol=1e-3)
    # a batch request is fanned out inside the provider: same answers, one HTTP call per prompt
    batch = par.generate(GenerateRequest(prompts=PROMPTS, max_tokens=2))  # no logprobs: cheaper
    assert batch.texts == tuple(r.texts[0] for r in expected) and batch.usage.queries == len(PROMPTS)
    time.sleep(0.2)
    assert llama_server.count("POST /v1/completions") - before == 3 * len(PROMPTS)
    seq.close(), par.close()


@pytest.mark.slow
def test_live_cache_second_pass_makes_no_server_calls(llama_server, tmp_path):
    from blackbox.client import Client

    reqs = [GenerateRequest(prompts=(q,), max_tokens=4) for q in PROMPTS[:4]]
    client = Client(_live(llama_server, completions=1), cache=tmp_path / "cache.sqlite", concurrency=4)
    first = client.map(reqs)
    time.sleep(0.2)
    before = llama_server.count("POST /v1/")
    second = client.map(reqs)
    time.sleep(0.2)
    assert llama_server.count("POST /v1/") == before  # the server's own access log
    assert [r.texts for r in second] == [r.texts for r in first]
    assert all(r.usage.cached and r.usage.queries == 0 for r in second)
    client.close()


@pytest.mark.slow
def test_live_ledger_matches_server_usage(llama_server):
    from blackbox.client import Client, Ledger

    reqs = [GenerateRequest(prompts=(q,), max_tokens=5) for q in PROMPTS[:4]]
    sdk = _sdk(llama_server)
    raw = [sdk.completions.create(**op.completion_kwargs("smollm", r.prompts[0], r)).usage for r in reqs]
    sdk.close()
    ledger = Ledger()
    client = Client(_live(llama_server, completions=1), ledger=ledger, concurrency=4)
    results = client.map(reqs)
    assert ledger.queries == len(reqs)
    assert ledger.prompt_tokens == sum(u.prompt_tokens for u in raw)
    assert ledger.completion_tokens == sum(u.completion_tokens for u in raw)
    assert [r.usage.prompt_tokens for r in results] == [u.prompt_tokens for u in raw]
    client.close()


@pytest.mark.slow
def test_live_unreachable_server_through_the_client(clean_env):
    _needs_openai()
    from blackbox.client import Client, RetryPolicy

    client = Client(load_provider("openai:smollm?base_url=http://127.0.0.1:9/v1"),
                    retry=RetryPolicy(max_attempts=2, base_delay=0.01))
    with pytest.raises(TransportError) as info:
        client.generate(GenerateRequest(prompts=("hi",)))
    msg = str(info.value)
    assert "\n" not in msg and "cannot connect" in msg and info.value.attempts == 2
    client.close()
