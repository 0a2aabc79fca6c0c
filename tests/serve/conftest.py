"""Fixtures for the serving tests: a tiny in-process Llama (fast, for exactness and batching
logic), its saved directory (for the CLI), and helpers to talk to a server."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

WORDS = ["the cat sat on the mat", "a bird can fly over the tree", "one two three four five", "how do I bake bread",
         "what is two plus two", "the capital of France is Paris", "the capital of Peru is Lima", "tell me a joke",
         "hello there, how are you?", "write a haiku about rain", "red green blue yellow", "the dog ate the bone"]
# A minimal chat template (the tiny tokenizer has none): enough to exercise /v1/chat/completions.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def make_tokenizer():
    """A byte-level BPE tokenizer trained here on a few sentences (vocab 300)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(WORDS * 3, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    out.chat_template = CHAT_TEMPLATE
    return out


def make_model(tokenizer, seed: int = 0, layers: int = 2):
    """A randomly initialised tiny Llama (hidden 32); large init so greedy text varies."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


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
