"""Frozen image encoders for the Coordinator, and the fixed projection of their features.

The encoder is ours (a local, frozen network), not the black box: it runs once per image and
its features are cached in the run directory, so it adds no per-step cost.

- ``autoencoder`` (the default): a small convolutional autoencoder trained locally, without
  labels, on the run's own training images (seeded, seconds on a CPU). It never reads the
  black box's weights, so the whole method stays black-box.
- ``pixels``: average-pooled grey pixels (no weights at all).
- ``target-features``: the pooled penultimate features of the shipped EfficientNet-Lite0.
  When that same network is the black box this reads the target's weights: a **white-box**
  option, labelled so wherever it is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blackbox.errors import bad_value

ENCODERS = ("autoencoder", "pixels", "target-features")
WHITE_BOX_ENCODERS = ("target-features",)


def _torch_images(images: np.ndarray, side: int) -> Any:
    """(n, H, W, 3) floats in [0, 1] -> torch (n, 3, side, side)."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    if x.shape[-2:] != (side, side):
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x


class PixelEncoder:
    """Average-pooled grey pixels at ``res``² (no weights)."""

    name = "pixels"

    def __init__(self, res: int = 8) -> None:
        self.res = res

    def fit(self, images: np.ndarray, seed: int = 0) -> "PixelEncoder":
        """Nothing to learn."""
        return self

    def features(self, images: np.ndarray) -> np.ndarray:
        x = _torch_images(images, self.res * 4).mean(dim=1)
        n = x.shape[0]
        return x.reshape(n, self.res, 4, self.res, 4).mean(dim=(2, 4)).reshape(n, -1).double().numpy()

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        pass


class AutoencoderEncoder:
    """A small convolutional autoencoder, trained without labels on the task's own images.

    32² input → 3 strided convolutions (16, 32, 32 channels) → ``dim`` bottleneck → mirrored
    decoder; mean-squared reconstruction with random ±2-pixel shifts as augmentation, Adam,
    ``steps`` minibatches of 64, seeded (one torch thread, so it is reproducible bit for bit).
    The bottleneck is the feature vector. About 60k weights: a few seconds on one CPU core.
    """

    name = "autoencoder"
    SIDE = 32

    def __init__(self, dim: int = 64, steps: int = 400, lr: float = 3e-3) -> None:
        self.dim, self.steps, self.lr = dim, steps, lr
        self.net: Any = None

    def _build(self) -> Any:
        import torch
        from torch import nn

        enc = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.GELU(), nn.Conv2d(16, 32, 4, 2, 1), nn.GELU(),
                            nn.Conv2d(32, 32, 4, 2, 1), nn.GELU(), nn.Flatten(), nn.Linear(32 * 16, self.dim))
        dec = nn.Sequential(nn.Linear(self.dim, 32 * 16), nn.GELU(), nn.Unflatten(1, (32, 4, 4)),
                            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.GELU(), nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.GELU(),
                            nn.ConvTranspose2d(16, 3, 4, 2, 1))
        return torch.nn.ModuleDict({"enc": enc, "dec": dec})

    def fit(self, images: np.ndarray, seed: int = 0) -> "AutoencoderEncoder":
        """Train on unlabelled ``images`` (n, H, W, 3) in [0, 1]; deterministic given ``seed``."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            gen = torch.Generator().manual_seed(seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = self._build()
            x = _torch_images(images, self.SIDE)
            opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            n = len(x)
            for _ in range(self.steps):
                idx = torch.randint(0, n, (min(64, n),), generator=gen)
                dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
                b = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
                loss = torch.nn.functional.mse_loss(self.net["dec"](self.net["enc"](b)), b)
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.net.eval()
            self.final_loss = float(loss.detach())
        finally:
            torch.set_num_threads(threads)
        return self

    def features(self, images: np.ndarray) -> np.ndarray:
        import torch

        if self.net is None:
            raise RuntimeError("autoencoder used before fit (or load)")
        with torch.inference_mode():
            return torch.cat([self.net["enc"](_torch_images(images[i:i + 256], self.SIDE))
                              for i in range(0, len(images), 256)]).double().numpy()

    def state(self) -> dict[str, np.ndarray]:
        """The trained weights, flat, for the run directory."""
        return {f"ae.{k}": v.detach().numpy().copy() for k, v in self.net.state_dict().items()}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state` (no retraining)."""
        import torch

        self.net = self._build()
        self.net.load_state_dict({k[3:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("ae.")})
        self.net.eval()


class EfficientNetEncoder:
    """Pooled penultimate features of the shipped EfficientNet-Lite0 at ``size``² input
    (``target-features``: white-box when that network is also the black box)."""

    name = "target-features"

    def __init__(self, size: int = 96, batch_size: int = 64) -> None:
        from blackbox.providers.efficientnet import IMAGENET_MEAN, IMAGENET_STD, load_efficientnet_lite0

        import torch

        self.size, self.batch_size = size, batch_size
        self.model = load_efficientnet_lite0().to(memory_format=torch.channels_last)
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def fit(self, images: np.ndarray, seed: int = 0) -> "EfficientNetEncoder":
        """Pretrained: nothing to learn."""
        return self

    def features(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = _torch_images(images[i:i + self.batch_size], self.size)
                x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
                f = self.model.extract_features(x)
                out.append(f.mean(dim=(2, 3)).double().numpy())
        return np.concatenate(out)

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        pass


def make_encoder(name: str, size: int = 96, steps: int = 300) -> Any:
    """An (untrained) encoder by name (see ``ENCODERS``); call ``fit`` then ``features``."""
    if name == "autoencoder":
        return AutoencoderEncoder(steps=steps)
    if name == "target-features":
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
