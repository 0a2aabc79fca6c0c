"""``torch`` provider: any ``nn.Module`` or callable that maps a batch tensor to class scores.

Spec: ``torch:MODULE:FACTORY[?device=cpu&batch_size=64&output=logits&input_shape=3,32,32&n_classes=10]``
where ``MODULE:FACTORY`` names a zero-argument function returning the model. Direct use::

    TorchProvider(model, input_shape=(4,), batch_size=64, n_classes=3)

torch is imported when a provider is built, never when this module is imported. The small
helpers at the bottom (option parsing, lazy imports) are shared by the other local providers.
"""

from __future__ import annotations

import hashlib
import importlib
import uuid
from typing import Any, Iterable, Sequence

import numpy as np

from blackbox.errors import CapabilityError, ConfigError, ProviderError, SpecError, bad_value
from blackbox.provider import Provider, check_options, fmt_caps
from blackbox.registry import providers as provider_registry
from blackbox.types import Capability, ClassifyRequest, ClassifyResult, Usage

NAME = "torch"
OUTPUTS = ("logits", "probs")


class TorchProvider(Provider):
    """Class probabilities/logits from a local torch module or callable (batched, no grad)."""

    name = NAME
    declared_capabilities = frozenset({Capability.PROBS, Capability.LOGITS})
    summary = "a local torch nn.Module or callable: batch tensor -> class logits"

    def __init__(
        self,
        model: Any,
        input_shape: Sequence[int] | None = None,
        batch_size: int = 64,
        n_classes: int | None = None,
        *,
        device: str = "cpu",
        output: str = "logits",
        class_names: Sequence[str] | None = None,
        target: str | None = None,
    ) -> None:
        """Wrap ``model``; ``output`` says what it returns (``logits``, or ``probs`` already normalised)."""
        super().__init__()
        torch = import_torch(self.name)
        if not callable(model):
            raise bad_value("model", "a torch nn.Module or a callable mapping a batch tensor to scores", type(model).__name__)
        self.batch_size = positive_int("batch_size", batch_size)
        self.n_classes = None if n_classes is None else positive_int("n_classes", n_classes)
        self.input_shape = None if input_shape is None else tuple(positive_int("input_shape", s) for s in input_shape)
        if output not in OUTPUTS:
            raise bad_value("output", f"one of {', '.join(OUTPUTS)} (what the model returns)", output)
        self.output = output
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise bad_value("device", "a torch device such as 'cpu' or 'cuda:0'", device) from exc
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        if self.class_names is not None and self.n_classes is not None and len(self.class_names) != self.n_classes:
            raise bad_value("class_names", f"{self.n_classes} names (n_classes)", f"{len(self.class_names)} names")
        self.target = target
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
            for p in model.parameters():  # nothing here ever needs a gradient
                p.requires_grad_(False)
        self.model = model
        self._fingerprint: str | None = None

    # construction ------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "TorchProvider":
        """Build from ``torch:MODULE:FACTORY?...`` (the factory is called with no arguments)."""
        check_options(NAME, options, ("device", "batch_size", "output", "input_shape", "n_classes"))
        model = load_factory(NAME, target)
        shape = options.get("input_shape")
        return cls(
            model,
            input_shape=None if shape is None else parse_int_list("input_shape", shape),
            batch_size=parse_int("batch_size", options.get("batch_size", "64")),
            n_classes=None if "n_classes" not in options else parse_int("n_classes", options["n_classes"]),
            device=options.get("device", "cpu"),
            output=options.get("output", "logits"),
            target=target,
        )

    # identity ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Model, device and settings that change outputs."""
        out: dict[str, Any] = {"provider": self.name, "model": self.target or _qualname(self.model), "device": str(self.device), "output": self.output}
        if self.input_shape is not None:
            out["input_shape"] = list(self.input_shape)
        return out

    def cache_identity(self) -> dict[str, Any]:
        """``describe()`` plus a fingerprint of the weights, so a retrained module never hits old cache entries."""
        return {**self.describe(), "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        """sha256 of the module's parameters and buffers; a plain callable gets a per-instance id."""
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.model)
        return self._fingerprint

    def example_inputs(self) -> np.ndarray | None:
        """Two random rows of ``input_shape`` (or of the first layer's ``in_features``); None if unknown."""
        shape = self.input_shape
        if shape is None:
            first = next((m for m in getattr(self.model, "modules", lambda: [])() if hasattr(m, "in_features")), None)
            shape = None if first is None else (int(first.in_features),)
        return None if shape is None else np.random.default_rng(0).random((2, *shape))

    # calls -------------------------------------------------------------------------------
    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Probabilities (softmax) or logits, float64, one row per input."""
        want = check_output(self, request.output)
        batch = self.check_inputs(request.inputs)
        torch = import_torch(self.name)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                x = self.prepare(batch[start : start + self.batch_size])
                chunks.append(self._scores(self.model(x), x.shape[0], want))
        scores = np.concatenate(chunks, axis=0)
        return ClassifyResult(scores=scores, output=want, usage=Usage(queries=len(batch)))

    def check_inputs(self, inputs: Any) -> np.ndarray:
        """A non-empty float numpy batch whose trailing shape matches ``input_shape`` (if set)."""
        if not isinstance(inputs, np.ndarray):
            raise bad_value("inputs", "a numpy array of floats, one row per input", type(inputs).__name__)
        if not np.issubdtype(inputs.dtype, np.floating):
            raise bad_value("inputs", "a floating-point array (convert images/features to float first)", f"dtype {inputs.dtype}")
        if inputs.ndim < 1 or inputs.shape[0] == 0:
            raise bad_value("inputs", "a batch of at least one input (first axis = batch)", f"an empty batch of shape {inputs.shape}")
        if self.input_shape is not None:
            if tuple(inputs.shape[1:]) != self.input_shape:
                raise bad_value("inputs", f"shape (n, {', '.join(map(str, self.input_shape))})", f"shape {inputs.shape}")
        return inputs

    def prepare(self, chunk: np.ndarray) -> Any:
        """numpy chunk -> the tensor the model takes (subclasses add preprocessing)."""
        torch = import_torch(self.name)
        return torch.as_tensor(np.ascontiguousarray(chunk, dtype=np.float32), device=self.device)

    def _scores(self, out: Any, n: int, want: str) -> np.ndarray:
        torch = import_torch(self.name)
        if not isinstance(out, torch.Tensor):
            raise ProviderError(f"provider {self.name}: model returned {type(out).__name__}, expected a tensor of shape (n, n_classes)")
        if out.ndim != 2 or out.shape[0] != n or (self.n_classes is not None and out.shape[1] != self.n_classes):
            cls = "n_classes" if self.n_classes is None else str(self.n_classes)
            raise ProviderError(f"provider {self.name}: model returned shape {tuple(out.shape)}, expected ({n}, {cls})")
        out = out.detach().to("cpu", torch.float64)
        if self.output == "probs":  # the model already normalises; log p are valid logits
            return out.numpy().copy() if want == "probs" else torch.log(out).numpy().copy()
        return torch.softmax(out, dim=-1).numpy().copy() if want == "probs" else out.numpy().copy()


# --- helpers shared by the local providers -----------------------------------------------
def import_torch(kind: str) -> Any:
    """``import torch``, or a ProviderError that says how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise ProviderError(f"provider {kind}: needs torch (pip install torch==2.13.0); import failed: {exc}") from exc
    return torch


def check_output(provider: Provider, output: str) -> str:
    """Validate ``ClassifyRequest.output`` against the provider's capabilities."""
    if output not in ("probs", "logits"):
        raise bad_value("output", "'probs' or 'logits'", output)
    if Capability(output) not in provider.capabilities:
        raise CapabilityError(f"provider {provider.name}: output {output!r} not available (capabilities: {fmt_caps(provider.capabilities)})")
    return output


def load_factory(kind: str, target: str) -> Any:
    """Import ``MODULE:FACTORY`` and call the factory with no arguments."""
    mod_name, colon, attr = target.rpartition(":")
    if not colon or not mod_name or not attr:
        raise SpecError(f"provider {kind}: expected target MODULE:FACTORY (e.g. mypkg.models:build), received {target!r}")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"provider {kind}: target {target!r}: could not import module {mod_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"provider {kind}: target {target!r}: expected a callable {attr!r} in {mod_name}, received {type(factory).__name__}")
    try:
        return factory()
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported with its origin
        raise ProviderError(f"provider {kind}: factory {target!r} failed: {type(exc).__name__}: {exc}") from exc


def module_fingerprint(model: Any) -> str:
    """sha256 over the state of a torch module; a random id for anything else (never shared)."""
    state = getattr(model, "state_dict", None)
    if not callable(state):
        # A plain callable cannot be fingerprinted: a fresh id keeps a disk cache from ever
        # serving another function's outputs.
        return "callable-" + uuid.uuid4().hex
    torch = import_torch(NAME)
    h = hashlib.sha256()
    for key, tensor in sorted(state().items()):
        h.update(key.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    if callable(obj) and not hasattr(obj, "state_dict") and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise bad_value(name, "a positive integer", value)
    return int(value)


def parse_int(name: str, text: str) -> int:
    """A spec option as a positive int."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise bad_value(name, "a positive integer", text) from None
    return positive_int(name, value)


def parse_int_list(name: str, text: str) -> tuple[int, ...]:
    """``"3,32,32"`` -> ``(3, 32, 32)``."""
    try:
        return tuple(positive_int(name, int(p)) for p in text.split(","))
    except ValueError:
        raise bad_value(name, "comma-separated positive integers such as 3,32,32", text) from None


def parse_choice(name: str, text: str, choices: Iterable[str]) -> str:
    """A spec option that must be one of ``choices``."""
    choices = tuple(choices)
    if text not in choices:
        raise bad_value(name, f"one of {', '.join(choices)}", text)
    return text


provider_registry.register(NAME, TorchProvider, summary=TorchProvider.summary)
