"""A minimal provider plugin: deterministic hashed-bag-of-words embeddings and echo text.

It shows the plugin checklist in practice (see blackbox docs/providers.md): subclass
``blackbox.provider.Provider``, declare capabilities, implement their calls returning the
typed results with ``Usage``, accept a spec, and publish an entry point.
"""

from __future__ import annotations

import hashlib

import numpy as np

from blackbox.provider import Provider, check_options
from blackbox.types import Capability, EmbedRequest, EmbedResult, GenerateRequest, GenerateResult, Usage


class EchoProvider(Provider):
    """Echoes prompts back; embeds texts as hashed bags of words."""

    name = "echo"
    declared_capabilities = frozenset({Capability.EMBED, Capability.TEXT})

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.dim = dim

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "EchoProvider":
        check_options(cls.name, options, ["dim"])
        return cls(dim=int(options.get("dim", 64)))

    def describe(self) -> dict:
        return {"provider": self.name, "dim": self.dim}

    def embed(self, request: EmbedRequest) -> EmbedResult:
        out = np.zeros((len(request.texts), self.dim))
        for i, text in enumerate(request.texts):
            for word in text.lower().split():
                h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0
        return EmbedResult(vectors=out, usage=Usage(queries=len(request.texts)))

    def generate(self, request: GenerateRequest) -> GenerateResult:
        texts = tuple(p[: request.max_tokens * 4] for p in request.prompts)
        return GenerateResult(texts=texts, finish_reasons=("stop",) * len(texts), usage=Usage(queries=len(texts)))
