"""Black-box features: one provider query per distinct text, cached on disk and in memory.

A :class:`Featurizer` turns texts into either token-level states (``hidden_states``: a
``(tokens, d)`` array per text) or one vector per text (``embed``), whichever the provider
offers (``hidden_states`` first, unless ``mode`` says otherwise). Every call goes through
:class:`blackbox.client.Client`, so a text is sent once, later runs read the disk cache, and
the client's ledger counts the queries. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from blackbox.client import Client, Ledger
from blackbox.errors import CapabilityError, bad_value
from blackbox.provider import Provider, load_provider
from blackbox.types import Capability, EmbedRequest, HiddenStatesRequest

MODES = ("auto", "tokens", "vector")
Progress = Callable[[int, int], None]


@dataclass
class Features:
    """Padded token states ``x (n, T, d)`` float32 with a boolean ``mask (n, T)``.

    Vector features are the case ``T == 1``. Sentence pairs carry ``extra (n, 2d)``: the
    comparison of the two segments' mean states (``|a - b|`` and ``a * b``), which the linear
    probe appends to the pooled input (the head sees the same two rows as extra tokens), and
    ``sim (n,)``: the cosine of the two mean states, the classic similarity of a pair.
    """

    x: np.ndarray
    mask: np.ndarray
    extra: np.ndarray | None = None
    sim: np.ndarray | None = None

    def pooled(self) -> np.ndarray:
        """Masked mean over tokens, ``(n, d)`` float64."""
        m = self.mask[..., None].astype(np.float64)
        return (self.x.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1.0)

    def probe_input(self, similarity: bool = False) -> np.ndarray:
        """The pooled input, with the pair comparison appended for sentence pairs (and, with
        ``similarity``, the pair's cosine as the last column)."""
        p = self.pooled()
        if self.extra is None:
            return p
        cols = [p, self.extra.astype(np.float64)]
        if similarity:
            cols.append(self.sim.astype(np.float64)[:, None])
        return np.concatenate(cols, 1)

    def __len__(self) -> int:
        return len(self.x)


def pair_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two comparison rows of segments ``a (t_a, d)`` and ``b (t_b, d)``: ``|ā - b̄|`` and
    ``ā * b̄`` (rescaled to the size of a mean state), so attention can weigh their agreement."""
    ma, mb = a.mean(0), b.mean(0)
    prod = ma * mb
    scale = np.sqrt(np.abs(ma).mean() * np.abs(mb).mean()) + 1e-8
    return np.stack([np.abs(ma - mb), prod / scale]).astype(np.float32)


def segment_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the mean states of segments ``a (t_a, d)`` and ``b (t_b, d)``."""
    ma, mb = a.mean(0).astype(np.float64), b.mean(0).astype(np.float64)
    return float(ma @ mb / max(np.linalg.norm(ma) * np.linalg.norm(mb), 1e-12))


def stack(arrays: Sequence[np.ndarray], extra: Sequence[np.ndarray | None] | None = None, sim: Sequence[float | None] | None = None) -> Features:
    """Pad ``(t_i, d)`` arrays to one ``(n, T, d)`` batch with a mask (``extra``: one pair
    comparison per row, or None for a single text; ``sim``: the pair's cosine, or None)."""
    if not arrays:
        raise bad_value("texts", "at least one text", "none")
    d = arrays[0].shape[1]
    t = max(a.shape[0] for a in arrays)
    x = np.zeros((len(arrays), t, d), dtype=np.float32)
    mask = np.zeros((len(arrays), t), dtype=bool)
    for i, a in enumerate(arrays):
        x[i, : len(a)] = a
        mask[i, : len(a)] = True
    ext = None
    if extra is not None and any(e is not None for e in extra):
        ext = np.stack([np.zeros(2 * d, dtype=np.float32) if e is None else e.reshape(-1) for e in extra])
    cos = None
    if sim is not None and any(v is not None for v in sim):
        cos = np.array([0.0 if v is None else v for v in sim], dtype=np.float64)
    return Features(x, mask, ext, cos)


class Featurizer:
    """Texts → :class:`Features` through a provider, each distinct text queried once.

    ``provider`` is a spec string, a :class:`~blackbox.provider.Provider` or a
    :class:`~blackbox.client.Client` (used as is). ``cache`` is a path for the client's disk
    cache (only used when a client is built here). ``max_tokens`` keeps the first tokens of
    long texts (the query still covers the whole text).
    """

    def __init__(
        self,
        provider: "str | Provider | Client",
        *,
        mode: str = "auto",
        layer: int = -1,
        max_tokens: int = 128,
        batch_size: int = 16,
        cache: Any = None,
        ledger: Ledger | None = None,
    ) -> None:
        if mode not in MODES:
            raise bad_value("mode", f"one of {', '.join(MODES)}", mode)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise bad_value("max_tokens", "a positive integer", max_tokens)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise bad_value("batch_size", "a positive integer", batch_size)
        self.spec = provider if isinstance(provider, str) else None
        if isinstance(provider, str):
            provider = load_provider(provider)
        if isinstance(provider, Client):
            self.client = provider
        elif isinstance(provider, Provider):
            self.client = Client(provider, cache=cache, ledger=ledger if ledger is not None else Ledger())
        else:
            raise bad_value("provider", "a spec string, a Provider or a Client", type(provider).__name__)
        if self.client.ledger is None:
            self.client.ledger = Ledger()
        caps = set(self.client.capabilities)
        has_tokens, has_vec = Capability.HIDDEN_STATES in caps, Capability.EMBED in caps
        if not (has_tokens or has_vec):
            raise CapabilityError(
                f"crosstune features: needs hidden_states or embed, but provider {self.client.name} has only "
                f"{', '.join(sorted(str(c) for c in caps)) or '(none)'}; built-in providers with them: hf-causal, sentence-encoder"
            )
        if mode == "auto":
            mode = "tokens" if has_tokens else "vector"
        elif mode == "tokens" and not has_tokens:
            raise CapabilityError(f"crosstune features: mode 'tokens' needs hidden_states, which provider {self.client.name} lacks")
        elif mode == "vector" and not has_vec:
            raise CapabilityError(f"crosstune features: mode 'vector' needs embed, which provider {self.client.name} lacks")
        self.mode, self.layer, self.max_tokens, self.batch_size = mode, layer, max_tokens, batch_size
        self._memory: dict[str, np.ndarray] = {}

    def describe(self) -> dict[str, Any]:
        """What produced the features (stored with a run)."""
        return {"provider": self.client.describe(), "spec": self.spec, "mode": self.mode, "layer": self.layer, "max_tokens": self.max_tokens}

    @property
    def queries(self) -> int:
        """Provider queries spent so far by this featurizer's client (cache hits are free)."""
        return int(self.client.ledger.queries) if self.client.ledger is not None else 0

    def _fetch(self, texts: list[str]) -> list[np.ndarray]:
        if self.mode == "tokens":
            res = self.client.hidden_states(HiddenStatesRequest(texts=tuple(texts), layer=self.layer))
            return [np.asarray(s, dtype=np.float32)[: self.max_tokens] for s in res.states]
        res = self.client.embed(EmbedRequest(texts=tuple(texts)))
        return [np.asarray(v, dtype=np.float32)[None, :] for v in res.vectors]

    def arrays(self, texts: Sequence[str], progress: Progress | None = None) -> list[np.ndarray]:
        """One ``(t, d)`` array per text (``t == 1`` for vectors). A sentence pair (two segments
        joined by ``PAIR_SEP``) queries each segment once and gives both segments' states
        followed by their two :func:`pair_rows`."""
        from .data import PAIR_SEP

        texts = list(texts)
        segments = []
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise bad_value(f"texts[{i}]", "a non-empty string", t)
            parts = t.split(PAIR_SEP)
            if len(parts) > 2 or any(not p.strip() for p in parts):
                raise bad_value(f"texts[{i}]", "a text or a pair of two non-empty segments", t)
            segments.extend(parts)
        self._fetch_missing(segments, progress)
        out = []
        for t in texts:
            if PAIR_SEP in t:
                a, b = (self._memory[p] for p in t.split(PAIR_SEP))
                out.append(np.concatenate([a, b, pair_rows(a, b)]))
            else:
                out.append(self._memory[t])
        return out

    def _fetch_missing(self, texts: list[str], progress: Progress | None) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self._memory))
        done = 0
        if progress:
            progress(0, len(todo))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for t, a in zip(chunk, self._fetch(chunk)):
                self._memory[t] = a
            done += len(chunk)
            if progress:
                progress(done, len(todo))

    def __call__(self, texts: Sequence[str], progress: Progress | None = None) -> Features:
        """Padded features of ``texts`` (with the pair comparison in ``extra`` for pairs)."""
        from .data import PAIR_SEP

        arrays = self.arrays(texts, progress)
        extra = [a[-2:] if PAIR_SEP in t else None for t, a in zip(texts, arrays)]
        sim = [segment_cosine(*(self._memory[p] for p in t.split(PAIR_SEP))) if PAIR_SEP in t else None for t in texts]
        return stack(arrays, extra, sim)

    def close(self) -> None:
        """Close the client (and the provider it wraps)."""
        self.client.close()
