"""Frozen image encoders for the Coordinator, and the fixed projection of their features.

The encoder is ours (a local, frozen network), not the black box: it runs once per image and
its features are cached, so it adds no per-step cost. ``efficientnet-lite0`` is the shipped
ImageNet network's pooled penultimate features (1,280-d); ``pixels`` is a model-free encoder
(downsampled grey pixels) for tests and for users without a pretrained encoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blackbox.errors import bad_value

ENCODERS = ("efficientnet-lite0", "pixels")


class PixelEncoder:
    """Average-pooled grey pixels at ``res``² (no weights)."""

    name = "pixels"

    def __init__(self, res: int = 8) -> None:
        self.res = res

    def features(self, images: np.ndarray) -> np.ndarray:
        n, h, w, _ = images.shape
        if h % self.res or w % self.res:
            raise bad_value("images", f"sides divisible by {self.res} for the pixels encoder", f"{h}x{w}")
        g = images.mean(axis=-1).reshape(n, self.res, h // self.res, self.res, w // self.res)
        return g.mean(axis=(2, 4)).reshape(n, -1).astype(np.float64)


class EfficientNetEncoder:
    """Pooled penultimate features of the shipped EfficientNet-Lite0 at ``size``² input."""

    name = "efficientnet-lite0"

    def __init__(self, size: int = 96, batch_size: int = 64) -> None:
        from blackbox.providers.efficientnet import IMAGENET_MEAN, IMAGENET_STD, load_efficientnet_lite0

        import torch

        self.size, self.batch_size = size, batch_size
        self.model = load_efficientnet_lite0().to(memory_format=torch.channels_last)
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def features(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.as_tensor(np.ascontiguousarray(images[i:i + self.batch_size], dtype=np.float32)).permute(0, 3, 1, 2)
                x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
                x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
                f = self.model.extract_features(x)
                out.append(f.mean(dim=(2, 3)).double().numpy())
        return np.concatenate(out)


def make_encoder(name: str, size: int = 96) -> Any:
    """An encoder by name (see ``ENCODERS``)."""
    if name == "efficientnet-lite0":
        return EfficientNetEncoder(size=size)
    if name == "pixels":
        return PixelEncoder()
    raise bad_value("encoder", f"one of {', '.join(ENCODERS)}", name)


def fit_projection(features: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    """Whitened PCA of the training features to ``dim`` components (fixed, unsupervised)."""
    mean = features.mean(axis=0)
    centred = features - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(dim, vt.shape[0])
    scale = s[:k] / np.sqrt(max(len(features) - 1, 1))
    comps = vt[:k] / np.maximum(scale, 1e-12)[:, None]
    if k < dim:  # fewer images than components: pad with zero directions
        comps = np.concatenate([comps, np.zeros((dim - k, comps.shape[1]))])
    return {"mean": mean, "components": comps}


def project(features: np.ndarray, proj: dict[str, np.ndarray]) -> np.ndarray:
    """Codes ``(n, dim)``: whitened PCA coordinates, clipped to ±5 so outliers stay tame."""
    return np.clip((features - proj["mean"]) @ proj["components"].T, -5.0, 5.0)
