"""Fusion with the large model behind a real OpenAI-compatible server (llama.cpp, SmolLM2).

The identity any correct top-k mapping must satisfy: with the expert equal to the small base,
proxy fusion adds nothing to the large model's logits, so its greedy text is the served
model's own text-level greedy continuation (at each step, the argmax of the top-k log-probs the
server returns for the prompt plus the text so far). Checked token for token; a chat-mode spec
is refused before any request reaches the server (it used to print "LLLLLLLLLLLL").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
import llama_server  # noqa: E402

from blackbox.errors import ConfigError  # noqa: E402

PROMPTS = ("The capital of France is", "def fibonacci(n):")
TOKENS = 8


@pytest.fixture(scope="module")
def server():
    try:
        llama_server.check_available()
    except llama_server.Unavailable as exc:
        pytest.skip(str(exc))  # a failure under BLACKBOX_REQUIRE_MODELS=1 (tests/conftest.py)
    with llama_server.serve(n_threads=1) as srv:
        yield srv


@pytest.fixture(scope="module")
def small():
    pytest.importorskip("transformers")
    from blackbox.provider import load_provider

    return load_provider(f"hf-causal:{llama_server.model_path()}")


def _served_greedy(large, prompt: str, n: int) -> str:
    """Text-level greedy of the served model: argmax of its top-k for prompt + text so far."""
    from blackbox.types import NextTokenRequest

    text = ""
    for _ in range(n):
        top = large.next_token(NextTokenRequest(prompts=(prompt + text,), top_k=5)).top_logprobs[0]
        text += max(top.items(), key=lambda kv: kv[1])[0]
    return text


def test_chat_mode_large_model_is_refused_before_any_request(server, small):
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.provider import load_provider

    large = load_provider(f"openai:{llama_server.MODEL_ALIAS}?base_url={server.base_url}")
    before = server.count("POST /v1/")
    with pytest.raises(ConfigError, match="is in chat mode; fusion continues raw text, so it needs the completions endpoint: add completions=1"):
        LogitFusion(large, small, [small], FusionConfig(mode="proxy", large_top_k=20))
    assert server.count("POST /v1/") == before


@pytest.mark.slow
def test_proxy_with_expert_equal_to_small_reproduces_the_served_greedy_text(server, small):
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.provider import load_provider

    large = load_provider(f"openai:{llama_server.MODEL_ALIAS}?base_url={server.base_url}&completions=1")
    fusion = LogitFusion(large, small, [small], FusionConfig(mode="proxy", max_tokens=TOKENS, large_top_k=20))
    out = fusion.generate(list(PROMPTS))
    for prompt, text, toks in zip(PROMPTS, out.texts, out.tokens):
        reference = _served_greedy(large, prompt, len(toks))
        assert text == reference, (prompt, text, reference)
        assert len(toks) == TOKENS  # no early stop hid a mismatch
    # The small model alone (dequantised fp32 weights) continues differently somewhere: the
    # fused text follows the served model, not the local copy.
    from blackbox.types import GenerateRequest

    local = small.generate(GenerateRequest(prompts=PROMPTS, max_tokens=TOKENS)).texts
    assert list(local) != list(out.texts)
