"""What the engine decodes: one or more local causal LMs stepped in lockstep, and how their
next-token logits become the row a token is picked from.

* :class:`PlainBackend` — one ``hf-causal`` model; picks exactly as ``HFCausalProvider.generate``.
* :class:`GuardedBackend` — an ECO :class:`~blackbox.methods.eco.guarded.GuardedProvider`: the
  gate runs on each new prompt at prefill, flagged prompts get their input embeddings
  corrupted (prefill only), unflagged prompts are the base model's, bit for bit.
* :class:`FusedBackend` — a :class:`~blackbox.methods.fusion.decode.LogitFusion`: every model
  keeps its own KV cache; each step's rows are fused as ``LogitFusion.fuse_batch`` does.
* :class:`EmbedBackend` — an encoder (``embed`` capability), for ``/v1/embeddings`` only.

The arithmetic of each backend mirrors the in-process ``generate`` of the same spec, so greedy
text served over HTTP equals in-process text (tests/serve check it).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from blackbox.errors import CapabilityError, ConfigError, bad_value


@dataclass
class Prompt:
    """A prompt as the model sees it: the exact text encoded, its ids, and the user text(s)
    the ECO gate reads, with their character offsets in ``text``."""

    text: str
    ids: list[int]
    special: bool  # tokenizer added special tokens (raw prompt) or not (chat template)
    gate_parts: list[tuple[str, int]] = field(default_factory=list)
    region: tuple[int, int] | None = None  # chat: the user text's characters (the template's tokens are never corrupted)


class Backend:
    """Base: ``models`` are stepped in lockstep; ``ref`` owns tokenizer, eos ids and stop logic."""

    kind = "generate"
    models: list[Any]
    ref: Any
    meters: Sequence[Any] = ()  # per stepped model: the Client to bill its forward passes to, or None

    # prompts --------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The tokenizer every prompt is encoded with."""
        return self.ref.tokenizer

    @property
    def context_length(self) -> int | None:
        """The smallest context length over the stepped models (None if none is known)."""
        limits = [m.context_length for m in self.models if getattr(m, "context_length", None)]
        return min(limits) if limits else None

    def has_chat_template(self) -> bool:
        """Whether ``/v1/chat/completions`` can be served (the tokenizer has a chat template)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def completion_prompt(self, text: str) -> Prompt:
        """A raw prompt, encoded as in-process ``generate`` encodes it (special tokens added)."""
        return Prompt(text, list(self.ref.encode(text)), True, [(text, 0)])

    def chat_prompt(self, messages: list[dict[str, str]]) -> Prompt:
        """Messages rendered with the tokenizer's chat template (generation prompt appended).

        One user message renders exactly as in-process ``generate(chat=True)`` renders it.
        """
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already contains its special tokens: do not add them twice.
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        # Locate user messages from the end (as GuardedProvider does with rfind): the last
        # occurrence is the message itself, not an echo of it in a system prompt.
        parts, end = [], len(text)
        for m in reversed(messages):
            if m["role"] != "user" or not m["content"]:
                continue
            pos = text.rfind(m["content"], 0, end)
            if pos >= 0:
                parts.insert(0, (m["content"], pos))
                end = pos
        region = (parts[0][1], parts[-1][1] + len(parts[-1][0])) if parts else None
        return Prompt(text, ids, False, parts, region)

    # decoding --------------------------------------------------------------------------------
    def prefill_embeds(self, prompts: Sequence[Prompt]) -> list[list[Any]]:
        """Per model, per prompt: input embeddings to prefill with, or None (plain ids)."""
        return [[None] * len(prompts) for _ in self.models]

    def combine(self, logits: Sequence[Any]) -> Any:
        """The ``(B, V)`` rows tokens are picked from, given each model's last-position logits."""
        raise NotImplementedError

    def metered(self, m: int, method: str, rows: int, tokens: int, run: Callable[[], Any]) -> Any:
        """Model ``m``'s forward pass ``run()``, billed to the Client that model came wrapped in
        (as ``decode_start``/``decode_step`` bill it in process: ``rows`` queries, ``tokens`` ids read)."""
        meter = self.meters[m] if m < len(self.meters) else None
        return run() if meter is None else meter.metered_decode(method, rows, tokens, run)

    def describe(self) -> dict[str, Any]:
        """What is served (for /v1/models and logs); never secrets."""
        return {"kind": type(self).__name__}

    def close(self) -> None:
        """Release the models."""


class PlainBackend(Backend):
    """One hf-causal model, picked from float32 logits as ``HFCausalProvider.generate`` does."""

    def __init__(self, provider: Any) -> None:
        _check_local(provider, "serve")
        self.provider = provider
        self.models = [provider]
        self.ref = provider

    def combine(self, logits: Sequence[Any]) -> Any:
        import torch

        return logits[0][:, -1, :].to(torch.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "plain", "model": self.provider.describe()}

    def close(self) -> None:
        self.provider.close()


class GuardedBackend(PlainBackend):
    """An ECO-guarded model: base model decoding, corrupted prefill embeddings when flagged.

    It mirrors ``GuardedProvider``'s private edit (gate verdict, target spans shifted into the
    templated text, corruption limited to the user's text in chat): a request with one user
    message is corrupted exactly as ``GuardedProvider.generate(chat=True)`` corrupts it; with
    several user messages, any flagged one flags the request and the region spans them all.
    """

    def __init__(self, guarded: Any) -> None:
        super().__init__(guarded.base)
        self.guarded = guarded
        # The guarded model's own span finder (by default the gate's entity matcher).
        self._spans: Callable[[str], list[tuple[int, int]]] = guarded.spans

    def flags(self, prompts: Sequence[Prompt]) -> list[bool]:
        """Gate verdict per prompt: flagged when any of its user texts is flagged (one gate call)."""
        texts = [t for p in prompts for t, _ in p.gate_parts]
        verdict = list(self.guarded.flags(texts)) if texts else []
        out, i = [], 0
        for p in prompts:
            k = len(p.gate_parts)
            out.append(bool(any(verdict[i : i + k])))
            i += k
        return out

    def prefill_embeds(self, prompts: Sequence[Prompt]) -> list[list[Any]]:
        flags = self.flags(prompts)
        return [[self._corrupted(p) if f else None for p, f in zip(prompts, flags)]]

    def _corrupted(self, prompt: Prompt) -> Any:
        """The prompt's input embeddings after the run's corruption, as GuardedProvider makes them."""
        import torch

        base = self.provider
        enc = base.tokenizer(prompt.text, add_special_tokens=prompt.special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if ids != prompt.ids:
            raise CapabilityError("guarded serving: the tokenizer gave different ids with offsets")
        offsets = [tuple(map(int, s)) for s in enc["offset_mapping"]]
        spans = [(s + off, e + off) for text, off in prompt.gate_parts for s, e in self._spans(text)]
        emb_layer = base.model.get_input_embeddings()
        with torch.inference_mode():
            emb = emb_layer(torch.tensor([ids], dtype=torch.long, device=base.device))[0]
        embeds = emb.to("cpu", torch.float32).numpy().copy()
        out = np.asarray(self.guarded.corruption.apply(np.asarray(ids, dtype=np.int64), embeds, offsets, spans, prompt.region))
        return torch.as_tensor(out, device=base.device).to(emb_layer.weight.dtype)

    def describe(self) -> dict[str, Any]:
        return {"kind": "guarded", "model": self.guarded.describe()}

    def close(self) -> None:
        self.guarded.close()


class FusedBackend(Backend):
    """Logit fusion: large, small and experts stepped together, rows fused per step."""

    def __init__(self, fusion: Any) -> None:
        if getattr(fusion, "api_large", False) or fusion.config.large_top_k is not None:
            raise CapabilityError("serve: fused models need full-vocabulary local models (no large_top_k)")
        self.fusion = fusion
        roles = list(fusion.roles.values())  # large, small, expert 1..T: providers, or Clients around them
        # One stepped model per distinct provider, as LogitFusion steps them: a model holding two
        # roles (the same spec twice in a fused spec) runs one forward pass, billed once.
        distinct: dict[int, Any] = {}
        for p in roles:
            distinct.setdefault(id(p), p)
        self._role_model = [list(distinct).index(id(p)) for p in roles]
        # The engine steps the providers themselves (its own KV-cache batching); a role given as a
        # Client has those forward passes billed to it, so its ledger counts what in-process
        # generate() would (decode_start/decode_step go through it there).
        self.models = [_unwrap(p) for p in distinct.values()]
        self.meters = [p if p is not m else None for p, m in zip(distinct.values(), self.models)]
        for m in self.models:
            _check_local(m, "serve (fused)")
        self.ref = _unwrap(fusion.large)  # LogitFusion's text and stop bookkeeping uses the large model
        self._small = _unwrap(fusion.small)  # and its prompts are encoded by the small base
        self.n_experts = len(fusion.experts)

    @property
    def tokenizer(self) -> Any:
        return self.fusion.tokenizer

    def completion_prompt(self, text: str) -> Prompt:
        return Prompt(text, list(self._small.encode(text)), True, [(text, 0)])

    def combine(self, logits: Sequence[Any]) -> Any:
        import torch

        n = self.fusion.n_vocab
        rows = [logits[i][:, -1, :n].to(torch.float64) for i in self._role_model]
        fused, _ = self.fusion.fuse_batch(rows[0], rows[1], torch.stack(rows[2:], dim=1))
        return fused

    def describe(self) -> dict[str, Any]:
        c = self.fusion.config
        return {"kind": "fused", "mode": c.mode, "alpha": c.alpha, "models": [self.models[i].describe() for i in self._role_model]}

    def close(self) -> None:
        for m, meter in zip(self.models, self.meters):
            (meter or m).close()


class EmbedBackend(Backend):
    """An encoder served on ``/v1/embeddings`` only."""

    kind = "embed"

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.models = []

    @property
    def tokenizer(self) -> Any:
        return None

    @property
    def context_length(self) -> int | None:
        return None

    def has_chat_template(self) -> bool:
        return False

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """``(vectors (n, d), prompt tokens)`` for ``texts``."""
        from blackbox.types import EmbedRequest

        res = self.provider.embed(EmbedRequest(tuple(texts)))
        return np.asarray(res.vectors), int(res.usage.prompt_tokens or sum(len(t.split()) for t in texts))

    def describe(self) -> dict[str, Any]:
        return {"kind": "embed", "model": self.provider.describe()}

    def close(self) -> None:
        self.provider.close()


def _unwrap(provider: Any) -> Any:
    """The provider under any wrappers (a Client): the object whose forward passes the engine runs."""
    from blackbox.provider import Provider

    while isinstance(getattr(provider, "provider", None), Provider):
        provider = provider.provider
    return provider


def _check_local(provider: Any, what: str) -> None:
    needed = ("model_inputs", "model_forward", "cache_of", "pick_token", "advance_row", "encode", "tokenizer")
    missing = [a for a in needed if not hasattr(provider, a)]
    if missing:
        raise CapabilityError(
            f"{what}: needs a local causal LM with step-by-step decoding (hf-causal, eco:RUN_DIR or a fused "
            f"spec); provider {getattr(provider, 'name', type(provider).__name__)} lacks {', '.join(missing)}"
        )


# --- building a backend from a spec ------------------------------------------------------------
FUSED_KEYS = ("large", "small", "experts", "mode", "alpha", "alpha_max", "alpha_step", "refine", "precision")


def read_fused_spec(path: str | Path) -> dict[str, Any]:
    """A fused-model spec file (TOML or JSON): ``large``, ``small``, ``experts`` (provider specs),
    ``mode`` (proxy|dynamic) and optional ``alpha``, ``alpha_max``, ``alpha_step``, ``refine``."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text()) if p.suffix.lower() == ".toml" else json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"fused spec {p}: could not read it: {exc}") from exc
    if not isinstance(data, dict):
        raise bad_value("fused spec", "a table/object", type(data).__name__)
    unknown = sorted(set(data) - set(FUSED_KEYS))
    if unknown:
        raise bad_value("fused spec", f"keys among {', '.join(FUSED_KEYS)}", unknown)
    for key in ("large", "small"):
        if not isinstance(data.get(key), str):
            raise bad_value(f"fused spec {key}", "a provider spec string (e.g. hf-causal:PATH)", data.get(key))
    experts = data.get("experts")
    if isinstance(experts, str):
        experts = [experts]
    if not isinstance(experts, list) or not experts or not all(isinstance(e, str) for e in experts):
        raise bad_value("fused spec experts", "a non-empty list of provider specs", experts)
    data["experts"] = experts
    return data


def fused_from_dict(spec: dict[str, Any], load: Callable[[str], Any] | None = None) -> Any:
    """A :class:`LogitFusion` from a fused spec (``load`` builds providers; default: registry)."""
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.provider import load_provider

    load = load or load_provider
    cache: dict[str, Any] = {}

    def get(s: str) -> Any:  # the same spec twice (e.g. small == expert base) loads once
        if s not in cache:
            cache[s] = load(s)
        return cache[s]

    kwargs = {k: spec[k] for k in ("mode", "alpha", "alpha_max", "alpha_step", "refine", "precision") if k in spec}
    return LogitFusion(get(spec["large"]), get(spec["small"]), [get(e) for e in spec["experts"]], FusionConfig(**kwargs))


def is_fused_spec(model: str) -> bool:
    """Whether ``model`` names a fused-model spec file rather than a provider spec."""
    return model.lower().endswith((".toml", ".json")) and Path(model).is_file()


def backend_for(obj: Any) -> Backend:
    """Wrap a provider, guarded provider or :class:`LogitFusion` in the matching backend."""
    from blackbox.types import Capability

    if hasattr(obj, "fuse_batch") and hasattr(obj, "roles"):
        return FusedBackend(obj)
    if hasattr(obj, "gate") and hasattr(obj, "corruption") and hasattr(obj, "base"):
        return GuardedBackend(obj)
    caps = set(getattr(obj, "capabilities", ()))
    if Capability.EMBED in caps and not hasattr(obj, "model_forward"):
        return EmbedBackend(obj)
    return PlainBackend(obj)


def load_backend(model: str) -> Backend:
    """A backend for ``blackbox serve MODEL``: a provider spec or a fused spec file."""
    if is_fused_spec(model):
        return FusedBackend(fused_from_dict(read_fused_spec(model)))
    from blackbox.provider import load_provider

    return backend_for(load_provider(model))
