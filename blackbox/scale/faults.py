"""Small deterministic providers for testing and benchmarking replica pools (numpy only).

:class:`FaultyClassifier` is a fixed random linear classifier that can, once, stall inside a
call (so a test can kill its process mid-call, or let the pool's timeout fire): the first call
that claims the file ``stall_flag`` (by deleting it) writes its pid to ``stall_flag + ".pid"``
and sleeps ``stall_seconds``; the first that claims ``error_flag`` raises a retryable 503 (a
provider error, not a replica fault). :class:`InstantClassifier` answers at once (driver overhead).
Build them in replicas through a picklable factory, e.g.
``functools.partial(FaultyClassifier, stall_flag=path)``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..errors import TransportError
from ..provider import Provider
from ..types import Capability, ClassifyRequest, ClassifyResult, EmbedRequest, EmbedResult, GenerateRequest, GenerateResult, Usage

__all__ = ["FaultyClassifier", "InstantClassifier", "EchoText", "claim"]


def claim(path: str | None) -> bool:
    """True for exactly one caller across processes: the one whose unlink of ``path`` succeeded."""
    if not path:
        return False
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


class FaultyClassifier(Provider):
    """Softmax of a fixed linear map of the flattened inputs; optionally stalls once, or sleeps per call."""

    name = "scale-faulty"
    declared_capabilities = frozenset({Capability.PROBS, Capability.LOGITS})
    summary = "deterministic linear classifier that can stall once (tests of replica faults)"

    def __init__(self, n_features: int = 12, n_classes: int = 5, *, delay: float = 0.0,
                 stall_flag: str | None = None, stall_seconds: float = 600.0, error_flag: str | None = None) -> None:
        super().__init__()
        self.n_features, self.n_classes = n_features, n_classes
        self.W = np.random.default_rng(1234).standard_normal((n_features, n_classes))
        self.delay, self.stall_flag, self.stall_seconds = delay, stall_flag, stall_seconds
        self.error_flag = error_flag  # the first call that claims it raises a retryable 503

    def describe(self) -> dict[str, Any]:
        """Kind and shape (the same in every replica)."""
        return {"provider": self.name, "n_features": self.n_features, "n_classes": self.n_classes}

    def example_inputs(self) -> np.ndarray:
        """Two random rows."""
        return np.random.default_rng(0).random((2, self.n_features))

    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Probabilities (or logits) of each row; may stall once (see the module doc)."""
        if claim(self.stall_flag):
            with open(f"{self.stall_flag}.pid", "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(self.stall_seconds)
        if claim(self.error_flag):
            raise TransportError("injected server error", status=503, retryable=True)
        if self.delay:
            time.sleep(self.delay)
        z = np.asarray(request.inputs, dtype=np.float64).reshape(len(request.inputs), -1) @ self.W
        if request.output == "logits":
            return ClassifyResult(scores=z, output="logits", usage=Usage(queries=len(z)))
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return ClassifyResult(scores=e / e.sum(axis=1, keepdims=True), output="probs", usage=Usage(queries=len(z)))


class InstantClassifier(Provider):
    """Zeros for every row, at once: what remains of a step's time is the pool's own overhead."""

    name = "scale-instant"
    declared_capabilities = frozenset({Capability.PROBS, Capability.LOGITS})
    summary = "answers zeros at once (benchmarks of driver overhead)"

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.n_classes = n_classes

    def describe(self) -> dict[str, Any]:
        """Kind and class count."""
        return {"provider": self.name, "n_classes": self.n_classes}

    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Uniform probabilities for every row."""
        n = len(request.inputs)
        return ClassifyResult(scores=np.full((n, self.n_classes), 1.0 / self.n_classes), output=request.output,
                              usage=Usage(queries=n))


class EchoText(Provider):
    """Text and embeddings computed from the strings alone (tests of row splitting for text calls)."""

    name = "scale-echo"
    declared_capabilities = frozenset({Capability.TEXT, Capability.EMBED})
    summary = "echoes prompts reversed; embeds texts by character codes (tests)"

    def describe(self) -> dict[str, Any]:
        """Kind only."""
        return {"provider": self.name}

    def generate(self, request: GenerateRequest) -> GenerateResult:
        """Each prompt reversed, cut to ``max_tokens`` characters."""
        texts = tuple(p[::-1][: request.max_tokens] for p in request.prompts)
        return GenerateResult(texts=texts, finish_reasons=("stop",) * len(texts), usage=Usage(queries=len(texts)))

    def embed(self, request: EmbedRequest) -> EmbedResult:
        """Four numbers per text: length, sum, min and max of its character codes."""
        rows = [[len(t), sum(map(ord, t)), min(map(ord, t), default=0), max(map(ord, t), default=0)] for t in request.texts]
        return EmbedResult(vectors=np.asarray(rows, dtype=np.float64), usage=Usage(queries=len(rows)))
