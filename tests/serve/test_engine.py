"""The model loop without HTTP: dynamic batching gives each request what it gets alone, stop
conditions are per request, cancelled rows leave the batch, streamed text adds up."""

from __future__ import annotations

import threading

import pytest

from blackbox.serve.backends import PlainBackend
from blackbox.serve.engine import ChoiceDone, Engine, Job, JobDone, QueueFull, Sampling, TokenEvent, safe_prefix
from blackbox.types import GenerateRequest

from .conftest import WORDS

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny matrices: extra threads only contend on a shared machine


def _alone(lm, prompt, **kw):
    return lm.generate(GenerateRequest((prompt,), **kw))


def test_batched_equals_alone_with_requests_joining_mid_flight(tiny_lm):
    backend = PlainBackend(tiny_lm)
    # max_batch 5 < 12 prompts: later prompts join while earlier ones are still decoding
    # (their caches are merged into a running batch of a different width).
    engine = Engine(backend, max_batch=5).start()
    try:
        lengths = [20, 7, 13, 20, 3, 16, 9, 20, 11, 5, 18, 2]
        jobs = [backend.completion_prompt(w) for w in WORDS]
        out = []
        done = threading.Semaphore(0)
        for p, m in zip(jobs, lengths):
            res = {"text": None, "stream": "", "tokens": 0}
            out.append(res)

            def sink(ev, res=res):
                if isinstance(ev, TokenEvent):
                    res["stream"] += ev.delta
                    res["tokens"] += 1
                elif isinstance(ev, ChoiceDone):
                    res["text"], res["stream"] = ev.text, res["stream"] + ev.delta
                elif isinstance(ev, JobDone):
                    done.release()

            engine.submit(Job(p, Sampling(max_tokens=m), sink))
        for _ in jobs:
            done.acquire()
        stats = engine.stats()
        assert stats["prefills"] > 1 and stats["max_rows_seen"] == 5, stats
        for w, m, res in zip(WORDS, lengths, out):
            ref = _alone(tiny_lm, w, max_tokens=m)
            assert res["text"] == ref.texts[0]
            assert res["stream"] == res["text"]  # streamed deltas add up to the final text
        assert stats["active_rows"] == 0
    finally:
        engine.close()


def test_per_request_stop_strings_and_eos(tiny_lm):
    backend = PlainBackend(tiny_lm)
    free = _alone(tiny_lm, WORDS[0], max_tokens=24).texts[0]
    stop = free[5:7]  # a string that really occurs in the free-running output
    engine = Engine(backend, max_batch=4).start()
    try:
        a = engine.run([backend.completion_prompt(WORDS[0])], Sampling(max_tokens=24, stop=(stop,)))[0]
        b = engine.run([backend.completion_prompt(WORDS[0])], Sampling(max_tokens=24))[0]
    finally:
        engine.close()
    ref = _alone(tiny_lm, WORDS[0], max_tokens=24, stop=(stop,))
    assert a["texts"][0] == ref.texts[0] == free[: free.find(stop)]
    assert a["finish_reasons"][0] == "stop" and a["streamed"][0] == a["texts"][0]
    assert b["texts"][0] == free and b["finish_reasons"][0] == "length"


def test_seeded_sampling_choices_match_in_process(tiny_lm):
    backend = PlainBackend(tiny_lm)
    engine = Engine(backend, max_batch=8).start()
    try:
        res = engine.run([backend.completion_prompt(WORDS[3])], Sampling(max_tokens=12, temperature=0.9, top_p=0.8, seed=7), n=3)[0]
    finally:
        engine.close()
    # choice i is seeded (seed, i): prompt i of an in-process generate over n copies
    ref = tiny_lm.generate(GenerateRequest((WORDS[3],) * 3, max_tokens=12, temperature=0.9, top_p=0.8, seed=7))
    assert res["texts"] == list(ref.texts)
    assert len(set(res["texts"])) > 1  # really sampled
    assert res["usage"]["completion_tokens"] == sum(len(t) for t in res["tokens"])


def test_logprobs_match_in_process(tiny_lm):
    backend = PlainBackend(tiny_lm)
    engine = Engine(backend, max_batch=4).start()
    got = []
    done = threading.Event()

    def sink(ev):
        if isinstance(ev, TokenEvent):
            got.append((ev.logprob, ev.top))
        elif isinstance(ev, JobDone):
            done.set()

    try:
        engine.submit(Job(backend.completion_prompt(WORDS[2]), Sampling(max_tokens=6, logprobs=3), sink))
        assert done.wait(60)
    finally:
        engine.close()
    ref = _alone(tiny_lm, WORDS[2], max_tokens=6, top_logprobs=3)
    assert [lp for lp, _ in got] == list(ref.token_logprobs[0])
    for (_, top), ref_top in zip(got, ref.top_logprobs[0]):
        assert len(top) == 3
        assert max(v for _, v in top) == max(ref_top.values())


def test_cancel_frees_rows_and_queue_limit(tiny_lm):
    backend = PlainBackend(tiny_lm)
    engine = Engine(backend, max_batch=2, max_queue=1)
    started = threading.Event()
    finished = threading.Event()

    def sink(ev):
        if isinstance(ev, TokenEvent):
            started.set()
        if isinstance(ev, JobDone):
            finished.set()

    long = Job(backend.completion_prompt(WORDS[0]), Sampling(max_tokens=200), sink)
    engine.submit(long)
    assert started.wait(60)
    # The batch has room for one more row; fill the queue behind a job of n=2 that cannot fit.
    engine.submit(Job(backend.completion_prompt(WORDS[1]), Sampling(max_tokens=2), lambda ev: None, n=2))
    with pytest.raises(QueueFull):
        engine.submit(Job(backend.completion_prompt(WORDS[2]), Sampling(max_tokens=2), lambda ev: None))
    long.cancel()
    engine.close(timeout=60)
    assert not finished.is_set()  # a cancelled job never completes
    stats = engine.stats()
    assert stats["active_rows"] == 0 and stats["queued"] == 0
    assert stats["steps"] < 150  # it really stopped early


@pytest.mark.parametrize(
    "text, stops, expected",
    [("hello wor", ("world",), "hello "), ("hello", ("lo!",), "hel"), ("abc\ufffd", (), "abc"), ("abc", ("x",), "abc"),
     ("a\n", ("\n\n",), "a"), ("", ("x",), "")],
)
def test_safe_prefix_holds_back_partial_stops(text, stops, expected):
    assert safe_prefix(text, stops) == expected
