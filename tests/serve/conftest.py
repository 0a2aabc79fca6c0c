"""Fixtures for the serving tests: a tiny in-process Llama (fast, for exactness and batching
logic), its saved directory (for the CLI), and helpers to talk to a server."""

from __future__ import annotations

import pytest
from tiny_lm import tiny_llama
from tiny_lm import tiny_tokenizer as build_tokenizer

# Test modules say what they need (torch, transformers, fastapi/uvicorn, openai) themselves.

WORDS = ["the cat sat on the mat", "a bird can fly over the tree", "one two three four five", "how do I bake bread",
         "what is two plus two", "the capital of France is Paris", "the capital of Peru is Lima", "tell me a joke",
         "hello there, how are you?", "write a haiku about rain", "red green blue yellow", "the dog ate the bone"]


def make_tokenizer():
    """The tests' tiny byte-level BPE tokenizer (vocab 300), with a minimal chat template."""
    return build_tokenizer(WORDS * 3, vocab_size=300, chat=True)


def make_model(tokenizer, seed: int = 0, layers: int = 2):
    """A randomly initialised tiny Llama (hidden 32); large init so greedy text varies."""
    return tiny_llama(tokenizer, seed=seed, layers=layers)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    """The tiny Llama as an hf-causal provider."""
    from blackbox.providers.hf_causal import HFCausalProvider

    return HFCausalProvider.from_model(make_model(tiny_tokenizer), tiny_tokenizer, max_batch=16, name="tiny")


@pytest.fixture(scope="session")
def tiny_dir(tiny_lm, tmp_path_factory):
    """The tiny Llama saved to a directory (for ``hf-causal:DIR`` specs and the CLI)."""
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_lm.model.save_pretrained(d)
    tiny_lm.tokenizer.save_pretrained(d)
    return d
