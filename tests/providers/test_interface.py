"""The provider interface: spec grammar, capability checks, conformance, the example plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blackbox.errors import CapabilityError, SpecError, UnknownComponentError
from blackbox.provider import Provider, Spec, load_provider, parse_spec, require
from blackbox.testing import check_provider
from blackbox.types import Capability, ClassifyRequest, ClassifyResult, EmbedRequest, Usage

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("openai:smol?base_url=http://127.0.0.1:8080/v1", Spec("openai", "smol", {"base_url": "http://127.0.0.1:8080/v1"})),
        ("hf-causal:/models/a b.gguf", Spec("hf-causal", "/models/a b.gguf")),
        ("torch:pkg.mod:build?batch_size=8", Spec("torch", "pkg.mod:build", {"batch_size": "8"})),
        ("efficientnet-lite0", Spec("efficientnet-lite0")),
        ("openai:m?base_url=http%3A%2F%2Fx%3A1%2Fv1&timeout=5", Spec("openai", "m", {"base_url": "http://x:1/v1", "timeout": "5"})),
    ],
)
def test_spec_grammar(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "expected 'kind[:target][?key=value&...]'"),
        ("OpenAI:x", "expected a provider kind"),
        ("openai:", "expected a target after 'openai:'"),
        ("openai:x?", "expected key=value options after '?'"),
        ("openai:x?timeout", "expected key=value option, received 'timeout'"),
        ("openai:x?a=1&a=2", "option 'a' given twice"),
    ],
)
def test_malformed_specs_are_rejected_clearly(spec, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("?", r"\?").replace("]", r"\]")):
        parse_spec(spec)


def test_unknown_provider_lists_valid_ones():
    with pytest.raises(UnknownComponentError, match="unknown provider 'nosuch'; valid providers:"):
        load_provider("nosuch:x")


class TinyClassifier(Provider):
    """Softmax of a fixed linear map: a conforming probs/logits provider."""

    name = "tiny-classifier"
    declared_capabilities = frozenset({Capability.PROBS, Capability.LOGITS})

    def __init__(self) -> None:
        super().__init__()
        self.W = np.random.default_rng(0).standard_normal((4, 3))

    def example_inputs(self):
        return np.ones((2, 4))

    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        z = np.asarray(request.inputs, dtype=np.float64) @ self.W
        if request.output == "probs":
            z = np.exp(z - z.max(axis=1, keepdims=True))
            z /= z.sum(axis=1, keepdims=True)
        return ClassifyResult(scores=z, output=request.output, usage=Usage(queries=len(z)))


def test_check_provider_accepts_a_conforming_provider():
    lat = check_provider(TinyClassifier())
    assert set(lat) == {"probs", "logits"} and all(v >= 0 for v in lat.values())


def test_check_provider_catches_broken_providers():
    class NoUsage(TinyClassifier):
        def classify(self, request):
            return ClassifyResult(scores=np.full((len(request.inputs), 3), 1 / 3), output="probs", usage=None)

    with pytest.raises(AssertionError, match="Usage"):
        check_provider(NoUsage())

    class BadProbs(TinyClassifier):
        def classify(self, request):
            return ClassifyResult(scores=np.ones((len(request.inputs), 3)), output="probs", usage=Usage(queries=1))

    with pytest.raises(AssertionError, match="sum to 1"):
        check_provider(BadProbs())

    class Leaky(TinyClassifier):
        def describe(self):
            return {"provider": self.name, "api_key": "sk-123"}

    with pytest.raises(AssertionError, match="api_key"):
        check_provider(Leaky())

    class Untyped(TinyClassifier):
        def embed(self, request):  # not declared, and fails with the wrong error type
            raise RuntimeError("no")

    with pytest.raises(AssertionError, match="CapabilityError"):
        check_provider(Untyped())


def test_require_fails_before_any_query_and_names_alternatives():
    p = TinyClassifier()
    require(p, ["probs", "logits"], "BlackVIP", any_of=True)
    with pytest.raises(CapabilityError) as exc:
        require(p, [Capability.INPUTS_EMBEDS], "ECO")
    msg = str(exc.value)
    assert "ECO: needs inputs_embeds" in msg and "tiny-classifier has only logits, probs" in msg
    assert "built-in providers with it:" in msg
    with pytest.raises(CapabilityError, match="does not support embed"):
        p.embed(EmbedRequest(texts=("x",)))


@pytest.mark.slow
@pytest.mark.subprocess
def test_example_plugin_is_found_through_its_entry_point(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(REPO / "examples" / "blackbox-echo-provider")],
        check=True, capture_output=True, text=True, timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-m", "blackbox.cli", "providers", "list", "--json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])["providers"]}
    assert rows["echo"]["source"] == "plugin" and rows["echo"]["capabilities"] == ["embed", "text"]
    probe = subprocess.run([sys.executable, "-m", "blackbox.cli", "providers", "probe", "echo?dim=16", "--json"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    assert info["name"] == "echo" and set(info["latency_ms"]) == {"embed", "text"}
    assert info["describe"] == {"provider": "echo", "dim": 16}
    bad = subprocess.run([sys.executable, "-m", "blackbox.cli", "providers", "probe", "echo?size=3"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown option 'size'; valid options: dim" in bad.stderr


TINY_TORCH = """
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
"""


@pytest.mark.subprocess
def test_cli_lists_builtins_and_probes_a_torch_spec(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "tinymod.py").write_text(TINY_TORCH)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "blackbox.cli", "providers", "list", "--json"],
                         env=env, capture_output=True, text=True, timeout=120)
    rows = {r["name"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])["providers"]}
    assert {"torch", "hf-causal", "openai", "sentence-encoder", "efficientnet-lite0"} <= set(rows)
    assert all(r["source"] == "builtin" for r in rows.values())
    assert "logits" not in rows["openai"]["capabilities"]  # an API gives top-k logprobs only
    assert "inputs_embeds" in rows["hf-causal"]["capabilities"]
    probe = subprocess.run([sys.executable, "-m", "blackbox.cli", "providers", "probe", "torch:tinymod:build", "--json"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    assert info["name"] == "torch" and info["capabilities"] == ["logits", "probs"]
    assert set(info["latency_ms"]) == {"logits", "probs"} and all(v >= 0 for v in info["latency_ms"].values())
    bad = subprocess.run([sys.executable, "-m", "blackbox.cli", "providers", "probe", "torch:tinymod"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
