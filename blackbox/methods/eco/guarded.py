"""The guarded model: gate + corruption in front of any ``inputs_embeds`` provider.

:class:`GuardedProvider` is an ordinary :class:`~blackbox.provider.Provider` (``next_token``,
``generate``, ``score``), so the rest of the toolkit can use an unlearned model like any
other. For each batch it asks the gate which prompts to corrupt; unflagged prompts go to the
base provider's plain calls (their outputs are exactly the base model's), flagged prompts go
through its ``*_with_embeds`` calls with an edit that corrupts the selected tokens' input
embeddings during prefill only. No extra model calls are made: one call per prompt, as
without the guard.

Spec: ``eco:RUN_DIR`` loads a fitted run's artifact (the model spec is stored in it).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from blackbox.errors import CapabilityError, ConfigError
from blackbox.provider import Provider, check_options, require
from blackbox.types import (
    Capability,
    GenerateRequest,
    GenerateResult,
    NextTokenRequest,
    NextTokenResult,
    ScoreRequest,
    ScoreResult,
    Usage,
)

from .artifact import gate_and_corruption, load_artifact
from .corruption import Corruption

NAME = "eco"
PASS_THROUGH = frozenset({Capability.LOGITS, Capability.TOP_LOGPROBS, Capability.TEXT, Capability.SCORE})
EMBED_CALLS = ("token_embeddings", "generate_with_embeds", "next_token_with_embeds", "score_with_embeds")


def require_embeds(provider: Any, component: str = "ECO") -> None:
    """Refuse, with an explanation, a provider that cannot take input-embedding edits."""
    caps = set(getattr(provider, "capabilities", ()))
    missing = [c for c in EMBED_CALLS if not callable(getattr(provider, c, None))]
    if Capability.INPUTS_EMBEDS not in caps or missing:
        name = getattr(provider, "name", type(provider).__name__)
        raise CapabilityError(
            f"{component}: needs a provider with the inputs_embeds capability (a local model whose prompt "
            f"embeddings can be edited before the forward pass, e.g. hf-causal:PATH); provider {name} "
            f"{'lacks ' + ', '.join(missing) if missing else 'does not declare inputs_embeds'}. A text-only API "
            "cannot be corrupted at the embedding level: ECO cannot unlearn through it"
        )


def _merge(parts: list[tuple[list[int], Any]], n: int) -> list[Any]:
    out: list[Any] = [None] * n
    for idx, values in parts:
        for i, v in zip(idx, values):
            out[i] = v
    return out


class GuardedProvider(Provider):
    """A provider that answers through ``base``, corrupting the prompts the gate flags.

    ``gate=None`` corrupts every prompt (the "no gate" ablation and the strength search).
    ``spans`` finds the forget target's character spans in a prompt (default: the gate's
    entity matcher), for the ``entity`` token selection.
    """

    name = NAME
    declared_capabilities = PASS_THROUGH
    summary = "an ECO-unlearned model: gate + embedding corruption in front of an inputs_embeds provider"

    def __init__(
        self,
        base: Provider,
        gate: Any,
        corruption: Corruption,
        *,
        spans: Callable[[str], list[tuple[int, int]]] | None = None,
        client: Provider | None = None,
    ) -> None:
        """``client``: what the model calls go through (a Client around ``base``, for its ledger and
        retries); default ``base`` itself. ``base`` stays the local model (serving decodes on it)."""
        super().__init__()
        require_embeds(base)
        self.base, self.gate, self.corruption = base, gate, corruption
        self.client = client if client is not None else base
        self._spans = spans or (gate.spans if gate is not None else (lambda text: []))
        self.capabilities = frozenset(base.capabilities) & PASS_THROUGH
        self.gate_seconds = 0.0
        self.gate_prompts = 0
        self.flagged_prompts = 0
        self.last_flags: np.ndarray = np.zeros(0, dtype=bool)

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "GuardedProvider":
        """``eco:RUN_DIR[?model=SPEC]``: the guarded model of a fitted run."""
        check_options(NAME, options, ("model",))
        # A spec-loaded guard is an ordinary provider: whoever loads it wraps it in their own Client
        # (the CLI does), and serving needs the local model itself for step-by-step decoding.
        return load_guarded(target, model=options.get("model"), client=False)

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "base": self.base.describe(), "corruption": self.corruption.to_json()}

    def cache_identity(self) -> dict[str, Any]:
        gate = None if self.gate is None else {"threshold": self.gate.threshold_, "coef_sum": float(np.sum(self.gate.coef_))}
        return {**self.describe(), "base": self.base.cache_identity(), "gate": gate}

    # gating ------------------------------------------------------------------------------
    def flags(self, prompts: Sequence[str]) -> np.ndarray:
        """Which prompts get corrupted (all when there is no gate)."""
        t0 = time.perf_counter()
        out = np.ones(len(prompts), dtype=bool) if self.gate is None else np.asarray(self.gate.flags(list(prompts)), dtype=bool)
        self.gate_seconds += time.perf_counter() - t0
        self.gate_prompts += len(prompts)
        self.flagged_prompts += int(out.sum())
        self.last_flags = out
        return out

    def _edit(self, prompts: Sequence[str], chat: bool) -> Callable[..., np.ndarray]:
        """One edit for a batch of flagged prompts: spans looked up by the prompt's token ids.

        With ``chat`` the prompt sits inside the model's chat template: target spans are shifted
        to where the prompt lies in the templated text, and only the prompt's own tokens may be
        corrupted (never the template's, never generated ones: the edit acts on prefill only).
        """
        table: dict[tuple[int, ...], tuple[list[tuple[int, int]], tuple[int, int] | None]] = {}
        for p in prompts:
            full = self.base.prompt_text(p, chat) if hasattr(self.base, "prompt_text") else p
            shift = max(full.rfind(p), 0) if chat else 0
            spans = [(s + shift, e + shift) for s, e in self._spans(p)]
            region = (shift, shift + len(p)) if chat else None
            ids = tuple(int(i) for i in self.base.encode(p, chat)) if hasattr(self.base, "encode") else None
            if ids is None:
                ids = tuple(int(i) for i in self.base.token_embeddings(p, chat).ids)
            table[ids] = (spans, region)
        corruption = self.corruption

        def edit(ids: np.ndarray, embeds: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
            spans, region = table.get(tuple(int(i) for i in ids), ([], None))
            return corruption.apply(ids, embeds, offsets, spans, region)

        return edit

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the forget target in ``text`` (what ``tokens=entity`` corrupts)."""
        return list(self._spans(text))

    def _split(self, prompts: Sequence[str]) -> tuple[list[int], list[int]]:
        flags = self.flags(prompts)
        return [i for i in range(len(prompts)) if not flags[i]], [i for i in range(len(prompts)) if flags[i]]

    # calls ---------------------------------------------------------------------------------
    def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        """Next-token logits / top-k after each prompt, flagged prompts corrupted."""
        prompts = tuple(request.prompts)
        plain, bad = self._split(prompts)
        parts, usage = [], []
        if plain:
            r = self.client.next_token(NextTokenRequest(tuple(prompts[i] for i in plain), request.top_k))
            parts.append((plain, r))
            usage.append(r.usage)
        if bad:
            sub = tuple(prompts[i] for i in bad)
            r = self.client.next_token_with_embeds(NextTokenRequest(sub, request.top_k), self._edit(sub, False))
            parts.append((bad, r))
            usage.append(r.usage)
        if request.top_k is None:
            rows = _merge([(idx, list(r.logits)) for idx, r in parts], len(prompts))
            return NextTokenResult(logits=np.stack(rows), top_logprobs=None, usage=_sum(usage))
        rows = _merge([(idx, list(r.top_logprobs)) for idx, r in parts], len(prompts))
        return NextTokenResult(logits=None, top_logprobs=tuple(rows), usage=_sum(usage))

    def generate(self, request: GenerateRequest) -> GenerateResult:
        """Continuations; flagged prompts are corrupted at prefill, generated tokens untouched."""
        prompts = tuple(request.prompts)
        plain, bad = self._split(prompts)
        parts, usage = [], []

        def sub_request(idx: list[int]) -> GenerateRequest:
            return GenerateRequest(
                tuple(prompts[i] for i in idx), max_tokens=request.max_tokens, temperature=request.temperature,
                top_p=request.top_p, stop=request.stop, seed=request.seed, top_logprobs=request.top_logprobs, chat=request.chat,
            )

        if plain:
            r = self.client.generate(sub_request(plain))
            parts.append((plain, r))
            usage.append(r.usage)
        if bad:
            req = sub_request(bad)
            r = self.client.generate_with_embeds(req, self._edit(req.prompts, request.chat))
            parts.append((bad, r))
            usage.append(r.usage)
        n = len(prompts)
        texts = _merge([(idx, list(r.texts)) for idx, r in parts], n)
        finish = _merge([(idx, list(r.finish_reasons) or [None] * len(idx)) for idx, r in parts], n)
        tlp = None
        if all(r.token_logprobs is not None for _, r in parts):
            tlp = tuple(_merge([(idx, list(r.token_logprobs)) for idx, r in parts], n))
        top = None
        if request.top_logprobs and all(r.top_logprobs is not None for _, r in parts):
            top = tuple(_merge([(idx, list(r.top_logprobs)) for idx, r in parts], n))
        return GenerateResult(texts=tuple(texts), token_logprobs=tlp, top_logprobs=top, finish_reasons=tuple(finish), usage=_sum(usage))

    def score(self, request: ScoreRequest) -> ScoreResult:
        """Log-likelihood of continuations; flagged prompts' embeddings corrupted."""
        prompts, conts = tuple(request.prompts), tuple(request.continuations)
        plain, bad = self._split(prompts)
        parts, usage = [], []
        if plain:
            r = self.client.score(ScoreRequest(tuple(prompts[i] for i in plain), tuple(conts[i] for i in plain)))
            parts.append((plain, r))
            usage.append(r.usage)
        if bad:
            sub = tuple(prompts[i] for i in bad)
            r = self.client.score_with_embeds(ScoreRequest(sub, tuple(conts[i] for i in bad)), self._edit(sub, False))
            parts.append((bad, r))
            usage.append(r.usage)
        n = len(prompts)
        lp = _merge([(idx, list(r.logprobs)) for idx, r in parts], n)
        nt = _merge([(idx, list(r.n_tokens)) for idx, r in parts], n)
        return ScoreResult(logprobs=np.asarray(lp, dtype=np.float64), n_tokens=np.asarray(nt, dtype=np.int64), usage=_sum(usage))

    def close(self) -> None:
        self.client.close()  # the base itself, or a Client around it (which closes it)


def _sum(usages: list[Usage]) -> Usage:
    return Usage(
        queries=sum(u.queries for u in usages),
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        cost=sum(u.cost for u in usages),
    )


def check_base(provider: Provider) -> None:
    """``require`` + the embedding calls (used before any query is spent)."""
    require_embeds(provider)
    require(provider, [Capability.TEXT], "ECO")


def as_client(provider: Any) -> Any:
    """``provider`` behind a :class:`~blackbox.client.Client` (ledger, retries) unless it already is one.

    The CLI's providers come wrapped (``served(..., client=True)``); the library entry points
    wrap a bare provider the same way, so both query alike (outputs unchanged: no cache)."""
    from blackbox.client import Client, Ledger

    return provider if isinstance(provider, Client) else Client(provider, ledger=Ledger())


def load_guarded(run_dir: str | os.PathLike[str], *, model: str | None = None, provider: Any = None, encoder: Any = None,
                 client: bool = True) -> GuardedProvider:
    """The guarded provider of a fitted run (``model``/``provider`` override the stored spec).

    Its model calls go through a Client (``guarded.client.ledger`` counts the queries;
    ``client=False``: straight to the provider, as the ``eco:RUN_DIR`` spec gives it), and the
    run's chat template, if it named one, is put on the tokenizer."""
    from blackbox.provider import load_provider

    from .chat import install

    artifact, arrays = load_artifact(run_dir)
    if provider is None:
        spec = model or artifact.get("model")
        if not spec:
            raise ConfigError("model: the artifact stores no model spec (fitted on an in-memory model); pass --model SPEC")
        provider = load_provider(spec)
    if artifact["config"].get("chat_template") and artifact["config"].get("chat") is not False:
        install(provider, artifact["config"]["chat_template"])
    enc_spec = artifact["config"].get("encoder")
    if encoder is None and enc_spec:
        encoder = load_provider(enc_spec)
    gate, corruption = gate_and_corruption(artifact, arrays, encoder)
    guarded = GuardedProvider(provider, gate, corruption, client=as_client(provider) if client else None)
    guarded.artifact = artifact
    return guarded
