"""From the black box's source classes to the task's classes: label maps and a learned head.

- A **label map** is a 0/1 matrix ``M`` (task × source). Task scores are the summed source
  probabilities ``p @ M.T`` (many-to-one when a row has several ones), renormalised over
  the task classes. It is fixed (given by the user), chosen by frequency from the black
  box's predictions on the training images, or re-chosen by frequency every N steps from the
  current *prompted* predictions (iterative label mapping).
- A **head** is multinomial logistic regression from the black box's log-probabilities to
  the task's classes, fitted locally (the head is ours; only the target is a black box).

In the paper's setting (CLIP with class names as text prompts) the black box already scores
the task's classes and no map is needed: use a provider whose classes are the task's and
``output=identity``.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from blackbox.errors import bad_value

_EPS = 1e-12


def identity_map(n_task: int, n_source: int) -> np.ndarray:
    """The black box's classes are the task's (same order)."""
    if n_task != n_source:
        raise bad_value("output", f"a label map or head: the black box has {n_source} classes, the task {n_task}", "identity")
    return np.eye(n_task)


def fixed_map(spec: Mapping[str, Sequence[Any]], task_classes: Sequence[str], source_classes: Sequence[str] | None, n_source: int) -> np.ndarray:
    """A user map ``{task class: [source class index or name, ...]}`` covering every task class."""
    missing = [c for c in task_classes if c not in spec]
    if missing:
        raise bad_value("label_map", f"an entry for every task class {list(task_classes)}", f"a map missing {missing}")
    M = np.zeros((len(task_classes), n_source))
    names = {n: i for i, n in enumerate(source_classes or [])}
    for t, cls in enumerate(task_classes):
        srcs = spec[cls]
        if isinstance(srcs, (str, int)):
            srcs = [srcs]
        if not srcs:
            raise bad_value(f"label_map[{cls!r}]", "at least one source class", srcs)
        for s in srcs:
            if isinstance(s, str) and not s.lstrip("-").isdigit():
                if s not in names:
                    raise bad_value(f"label_map[{cls!r}]", "source class indices or names of the black box's classes", s)
                idx = names[s]
            else:
                idx = int(s)
            if not 0 <= idx < n_source:
                raise bad_value(f"label_map[{cls!r}]", f"source indices in [0, {n_source - 1}]", idx)
            M[t, idx] = 1.0
    return M


def frequency_map(probs: np.ndarray, labels: np.ndarray, n_task: int, per_class: int = 1) -> np.ndarray:
    """Greedy frequency map: repeatedly pair the (task, source) with the most top-1 hits
    (mean probability breaks ties), each source used once, ``per_class`` sources per task class."""
    n_source = probs.shape[1]
    if per_class * n_task > n_source:
        raise bad_value("map_per_class", f"at most {n_source // n_task} for {n_task} task classes and {n_source} source classes", per_class)
    top = probs.argmax(axis=1)
    score = np.zeros((n_task, n_source))
    for t in range(n_task):
        rows = labels == t
        if rows.any():
            score[t] = np.bincount(top[rows], minlength=n_source) + probs[rows].mean(axis=0)
    M = np.zeros((n_task, n_source))
    need = np.full(n_task, per_class)
    s = score.copy()
    for _ in range(per_class * n_task):
        t, j = np.unravel_index(np.argmax(s), s.shape)
        M[t, j] = 1.0
        s[:, j] = -np.inf
        need[t] -= 1
        if need[t] == 0:
            s[t, :] = -np.inf
    return M


def mapped_log_probs(probs: np.ndarray, M: np.ndarray) -> np.ndarray:
    """log of the task probabilities ``p @ M.T``, renormalised over the task classes."""
    q = probs @ M.T + _EPS
    return np.log(q) - np.log(q.sum(axis=1, keepdims=True))


class Head:
    """Multinomial logistic regression on standardised source log-probabilities."""

    def __init__(self, C: float = 0.1, max_iter: int = 300) -> None:
        self.C, self.max_iter = C, max_iter
        self.arrays: dict[str, np.ndarray] | None = None

    def fit(self, probs: np.ndarray, labels: np.ndarray, n_task: int) -> "Head":
        """Fit on ``(n, n_source)`` probabilities (deterministic: lbfgs)."""
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        x = np.log(probs + _EPS)
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
        # BLAS threads on tiny problems only contend (measured 10 ms per L-BFGS iteration on a
        # busy 2-core machine for a 20-feature fit).
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # lbfgs iteration cap: the fit is still usable
            clf.fit((x - mean) / std, labels)
        W = np.zeros((n_task, x.shape[1]))
        b = np.full(n_task, -30.0)  # classes absent from the fit are never predicted
        W[clf.classes_] = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_, clf.coef_])
        b[clf.classes_] = clf.intercept_ if len(clf.classes_) > 2 else np.array([-clf.intercept_[0], clf.intercept_[0]])
        self.arrays = {"mean": mean, "std": std, "W": W, "b": b}
        return self

    def log_probs(self, probs: np.ndarray) -> np.ndarray:
        """Task log-probabilities for ``(n, n_source)`` source probabilities."""
        if self.arrays is None:
            raise RuntimeError("head used before fit")
        a = self.arrays
        z = ((np.log(probs + _EPS) - a["mean"]) / a["std"]) @ a["W"].T + a["b"]
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class FoldedHead:
    """K heads, each fitted without one fold of the training images; a training image is
    scored by the head that did not see it. The zeroth-order loss then measures how well
    the prompted outputs *generalise* through a head, instead of how well a head memorised
    them (which is near zero with 1,000 features and a few shots)."""

    def __init__(self, folds: int, C: float, n_train: int, seed: int) -> None:
        self.folds = folds
        self.fold_of = np.random.default_rng(seed).permutation(n_train) % folds
        self.heads = [Head(C) for _ in range(folds)] if folds > 1 else []
        self.full = Head(C)

    def fit(self, probs: np.ndarray, labels: np.ndarray, n_task: int) -> "FoldedHead":
        """Refit all fold heads and the full head (used at test time) on training outputs."""
        for k, h in enumerate(self.heads):
            rows = self.fold_of != k
            h.fit(probs[rows], labels[rows], n_task)
        self.full.fit(probs, labels, n_task)
        return self

    def train_log_probs(self, probs: np.ndarray, train_index: np.ndarray) -> np.ndarray:
        """Out-of-fold log-probabilities for training images ``train_index`` (positions in the train set)."""
        if not self.heads:
            return self.full.log_probs(probs)
        out = np.empty((len(probs), self.full.arrays["W"].shape[0]))  # type: ignore[index]
        folds = self.fold_of[train_index]
        for k, h in enumerate(self.heads):
            rows = folds == k
            if rows.any():
                out[rows] = h.log_probs(probs[rows])
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the heads, flat."""
        out = {f"head.full.{k}": v for k, v in self.full.arrays.items()}  # type: ignore[union-attr]
        for i, h in enumerate(self.heads):
            out.update({f"head.{i}.{k}": v for k, v in h.arrays.items()})  # type: ignore[union-attr]
        return out

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore from :meth:`arrays`."""
        self.full.arrays = {k: arrays[f"head.full.{k}"] for k in ("mean", "std", "W", "b")}
        for i, h in enumerate(self.heads):
            h.arrays = {k: arrays[f"head.{i}.{k}"] for k in ("mean", "std", "W", "b")}
