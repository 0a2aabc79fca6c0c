"""Chat templates for tokenizers shipped without one.

A GGUF conversion often loses the tokenizer's chat template (Gemma-3-270M's GGUF has none), so
asking such a model plain questions would need the user to know its format. The well-known
formats below are recognised by their special tokens in the tokenizer's vocabulary and
installed on the tokenizer when it has no template of its own; ``EcoConfig.chat_template``
(CLI ``--chat-template``) names one explicitly or gives a Jinja template. The name used is
stored in the run, so ``unlearn eval``/``generate`` and ``eco:RUN_DIR`` ask the same way.
"""

from __future__ import annotations

from typing import Any

from blackbox.errors import bad_value

CHAT_TEMPLATES = {
    # Gemma (1, 2, 3): one turn per message, "model" for the assistant, no system role
    # (a system message is put before the first user turn's text, as Google's own template does).
    "gemma": (
        "{{ bos_token }}{% set first = namespace(prefix='') %}"
        "{% for message in messages %}{% if message['role'] == 'system' %}{% set first.prefix = message['content'] | trim + '\n\n' %}"
        "{% else %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
        "{{ first.prefix }}{{ message['content'] | trim }}<end_of_turn>\n{% set first.prefix = '' %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
}
"""Well-known chat formats by name (Jinja, as ``tokenizer.chat_template``)."""

MARKERS = {"gemma": ("<start_of_turn>", "<end_of_turn>")}
"""The special tokens that identify each format in a tokenizer's vocabulary."""


def known_format(tokenizer: Any) -> str | None:
    """The name of the well-known chat format whose turn markers ``tokenizer`` has, or None."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - not a transformers tokenizer: no known format
        return None
    for name, markers in MARKERS.items():
        if all(m in vocab for m in markers):
            return name
    return None


def template_text(name: str) -> str:
    """The Jinja text of ``name`` (a name from :data:`CHAT_TEMPLATES`, or a Jinja template itself)."""
    if name in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[name]
    if "{{" in name or "{%" in name:
        return name
    raise bad_value("chat_template", f"one of {', '.join(CHAT_TEMPLATES)} or a Jinja chat template", name)


def install(provider: Any, name: str | None, *, fallback: bool = True) -> str | None:
    """Put a chat template on ``provider``'s tokenizer; returns the name (or template) in use.

    ``name`` given: that template, always. ``name`` None and ``fallback``: when the tokenizer
    has no template, the well-known format it is recognised as (None when there is none).
    """
    tok = getattr(provider, "tokenizer", None)
    if name is not None:
        text = template_text(name)
        if tok is None:
            raise bad_value("chat_template", "a provider with a local tokenizer (e.g. hf-causal)", type(provider).__name__)
        _put(provider, tok, text)
        return name
    if tok is None or not fallback or getattr(tok, "chat_template", None):
        return None
    found = known_format(tok)
    if found is not None:
        _put(provider, tok, CHAT_TEMPLATES[found])
    return found


def _put(provider: Any, tok: Any, text: str) -> None:
    """Set the template on ``tok`` and, for Ray replicas (a ReplicaPool, maybe inside Client
    wrappers), on every replica's own tokenizer: ``tok`` is then only the driver's copy."""
    tok.chat_template = text
    p = provider
    while p is not None:
        if callable(getattr(type(p), "set_chat_template", None)):
            p.set_chat_template(text)
            return
        p = vars(p).get("provider") if hasattr(p, "__dict__") else None
