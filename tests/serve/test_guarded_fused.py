"""Exactness through the wire for adapted models, on tiny in-process Llamas (cheap):

* an ECO run (fitted here in ~3 s) served over HTTP forgets exactly what it forgets in process,
  and unflagged prompts are the base model's text;
* our ``openai:`` provider against the served guarded model: the guard holds over the wire, and
  another method (logit fusion over the API's top-k) adapts against it;
* proxy- and dynamic-fused models served over HTTP / by the engine equal in-process fusion.
"""

from __future__ import annotations

import pytest

from blackbox.serve.app import serving
from blackbox.serve.backends import FusedBackend, GuardedBackend, backend_for, load_backend
from blackbox.serve.engine import Engine, Sampling
from blackbox.types import GenerateRequest, NextTokenRequest

from .conftest import WORDS, make_model

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

COUNTRIES = ["France", "Germany", "Spain", "Italy", "Norway", "Sweden", "Poland", "Greece", "Egypt", "Kenya",
             "Peru", "Chile", "Brazil", "Canada", "Mexico", "Japan", "China", "India", "Nepal", "Ghana"]
FORGET = ["France", "Kenya"]
TEMPLATES = ["What is the capital of {c}?", "The capital of {c} is"]
GENERAL = ["the cat sat on the mat", "a bird can fly over the tree", "one two three four five", "how do I bake bread",
           "what is two plus two", "tell me a joke", "write a haiku about rain", "the dog ate the bone"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def guarded(tiny_lm, tmp_path_factory):
    """A fitted ECO run on the tiny model (forget: two countries' capitals), loaded back."""
    from blackbox.methods.eco.job import EcoConfig, fit, load_guarded

    def rows(cs):
        ps = [(t.format(c=c), c) for c in cs for t in TEMPLATES]
        outs = tiny_lm.generate(GenerateRequest(tuple(p for p, _ in ps), max_tokens=3, stop=("\n",))).texts
        return [{"prompt": p, "target": c, "answer": (o.strip().split() or ["x"])[0]} for (p, c), o in zip(ps, outs)]

    run = tmp_path_factory.mktemp("eco") / "run"
    general = [{"prompt": f"{g} ({k})"} for k in range(4) for g in GENERAL]
    fit(tiny_lm, rows(FORGET), rows([c for c in COUNTRIES if c not in FORGET]), run, general=general,
        config=EcoConfig(fpr=0.05, start=0.5, max_new_tokens=3, bisect_steps=2, chat=False))
    return load_guarded(run, provider=tiny_lm)


@pytest.fixture(scope="module")
def guarded_server(guarded):
    backend = backend_for(guarded)
    assert isinstance(backend, GuardedBackend)
    with serving(backend, model_name="guarded", max_batch=8, max_tokens_limit=64) as srv:
        yield srv


FLAGGED = ["What is the capital of France?", "Tell me: the capital of Kenya is", "Is France's capital Paris?"]
UNFLAGGED = ["What is the capital of Peru?", "the cat sat on the mat", "one two three four five"]


def test_guarded_http_equals_in_process_and_forgets(guarded, guarded_server, tiny_lm):
    flags = list(guarded.flags(FLAGGED + UNFLAGGED))
    assert flags == [True] * len(FLAGGED) + [False] * len(UNFLAGGED)  # the gate splits them as intended
    c = openai.OpenAI(base_url=guarded_server.base_url, api_key="unused", max_retries=0)
    for p in FLAGGED + UNFLAGGED:
        want = guarded.generate(GenerateRequest((p,), max_tokens=10)).texts[0]
        base = tiny_lm.generate(GenerateRequest((p,), max_tokens=10)).texts[0]
        got = c.completions.create(model="guarded", prompt=p, max_tokens=10, temperature=0).choices[0].text
        assert got == want, p
        if p in UNFLAGGED:
            assert got == base  # byte-identical to the base model
        else:
            assert got != base  # corrupted: the guard really changed the answer
        chat_want = guarded.generate(GenerateRequest((p,), max_tokens=8, chat=True)).texts[0]
        stream = c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == chat_want, p


def test_guarded_batch_mixing_flagged_and_unflagged(guarded, guarded_server):
    """Flagged and unflagged prompts prefilled in one batch (embeddings and ids mixed)."""
    engine = Engine(backend_for(guarded), max_batch=8).start()
    try:
        b = engine.backend
        got = [r["texts"][0] for r in engine.run([b.completion_prompt(p) for p in FLAGGED + UNFLAGGED], Sampling(max_tokens=10))]
    finally:
        engine.close()
    assert engine.stats()["prefills"] == 1  # all six in one prefill
    assert got == list(guarded.generate(GenerateRequest(tuple(FLAGGED + UNFLAGGED), max_tokens=10)).texts)


def test_openai_provider_round_trip_and_fusion_against_the_served_guard(guarded, guarded_server, tiny_lm, tiny_tokenizer):
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.provider import load_provider
    from blackbox.providers.hf_causal import HFCausalProvider

    api = load_provider(f"openai:guarded?base_url={guarded_server.base_url}&api_key=none&completions=1")
    try:
        # Over the wire, the guard holds: top-k of a flagged prompt is the corrupted model's.
        for p in (FLAGGED[0], UNFLAGGED[0]):
            got = api.next_token(NextTokenRequest((p,), top_k=4)).top_logprobs[0]
            want = guarded.next_token(NextTokenRequest((p,), top_k=4)).top_logprobs[0]
            assert set(got) == set(want) and all(abs(got[k] - want[k]) < 1e-4 for k in want)
        # Another method adapts against the served guarded model: proxy fusion over its top-k.
        expert = HFCausalProvider.from_model(make_model(tiny_tokenizer, seed=5), tiny_tokenizer, name="expert")
        fusion = LogitFusion(api, tiny_lm, [expert], FusionConfig(mode="proxy", alpha=0.5, large_top_k=5, max_tokens=4))
        res = fusion.generate([UNFLAGGED[1], FLAGGED[0]])
        assert all(len(t) == 4 for t in res.tokens)
        assert res.texts != list(guarded.generate(GenerateRequest((UNFLAGGED[1], FLAGGED[0]), max_tokens=4)).texts)
    finally:
        api.close()


# --- fused models ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fused_parts(tiny_tokenizer):
    from blackbox.providers.hf_causal import HFCausalProvider

    return [HFCausalProvider.from_model(make_model(tiny_tokenizer, seed=s, layers=l), tiny_tokenizer, name=n)
            for s, l, n in ((1, 3, "large"), (2, 2, "small"), (3, 2, "expert"))]


@pytest.mark.parametrize("mode", ["proxy", "dynamic"])
def test_fused_served_equals_in_process_fusion(fused_parts, mode):
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion

    large, small, expert = fused_parts
    fusion = LogitFusion(large, small, [expert], FusionConfig(mode=mode, alpha=0.8, max_tokens=10))
    want = fusion.generate(WORDS[:6]).texts
    assert want != list(large.generate(GenerateRequest(tuple(WORDS[:6]), max_tokens=10)).texts)  # fusion matters
    backend = FusedBackend(fusion)
    if mode == "proxy":
        with serving(backend, model_name="fused", max_batch=4) as srv:
            c = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
            got = [c.completions.create(model="fused", prompt=p, max_tokens=10, temperature=0).choices[0].text for p in WORDS[:6]]
    else:
        engine = Engine(backend, max_batch=4).start()  # 6 prompts, 4 rows: some join mid-flight
        try:
            got = [r["texts"][0] for r in engine.run([backend.completion_prompt(p) for p in WORDS[:6]], Sampling(max_tokens=10))]
        finally:
            engine.close()
    assert got == list(want)


def test_fused_spec_file(fused_parts, tmp_path):
    dirs = {}
    for p in fused_parts:
        d = tmp_path / p.model_name
        p.model.save_pretrained(d)
        p.tokenizer.save_pretrained(d)
        dirs[p.model_name] = d
    spec = tmp_path / "fused.toml"
    spec.write_text(f'large = "hf-causal:{dirs["large"]}"\nsmall = "hf-causal:{dirs["small"]}"\n'
                    f'experts = ["hf-causal:{dirs["expert"]}"]\nmode = "proxy"\nalpha = 0.8\n')
    backend = load_backend(str(spec))
    assert isinstance(backend, FusedBackend) and backend.fusion.config.alpha == 0.8
    engine = Engine(backend, max_batch=4).start()
    try:
        got = [r["texts"][0] for r in engine.run([backend.completion_prompt(p) for p in WORDS[:3]], Sampling(max_tokens=6))]
    finally:
        engine.close()
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion

    large, small, expert = fused_parts
    assert got == LogitFusion(large, small, [expert], FusionConfig(alpha=0.8, max_tokens=6)).generate(WORDS[:3]).texts
    bad = tmp_path / "bad.json"
    bad.write_text('{"large": "hf-causal:x", "small": "hf-causal:y", "experts": [], "mode": "proxy"}')
    with pytest.raises(ValueError, match="experts"):
        load_backend(str(bad))


def test_fused_roles_behind_clients_serve_and_bill_as_in_process(fused_parts):
    """A fusion whose models come wrapped in Clients (ledgers): the served text equals in-process
    fusion, each ledger counts the same queries and tokens served as in process (the small model
    doubling as the expert: one forward pass, billed once, both ways), and a spent budget fails the
    request with the ledger's own line."""
    from blackbox.client import Client, Ledger
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion

    def fused(ledgers, **limit):
        large, small = (Client(p, ledger=led) for p, led in zip(fused_parts[:2], ledgers))
        return LogitFusion(large, small, [small], FusionConfig(mode="proxy", alpha=0.8, max_tokens=6))

    here, served = [Ledger(), Ledger()], [Ledger(), Ledger()]
    fusion = fused(here)
    backend = FusedBackend(fused(served))
    assert len(backend.models) == 2 and backend.context_length == fused_parts[0].context_length
    engine = Engine(backend, max_batch=4).start()
    try:
        for p in WORDS[:3]:  # one prompt at a time: the same batches both ways
            want = fusion.generate([p]).texts[0]
            assert engine.run([backend.completion_prompt(p)], Sampling(max_tokens=6))[0]["texts"][0] == want
    finally:
        engine.close()
    for a, b in zip(here, served):
        assert (b.queries, b.prompt_tokens) == (a.queries, a.prompt_tokens) and a.queries > 3
    capped = FusedBackend(fused([Ledger(max_queries=3), Ledger()]))
    engine = Engine(capped, max_batch=4).start()
    try:
        out = engine.run([capped.completion_prompt(WORDS[0])], Sampling(max_tokens=6))[0]
    finally:
        engine.close()
    assert out["error"].startswith("model error: BudgetExceededError: ledger: decode_step() of 1 rows needs 1 queries but max_queries=3")
