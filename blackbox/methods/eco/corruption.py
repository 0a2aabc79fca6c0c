"""Corruption functions on a prompt's input embeddings, and which tokens they touch.

Every function has the signature ``fn(x, strength, rng, dims) -> x'`` where ``x`` is the
``(k, d)`` float32 block of selected token embeddings, ``strength >= 0`` the corruption
strength, ``rng`` a numpy generator (deterministic per prompt, see :func:`prompt_rng`) and
``dims`` the number of embedding dimensions the dimension-wise families touch (``None``: all).
``strength == 0`` returns ``x`` unchanged for every family (a test checks it).

Strength meaning per family:

========================  ==================================================================
``gaussian_first_n``      add N(0, s²) to the first ``dims`` dimensions
``gaussian_random_n``     add N(0, s²) to ``dims`` dimensions drawn at random (per token)
``gaussian_top_k``        add N(0, s²) to the ``dims`` dimensions of largest magnitude
``zero_first_n``          zero the first ``round(s·d)`` dimensions (``s`` is a fraction in [0, 1])
``zero_top_k``            zero the ``round(s·d)`` dimensions of largest magnitude
``flip_first_n``          flip the sign of the first ``round(s·d)`` dimensions
``flip_top_k``            flip the sign of the ``round(s·d)`` largest-magnitude dimensions
``add_constant``          add ``s`` to every coordinate
``subtract_constant``     subtract ``s`` from every coordinate
``random_noise``          replace the embeddings by ``(1-min(s,1))·x + min(s,1)·N(0, ρ²)``, ρ the rms of ``x``
``reverse``               reverse the order of the selected tokens (on when ``s > 0``)
``shuffle``               permute the selected tokens at random (on when ``s > 0``)
========================  ==================================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from blackbox.errors import bad_value

CorruptionFn = Callable[[np.ndarray, float, np.random.Generator, "int | None"], np.ndarray]


def _n_dims(dims: int | None, d: int) -> int:
    return d if dims is None else max(0, min(int(dims), d))


def _frac_dims(strength: float, d: int) -> int:
    return int(round(min(max(strength, 0.0), 1.0) * d))


def _top_idx(x: np.ndarray, n: int) -> np.ndarray:
    """Per row, the indices of the ``n`` largest-magnitude coordinates ``(k, n)``."""
    if n <= 0:
        return np.zeros((x.shape[0], 0), dtype=np.int64)
    if n >= x.shape[1]:
        return np.tile(np.arange(x.shape[1]), (x.shape[0], 1))
    return np.argpartition(-np.abs(x), n - 1, axis=1)[:, :n]


def gaussian_first_n(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    if s == 0:
        return x
    out = x.copy()
    n = _n_dims(dims, x.shape[1])
    out[:, :n] += (s * rng.standard_normal((x.shape[0], n))).astype(x.dtype)
    return out


def gaussian_random_n(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    if s == 0:
        return x
    out = x.copy()
    n = _n_dims(dims, x.shape[1])
    for row in range(x.shape[0]):
        idx = rng.choice(x.shape[1], size=n, replace=False)
        out[row, idx] += (s * rng.standard_normal(n)).astype(x.dtype)
    return out


def gaussian_top_k(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    if s == 0:
        return x
    out = x.copy()
    idx = _top_idx(x, _n_dims(dims, x.shape[1]))
    noise = (s * rng.standard_normal(idx.shape)).astype(x.dtype)
    np.put_along_axis(out, idx, np.take_along_axis(out, idx, axis=1) + noise, axis=1)
    return out


def _dimension_edit(x: np.ndarray, s: float, where: str, op: str) -> np.ndarray:
    """Zero (``op="zero"``) or negate (``op="flip"``) ``round(s·d)`` dimensions per token:
    the first ones (``where="first"``) or those of largest magnitude (``where="top"``)."""
    n = _frac_dims(s, x.shape[1])
    if n == 0:
        return x
    idx = np.tile(np.arange(n), (x.shape[0], 1)) if where == "first" else _top_idx(x, n)
    values = np.take_along_axis(x, idx, axis=1)
    out = x.copy()
    np.put_along_axis(out, idx, np.zeros_like(values) if op == "zero" else -values, axis=1)
    return out


def zero_first_n(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    return _dimension_edit(x, s, "first", "zero")


def zero_top_k(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    return _dimension_edit(x, s, "top", "zero")


def flip_first_n(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    return _dimension_edit(x, s, "first", "flip")


def flip_top_k(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    return _dimension_edit(x, s, "top", "flip")


def add_constant(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    return x if s == 0 else x + np.asarray(s, dtype=x.dtype)


def subtract_constant(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    return x if s == 0 else x - np.asarray(s, dtype=x.dtype)


def random_noise(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    if s == 0:
        return x
    w = min(float(s), 1.0)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1.0
    noise = (rms * rng.standard_normal(x.shape)).astype(x.dtype)
    return ((1.0 - w) * x + w * noise).astype(x.dtype)


def reverse(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    return x if s == 0 else x[::-1].copy()


def shuffle(x: np.ndarray, s: float, rng: np.random.Generator, dims: int | None = None) -> np.ndarray:
    return x if s == 0 else x[rng.permutation(x.shape[0])].copy()


CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian_first_n": gaussian_first_n,
    "gaussian_random_n": gaussian_random_n,
    "gaussian_top_k": gaussian_top_k,
    "zero_first_n": zero_first_n,
    "zero_top_k": zero_top_k,
    "flip_first_n": flip_first_n,
    "flip_top_k": flip_top_k,
    "add_constant": add_constant,
    "subtract_constant": subtract_constant,
    "random_noise": random_noise,
    "reverse": reverse,
    "shuffle": shuffle,
}
FRACTION_FAMILIES = frozenset({"zero_first_n", "zero_top_k", "flip_first_n", "flip_top_k"})
"""Families whose strength is a fraction of dimensions in [0, 1]."""
SWITCH_FAMILIES = frozenset({"reverse", "shuffle"})
"""Families that are on or off (no strength to search)."""
SELECTIONS = ("entity", "all_but_last")


def get_corruption(name: str) -> CorruptionFn:
    """Look up a corruption family by name (the error lists the valid ones)."""
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise bad_value("corruption", f"one of {', '.join(CORRUPTIONS)}", name) from None


def max_strength(name: str) -> float | None:
    """Upper end of a family's strength range (1 for fractions and switches; None: unbounded)."""
    return 1.0 if name in FRACTION_FAMILIES or name in SWITCH_FAMILIES or name == "random_noise" else None


def prompt_rng(seed: int, ids: Sequence[int], strength: float) -> np.random.Generator:
    """A generator that depends only on ``(seed, token ids, strength)``: a prompt is
    corrupted the same way alone or in a batch, in any run."""
    h = hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes() + repr((int(seed), float(strength))).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def select_tokens(
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int]],
    mode: str,
    region: tuple[int, int] | None = None,
) -> np.ndarray:
    """Indices of the tokens to corrupt.

    ``entity``: tokens whose character span overlaps one of ``spans`` (the forget target's
    occurrences in the prompt text); when ``spans`` is empty it falls back to
    ``all_but_last``. ``all_but_last``: every non-special token but the last one (the last
    token's embedding is kept so the model still sees where to answer). Special tokens
    (offset ``(0, 0)``) are never selected. ``region`` (character start, end) limits the
    choice to the prompt's own text inside a chat template: the template's tokens (role
    markers, special tokens, the generation prompt) are never corrupted.
    """
    if mode not in SELECTIONS:
        raise bad_value("tokens", f"one of {', '.join(SELECTIONS)}", mode)
    real = [i for i, (a, b) in enumerate(offsets) if b > a and (region is None or (a >= region[0] and b <= region[1]))]
    if mode == "entity" and spans:
        hit = [i for i in real if any(offsets[i][0] < e and s < offsets[i][1] for s, e in spans)]
        if hit:
            return np.asarray(hit, dtype=np.int64)
    return np.asarray(real[:-1], dtype=np.int64)


@dataclass(frozen=True)
class Corruption:
    """A corruption family applied to selected tokens at a strength, seeded per prompt."""

    family: str = "gaussian_first_n"
    strength: float = 0.0
    dims: int | None = None
    tokens: str = "entity"
    seed: int = 0

    def __post_init__(self) -> None:
        get_corruption(self.family)
        if not (isinstance(self.strength, (int, float)) and np.isfinite(self.strength) and self.strength >= 0):
            raise bad_value("strength", "a finite number >= 0", self.strength)
        if self.dims is not None and (isinstance(self.dims, bool) or not isinstance(self.dims, int) or self.dims < 1):
            raise bad_value("dims", "a positive int or None (all dimensions)", self.dims)
        if self.tokens not in SELECTIONS:
            raise bad_value("tokens", f"one of {', '.join(SELECTIONS)}", self.tokens)

    def apply(self, ids: np.ndarray, embeds: np.ndarray, offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]] = (),
              region: tuple[int, int] | None = None) -> np.ndarray:
        """Corrupted copy of ``embeds`` (only the selected rows change; see :func:`select_tokens`)."""
        if self.strength == 0:
            return embeds
        idx = select_tokens(offsets, spans, self.tokens, region)
        if idx.size == 0:
            return embeds
        fn = get_corruption(self.family)
        rng = prompt_rng(self.seed, ids, self.strength)
        out = np.array(embeds, dtype=np.float32, copy=True)
        out[idx] = fn(out[idx], float(self.strength), rng, self.dims)
        return out

    def with_strength(self, strength: float) -> "Corruption":
        return Corruption(self.family, float(strength), self.dims, self.tokens, self.seed)

    def to_json(self) -> dict[str, object]:
        return {"family": self.family, "strength": float(self.strength), "dims": self.dims, "tokens": self.tokens, "seed": int(self.seed)}
