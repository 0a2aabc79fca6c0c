"""An ``optimize`` objective that queries an image classifier through :func:`client_for`.

``blackbox optimize --objective blackbox.scale.demo:digits_prompt_loss --dim 64 ...`` learns an
additive 8×8 prompt on scikit-learn's digits so that a classifier's class ``k`` means digit
``k``; every round's candidates × minibatch images go out as *one* ClassifyRequest, so with
``--replicas N`` the rows of each round are split across N replicas. The classifier is
``$BLACKBOX_DEMO_PROVIDER`` (default: the tiny random conv net of :mod:`blackbox.testing`).
Needs torch and scikit-learn.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from ..types import ClassifyRequest
from .context import client_for

DEFAULT_PROVIDER = "torch:blackbox.testing:tiny_image_classifier"
BATCH = 16


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images[:200] / 16.0).astype(np.float64)
    return images, d.target[:200]


def digits_prompt_loss(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Cross-entropy of digit ``k`` as class ``k`` for each row of ``X`` (an 8×8 prompt), on a
    minibatch of 16 digits drawn from ``seed``; all rows in one batched provider call."""
    images, labels = _digits()
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    pick = np.random.default_rng(int(seed)).choice(len(images), size=BATCH, replace=False)
    base, y = images[pick], labels[pick]
    prompted = np.clip(base[None, :, :, :] + X.reshape(len(X), 1, 8, 8), 0.0, 1.0)  # (m, B, 8, 8)
    rgb = np.repeat(prompted[..., None], 3, axis=-1).reshape(len(X) * BATCH, 8, 8, 3)
    client = client_for(os.environ.get("BLACKBOX_DEMO_PROVIDER", DEFAULT_PROVIDER))
    probs = client.classify(ClassifyRequest(inputs=rgb, output="probs")).scores.reshape(len(X), BATCH, -1)
    p = probs[:, np.arange(BATCH), y]
    return -np.mean(np.log(np.clip(p, 1e-12, None)), axis=1)


digits_prompt_loss.batched = True  # type: ignore[attr-defined]
