"""Logit fusion (proxy-tuning, dynamic KL-matched fusion) on tiny in-process LMs.

Every model is a random small Llama built here over one BPE tokenizer trained here, so the
properties of the method (docs/fusion.md) can be checked exactly: the fused distribution, the
chosen weights, batching and KV caching.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from blackbox.errors import CapabilityError, ConfigError
from blackbox.provider import Provider
from blackbox.types import Capability, GenerateRequest, NextTokenRequest, NextTokenResult

from needs import need  # noqa: E402  (tests/needs.py: skip, or fail under BLACKBOX_REQUIRE_MODELS=1)

torch = need("torch", hint="pip install torch==2.13.0")
need("transformers", "tokenizers", hint="the llm extra: pip install -e '.[llm]'")

from blackbox.methods.fusion import arith  # noqa: E402
from blackbox.methods.fusion.decode import FusionConfig, LogitFusion, _LocalStepper, shared_vocab  # noqa: E402

PROMPTS = ["the cat sat on", "a bird", "one two three four five six", "paris is the capital of the"]


# --- fixtures: one tokenizer, several tiny models -------------------------------------
@pytest.fixture(scope="module")
def tok():
    from tiny_lm import tiny_tokenizer

    return tiny_tokenizer(["the cat sat on the mat", "the dog ate the bone", "a bird can fly over the tree",
                           "paris is the capital of france", "one two three four five six seven eight nine ten"] * 5,
                          vocab_size=300)


def _llama(vocab: int, seed: int, hidden: int = 32, layers: int = 2, ctx: int = 64):
    from tiny_lm import tiny_llama

    return tiny_llama(vocab_size=vocab, seed=seed, hidden=hidden, layers=layers, ctx=ctx)


def _wrap(model, tokenizer, name):
    from blackbox.providers.hf_causal import HFCausalProvider

    return HFCausalProvider.from_model(model, tokenizer, name=name)


@pytest.fixture(scope="module")
def models(tok):
    v = len(tok)
    small = _llama(v, 1)
    expert = copy.deepcopy(small)
    with torch.no_grad():  # an "expert": the small base with perturbed weights
        g = torch.Generator().manual_seed(5)
        for p in expert.parameters():
            p.add_(0.15 * torch.randn(p.shape, generator=g))
    expert2 = copy.deepcopy(small)
    with torch.no_grad():
        g = torch.Generator().manual_seed(6)
        for p in expert2.parameters():
            p.add_(0.15 * torch.randn(p.shape, generator=g))
    return {
        "large": _wrap(_llama(v, 2, hidden=48, layers=3), tok, "large"),
        "small": _wrap(small, tok, "small"),
        "small_copy": _wrap(copy.deepcopy(small), tok, "small-copy"),
        "expert": _wrap(expert, tok, "expert"),
        "expert2": _wrap(expert2, tok, "expert2"),
    }


def _greedy(provider, prompts, n):
    out = provider.generate(GenerateRequest(prompts=tuple(prompts), max_tokens=n))
    return [provider.tokenizer(t, add_special_tokens=False)["input_ids"] for t in out.texts], out


def _cfg(**kw):
    base = dict(max_tokens=6)
    base.update(kw)
    return FusionConfig(**base)


# --- what must hold exactly -----------------------------------------------------------
def test_large_equal_small_alpha_one_reproduces_expert_distribution(models):
    m = models
    steps = []
    fusion = LogitFusion(m["small_copy"], m["small"], [m["expert"]], _cfg(mode="proxy", alpha=1.0, max_tokens=5))
    res = fusion.generate(PROMPTS, on_step=steps.append)
    assert len(steps) >= len(PROMPTS)
    for info in steps:
        fused, w = fusion.fuse_row(info["large"], info["small"], info["experts"])
        want = torch.log_softmax(info["experts"][0], -1)
        assert torch.allclose(torch.log_softmax(fused, -1), want, atol=1e-9)
        assert w.tolist() == [1.0]
    # and the greedy tokens are the expert's own greedy tokens
    expert_out = m["expert"].generate(GenerateRequest(prompts=tuple(PROMPTS), max_tokens=5))
    assert res.texts == list(expert_out.texts)


@pytest.mark.parametrize("mode", ["proxy", "dynamic"])
def test_experts_equal_small_base_give_the_large_models_output(models, mode):
    m = models
    fusion = LogitFusion(m["large"], m["small"], [m["small_copy"], m["small_copy"]], _cfg(mode=mode, alpha=1.5))
    res = fusion.generate(PROMPTS)
    large_out = m["large"].generate(GenerateRequest(prompts=tuple(PROMPTS), max_tokens=6))
    assert res.texts == list(large_out.texts)
    steps = []
    fusion.generate(PROMPTS[:1], on_step=steps.append)
    for info in steps:
        fused, _ = fusion.fuse_row(info["large"], info["small"], info["experts"])
        assert torch.allclose(fused, info["large"], atol=1e-12)


def test_dynamic_objective_is_zero_at_alpha_one_when_large_is_small(models):
    m = models
    steps = []
    fusion = LogitFusion(m["small_copy"], m["small"], [m["expert"]], _cfg(mode="dynamic"))
    res = fusion.generate(PROMPTS, on_step=steps.append)
    for w in res.weights:
        assert all(step == [pytest.approx(1.0, abs=1e-12)] for step in w)
    grid = FusionConfig().grid()
    for info in steps:
        obj = arith.dynamic_objective(info["large"], info["small"], info["experts"], grid)
        assert obj.shape == (1, 21)
        assert float(obj[0, 10]) < 1e-14  # grid[10] == 1.0
        assert int(torch.argmin(obj[0])) == 10
        assert float(obj[0, 0]) > 1e-6  # a nonzero shift is needed: α = 0 is wrong


def test_dynamic_objective_zero_at_the_constructed_alpha_with_refinement():
    g = torch.Generator().manual_seed(0)
    zs = 3 * torch.randn(500, generator=g, dtype=torch.float64)
    d = torch.randn(500, generator=g, dtype=torch.float64)
    ze = (zs + d)[None]
    # P = Q shifted by a constant (same distribution); the right weight is 1
    w, j = arith.dynamic_weights(zs + 4.0, zs, ze, FusionConfig().grid(), refine=0)
    assert w.tolist() == [pytest.approx(1.0)] and j < 1e-14
    # an off-grid truth: the expert's shift is 0.73 of the large model's, so α = 1/0.73 ... build
    # the large from the expert instead: zl = zs, expert shift d; target KLs from a 1.37-scaled copy
    ze_far = (zs + 1.37 * d)[None]
    w_grid, j_grid = arith.dynamic_weights(zs, zs, ze_far, FusionConfig().grid() / 1.37 * 1.37, refine=0)
    w_ref, j_ref = arith.dynamic_weights(zs, zs, ze_far, torch.arange(21, dtype=torch.float64) * 0.1, refine=30)
    assert w_ref.tolist() == [pytest.approx(1.0, abs=1e-6)] and j_ref < 1e-12
    # the default grid (0, 0.1, ..., 2; rounded through /1.37*1.37) holds the truth α = 1 itself:
    # the grid search alone picks it, with an objective at round-off level
    assert w_grid.tolist() == [pytest.approx(1.0, abs=1e-12)] and j_grid < 1e-12
    # with a grid that misses the truth, refinement lands on it and lowers the objective
    grid = torch.tensor([0.0, 0.45, 0.9, 1.35, 1.8], dtype=torch.float64)
    w0, j0 = arith.dynamic_weights(zs, zs, ze_far, grid, refine=0)
    w1, j1 = arith.dynamic_weights(zs, zs, ze_far, grid, refine=30)
    assert w0.tolist() == [0.9] and j0 > 1e-6
    assert w1.tolist() == [pytest.approx(1.0, abs=1e-5)] and j1 < j0 * 1e-6


def test_vectorised_objective_matches_a_loop_of_explicit_kls():
    g = torch.Generator().manual_seed(1)
    V = 4000
    zl = 25 * torch.randn(V, generator=g, dtype=torch.float64)  # wide logits: pruning kicks in
    zs = 8 * torch.randn(V, generator=g, dtype=torch.float64)
    ze = zs[None] + 2 * torch.randn(2, V, generator=g, dtype=torch.float64)
    grid = FusionConfig().grid()
    fast = arith.dynamic_objective(zl, zs, ze, grid)  # uniform grid: cumulative-product path
    pruned = arith.dynamic_objective(zl, zs, ze, grid, prune=True)
    odd = arith.dynamic_objective(zl, zs, ze, torch.cat([grid[:1], grid[1:] + 1e-3]))  # direct path
    lp, lq = torch.log_softmax(zl, -1), torch.log_softmax(zs, -1)
    lqt = torch.log_softmax(ze, -1)
    a = [float((lqt[t].exp() * (lqt[t] - lq)).sum()) for t in range(2)]
    b = [float((lq.exp() * (lq - lqt[t])).sum()) for t in range(2)]
    for t in range(2):
        for c, al in enumerate(grid.tolist()):
            lpt = torch.log_softmax(zl + al * (ze[t] - zs), -1)
            k1 = float((lpt.exp() * (lpt - lp)).sum())
            k2 = float((lp.exp() * (lp - lpt)).sum())
            want = sum((k1 - a[u]) ** 2 + (k2 - b[u]) ** 2 for u in range(2))
            assert float(fast[t, c]) == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert float(pruned[t, c]) == pytest.approx(want, rel=1e-9, abs=1e-12)
            if c == 0:
                assert float(odd[t, c]) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert not torch.allclose(odd, fast)  # the shifted grid really was evaluated elsewhere
    al = grid[1:] + 1e-3
    for t in range(2):
        lpt = torch.log_softmax(zl + al[4] * (ze[t] - zs), -1)
        k1 = float((lpt.exp() * (lpt - lp)).sum())
        k2 = float((lp.exp() * (lp - lpt)).sum())
        want = sum((k1 - a[u]) ** 2 + (k2 - b[u]) ** 2 for u in range(2))
        assert float(odd[t, 5]) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert arith._keep_mask(zl, ze - zs, 2.0).sum() < V  # the test exercised pruning


def _explicit_objective(zl, zs, ze, grid):
    """The §4 objective from explicit softmaxes and KL sums, float64: ``(T, C)``."""
    zl, zs, ze = zl.double(), zs.double(), ze.double()
    lp, lq, lqt = torch.log_softmax(zl, -1), torch.log_softmax(zs, -1), torch.log_softmax(ze, -1)
    T = ze.shape[0]
    a = [float((lqt[t].exp() * (lqt[t] - lq)).sum()) for t in range(T)]
    b = [float((lq.exp() * (lq - lqt[t])).sum()) for t in range(T)]
    out = torch.zeros(T, len(grid), dtype=torch.float64)
    for t in range(T):
        for c, al in enumerate(grid.tolist()):
            lpt = torch.log_softmax(zl + al * (ze[t] - zs), -1)
            k1 = float((lpt.exp() * (lpt - lp)).sum())
            k2 = float((lp.exp() * (lp - lpt)).sum())
            out[t, c] = sum((k1 - a[u]) ** 2 + (k2 - b[u]) ** 2 for u in range(T))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_objective_matches_explicit_kls_per_row(dtype):
    g = torch.Generator().manual_seed(3)
    B, T, V = 3, 2, 3000
    zl = 6 * torch.randn(B, V, generator=g, dtype=torch.float64)
    zs = 5 * torch.randn(B, V, generator=g, dtype=torch.float64)
    ze = zs[:, None] + 1.5 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    grid = FusionConfig().grid()
    obj = arith.dynamic_objective_batch(zl, zs, ze, grid, dtype=dtype)
    assert obj.shape == (B, T, grid.numel()) and obj.dtype == dtype
    rel = 1e-9 if dtype == torch.float64 else 2e-3
    for r in range(B):
        want = _explicit_objective(zl[r], zs[r], ze[r], grid)
        assert torch.allclose(obj[r].double(), want, rtol=rel, atol=1e-6 if dtype == torch.float32 else 1e-12)
        # the chosen weights are the row's argmin (first expert, then smaller α, on ties)
        w, j = arith.dynamic_weights_batch(zl[r : r + 1], zs[r : r + 1], ze[r : r + 1], grid, dtype=dtype)
        flat = int(torch.argmin(want.reshape(-1)))
        t, c = divmod(flat, grid.numel())
        assert w[0, t] == pytest.approx(float(grid[c])) and float(w[0].abs().sum()) == pytest.approx(float(grid[c]))
    # a batch gives each row what the row alone gives
    wb, _ = arith.dynamic_weights_batch(zl, zs, ze, grid, dtype=dtype)
    for r in range(B):
        w1, _ = arith.dynamic_weights(zl[r], zs[r], ze[r], grid)
        assert torch.equal(wb[r], w1)


@pytest.mark.parametrize("K", [1, 2, 3, 5, 8, 13, 20, 33])
def test_powers_by_doubling_match_explicit_powers(K):
    r = torch.rand(2, 3, 50, generator=torch.Generator().manual_seed(K), dtype=torch.float64) * 0.9 + 0.1
    out = torch.empty(2, 3, K, 50, dtype=torch.float64)
    arith._powers(r, out)
    want = r[:, :, None] ** torch.arange(1, K + 1, dtype=torch.float64)[None, None, :, None]
    assert torch.allclose(out, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("C", [3, 6, 12])
def test_batched_kl_pair_on_other_grid_sizes(C):
    g = torch.Generator().manual_seed(C)
    zl = 4 * torch.randn(2, 700, generator=g, dtype=torch.float64)
    d = 2 * torch.randn(2, 1, 700, generator=g, dtype=torch.float64)
    grid = torch.arange(C, dtype=torch.float64) * 0.25
    kf, kr = arith.kl_pair_batch(zl, d, grid, torch.float64)
    for b in range(2):
        wf, wr = arith.kl_pair(zl[b], d[b], grid)
        assert torch.allclose(kf[b], wf, rtol=1e-9, atol=1e-12) and torch.allclose(kr[b], wr, rtol=1e-9, atol=1e-12)


def test_batched_float32_zero_at_alpha_one_and_zero_shift():
    g = torch.Generator().manual_seed(4)
    V = 2000
    zs = 4 * torch.randn(2, V, generator=g, dtype=torch.float64)
    ze = (zs + torch.randn(2, V, generator=g, dtype=torch.float64))[:, None]
    grid = FusionConfig().grid()
    # large = small: α = 1 reproduces the expert, the objective is ~0 there and chosen
    w, j = arith.dynamic_weights_batch(zs, zs, ze, grid)
    assert w[:, 0].tolist() == [pytest.approx(1.0), pytest.approx(1.0)] and float(j.max()) < 1e-8
    # an expert equal to the small base: every α gives 0; the smallest (0) is chosen
    w0, j0 = arith.dynamic_weights_batch(3 * zs, zs, zs[:, None].clone(), grid)
    assert w0.abs().sum() == 0 and float(j0.abs().max()) == 0


def test_batched_float32_falls_back_to_float64_on_underflow():
    # the large model puts ~e^-300 on the only token the expert boosts: float32 sums underflow
    V = 50
    zl = torch.zeros(1, V, dtype=torch.float64)
    zl[0, 0] = 300.0
    zs = torch.zeros(1, V, dtype=torch.float64)
    ze = zs[:, None].clone()
    ze[0, 0, 7] = 60.0
    grid = FusionConfig().grid()
    obj = arith.dynamic_objective_batch(zl, zs, ze, grid)
    assert torch.isfinite(obj).all()
    want = arith.dynamic_objective(zl[0], zs[0], ze[0], grid)
    assert torch.allclose(obj[0].double(), want, rtol=1e-4, atol=1e-4)


def test_precision_float64_decoding_matches_float32(models):
    m = models
    a = LogitFusion(m["large"], m["small"], [m["expert"], m["expert2"]], _cfg(mode="dynamic")).generate(PROMPTS)
    b = LogitFusion(m["large"], m["small"], [m["expert"], m["expert2"]], _cfg(mode="dynamic", precision="float64")).generate(PROMPTS)
    assert a.tokens == b.tokens and a.weights == b.weights
    with pytest.raises(ConfigError, match="precision"):
        FusionConfig(precision="float16").check()
    with pytest.raises(ConfigError, match="large_tail: expected one of small, uniform, floor, received"):
        FusionConfig(large_tail="zero")


@pytest.mark.parametrize("mode", ["proxy", "dynamic"])
def test_batched_and_unbatched_decoding_give_the_same_tokens(models, mode):
    m = models
    experts = [m["expert"], m["expert2"]]
    batched = LogitFusion(m["large"], m["small"], experts, _cfg(mode=mode, batch_size=4)).generate(PROMPTS)
    single = LogitFusion(m["large"], m["small"], experts, _cfg(mode=mode, batch_size=1)).generate(PROMPTS)
    assert batched.tokens == single.tokens and batched.texts == single.texts
    for wb, ws in zip(batched.weights, single.weights):
        assert np.allclose(wb, ws, atol=1e-6)
    if mode == "dynamic":  # one expert at a time: at most one non-zero weight per step
        assert all(sum(x != 0 for x in step) <= 1 for w in batched.weights for step in w)
        assert all(len(step) == 2 for w in batched.weights for step in w)


def test_sampling_is_seeded_per_prompt_and_independent_of_batching(models):
    m = models
    kw = dict(mode="proxy", temperature=1.0, top_p=0.9, seed=3, max_tokens=8)
    a = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(batch_size=4, **kw)).generate(PROMPTS)
    b = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(batch_size=1, **kw)).generate(PROMPTS)
    c = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(batch_size=4, **{**kw, "seed": 4})).generate(PROMPTS)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_kv_cached_and_uncached_logits_agree(models):
    m = models
    seqs = [m["large"].encode(p) for p in PROMPTS]
    cached, plain = _LocalStepper(m["large"], len(m["large"].tokenizer), True), _LocalStepper(m["large"], len(m["large"].tokenizer), False)
    with torch.inference_mode():
        x, y = cached.start(seqs), plain.start(seqs)
        assert torch.allclose(x, y, atol=1e-5)
        for step in range(5):
            nxt = [int(t) for t in torch.argmax(x, -1)]
            x, y = cached.step(nxt), plain.step(nxt)
            assert torch.allclose(x, y, atol=1e-5), step
    full = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic")).generate(PROMPTS)
    nocache = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic", use_cache=False)).generate(PROMPTS)
    assert full.tokens == nocache.tokens


def test_stop_strings_max_tokens_and_weights_are_logged(models):
    m = models
    res = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic", max_tokens=7)).generate(PROMPTS)
    assert all(len(t) <= 7 for t in res.tokens)
    assert [len(w) for w in res.weights] == [len(t) for t in res.tokens]
    assert all(0 <= s[0] <= 2 for w in res.weights for s in w)
    text = res.texts[0]
    assert len(text) >= 2
    stop = text[1:3]
    cut = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic", max_tokens=7, stop=(stop,))).generate(PROMPTS[:1])
    assert cut.texts[0] == text[: text.find(stop)] and cut.finish_reasons == ["stop"]
    d = res.to_dict()
    assert json.loads(json.dumps(d))["weights"] == res.weights


# --- vocabularies -----------------------------------------------------------------------
def test_mismatched_vocabulary_is_refused(models, tok):
    from tiny_lm import tiny_tokenizer

    other = tiny_tokenizer(["completely different words here", "zebra yak xylophone"] * 5, vocab_size=300)
    # The refusal must come from comparing the token -> id maps, not the sizes: the alien
    # tokenizer shares the special tokens and the byte alphabet but maps other strings to ids.
    assert other.get_vocab() != tok.get_vocab()
    alien = _wrap(_llama(len(other), 9), other, "alien")
    with pytest.raises(ConfigError, match="vocabulary: the expert 1 model's tokenizer differs"):
        LogitFusion(models["large"], models["small"], [alien])
    # same size, two ids swapped: still refused
    swapped = copy.deepcopy(tok)
    vocab = tok.get_vocab()
    a, b = sorted(vocab, key=vocab.get)[100:102]
    assert shared_vocab({"x": tok}, {"x": len(tok)}) == len(tok)

    class Swapped:
        def __init__(self, base):
            self.base = base

        def get_vocab(self):
            v = dict(self.base.get_vocab())
            v[a], v[b] = v[b], v[a]
            return v

        def __len__(self):
            return len(self.base)

    with pytest.raises(ConfigError, match="2 ids differ"):
        shared_vocab({"large": tok, "small": Swapped(swapped)}, {"large": len(tok), "small": len(tok)})


def test_padded_superset_vocabulary_is_truncated_to_the_shared_ids(models, tok):
    m = models
    big_tok = copy.deepcopy(tok)
    big_tok.add_tokens(["<extra_tool_token>"])
    assert len(big_tok) == len(tok) + 1
    padded = copy.deepcopy(m["small"].model)
    padded.resize_token_embeddings(len(tok) + 4)  # padded logit rows as well as an added token
    padded_p = _wrap(padded, big_tok, "padded-small")
    with torch.inference_mode():
        z = padded_p.next_token(NextTokenRequest(prompts=("the cat",))).logits
    assert z.shape[1] == len(tok) + 4
    fusion = LogitFusion(m["large"], m["small"], [padded_p], _cfg(mode="proxy"))
    assert fusion.n_vocab == len(tok)
    res = fusion.generate(PROMPTS)
    large_out = m["large"].generate(GenerateRequest(prompts=tuple(PROMPTS), max_tokens=6))
    assert res.texts == list(large_out.texts)  # the padded copy of the base has no effect
    assert all(t < len(tok) for ts in res.tokens for t in ts)


# --- top-k API variant --------------------------------------------------------------------
class TopKOnly(Provider):
    """An API-like large model: top-k log-probs of text prompts only (no logits)."""

    name = "topk-only"
    declared_capabilities = frozenset({Capability.TOP_LOGPROBS})

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def next_token(self, request):
        self.calls += 1
        r = self.inner.next_token(NextTokenRequest(prompts=request.prompts, top_k=request.top_k))
        return NextTokenResult(logits=None, top_logprobs=r.top_logprobs)


def test_topk_variant_matches_full_fusion_when_k_covers_the_vocabulary(models, tok):
    m = models
    full = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic")).generate(PROMPTS)
    emulated = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic", large_top_k=len(tok))).generate(PROMPTS)
    assert emulated.tokens == full.tokens and emulated.info["approximate"] is True
    # With k = 3 the fusion sees only the union of the large model's top-3 and the expert's
    # top-3: every chosen token must lie in that union, and be the argmax of the fused logits
    # over it (large_tail="floor": an unreturned large-model token gets the lowest returned log-prob).
    k = 3
    fusion = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic", large_top_k=k, large_tail="floor"))
    steps = []
    small_k = fusion.generate(PROMPTS, on_step=steps.append)
    assert len(steps) == sum(len(t) for t in small_k.tokens) > 0
    for info in steps:
        lp = torch.log_softmax(info["large"], -1)
        large_top = torch.topk(lp, k)
        expert_top = torch.topk(info["experts"][0], k).indices
        union = sorted(set(large_top.indices.tolist()) | set(expert_top.tolist()))
        assert info["token"] in union
        ids = torch.tensor(union)
        floor = float(large_top.values.min())
        returned = dict(zip(large_top.indices.tolist(), large_top.values.tolist()))
        zl_u = torch.tensor([returned.get(i, floor) for i in union], dtype=lp.dtype)
        fused, _ = fusion.fuse_row(zl_u, info["small"][ids], info["experts"][:, ids])
        assert union[int(torch.argmax(fused))] == info["token"]
    assert small_k.info["approximate"] is True


def test_topk_variant_through_a_text_api(models):
    m = models
    api = TopKOnly(m["large"])
    with pytest.raises(CapabilityError, match="large_top_k"):
        LogitFusion(api, m["small"], [m["expert"]], _cfg())
    res = LogitFusion(api, m["small"], [m["expert"]], _cfg(mode="proxy", large_top_k=20, max_tokens=4)).generate(PROMPTS[:2])
    emu = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="proxy", large_top_k=20, max_tokens=4)).generate(PROMPTS[:2])
    assert api.calls >= 1
    # first step: same text, same top-k, except where a token's string is shared by other ids
    # (the API reports strings; random tiny models like byte tokens that decode to '\ufffd')
    decoded = [m["small"].tokenizer.decode([i]) for i in range(len(m["small"].tokenizer))]
    for r, e in zip(res.tokens, emu.tokens):
        if decoded.count(decoded[e[0]]) == 1:
            assert r[0] == e[0]
    assert all(len(w) == len(t) for w, t in zip(res.weights, res.tokens)) and res.info["approximate"]


def test_topk_union_floor_and_renormalisation():
    zs = torch.tensor([0.0, 1.0, 2.0, 3.0, -1.0], dtype=torch.float64)
    ze = torch.tensor([[0.0, 1.0, 2.0, 3.0, 5.0]], dtype=torch.float64)
    ids, zl_u, zs_u, ze_u = arith.topk_union(torch.tensor([3, 1]), torch.tensor([-0.1, -2.5], dtype=torch.float64), zs, ze, 2)
    assert ids.tolist() == [1, 3, 4]  # the large model's tokens and the expert's top-2
    assert zl_u.tolist() == [-2.5, -0.1, -2.5]  # an unreturned token gets the lowest returned value
    assert ze_u.tolist() == [[1.0, 3.0, 5.0]] and zs_u.tolist() == [1.0, 3.0, -1.0]


@pytest.mark.parametrize("tail", ["small", "uniform"])
def test_topk_fill_keeps_the_returned_mass_and_the_top_k_order(tail):
    zs = torch.tensor([0.0, 1.0, 2.0, 3.0, -1.0, 4.0], dtype=torch.float64)
    lp = torch.tensor([-0.3, -2.5], dtype=torch.float64)  # tokens 3 and 1 returned
    zl = arith.topk_fill(torch.tensor([3, 1]), lp, zs, tail)
    assert zl[3] == -0.3 and zl[1] == -2.5
    rest = [0, 2, 4, 5]
    missing = 1 - lp.exp().sum()
    # no unreturned token may be as likely as the least likely returned one
    assert bool((zl[rest] < -2.5).all())
    uncapped = (torch.softmax(zs, -1)[rest] / torch.softmax(zs, -1)[rest].sum() * missing) if tail == "small" else torch.full((4,), float(missing) / 4, dtype=torch.float64)
    capped = uncapped >= torch.exp(torch.tensor(-2.5, dtype=torch.float64))
    assert torch.allclose(zl[rest][~capped].exp(), uncapped[~capped])
    if tail == "small":
        assert bool(capped[3])  # token 5 is the small base's favourite: its share would exceed the cap
    # every token returned: the large model's own log-probs, nothing filled
    full = torch.log_softmax(torch.tensor([0.3, -1.0, 2.0, 0.0, 1.0, -2.0], dtype=torch.float64), -1)
    assert torch.equal(arith.topk_fill(torch.arange(6), full, zs, tail), full)


@pytest.mark.parametrize("tail", ["small", "uniform"])
@pytest.mark.parametrize("k", [1, 3])
def test_topk_fill_with_expert_equal_to_small_follows_the_large_models_greedy(models, tail, k):
    # the identity any top-k mapping must keep, down to k = 1 (where a filled token could tie)
    m = models
    large_out = m["large"].generate(GenerateRequest(prompts=tuple(PROMPTS), max_tokens=6))
    for mode in ("proxy", "dynamic"):
        res = LogitFusion(m["large"], m["small"], [m["small"]], _cfg(mode=mode, large_top_k=k, large_tail=tail)).generate(PROMPTS)
        assert res.texts == list(large_out.texts)


def test_topk_fill_with_k_covering_the_vocabulary_is_exact(models, tok):
    m = models
    full = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic")).generate(PROMPTS)
    for tail in ("small", "uniform"):
        emu = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic", large_top_k=len(tok), large_tail=tail)).generate(PROMPTS)
        assert emu.tokens == full.tokens and emu.weights == full.weights


# --- bad input ------------------------------------------------------------------------
class TextOnly(Provider):
    name = "text-only"
    declared_capabilities = frozenset({Capability.TEXT})


def test_bad_inputs_are_refused_with_clear_messages(models):
    m = models
    with pytest.raises(CapabilityError, match=r"fusion \(small model\): needs logits"):
        LogitFusion(m["large"], TextOnly(), [m["expert"]])
    with pytest.raises(CapabilityError, match=r"fusion \(large model"):
        LogitFusion(TextOnly(), m["small"], [m["expert"]])
    with pytest.raises(ConfigError, match=r"alpha: expected a number in \[0, 2\]"):
        LogitFusion(m["large"], m["small"], [m["expert"]], FusionConfig(alpha=2.5))
    with pytest.raises(ConfigError, match="alpha: expected a finite number"):
        FusionConfig(alpha=float("nan")).check()
    with pytest.raises(ConfigError, match="experts: expected at least one expert provider, received 'zero experts'"):
        LogitFusion(m["large"], m["small"], [])
    with pytest.raises(ConfigError, match="stop: expected a tuple of non-empty strings"):
        FusionConfig(stop=("",)).check()
    with pytest.raises(ConfigError, match="mode: expected one of proxy, dynamic"):
        FusionConfig(mode="static").check()
    fusion = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(max_tokens=10))
    with pytest.raises(ConfigError, match=r"at most 64 tokens including max_tokens=10 \(context length of the large model large\)"):
        fusion.generate(["the cat " * 40])
    with pytest.raises(ConfigError, match="prompts: expected a non-empty list"):
        fusion.generate([])


class LogitsNoSteps(Provider):
    """Full logits of a text prompt, but no step decoding (e.g. a remote scorer)."""

    name = "logits-no-steps"
    declared_capabilities = frozenset({Capability.LOGITS})

    def __init__(self, inner):
        super().__init__()
        self.tokenizer, self.encode = inner.tokenizer, inner.encode


def test_step_decoding_is_a_declared_capability(models):
    m = models
    assert Capability.STEP_DECODE in m["small"].capabilities
    for role in ("small", "expert 1", "large"):
        args = [m["large"], m["small"], [m["expert"]]]
        if role == "small":
            args[1] = LogitsNoSteps(m["small"])
        elif role == "expert 1":
            args[2] = [LogitsNoSteps(m["expert"])]
        else:
            args[0] = LogitsNoSteps(m["large"])
        with pytest.raises(CapabilityError) as err:
            LogitFusion(*args)
        msg = str(err.value)
        assert "\n" not in msg and f"fusion ({role} model" in msg and "step_decode" in msg and "hf-causal" in msg, msg
    with pytest.raises(CapabilityError, match=r"provider text-only: does not support decode_start\(\)"):
        TextOnly().decode_start([[1]])


def test_fusion_through_clients_bills_every_step(models):
    from blackbox.client import Client, Ledger

    m = models
    cfg = _cfg(mode="dynamic", max_tokens=6)
    plain = LogitFusion(m["large"], m["small"], [m["expert"], m["expert2"]], cfg).generate(PROMPTS)
    ledgers = {r: Ledger() for r in ("large", "small", "e1", "e2")}
    wrapped = [Client(m[k], ledger=ledgers[r]) for k, r in (("large", "large"), ("small", "small"), ("expert", "e1"), ("expert2", "e2"))]
    res = LogitFusion(wrapped[0], wrapped[1], wrapped[2:], cfg).generate(PROMPTS)
    assert res.tokens == plain.tokens and res.weights == plain.weights
    steps = max(len(t) for t in res.tokens) - 1  # steps after the prefill (one batch of 4 rows)
    prompt_ids = sum(len(m["small"].encode(p)) for p in PROMPTS)
    for led in ledgers.values():  # the prefill: one query per row and every prompt id; each step: one per row
        assert led.queries == len(PROMPTS) * (1 + steps)
        assert led.prompt_tokens == prompt_ids + len(PROMPTS) * steps
    small_budget = Client(m["small"], ledger=Ledger(max_queries=len(PROMPTS) * 2))
    from blackbox.errors import BudgetExceededError

    with pytest.raises(BudgetExceededError, match="decode_step"):
        LogitFusion(m["large"], small_budget, [m["expert"]], cfg).generate(PROMPTS)


def test_a_model_in_two_roles_is_stepped_once(models):
    from blackbox.client import Client, Ledger

    m = models
    cfg = _cfg(mode="proxy", max_tokens=5)
    shared = Client(m["small"], ledger=Ledger())
    res = LogitFusion(shared, shared, [m["expert"]], cfg).generate(PROMPTS)
    # large = small: z_L + (z_E - z_S) is the expert's own greedy text
    assert res.tokens == LogitFusion(m["expert"], m["expert"], [m["expert"]], cfg).generate(PROMPTS).tokens
    steps = max(len(t) for t in res.tokens) - 1
    assert shared.ledger.queries == len(PROMPTS) * (1 + steps)  # one forward pass per step, not one per role


# --- CLI --------------------------------------------------------------------------------
def test_cli_generate_json(models, tmp_path):
    from typer.testing import CliRunner

    from blackbox.cli import app

    m = models
    specs = {}
    for role in ("large", "small", "expert"):
        d = tmp_path / role
        m[role].model.save_pretrained(str(d), safe_serialization=True)
        m[role].tokenizer.save_pretrained(str(d))
        specs[role] = f"hf-causal:{d}"
    pfile = tmp_path / "prompts.txt"
    pfile.write_text("\n".join(PROMPTS[:3]) + "\n")
    args = ["fuse", "generate", "--large", specs["large"], "--small", specs["small"], "--expert", specs["expert"],
            "--expert", specs["expert"], "--mode", "dynamic", "--max-tokens", "4", "--prompts", str(pfile), "--json", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["outputs"]) == 3 and len(out["weights"]) == 3
    assert all(len(step) == 2 for w in out["weights"] for step in w)
    want = LogitFusion(m["large"], m["small"], [m["expert"], m["expert"]], _cfg(mode="dynamic", max_tokens=4)).generate(PROMPTS[:3])
    assert out["outputs"] == want.texts
    bad = CliRunner().invoke(app, ["fuse", "generate", "--large", specs["large"], "--small", specs["small"], "--expert", specs["expert"],
                                   "--alpha", "3", "--prompt", "the cat"])
    assert bad.exit_code == 1 and "alpha: expected a number in [0, 2]" in bad.output
    both = CliRunner().invoke(app, ["fuse", "generate", "--large", specs["large"], "--small", specs["small"], "--expert", specs["expert"]])
    assert both.exit_code == 1 and "exactly one of --prompt" in both.output


def test_package_init_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, blackbox.methods.fusion, blackbox.methods.fusion.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# --- which expert is active: expert_choice (issue 21 item 2) ---------------------------
def _obj(rows):
    """(1, T, C) objective from per-expert rows of candidate values."""
    return torch.tensor([rows], dtype=torch.float64)


def test_choose_weights_step_first_and_cumulative_on_hand_made_objectives():
    grid = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    # step 1: expert 0 best at α = 1; step 2: expert 1 better by a little; step 3: expert 1 better by a lot
    steps = [_obj([[5, 1, 4], [5, 2, 3]]), _obj([[5, 1.5, 4], [5, 3, 1.2]]), _obj([[5, 4, 4], [5, 3, 0.1]])]
    w_step = [arith.choose_weights_batch(o, grid)[0][0].tolist() for o in steps]
    assert w_step == [[1, 0], [0, 2], [0, 2]]  # switches at every better step
    mem = torch.zeros(1, 2, dtype=torch.float64)
    w_first = [arith.choose_weights_batch(o, grid, "first", mem)[0][0].tolist() for o in steps]
    assert w_first == [[1, 0], [1, 0], [1, 0]] and mem.tolist() == [[1, 0]]  # locked on expert 0, only its α searched
    mem = torch.zeros(1, 2, dtype=torch.float64)
    w_cum = [arith.choose_weights_batch(o, grid, "cumulative", mem)[0][0].tolist() for o in steps]
    # sums of the best values: (1, 2) → (2.5, 3.2) → (6.5, 3.3): switches only at step 3
    assert w_cum == [[1, 0], [1, 0], [0, 2]] and torch.allclose(mem, torch.tensor([[6.5, 3.3]], dtype=torch.float64))
    # first: no lock while the best weight is 0 (every expert ties at α = 0)
    mem = torch.zeros(1, 2, dtype=torch.float64)
    w, _ = arith.choose_weights_batch(_obj([[1, 2, 3], [1, 4, 5]]), grid, "first", mem)
    assert w.tolist() == [[0, 0]] and mem.tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="memory: expected a"):
        arith.choose_weights_batch(steps[0], grid, "first")
    with pytest.raises(ValueError, match="choice: expected one of step, first, cumulative"):
        arith.choose_weights_batch(steps[0], grid, "vote")


@pytest.mark.parametrize("choice", ["first", "cumulative"])
def test_expert_choice_decoding_is_batch_independent_and_keeps_first_experts(models, tok, choice):
    m = models
    experts = [m["expert"], m["expert2"]]
    kw = dict(mode="dynamic", expert_choice=choice, max_tokens=8)
    batched = LogitFusion(m["large"], m["small"], experts, _cfg(batch_size=4, **kw)).generate(PROMPTS)
    single = LogitFusion(m["large"], m["small"], experts, _cfg(batch_size=1, **kw)).generate(PROMPTS)
    assert batched.tokens == single.tokens
    for wb, ws in zip(batched.weights, single.weights):
        assert np.allclose(wb, ws, atol=1e-6)
    assert all(sum(x != 0 for x in step) <= 1 for w in batched.weights for step in w)
    if choice == "first":  # one expert per answer once a weight > 0 was given
        assert all(len({i for step in w for i, x in enumerate(step) if x != 0}) <= 1 for w in batched.weights)
    # the emulated top-k path with k covering the vocabulary carries the same state
    full_k = LogitFusion(m["large"], m["small"], experts, _cfg(batch_size=4, large_top_k=len(tok), **kw)).generate(PROMPTS)
    assert full_k.tokens == batched.tokens
    # a step fused alone is an answer's first step: the same as the per-step search there
    step = LogitFusion(m["large"], m["small"], experts, _cfg(mode="dynamic", max_tokens=1)).generate(PROMPTS)
    assert [w[0] for w in batched.weights] == [w[0] for w in step.weights]


def test_expert_choice_with_one_expert_is_the_per_step_search(models):
    m = models
    ref = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic")).generate(PROMPTS)
    for choice in ("first", "cumulative"):
        got = LogitFusion(m["large"], m["small"], [m["expert"]], _cfg(mode="dynamic", expert_choice=choice)).generate(PROMPTS)
        assert got.tokens == ref.tokens and got.weights == ref.weights


def test_expert_choice_is_validated():
    assert FusionConfig().expert_choice == "step"
    with pytest.raises(ConfigError, match="expert_choice: expected one of step, first, cumulative, received 'vote'"):
        FusionConfig(expert_choice="vote")
    with pytest.raises(ConfigError, match=r"refine: expected 0 with expert_choice=first"):
        FusionConfig(expert_choice="first", refine=3)
