"""``clip`` provider: CLIP-style zero-shot classification (image features · class-prompt text features).

Spec: ``clip:MODULE:FACTORY?classes=cat,dog&template=a photo of a {}.&size=224&logit_scale=100``.
The factory takes no arguments and returns ``(image_encoder, text_encoder)``:
``image_encoder`` maps a float tensor ``(n, 3, size, size)`` (normalised with CLIP's mean and
std) to features ``(n, d)``; ``text_encoder`` maps a list of strings to features ``(m, d)``.
Class scores are ``logit_scale · cos(image, text(template.format(class)))`` — the setting of
the BlackVIP paper, where the task's class names are the text prompts and no label map is
needed (``--set output=identity``). No CLIP weights ship offline here; a user with weights
(open_clip, transformers) writes a three-line factory. Direct use::

    ClipZeroShotProvider(image_encoder, text_encoder, ["cat", "dog"])
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from blackbox.errors import ProviderError, bad_value
from blackbox.provider import Provider, check_options
from blackbox.registry import providers as provider_registry
from blackbox.types import Capability, ClassifyRequest, ClassifyResult, Usage

from .torch_provider import check_output, import_torch, load_factory, module_fingerprint, parse_int, positive_int

NAME = "clip"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipZeroShotProvider(Provider):
    """Zero-shot image classifier from an image encoder and text features of class prompts."""

    name = NAME
    declared_capabilities = frozenset({Capability.PROBS, Capability.LOGITS})
    summary = "CLIP-style zero-shot classifier: image features · text features of class prompts"

    def __init__(self, image_encoder: Any, text_encoder: Callable[[list[str]], Any], class_names: Sequence[str], *,
                 template: str = "a photo of a {}.", size: int = 224, logit_scale: float = 100.0, batch_size: int = 32,
                 target: str | None = None) -> None:
        """Encode the class prompts once; images are encoded per call."""
        super().__init__()
        torch = import_torch(NAME)
        self.class_names = tuple(str(c) for c in class_names)
        if len(self.class_names) < 2:
            raise bad_value("classes", "at least 2 class names", list(self.class_names))
        if "{}" not in template:
            raise bad_value("template", "a text with {} where the class name goes", template)
        self.template, self.size = template, positive_int("size", size)
        self.batch_size = positive_int("batch_size", batch_size)
        if not logit_scale > 0:
            raise bad_value("logit_scale", "a number > 0", logit_scale)
        self.logit_scale = float(logit_scale)
        self.target = target
        self.image_encoder = image_encoder.eval() if hasattr(image_encoder, "eval") else image_encoder
        with torch.inference_mode():
            text = torch.as_tensor(text_encoder([template.format(c) for c in self.class_names]), dtype=torch.float32)
        if text.ndim != 2 or text.shape[0] != len(self.class_names):
            raise ProviderError(f"provider {NAME}: text encoder returned shape {tuple(text.shape)}, expected ({len(self.class_names)}, d)")
        self.text_features = torch.nn.functional.normalize(text, dim=-1)
        self._mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "ClipZeroShotProvider":
        """Build from ``clip:MODULE:FACTORY?classes=a,b,c[&template=...&size=224&logit_scale=100]``."""
        check_options(NAME, options, ("classes", "template", "size", "logit_scale", "batch_size"))
        if "classes" not in options:
            raise bad_value("classes", "a comma-separated list of class names (?classes=cat,dog)", None)
        built = load_factory(NAME, target)
        if not (isinstance(built, (tuple, list)) and len(built) == 2):
            raise ProviderError(f"provider {NAME}: factory {target!r} returned {type(built).__name__}, expected (image_encoder, text_encoder)")
        try:
            scale = float(options.get("logit_scale", "100"))
        except ValueError:
            raise bad_value("logit_scale", "a number > 0", options["logit_scale"]) from None
        return cls(built[0], built[1], [c.strip() for c in options["classes"].split(",") if c.strip()],
                   template=options.get("template", "a photo of a {}."), size=parse_int("size", options.get("size", "224")),
                   logit_scale=scale, batch_size=parse_int("batch_size", options.get("batch_size", "32")), target=target)

    def describe(self) -> dict[str, Any]:
        return {"provider": NAME, "model": self.target or type(self.image_encoder).__name__, "classes": list(self.class_names),
                "template": self.template, "size": self.size}

    def cache_identity(self) -> dict[str, Any]:
        return {**self.describe(), "fingerprint": module_fingerprint(self.image_encoder)}

    def example_inputs(self) -> np.ndarray:
        return np.random.default_rng(0).random((2, self.size, self.size, 3))

    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """``logit_scale · cos`` logits, or their softmax, one row per image ``(n, H, W, 3)`` in [0, 1]."""
        want = check_output(self, request.output)
        x = request.inputs
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0:
            raise bad_value("inputs", "float RGB images of shape (n, H, W, 3) with values in [0, 1]", f"shape {getattr(x, 'shape', type(x).__name__)}")
        torch = import_torch(NAME)
        F = torch.nn.functional
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                t = torch.as_tensor(np.ascontiguousarray(x[i:i + self.batch_size], dtype=np.float32)).permute(0, 3, 1, 2)
                if t.shape[-2:] != (self.size, self.size):
                    t = F.interpolate(t, size=(self.size, self.size), mode="bicubic", align_corners=False)
                feats = torch.as_tensor(self.image_encoder((t - self._mean) / self._std), dtype=torch.float32)
                if feats.ndim != 2 or feats.shape[1] != self.text_features.shape[1]:
                    raise ProviderError(f"provider {NAME}: image encoder returned shape {tuple(feats.shape)}, expected (n, {self.text_features.shape[1]})")
                logits = self.logit_scale * F.normalize(feats, dim=-1) @ self.text_features.T
                out.append((torch.softmax(logits, dim=-1) if want == "probs" else logits).double().numpy())
        return ClassifyResult(scores=np.concatenate(out), output=want, usage=Usage(queries=len(x)))


provider_registry.register(NAME, ClipZeroShotProvider, summary=ClipZeroShotProvider.summary)
