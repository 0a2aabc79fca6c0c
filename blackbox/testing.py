"""Objectives for demos and tests, and helpers that plugin authors can reuse.

Every objective takes a 1-D parameter vector (or a 2-D batch, one row per candidate — they
declare ``batched = True``) and returns a float loss (or one loss per row).
"""

from __future__ import annotations

from typing import Any

import numpy as np


from .objectives_builtin import (  # noqa: F401 - the public home of these names stays here
    LOGISTIC_L2,
    logistic,
    logistic_data,
    noisy_quadratic,
    rosenbrock,
    sphere,
)

OBJECTIVES = {"sphere": sphere, "rosenbrock": rosenbrock, "noisy_quadratic": noisy_quadratic, "logistic": logistic}

# The problem suite that optimizer defaults are benchmarked on (blackbox.problems), public here
# too so a plugin author can run an optimizer over it: ``for p in suite(): ...``.
from .problems import SUITE, Problem, make_problem, suite  # noqa: E402


# --- provider conformance --------------------------------------------------------------------
def _probe_requests(provider: Any) -> dict[str, Any]:
    """One small request per declared capability (what `check_provider` and `probe` send)."""
    from .types import (
        Capability, ClassifyRequest, EmbedRequest, GenerateRequest, HiddenStatesRequest,
        NextTokenRequest, ScoreRequest,
    )

    caps = set(provider.capabilities)
    out: dict[str, Any] = {}
    # A language model's logits are next-token logits; a classifier's are class scores.
    is_lm = bool(caps & {Capability.TEXT, Capability.TOP_LOGPROBS, Capability.SCORE})
    if Capability.LOGITS in caps and is_lm:
        out["logits"] = NextTokenRequest(prompts=("Hello", "The sky is"))
    if Capability.PROBS in caps or (Capability.LOGITS in caps and not is_lm):
        inputs = provider.example_inputs()
        if inputs is None:
            raise AssertionError(f"provider {provider.name}: declares probs/logits but example_inputs() returned None")
        if Capability.PROBS in caps:
            out["probs"] = ClassifyRequest(inputs=inputs, output="probs")
        if Capability.LOGITS in caps and not is_lm:
            out["logits"] = ClassifyRequest(inputs=inputs, output="logits")
    if Capability.TOP_LOGPROBS in caps:
        out["top_logprobs"] = NextTokenRequest(prompts=("Hello", "The sky is"), top_k=3)
    if Capability.TEXT in caps:
        out["text"] = GenerateRequest(prompts=("Say hi.",), max_tokens=4)
    if Capability.EMBED in caps:
        out["embed"] = EmbedRequest(texts=("a cat", "a dog"))
    if Capability.HIDDEN_STATES in caps:
        out["hidden_states"] = HiddenStatesRequest(texts=("a cat sat", "hi"))
    if Capability.SCORE in caps:
        out["score"] = ScoreRequest(prompts=("The sky is", "Two plus two is"), continuations=(" blue", " four"))
    return out


def check_provider(provider: Any) -> dict[str, float]:
    """Check that a provider conforms to the interface; return each capability's latency (ms).

    Declared capabilities must work and return numpy outputs of the right shapes with usage
    accounting; undeclared calls must raise ``CapabilityError``; ``describe()`` must be JSON
    and free of secrets. Raises ``AssertionError`` naming the first problem. (Plugin authors:
    call this from a test, like scikit-learn's ``check_estimator``.)
    """
    import json
    import time

    from .errors import CapabilityError
    from .provider import CALLS
    from .types import Capability, Usage

    assert isinstance(provider.name, str) and provider.name, "provider.name must be a non-empty string"
    caps = set(provider.capabilities)
    assert all(isinstance(c, Capability) for c in caps), f"capabilities must be Capability members, got {caps}"
    desc = provider.describe()
    text = json.dumps(desc)
    for bad in ("api_key", "authorization", "password", "secret"):
        assert bad not in text.lower(), f"describe() must not expose {bad}: {desc}"
    latencies: dict[str, float] = {}
    for cap, req in _probe_requests(provider).items():
        t0 = time.perf_counter()
        res = provider.call(req)
        latencies[cap] = (time.perf_counter() - t0) * 1000.0
        assert isinstance(getattr(res, "usage", None), Usage), f"{cap}: result has no Usage accounting"
        assert res.usage.queries >= 0
        _check_result(cap, req, res)
    for rtype, (method, needs) in CALLS.items():
        if not (needs & caps):
            try:
                getattr(provider, method)(None)
            except CapabilityError:
                continue
            except Exception as exc:  # noqa: BLE001
                raise AssertionError(f"{method}() without its capability must raise CapabilityError, raised {type(exc).__name__}") from exc
            raise AssertionError(f"{method}() without its capability must raise CapabilityError")
    return latencies


def _check_result(cap: str, req: Any, res: Any) -> None:
    def arr(x: Any, what: str) -> np.ndarray:
        assert isinstance(x, np.ndarray), f"{cap}: {what} must be a numpy array, got {type(x).__name__}"
        assert np.all(np.isfinite(x)), f"{cap}: {what} has non-finite values"
        return x

    if cap in ("probs", "logits") and hasattr(res, "scores"):
        s = arr(res.scores, "scores")
        assert s.ndim == 2 and s.shape[0] == len(req.inputs), f"{cap}: scores shape {s.shape}"
        if cap == "probs":
            assert np.allclose(s.sum(axis=1), 1.0, atol=1e-4), f"{cap}: probabilities do not sum to 1"
    elif cap == "logits":
        logits = arr(res.logits, "logits")
        assert logits.ndim == 2 and logits.shape[0] == len(req.prompts)
    elif cap == "top_logprobs":
        assert res.top_logprobs is not None and len(res.top_logprobs) == len(req.prompts)
        for d in res.top_logprobs:
            assert 0 < len(d) and all(v <= 1e-6 for v in d.values()), f"{cap}: logprobs must be <= 0: {d}"
    elif cap == "text":
        assert len(res.texts) == len(req.prompts) and all(isinstance(t, str) for t in res.texts)
    elif cap == "embed":
        v = arr(res.vectors, "vectors")
        assert v.ndim == 2 and v.shape[0] == len(req.texts)
    elif cap == "hidden_states":
        assert len(res.states) == len(req.texts)
        for s in res.states:
            arr(s, "hidden state")
            assert s.ndim == 2
    elif cap == "score":
        lp = arr(res.logprobs, "logprobs")
        assert lp.shape == (len(req.prompts),) and np.all(lp <= 1e-6)


def tiny_image_classifier(n_classes: int = 20, seed: int = 0) -> Any:
    """A small random conv net for channels-last images ``(n, H, W, 3)`` -> ``n_classes`` logits.

    A stand-in black box for fast tests of image methods (spec
    ``torch:blackbox.testing:tiny_image_classifier``); needs torch.
    """
    import torch

    g = torch.Generator().manual_seed(seed)

    class _Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 16, n_classes)
            for p in self.parameters():
                p.data = torch.randn(p.shape, generator=g) * 0.5

        def forward(self, x: Any) -> Any:
            h = torch.relu(self.conv(x.permute(0, 3, 1, 2) * 4.0 - 2.0))
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))

    return _Tiny().eval()
