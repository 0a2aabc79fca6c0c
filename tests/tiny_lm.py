"""Tiny in-process causal LMs for tests: a byte-level BPE tokenizer trained here and a random
2-layer Llama over it (the shape every method's unit tests need; build once per module).

``tiny_tokenizer(corpus, chat=True)`` adds a chat template, so chat-mode code paths (instruct
models) can be tested without a real instruct model.
"""

from __future__ import annotations

from typing import Any, Sequence

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def tiny_tokenizer(corpus: Sequence[str], vocab_size: int = 400, chat: bool | str = False) -> Any:
    """A fast tokenizer (pad/bos/eos = ``<pad>``/``<s>``/``</s>``) trained on ``corpus``;
    ``chat=True`` adds ``CHAT_TEMPLATE``, a string adds that template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus), trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat:
        out.chat_template = chat if isinstance(chat, str) else CHAT_TEMPLATE
    return out


def tiny_llama(tokenizer: Any = None, seed: int = 0, hidden: int = 32, layers: int = 2, ctx: int = 256,
               vocab_size: int | None = None) -> Any:
    """A randomly initialised Llama sized to ``tokenizer`` (or ``vocab_size``), eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = len(tokenizer) if vocab_size is None else vocab_size
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.3)
    return LlamaForCausalLM(config).eval()
