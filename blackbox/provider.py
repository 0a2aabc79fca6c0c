"""The provider interface: a name, a capability set, typed calls; spec strings; checks.

A provider wraps a model as an opaque forward function. It declares its capabilities
(:class:`~blackbox.types.Capability`) and implements the calls that go with them:

================  ===========================================  =========================
call              request → result                             capability
================  ===========================================  =========================
``classify``      ClassifyRequest → ClassifyResult             probs / logits
``next_token``    NextTokenRequest → NextTokenResult           logits / top_logprobs
``generate``      GenerateRequest → GenerateResult             text
``embed``         EmbedRequest → EmbedResult                   embed
``hidden_states`` HiddenStatesRequest → HiddenStatesResult     hidden_states
``score``         ScoreRequest → ScoreResult                   score
``decode_start``  token ids → (DecodeState, logits (B, V))     step_decode
``decode_step``   DecodeState, one id per row → logits (B, V)  step_decode
================  ===========================================  =========================

Results are numpy arrays plus :class:`~blackbox.types.Usage` accounting; no gradients ever
leave a provider. Components call :func:`require` with the capabilities they need before
spending any query.

**Spec grammar** (one string names a provider on the CLI and in configs)::

    spec    := kind [ ":" target ] [ "?" options ]
    options := key "=" value { "&" key "=" value }     (values URL-decoded)

``kind`` is a registered provider name (``openai``, ``hf-causal``, ``torch``...); ``target``
is everything between the first ``:`` and the first ``?`` (a model name, a path, or
``MODULE:FACTORY`` — it may itself contain ``:``). Examples:
``openai:smollm?base_url=http://127.0.0.1:8080/v1``, ``hf-causal:/models/x.gguf``,
``torch:mypkg.models:build``, ``efficientnet-lite0``.
"""

from __future__ import annotations

import re
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence
from urllib.parse import unquote

from .errors import CapabilityError, SpecError
from .registry import providers as provider_registry
from .types import (
    Capability,
    ClassifyRequest,
    ClassifyResult,
    DecodeState,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    HiddenStatesRequest,
    HiddenStatesResult,
    NextTokenRequest,
    NextTokenResult,
    ScoreRequest,
    ScoreResult,
)

_KIND = re.compile(r"^[a-z][a-z0-9_.-]*$")

# Which call serves which request type, and the capabilities that make it available.
CALLS: dict[type, tuple[str, frozenset[Capability]]] = {
    ClassifyRequest: ("classify", frozenset({Capability.PROBS, Capability.LOGITS})),
    NextTokenRequest: ("next_token", frozenset({Capability.LOGITS, Capability.TOP_LOGPROBS})),
    GenerateRequest: ("generate", frozenset({Capability.TEXT})),
    EmbedRequest: ("embed", frozenset({Capability.EMBED})),
    HiddenStatesRequest: ("hidden_states", frozenset({Capability.HIDDEN_STATES})),
    ScoreRequest: ("score", frozenset({Capability.SCORE})),
}


@dataclass(frozen=True)
class Spec:
    """A parsed provider spec."""

    kind: str
    target: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        out = self.kind + (f":{self.target}" if self.target else "")
        if self.options:
            out += "?" + "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return out


def parse_spec(spec: str) -> Spec:
    """Parse ``kind[:target][?k=v&...]``; malformed specs raise :class:`SpecError`."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"provider spec: expected 'kind[:target][?key=value&...]', received {spec!r}")
    text = spec.strip()
    head, qmark, query = text.partition("?")
    kind, colon, target = head.partition(":")
    if not _KIND.match(kind):
        raise SpecError(
            f"provider spec: expected a provider kind of lowercase letters, digits, '-', '_' or '.' "
            f"before ':', received {kind!r} in {spec!r}"
        )
    if colon and not target:
        raise SpecError(f"provider spec: expected a target after '{kind}:', received nothing in {spec!r}")
    options: dict[str, str] = {}
    if qmark:
        if not query:
            raise SpecError(f"provider spec: expected key=value options after '?', received nothing in {spec!r}")
        for part in query.split("&"):
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise SpecError(f"provider spec: expected key=value option, received {part!r} in {spec!r}")
            if key in options:
                raise SpecError(f"provider spec: option {key!r} given twice in {spec!r}")
            options[unquote(key)] = unquote(value)
    return Spec(kind, unquote(target), options)


class Provider(ABC):
    """Base class of providers. Subclasses set ``name``, ``capabilities`` and implement calls.

    ``declared_capabilities`` (class level) is what the kind can offer at most; an instance's
    ``capabilities`` is what this instance really offers (e.g. an API model without logprobs).
    """

    name: ClassVar[str] = ""
    declared_capabilities: ClassVar[frozenset[Capability]] = frozenset()
    summary: ClassVar[str] = ""

    def __init__(self) -> None:
        self.capabilities: frozenset[Capability] = frozenset(self.declared_capabilities)

    # construction from a spec -------------------------------------------------------
    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "Provider":
        """Build from a parsed spec; subclasses override (default: no target, no options)."""
        if target or options:
            raise SpecError(f"provider {cls.name}: expected no target or options, received {target!r} {options!r}")
        return cls()

    # identity ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Model id, endpoint and settings that affect outputs; never secrets (→ provider.json)."""
        return {"provider": self.name}

    def cache_identity(self) -> dict[str, Any]:
        """What distinguishes this provider's outputs in a cache key (defaults to ``describe``)."""
        return self.describe()

    def __repr__(self) -> str:
        desc = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "provider")
        return f"<{type(self).__name__} {self.name} {desc}>"

    # calls -------------------------------------------------------------------------------
    def _missing(self, call: str) -> CapabilityError:
        return CapabilityError(f"provider {self.name}: does not support {call}() (capabilities: {fmt_caps(self.capabilities)})")

    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Class probabilities or logits for a batch of inputs."""
        raise self._missing("classify")

    def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        """Next-token logits (full vocabulary) or top-k log-probabilities."""
        raise self._missing("next_token")

    def generate(self, request: GenerateRequest) -> GenerateResult:
        """Text continuations."""
        raise self._missing("generate")

    def embed(self, request: EmbedRequest) -> EmbedResult:
        """One vector per text."""
        raise self._missing("embed")

    def hidden_states(self, request: HiddenStatesRequest) -> HiddenStatesResult:
        """Token-level hidden states."""
        raise self._missing("hidden_states")

    def score(self, request: ScoreRequest) -> ScoreResult:
        """Log-likelihood of continuations."""
        raise self._missing("score")

    # step-by-step decoding (capability step_decode) ------------------------------------
    def decode_width(self) -> int:
        """Logits per row that ``decode_start``/``decode_step`` return (the output vocabulary)."""
        raise self._missing("decode_width")

    def decode_start(self, seqs: Sequence[Sequence[int]], *, use_cache: bool = True) -> tuple[DecodeState, Any]:
        """Read a batch of token-id sequences: ``(state, logits (B, V) float64)`` of each next token.

        ``use_cache=False`` recomputes every step from all the ids (the reference for the cache).
        """
        raise self._missing("decode_start")

    def decode_step(self, state: DecodeState, next_ids: Sequence[int]) -> Any:
        """Append one token id per row to ``state``; the next logits ``(B, V)`` float64."""
        raise self._missing("decode_step")

    def call(self, request: Any) -> Any:
        """Dispatch a typed request to the matching call."""
        try:
            method, _ = CALLS[type(request)]
        except KeyError:
            raise CapabilityError(f"request: expected one of {', '.join(t.__name__ for t in CALLS)}, received {type(request).__name__}") from None
        return getattr(self, method)(request)

    def example_inputs(self) -> Any:
        """A small valid ``ClassifyRequest.inputs`` batch (for probes and conformance checks).

        Providers with ``probs``/``logits`` should override it; the default is None.
        """
        return None

    def close(self) -> None:
        """Release resources (HTTP clients, models). Idempotent."""


def fmt_caps(caps: Iterable[Capability | str]) -> str:
    """Capabilities as a sorted, comma-separated string."""
    return ", ".join(sorted(str(c) for c in caps)) or "(none)"


def providers_with(caps: Iterable[Capability | str]) -> list[str]:
    """Names of registered provider kinds whose declared capabilities include all of ``caps``."""
    want = {Capability(c) for c in caps}
    out = []
    for entry in provider_registry.entries():
        declared = getattr(entry.obj, "declared_capabilities", frozenset())
        if want <= set(declared):
            out.append(entry.name)
    return out


def require(provider: Provider, needed: Iterable[Capability | str], component: str, *, any_of: bool = False) -> None:
    """Fail before any query when ``provider`` lacks what ``component`` needs.

    With ``any_of=True`` one of ``needed`` suffices (e.g. probs *or* logits).
    """
    want = [Capability(c) for c in needed]
    have = set(provider.capabilities)
    missing = [c for c in want if c not in have]
    if (any_of and len(missing) < len(want)) or not missing:
        return
    alternatives = sorted({n for c in (want if any_of else missing) for n in providers_with([c])})
    need_txt = (" or ".join(str(c) for c in want)) if any_of else fmt_caps(missing)
    raise CapabilityError(
        f"{component}: needs {need_txt}, but provider {provider.name} has only {fmt_caps(have)}; "
        f"built-in providers with it: {', '.join(alternatives) or '(none)'}"
    )


# Hooks asked first by load_provider (``hook(spec) -> Provider | None``); blackbox.scale.served()
# installs one for a block so that a method loading its model by spec gets a replica pool.
LOAD_HOOKS: list[Callable[[Spec], "Provider | None"]] = []


def load_provider(spec: str | Spec, **overrides: str) -> Provider:
    """Instantiate a provider from a spec string (``overrides`` add/replace options)."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    for hook in reversed(LOAD_HOOKS if not overrides else []):
        served = hook(parsed)
        if served is not None:
            return served
    cls = provider_registry.get(parsed.kind)
    options = {**parsed.options, **{k: str(v) for k, v in overrides.items()}}
    return cls.from_spec(parsed.target, options)


def check_options(kind: str, options: dict[str, str], allowed: Iterable[str]) -> None:
    """Reject unknown spec options, listing the valid ones."""
    allowed = sorted(allowed)
    for key in options:
        if key not in allowed:
            raise SpecError(f"provider {kind}: unknown option {key!r}; valid options: {', '.join(allowed) or '(none)'}")
