"""Protocols and frozen dataclasses shared by optimizers, providers and methods.

Nothing here imports torch, transformers or openai: arrays are numpy, texts are ``str``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np


# --- optimisation -------------------------------------------------------------------------
@runtime_checkable
class ObjectiveFn(Protocol):
    """A loss of one parameter vector (``batched = True`` objectives take a 2-D batch)."""

    def __call__(self, x: np.ndarray) -> float: ...


@runtime_checkable
class AskTell(Protocol):
    """The front every optimizer offers (see :class:`blackbox.optim.base.Optimizer`)."""

    queries: int
    budget: int | None

    def can_ask(self) -> bool: ...
    def ask(self) -> np.ndarray: ...
    def tell(self, losses: Sequence[float]) -> Any: ...
    def recommend(self) -> np.ndarray: ...


# --- providers ----------------------------------------------------------------------------
class Capability(str, Enum):
    """What a provider can return or accept."""

    PROBS = "probs"                    # class probabilities for a batch of inputs
    LOGITS = "logits"                  # full-vocabulary / all-class logits
    TOP_LOGPROBS = "top_logprobs"      # only the k most likely tokens with log-probabilities
    TEXT = "text"                      # generation
    EMBED = "embed"                    # text -> one vector
    HIDDEN_STATES = "hidden_states"    # token-level hidden states
    INPUTS_EMBEDS = "inputs_embeds"    # accepts input embeddings instead of token ids
    SCORE = "score"                    # log-likelihood of a continuation given a prompt
    STEP_DECODE = "step_decode"        # token-by-token decoding with the provider's own KV cache

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Usage:
    """Accounting attached to every provider result."""

    queries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    request_id: str | None = None
    cost: float = 0.0
    # True when some of these counts are the client's estimate, not the server's report
    # (a response without ``usage``, a request whose answer was lost): see docs/providers.md.
    estimated: bool = False


@dataclass(frozen=True)
class ClassifyRequest:
    """Class scores for a batch of inputs (images, feature rows...)."""

    inputs: np.ndarray
    output: str = "probs"  # "probs" or "logits"


@dataclass(frozen=True)
class ClassifyResult:
    scores: np.ndarray  # (n, n_classes)
    output: str
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class NextTokenRequest:
    """Next-token distribution after each prompt (full logits or the top-k log-probs)."""

    prompts: tuple[str, ...]
    top_k: int | None = None  # None: full-vocabulary logits


@dataclass(frozen=True)
class NextTokenResult:
    logits: np.ndarray | None  # (n, vocab) when full logits were asked for
    top_logprobs: tuple[dict[str, float], ...] | None  # one {token: logprob} per prompt
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class GenerateRequest:
    """Text continuation of each prompt."""

    prompts: tuple[str, ...]
    max_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0  # >0: return that many alternatives per generated token
    chat: bool = False  # apply the model's chat template / use a chat endpoint


@dataclass(frozen=True)
class GenerateResult:
    texts: tuple[str, ...]
    token_logprobs: tuple[tuple[float, ...], ...] | None = None
    top_logprobs: tuple[tuple[dict[str, float], ...], ...] | None = None
    finish_reasons: tuple[str, ...] = ()
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class EmbedRequest:
    """One vector per text."""

    texts: tuple[str, ...]
    normalize: bool = False


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (n, d)
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class HiddenStatesRequest:
    """Token-level hidden states of one layer (default: last) for each text."""

    texts: tuple[str, ...]
    layer: int = -1


@dataclass(frozen=True)
class HiddenStatesResult:
    states: tuple[np.ndarray, ...]  # one (tokens, d) array per text
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class ScoreRequest:
    """Sum of log-probabilities of each continuation given its prompt."""

    prompts: tuple[str, ...]
    continuations: tuple[str, ...]


@dataclass(frozen=True)
class ScoreResult:
    logprobs: np.ndarray  # (n,) summed log-probability per continuation
    n_tokens: np.ndarray  # (n,) continuation length in tokens
    usage: Usage = field(default_factory=Usage)


@dataclass
class DecodeState:
    """A batch of token-id sequences decoded step by step (:attr:`Capability.STEP_DECODE`).

    Made by ``decode_start`` and advanced by ``decode_step``; ``handle`` is the provider's
    own (KV cache, masks) and opaque to callers. ``width`` is the logits per row.
    """

    seqs: list[list[int]]
    width: int
    steps: int = 0
    handle: Any = None

    @property
    def rows(self) -> int:
        return len(self.seqs)


Callback = Callable[[Any], None]
