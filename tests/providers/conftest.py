"""A scriptable in-process provider for client tests: counts calls, fails on demand."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest

from blackbox.provider import Provider
from blackbox.secrets import Secret
from blackbox.types import (
    Capability,
    ClassifyRequest,
    ClassifyResult,
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
    Usage,
)

API_KEY = "sk-test-0123456789abcdefSECRET"


def _rng(*parts: Any) -> np.random.Generator:
    """A generator that depends only on ``parts`` (so results are deterministic per item)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


class FakeProvider(Provider):
    """Deterministic answers for every call type; each item's answer is independent of its batch.

    ``script`` is a list of exceptions (or None for success) consumed by successive calls;
    ``fail_for`` maps an item's text to such a list, consumed by calls that contain the item.
    """

    name = "fake"
    declared_capabilities = frozenset(Capability)
    summary = "in-process fake for tests"

    def __init__(
        self,
        *,
        model: str = "fake-model",
        capabilities: Any = None,
        delay: float = 0.0,
        api_key: str | None = API_KEY,
        on_call: Callable[["FakeProvider", Any], None] | None = None,
        report_usage: bool = True,
    ) -> None:
        super().__init__()
        if capabilities is not None:
            self.capabilities = frozenset(Capability(c) for c in capabilities)
        self.model = model
        self.api_key = Secret(api_key) if api_key else None
        self.delay = delay
        self.on_call = on_call
        self.report_usage = report_usage
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any]] = []  # successful calls
        self.attempts = 0  # every call, failed ones included
        self.items_served = 0
        self.script: list[BaseException | None] = []
        self.fail_for: dict[str, list[BaseException | None]] = {}
        self.closed = 0

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "model": self.model}

    def cache_identity(self) -> dict[str, Any]:
        # The key object sits in the identity on purpose: cache_key must drop it.
        return {**self.describe(), "api_key": self.api_key}

    def close(self) -> None:
        self.closed += 1

    def example_inputs(self) -> np.ndarray:
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    # plumbing ------------------------------------------------------------------------------
    def _begin(self, method: str, request: Any, keys: list[str]) -> str:
        if self.on_call is not None:
            self.on_call(self, request)
        with self.lock:
            self.attempts += 1
            failure = self.script.pop(0) if self.script else None
            for k in keys:
                if failure is None and self.fail_for.get(k):
                    failure = self.fail_for[k].pop(0)
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            raise failure
        with self.lock:
            self.calls.append((method, request))
            self.items_served += len(keys)
            return f"req-{len(self.calls)}"

    def _usage(self, rid: str, n: int, prompt: int = 0, completion: int = 0) -> Usage:
        if not self.report_usage:
            return Usage()
        return Usage(queries=n, prompt_tokens=prompt, completion_tokens=completion, request_id=rid)

    # calls ---------------------------------------------------------------------------------
    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        rows = np.asarray(request.inputs)
        rid = self._begin("classify", request, [r.tobytes().hex() for r in rows])
        logits = np.stack([_rng("cls", r.tobytes()).standard_normal(3) for r in rows]).astype(np.float32)
        if request.output == "probs":
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            logits = e / e.sum(axis=1, keepdims=True)
        return ClassifyResult(scores=logits, output=request.output, usage=self._usage(rid, len(rows)))

    def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        rid = self._begin("next_token", request, list(request.prompts))
        logits = np.stack([_rng("nt", p).standard_normal(8) for p in request.prompts]).astype(np.float32) if request.prompts else np.zeros((0, 8), np.float32)
        prompt_tokens = sum(_tokens(p) for p in request.prompts)
        usage = self._usage(rid, len(request.prompts), prompt_tokens, len(request.prompts))
        if request.top_k is None:
            return NextTokenResult(logits=logits, top_logprobs=None, usage=usage)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        tops = tuple(
            {f"t{j}": float(row[j]) for j in np.argsort(-row)[: request.top_k]} for row in logp
        )
        return NextTokenResult(logits=None, top_logprobs=tops, usage=usage)

    def generate(self, request: GenerateRequest) -> GenerateResult:
        rid = self._begin("generate", request, list(request.prompts))
        texts = tuple(f"{p}|{request.max_tokens}|{request.temperature}" for p in request.prompts)
        tok = top = None
        if request.top_logprobs:
            tok = tuple(tuple(float(x) for x in -_rng("tok", p).random(3)) for p in request.prompts)
            top = tuple(tuple({"a": -0.1, "b": float("-inf")} for _ in range(3)) for _ in request.prompts)
        prompt_tokens = sum(_tokens(p) for p in request.prompts)
        completion_tokens = sum(_tokens(t) for t in texts)
        return GenerateResult(
            texts=texts, token_logprobs=tok, top_logprobs=top,
            finish_reasons=("length",) * len(texts),
            usage=self._usage(rid, len(texts), prompt_tokens, completion_tokens),
        )

    def embed(self, request: EmbedRequest) -> EmbedResult:
        rid = self._begin("embed", request, list(request.texts))
        v = np.stack([_rng("emb", t).standard_normal(4) for t in request.texts]) if request.texts else np.zeros((0, 4))
        if request.normalize:
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return EmbedResult(vectors=v, usage=self._usage(rid, len(request.texts), sum(_tokens(t) for t in request.texts)))

    def hidden_states(self, request: HiddenStatesRequest) -> HiddenStatesResult:
        rid = self._begin("hidden_states", request, list(request.texts))
        states = tuple(
            _rng("hs", t, request.layer).standard_normal((len(t.split()) + 1, 4)).astype(np.float16) for t in request.texts
        )
        return HiddenStatesResult(states=states, usage=self._usage(rid, len(states), sum(_tokens(t) for t in request.texts)))

    def score(self, request: ScoreRequest) -> ScoreResult:
        keys = [f"{p}\x00{c}" for p, c in zip(request.prompts, request.continuations)]
        rid = self._begin("score", request, keys)
        logprobs = np.array([-float(len(c)) - _rng("sc", p).random() for p, c in zip(request.prompts, request.continuations)])
        n_tokens = np.array([len(c.split()) for c in request.continuations], dtype=np.int64)
        prompt_tokens = sum(_tokens(p) + _tokens(c) for p, c in zip(request.prompts, request.continuations))
        return ScoreResult(logprobs=logprobs, n_tokens=n_tokens, usage=self._usage(rid, len(keys), prompt_tokens))


class Sleeps:
    """A ``sleep`` stand-in that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self.lock:
            self.delays.append(seconds)


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()
