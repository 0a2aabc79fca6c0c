"""The scikit-learn-style estimator: CrossTune and its baselines behind one API.

``CrossTuneClassifier(features, config=CrossTuneConfig(method=...))`` with ``fit``,
``predict``, ``predict_proba``, ``score``, ``evaluate``, ``save`` and ``load``. Methods:

* ``crosstune``: the label-enhanced cross-attention head (:mod:`.head`);
* ``no-labels``: the same head with learnt class queries instead of descriptions;
* ``linear-probe``: logistic regression on pooled, standardised features (its inverse
  regularisation picked on a stratified held-out quarter of the few-shot set, then refitted;
  for sentence pairs the segments' comparison and, with ``pair_similarity``, their cosine);
* ``zero-shot``: cosine between the pooled input and the pooled label description (both
  centred on the mean of the few-shot inputs, which needs no labels).

Generated examples (augmentation) are passed to :meth:`fit` as ``generated``; with
``config.switch`` a teacher trained on the original few-shot data keeps only those whose
intended label it agrees with (per fold: fold ``k``'s head learns from what the teacher's
head ``k``, which never saw fold ``k``, agrees with). With ``config.augment_fallback`` the
generated data is kept only if it lowers the out-of-fold loss on the original examples.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from blackbox.errors import ConfigError, RunError, bad_value
from blackbox.runs import atomic_write_json, load_tensors, save_tensors

from .config import LEGACY, CrossTuneConfig
from .data import PAIR_SEP, describe_labels
from .features import Featurizer, Features

MODEL_FILE, MODEL_JSON = "model.safetensors", "model.json"
# candidates of the model selection (config.select): the blend is the default, the others must beat it
SELECT_ORDER = ("blend", "crosstune", "linear-probe", "zero-shot")
ZS_SCALES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # zero-shot temperatures tried when selecting
# select_rule "stacked": weights of (head, probe, zero-shot) on a grid of quarters summing to one
STACK_GRID = tuple((a / 4, b / 4, (4 - a - b) / 4) for a in range(5) for b in range(5 - a))
# select_rule "weighted": the head's weight in the head + probe product (the probe has the rest)
BLEND_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# head_cv: (dropout, weight decay) levels besides the configured one: weaker, stronger
HEAD_LEVELS = ((0.25, 0.05), (0.75, 5.0))


def _log_softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(1, keepdims=True)
    return s - np.log(np.exp(s).sum(1, keepdims=True))


def _softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(1, keepdims=True)


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over ``classes`` (those present in truth or predictions)."""
    yt, yp = np.asarray(list(y_true), dtype=object), np.asarray(list(y_pred), dtype=object)
    used = [c for c in classes if (yt == c).any() or (yp == c).any()]
    f1s = []
    for c in used:
        tp = float(((yt == c) & (yp == c)).sum())
        fp = float(((yt != c) & (yp == c)).sum())
        fn = float(((yt == c) & (yp != c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    """An L2 logistic regression (``C=c``) fitted with one BLAS thread.

    Why one: these fits are small (tens to hundreds of rows); on a busy 2-core machine a
    second BLAS thread only contends for cores (ECO's gate measured 1.03 s with 2 threads vs
    0.03 s with one), as BlackVIP's head and ECO's gate already do."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return LogisticRegression(C=c, max_iter=2000).fit(x, y)


def held_out_index(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified held-out part: ``round(fraction * n_c)`` per class, at least one when
    the class has two or more examples (none when ``fraction`` is 0)."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 3])
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        if k > 0:
            out.extend(rng.choice(idx, size=k, replace=False).tolist())
    return np.array(sorted(out), dtype=np.int64)


def fold_indices(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` stratified folds of the rows of ``y``: each class's rows are shuffled with the
    seed and dealt out in turn, so every fold gets ``n_c / k`` of class ``c`` (+-1)."""
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[np.random.default_rng([seed, 3, int(c)]).permutation(len(idx))]
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.array(sorted(f), dtype=np.int64) for f in folds if f]


class CrossTuneClassifier:
    """Few-shot text classifier over black-box features (see the module docstring).

    ``features``: a :class:`Featurizer` (shared between estimators to reuse features) or a
    provider spec string. ``descriptions``: ``{label: text}``; labels without one get
    ``config.description_template``.
    """

    def __init__(self, features: "Featurizer | str", config: CrossTuneConfig | None = None, descriptions: dict[str, str] | None = None, **overrides: Any) -> None:
        if config is None:
            config = CrossTuneConfig(**overrides)
        elif overrides:
            config = CrossTuneConfig(**{**config.to_json(), **overrides})
        if not isinstance(config, CrossTuneConfig):
            raise bad_value("config", "a CrossTuneConfig", type(config).__name__)
        self.config = config
        self.features = features if isinstance(features, Featurizer) else Featurizer(features)
        self.descriptions = dict(descriptions or {})

    # ---------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise ConfigError(f"{type(self).__name__}: not fitted yet; call fit(texts, labels) first")

    def _label_vectors(self, progress: Any = None) -> np.ndarray:
        texts = [self.descriptions_[c] for c in self.classes_]
        return self.features(texts, progress).pooled().astype(np.float32)

    def fit(self, texts: Sequence[str], labels: Sequence[str], generated: Sequence[tuple[str, str]] | None = None, progress: Any = None,
            teacher: "CrossTuneClassifier | None" = None, generated_sources: Sequence[Sequence[str] | None] | None = None) -> "CrossTuneClassifier":
        """Learn from the few-shot ``texts``/``labels`` (and ``generated`` (text, label) pairs).

        With ``config.switch`` the generated pairs are filtered by a teacher trained on the
        original few-shot data: ``teacher`` (already fitted on exactly that data) or, by
        default, a copy of this estimator's configuration fitted here.
        ``generated_sources`` (one list per generated pair: the few-shot texts its prompt
        showed, as :func:`~.augment.generate_examples` returns them) keeps each generated
        example out of the fold heads that are validated on one of its sources.
        """
        t_start = time.perf_counter()
        texts, labels = list(texts), [str(y) for y in labels]
        if len(texts) != len(labels):
            raise bad_value("labels", f"one label per text ({len(texts)})", f"{len(labels)} labels")
        if not texts:
            raise bad_value("texts", "at least one training text", "none")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise bad_value(f"texts[{i}]", "a non-empty string", t)
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise bad_value("labels", "at least two classes", classes)
        pairs = {PAIR_SEP in t for t in texts}
        if len(pairs) > 1:
            raise bad_value("texts", "all single texts or all sentence pairs", "a mix of both")
        self.classes_ = classes
        self.pairs_ = pairs.pop()
        self.stack_weights_ = None  # set by select_rule "stacked" or "weighted"
        self.descriptions_ = describe_labels(classes, self.descriptions, self.config.description_template)
        q0 = self.features.queries
        feats = self.features(texts, progress)
        y = np.array([classes.index(v) for v in labels], dtype=np.int64)
        self.val_index_ = held_out_index(y, self.config.val_fraction, self.config.seed)
        self.fold_index_ = self._folds(y)
        self.augment_report_: dict[str, Any] | None = None
        self.n_features_ = int(feats.x.shape[2])
        if generated:
            if generated_sources is not None and len(generated_sources) != len(generated):
                raise bad_value("generated_sources", f"one entry per generated example ({len(generated)})", len(generated_sources))
            self.train_info_ = self._fit_augmented(texts, labels, feats, y, list(generated), teacher, progress, generated_sources)
        else:
            self.train_info_ = self._fit_method(feats.x, feats.mask, y, feats)
        self.queries_ = self.features.queries - q0
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def _folds(self, y: np.ndarray) -> list[np.ndarray] | None:
        k = min(self.config.folds, int(np.bincount(y).min()))
        return fold_indices(y, k, self.config.seed) if k > 1 and self.config.method in ("crosstune", "no-labels", "probe-ensemble") else None

    def _fit_augmented(self, texts: list[str], labels: list[str], feats: Features, y: np.ndarray, gen: list[tuple[str, str]],
                       teacher: "CrossTuneClassifier | None", progress: Any, sources: Sequence[Sequence[str] | None] | None = None) -> dict[str, Any]:
        """Fit with generated examples: the switch filters them (per fold, by the teacher
        head that did not see that fold), and the fallback drops them when the original
        few-shot data says they hurt."""
        classes, cfg = self.classes_, self.config
        bad = sorted({l for _, l in gen} - set(classes))
        if bad:
            raise bad_value("generated labels", f"labels among the training classes {classes}", bad)
        gtexts, gi = [t for t, _ in gen], np.array([classes.index(l) for _, l in gen], dtype=np.int64)
        gf = self.features(gtexts, progress)  # all of them, in order: one query per text
        n, g = len(y), len(gen)
        head_method = cfg.method in ("crosstune", "no-labels")
        members = len(self.fold_index_) if self.fold_index_ else 1
        keep = np.ones((members, g), dtype=bool)
        if cfg.switch or (cfg.augment_fallback and head_method):
            if teacher is None:
                # this configuration without generated data (for the probes: a CrossTune head)
                method = cfg.method if head_method else "crosstune"
                teacher = CrossTuneClassifier(self.features, CrossTuneConfig(**{**cfg.to_json(), "method": method, "augment_n": 0}), self.descriptions)
                teacher.fit(texts, labels)
            elif getattr(teacher, "classes_", None) != classes:
                raise bad_value("teacher", f"a classifier fitted on the classes {classes}", getattr(teacher, "classes_", "an unfitted one"))
        if cfg.switch:
            keep = self._switch(teacher, gf, gi, members)
        if sources is not None and self.fold_index_:
            # a generation paraphrases the few-shot texts its prompt showed: it must not train
            # the head validated on one of them (that would leak the held-out example)
            for k, f in enumerate(self.fold_index_):
                held = {texts[i] for i in f}
                keep[k] &= np.array([not (src and held.intersection(src)) for src in sources], dtype=bool)
        sel = keep.any(0)
        report: dict[str, Any] = {"generated": g, "switch": cfg.switch, "kept": int(round(float(keep.sum(1).mean()))),
                                  "kept_per_fold": keep.sum(1).tolist()}
        report["dropped"] = g - report["kept"]
        comparable = (teacher is not None and head_method and teacher.config.seed == cfg.seed
                      and _same_folds(teacher.fold_index_, self.fold_index_) and teacher.train_info_.get("oof_loss") is not None)
        if not sel.any() and comparable:
            info = self._use_teacher(teacher, 0.0, 0.0)  # nothing kept: the fit without generated data
            report["used"] = False
            self.augment_report_ = report
            return info
        x, mask = _concat_features(feats, Features(gf.x[sel], gf.mask[sel]))
        yy = np.concatenate([y, gi[sel]])
        w = np.concatenate([np.ones((members, n), dtype=np.float32), keep[:, sel].astype(np.float32) * cfg.augment_weight], 1)
        info = self._fit_method(x, mask, yy, feats, weights=w if members > 1 else w[0])
        report["used"] = True
        if cfg.augment_fallback and comparable:
            t_loss, a_loss = teacher.train_info_["oof_loss"], info.get("oof_loss")
            report.update(oof_loss_without=t_loss, oof_loss_with=a_loss)
            if a_loss is not None and not a_loss < t_loss:
                # the held-out original examples say the generated data hurts: do without it
                info = self._use_teacher(teacher, info["train_seconds"], info.get("train_cpu_seconds", 0.0))
                report["used"] = False
        self.augment_report_ = report
        return info

    def _use_teacher(self, teacher: "CrossTuneClassifier", seconds: float, cpu: float) -> dict[str, Any]:
        """Take over the teacher's model (the same configuration fitted without generated
        data); the time reported is this fit's own."""
        self.center_ = teacher.center_
        self.head_, self.label_vectors_ = teacher.head_, teacher.label_vectors_
        self.choice_ = getattr(teacher, "choice_", None)
        self.stack_weights_ = getattr(teacher, "stack_weights_", None)
        self.zero_shot_scale_ = getattr(teacher, "zero_shot_scale_", None)
        if hasattr(teacher, "probe_"):
            self.probe_ = teacher.probe_
        return {**teacher.train_info_, "train_seconds": seconds, "train_cpu_seconds": cpu}

    def _switch(self, teacher: "CrossTuneClassifier", gf: Features, gi: np.ndarray, members: int) -> np.ndarray:
        """``(members, g)`` keep mask: the teacher agrees with the intended label (with at
        least ``switch_min_prob``). When the teacher is a fold ensemble over the same folds,
        fold ``k``'s student keeps what teacher head ``k`` (which never saw fold ``k``) agrees
        with, so the held-out comparison of the fallback stays honest."""
        from .head import CrossTuneEnsemble, head_scores

        th = getattr(teacher, "head_", None)
        per_fold = (isinstance(th, CrossTuneEnsemble) and len(th.members) == members and teacher.config.seed == self.config.seed
                    and _same_folds(teacher.fold_index_, self.fold_index_))
        if per_fold:
            probas = [_softmax(head_scores(m, gf.x, gf.mask, teacher.label_vectors_)) for m in th.members]
        else:
            probas = [teacher._proba_features(gf)] * members
        rows = np.arange(len(gi))
        return np.stack([(p.argmax(1) == gi) & (p[rows, gi] >= self.config.switch_min_prob) for p in probas])

    def _proba_features(self, feats: Features) -> np.ndarray:
        return _softmax(self._scores(feats))

    def _similarity(self) -> bool:
        """Whether the probe's input ends with the pair's cosine (``pair_similarity`` on pairs)."""
        return bool(getattr(self, "pairs_", False)) and self.config.pair_similarity > 0

    def _standardise(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and scale of the probe's input; the pair cosine (last column, with
        ``pair_similarity``) is scaled up so that the L2 penalty barely holds it back: one
        similarity is worth more than any of the many pooled coordinates on a pair task."""
        mu, sd = z.mean(0), z.std(0) + 1e-6
        if self._similarity():
            sd[-1] /= self.config.pair_similarity
        return mu, sd

    def _fit_method(self, x: np.ndarray, mask: np.ndarray, y: np.ndarray, orig: Features, weights: np.ndarray | None = None) -> dict[str, Any]:
        method = self.config.method
        pooled_orig = orig.pooled()
        self.center_ = pooled_orig.mean(0)
        if method == "zero-shot":
            self.label_vectors_ = self._label_vectors()
            return {"train_seconds": 0.0}
        if orig.extra is not None and len(x) != len(orig):
            raise bad_value("generated", "no generated examples for sentence pairs (augmentation writes single texts)", f"{len(x) - len(orig)} examples")
        if method == "linear-probe":
            return self._fit_probe(orig.probe_input(self._similarity()) if len(x) == len(orig) else Features(x, mask).pooled(), y)
        if method == "probe-ensemble":
            return self._fit_probe_ensemble(orig.probe_input(self._similarity()), y)
        from .head import fit_head

        labels = self._label_vectors() if method == "crosstune" else None
        self.label_vectors_ = labels
        self.head_, info = fit_head(x, mask, y, labels, len(self.classes_), self.config, self.val_index_, weights=weights, folds=self.fold_index_)
        if self.config.head_cv and self.fold_index_:
            self.head_, info = self._head_cv(x, mask, y, labels, weights, self.head_, info)
        oof = info.pop("_oof", None)
        self.choice_ = None
        if method == "crosstune" and self.config.select and oof is not None:
            n = len(orig)
            self.choice_, info["selection"] = self._select(orig, y[:n], oof[:n])
        return info

    def _head_cv(self, x: np.ndarray, mask: np.ndarray, y: np.ndarray, labels: np.ndarray | None, weights: np.ndarray | None,
                 head: Any, info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """``head_cv``: refit the head ensemble at the other regularisation levels and keep the
        one with the best out-of-fold accuracy on the original shots (ties: log-loss, then the
        configured level). Dropout and weight decay act in training only, so a saved model
        needs no record of the level to predict; it is kept in the report."""
        from dataclasses import replace

        from .head import fit_head

        n = int(sum(len(f) for f in self.fold_index_))  # the original shots (generated rows follow them)
        rows = np.arange(n)

        def key(inf: dict[str, Any]) -> tuple[float, float]:
            oof = inf["_oof"][:n]
            return float((oof.argmax(1) == y[:n]).mean()), -float(-oof[rows, y[:n]].mean())

        cfg = self.config
        levels = [((cfg.dropout, cfg.weight_decay), head, info)]
        for d, wd in HEAD_LEVELS:
            h, inf = fit_head(x, mask, y, labels, len(self.classes_), replace(cfg, dropout=d, weight_decay=wd), self.val_index_,
                              weights=weights, folds=self.fold_index_)
            levels.append(((d, wd), h, inf))
        best = max(range(len(levels)), key=lambda i: (key(levels[i][2]), -i))  # ties: the earlier (configured first)
        (d, wd), head, info = levels[best]
        info = {**info, "head_cv": {"dropout": d, "weight_decay": wd,
                                    "oof_acc": {f"{lv[0][0]},{lv[0][1]}": key(lv[2])[0] for lv in levels}},
                "train_seconds": sum(lv[2]["train_seconds"] for lv in levels),
                "train_cpu_seconds": sum(lv[2].get("train_cpu_seconds", 0.0) for lv in levels)}
        return head, info

    def _probe_oof(self, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, list[Any]]:
        """Out-of-fold log-probabilities of the linear probe over ``fold_index_``, for the
        ``probe_cs`` value with the best out-of-fold accuracy (then log-loss); returns
        ``(C, oof, fold models)``."""
        best: tuple[tuple[float, float], float, np.ndarray, list[Any]] | None = None
        n, k = len(y), len(self.classes_)
        for c in self.config.probe_cs:
            oof, models = np.zeros((n, k)), []
            for vi in self.fold_index_:
                tr = np.setdiff1d(np.arange(n), vi)
                mu, sd = self._standardise(z[tr])
                m = fit_logistic((z[tr] - mu) / sd, y[tr], c)
                oof[vi] = np.log(np.clip(m.predict_proba((z[vi] - mu) / sd), 1e-12, None))
                models.append({"mu": mu, "sd": sd, "coef": m.coef_, "intercept": m.intercept_, "C": c})
            key = (float((oof.argmax(1) == y).mean()), -float(-oof[np.arange(n), y].mean()))
            if best is None or key > best[0]:
                best = (key, c, oof, models)
        assert best is not None
        return best[1], best[2], best[3]

    def _probe_oof_nested(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Out-of-fold log-probabilities of the linear probe where fold ``k``'s probe takes the
        ``probe_cs`` value that :meth:`_probe_oof`'s criterion prefers on the other folds alone
        (leave one of them out in turn), so no choice is made on the fold it scores."""
        n, k = len(y), len(self.classes_)
        folds = self.fold_index_
        oof = np.zeros((n, k))

        def fit_score(tr: np.ndarray, vi: np.ndarray, c: float) -> np.ndarray:
            mu, sd = self._standardise(z[tr])
            m = fit_logistic((z[tr] - mu) / sd, y[tr], c)
            return np.log(np.clip(m.predict_proba((z[vi] - mu) / sd), 1e-12, None))

        for i, vi in enumerate(folds):
            others = [f for j, f in enumerate(folds) if j != i]
            rows = np.concatenate(others)

            def key(c: float) -> tuple[float, float]:
                inner = np.concatenate([fit_score(np.concatenate([g for g in others if g is not f]), f, c) for f in others])
                return float((inner.argmax(1) == y[rows]).mean()), float(inner[np.arange(len(rows)), y[rows]].mean())

            c = max(self.config.probe_cs, key=key) if len(others) > 1 else self.config.probe_cs[len(self.config.probe_cs) // 2]
            oof[vi] = fit_score(np.setdiff1d(np.arange(n), vi), vi, c)
        return oof

    def _select(self, orig: Features, y: np.ndarray, head_oof: np.ndarray) -> tuple[str, dict[str, Any]]:
        """Choose what predicts, on the few-shot set only: the blend of the head ensemble and
        the linear probe, unless the head, the probe or zero-shot beats the blend's
        out-of-fold accuracy (``select_by``; or log-loss) by more than ``select_margin``.
        Out-of-fold: each example is scored by models that did not train on it. Zero-shot's
        temperature (for the log-loss) is fitted on the shots. The evidence is returned."""
        z = orig.probe_input(self._similarity())
        c, probe_oof, _ = self._probe_oof(z, y)
        if self.config.probe_inner:
            # the final probe keeps C chosen on all folds; only its out-of-fold estimate is nested
            probe_oof = self._probe_oof_nested(z, y)
        zs = self._zero_shot_scores(orig) / 20.0  # cosines
        rows = np.arange(len(y))
        temp = min(ZS_SCALES, key=lambda t: -_log_softmax(t * zs)[rows, y].mean())
        cands = {"crosstune": head_oof, "blend": _log_softmax(0.5 * (head_oof + probe_oof)), "linear-probe": probe_oof,
                 "zero-shot": _log_softmax(temp * zs)}
        accs = {k: float((v.argmax(1) == y).mean()) for k, v in cands.items()}
        nlls = {k: float(-v[rows, y].mean()) for k, v in cands.items()}
        # the criterion as "higher is better"
        crit = accs if self.config.select_by == "accuracy" else {k: -v for k, v in nlls.items()}
        best = max(SELECT_ORDER, key=lambda k: (crit[k], -SELECT_ORDER.index(k)))  # ties: the earlier one
        choice = best if crit[best] > crit["blend"] + self.config.select_margin else "blend"
        extra: dict[str, Any] = {}
        if self.config.select_rule == "stacked":
            # one weight per candidate, fitted on the out-of-fold log-loss; ties keep the
            # grid point nearest the plain head + probe blend (the margin rule's default)
            stack = [cands["crosstune"], probe_oof, cands["zero-shot"]]

            def loss(w: tuple[float, float, float]) -> tuple[float, float]:
                s = _log_softmax(sum(wi * c for wi, c in zip(w, stack)))
                return round(float(-s[rows, y].mean()), 9), abs(w[0] - 0.5) + abs(w[1] - 0.5) + w[2]

            w = min(STACK_GRID, key=loss)
            s = _log_softmax(sum(wi * c for wi, c in zip(w, stack)))
            self.stack_weights_, self.zero_shot_scale_ = [float(v) for v in w], float(temp)
            choice = "stacked"
            accs["stacked"], nlls["stacked"] = float((s.argmax(1) == y).mean()), float(-s[rows, y].mean())
            extra = {"weights": dict(zip(("crosstune", "linear-probe", "zero-shot"), self.stack_weights_))}
        elif self.config.select_rule == "weighted":
            # the head's weight against the probe's, by out-of-fold accuracy on the shots; ties:
            # log-loss, then the weight nearest the plain blend (the margin rule's default)
            def score(w: float) -> tuple[float, float, float]:
                s = _log_softmax(w * head_oof + (1 - w) * probe_oof)
                return float((s.argmax(1) == y).mean()), round(float(s[rows, y].mean()), 9), -abs(w - 0.5)

            w = max(BLEND_GRID, key=score)
            s = _log_softmax(w * head_oof + (1 - w) * probe_oof)
            self.stack_weights_, self.zero_shot_scale_ = [float(w), float(1 - w), 0.0], float(temp)
            choice = "weighted"
            accs["weighted"], nlls["weighted"] = float((s.argmax(1) == y).mean()), float(-s[rows, y].mean())
            extra = {"weights": {"crosstune": float(w), "linear-probe": float(1 - w)},
                     "grid_oof_acc": {str(v): score(v)[0] for v in BLEND_GRID}}
        mu, sd = self._standardise(z)
        m = fit_logistic((z - mu) / sd, y, c)
        self.probe_ = {"mu": mu, "sd": sd, "coef": m.coef_, "intercept": m.intercept_, "C": c}
        return choice, {"choice": choice, "by": self.config.select_by, "margin": self.config.select_margin, "rule": self.config.select_rule,
                        "oof_acc": accs, "oof_loss": nlls, "probe_C": c, "zero_shot_scale": temp, "n": int(len(y)), **extra}

    def _fit_probe_ensemble(self, z: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The ablation without attention: one linear probe per fold (trained on the other
        folds), averaged like the head ensemble."""
        t0 = time.perf_counter()
        c, oof, models = self._probe_oof(z, y)
        self.probes_ = models
        return {"train_seconds": time.perf_counter() - t0, "C": c, "members": len(models),
                "oof_acc": float((oof.argmax(1) == y).mean())}

    def _fit_probe(self, pooled: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        t0 = time.perf_counter()
        mu, sd = self._standardise(pooled)
        z = (pooled - mu) / sd
        val = self.val_index_
        best_c = self.config.probe_cs[len(self.config.probe_cs) // 2]
        if len(val):
            tr = np.setdiff1d(np.arange(len(z)), val)
            scores = []
            for c in self.config.probe_cs:
                m = fit_logistic(z[tr], y[tr], c)
                p = m.predict_proba(z[val])
                acc = float((p.argmax(1) == y[val]).mean())
                nll = float(-np.log(np.clip(p[np.arange(len(val)), y[val]], 1e-12, None)).mean())
                scores.append((-acc, nll))
            best_c = self.config.probe_cs[int(min(range(len(scores)), key=lambda i: scores[i]))]
        m = fit_logistic(z, y, best_c)
        self.probe_ = {"mu": mu, "sd": sd, "coef": m.coef_, "intercept": m.intercept_, "C": best_c}
        return {"train_seconds": time.perf_counter() - t0, "C": best_c}

    # ---------------------------------------------------------------------------------------
    def decision_function(self, texts: Sequence[str], progress: Any = None) -> np.ndarray:
        """``(n, C)`` class scores (logits)."""
        self._check_fitted()
        texts = list(texts)
        self._check_kind(texts)
        feats = self.features(texts, progress)
        return self._scores(feats)

    def _check_kind(self, texts: list[str]) -> None:
        pairs = getattr(self, "pairs_", False)
        for i, t in enumerate(texts):
            if isinstance(t, str) and (PAIR_SEP in t) != pairs:
                want = "a sentence pair (the model was fitted on pairs)" if pairs else "a single text (the model was fitted on single texts)"
                raise bad_value(f"texts[{i}]", want, t.replace(PAIR_SEP, " | ")[:80])

    def _zero_shot_scores(self, feats: Features) -> np.ndarray:
        a = feats.pooled() - self.center_
        b = self.label_vectors_.astype(np.float64) - self.center_
        a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return 20.0 * a @ b.T

    def _probe_scores(self, p: dict[str, Any], feats: Features) -> np.ndarray:
        z = (feats.probe_input(self._similarity()) - p["mu"]) / p["sd"]
        s = z @ np.asarray(p["coef"]).T + p["intercept"]
        if s.shape[1] == 1:  # binary logistic regression
            s = np.concatenate([np.zeros_like(s), s], 1)
        return s

    def candidate_scores(self, texts: Sequence[str], choice: str) -> np.ndarray:
        """``(n, C)`` scores of one candidate of the selection (``crosstune``, ``blend``,
        ``linear-probe``, ``zero-shot``; ``stacked`` / ``weighted`` with that select_rule), whichever was
        chosen; for ablations and reports."""
        self._check_fitted()
        valid = SELECT_ORDER + ((self.config.select_rule,) if getattr(self, "stack_weights_", None) is not None else ())
        if choice not in valid or getattr(self, "choice_", None) is None:
            raise bad_value("choice", f"one of {', '.join(valid)} on a model fitted with select=true", choice)
        return self._scores(self.features(list(texts)), choice)

    def _scores(self, feats: Features, choice: str | None = None) -> np.ndarray:
        method = self.config.method
        choice = choice or getattr(self, "choice_", None)
        if method == "crosstune" and choice and choice != "crosstune":
            if choice == "zero-shot":
                return self._zero_shot_scores(feats)
            if choice == "linear-probe":
                return self._probe_scores(self.probe_, feats)
            if choice in ("stacked", "weighted"):  # weighted: zero-shot's weight is 0
                w = self.stack_weights_
                zs = self.zero_shot_scale_ / 20.0 * self._zero_shot_scores(feats)
                return (w[0] * _log_softmax(self._head_scores(feats)) + w[1] * _log_softmax(self._probe_scores(self.probe_, feats))
                        + w[2] * _log_softmax(zs))
            return 0.5 * (_log_softmax(self._head_scores(feats)) + _log_softmax(self._probe_scores(self.probe_, feats)))
        if method == "probe-ensemble":
            return np.mean([_log_softmax(self._probe_scores(p, feats)) for p in self.probes_], 0)
        if method == "zero-shot":
            return self._zero_shot_scores(feats)
        if method == "linear-probe":
            return self._probe_scores(self.probe_, feats)
        return self._head_scores(feats)

    def _head_scores(self, feats: Features) -> np.ndarray:
        from .head import head_scores

        return head_scores(self.head_, feats.x, feats.mask, self.label_vectors_)

    def predict_proba(self, texts: Sequence[str], progress: Any = None) -> np.ndarray:
        """``(n, C)`` probabilities; columns follow ``classes_``."""
        return _softmax(self.decision_function(texts, progress))

    def predict(self, texts: Sequence[str], progress: Any = None) -> list[str]:
        """The most likely label of each text."""
        return [self.classes_[i] for i in self.decision_function(texts, progress).argmax(1)]

    def _check_labels(self, labels: Sequence[str], allow_unseen: bool) -> None:
        unseen = sorted(set(map(str, labels)) - set(self.classes_))
        if unseen and not allow_unseen:
            raise bad_value("test labels", f"labels seen in training {self.classes_} (pass allow_unseen / --allow-unseen to count them as errors)", unseen)

    def score(self, texts: Sequence[str], labels: Sequence[str], allow_unseen: bool = False) -> float:
        """Accuracy on ``texts``/``labels``."""
        return self.evaluate(texts, labels, allow_unseen=allow_unseen)["accuracy"]

    def evaluate(self, texts: Sequence[str], labels: Sequence[str], allow_unseen: bool = False, progress: Any = None) -> dict[str, Any]:
        """Accuracy, macro-F1 and counts; labels unseen in training are an error unless allowed."""
        self._check_fitted()
        labels = [str(y) for y in labels]
        if len(labels) != len(texts):
            raise bad_value("labels", f"one label per text ({len(texts)})", f"{len(labels)} labels")
        self._check_labels(labels, allow_unseen)
        pred = self.predict(texts, progress)
        acc = float(np.mean([p == t for p, t in zip(pred, labels)]))
        all_classes = sorted(set(self.classes_) | set(labels))
        return {
            "accuracy": acc,
            "macro_f1": macro_f1(labels, pred, all_classes),
            "n_test": len(labels),
            "n_unseen": int(sum(t not in self.classes_ for t in labels)),
            "predictions": pred,
        }

    # ---------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``model.safetensors`` (tensors + JSON meta in the header) and a readable ``model.json``."""
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"center": np.asarray(self.center_, dtype=np.float64)}
        if getattr(self, "label_vectors_", None) is not None:
            arrays["label_vectors"] = np.asarray(self.label_vectors_, dtype=np.float32)
        if getattr(self, "probe_", None) is not None and self.config.method in ("linear-probe", "crosstune"):
            for k in ("mu", "sd", "coef", "intercept"):
                arrays[f"probe.{k}"] = np.asarray(self.probe_[k], dtype=np.float64)
        if self.config.method == "probe-ensemble":
            for i, p in enumerate(self.probes_):
                for k in ("mu", "sd", "coef", "intercept"):
                    arrays[f"probes.{i}.{k}"] = np.asarray(p[k], dtype=np.float64)
        if self.config.method in ("crosstune", "no-labels"):
            from .head import head_state

            arrays.update({f"head.{k}": v for k, v in head_state(self.head_).items()})
        meta = {
            "format": 1,
            "config": self.config.to_json(),
            "classes": self.classes_,
            "descriptions": self.descriptions_,
            "n_features": self.n_features_,
            "features": self.features.describe(),
            "train_info": _jsonable(self.train_info_),
            "augment": self.augment_report_,
            "choice": getattr(self, "choice_", None),
            "pairs": getattr(self, "pairs_", False),
        }
        if getattr(self, "stack_weights_", None) is not None:
            meta.update(stack_weights=self.stack_weights_, zero_shot_scale=self.zero_shot_scale_)
        save_tensors(d / MODEL_FILE, arrays, meta)
        atomic_write_json(d / MODEL_JSON, meta)
        return d

    @classmethod
    def load(cls, directory: str | Path, features: "Featurizer | str | None" = None) -> "CrossTuneClassifier":
        """Rebuild a saved classifier; ``features`` defaults to the saved provider spec."""
        d = Path(directory)
        if not (d / MODEL_FILE).is_file():
            raise RunError(f"run directory: expected a fitted CrossTune model ({MODEL_FILE}) in {d}, found none")
        arrays, meta = load_tensors(d / MODEL_FILE)
        # a model saved before an option existed was fitted as that option's legacy value says
        config = CrossTuneConfig.from_json({**LEGACY, **meta["config"]})
        if features is None:
            spec = meta["features"].get("spec")
            if not spec:
                raise RunError(f"run directory {d}: the model was fitted with an in-memory provider; pass features=...")
            features = Featurizer(spec, mode=meta["features"]["mode"], layer=meta["features"]["layer"], max_tokens=meta["features"]["max_tokens"])
        self = cls(features, config, meta["descriptions"])
        self.classes_, self.descriptions_ = list(meta["classes"]), dict(meta["descriptions"])
        self.n_features_, self.train_info_, self.augment_report_ = meta["n_features"], meta["train_info"], meta.get("augment")
        self.center_ = arrays["center"]
        self.label_vectors_ = arrays.get("label_vectors")
        self.choice_, self.pairs_ = meta.get("choice"), bool(meta.get("pairs", False))
        if meta.get("stack_weights") is not None:
            self.stack_weights_, self.zero_shot_scale_ = list(meta["stack_weights"]), float(meta["zero_shot_scale"])
        if "probe.mu" in arrays:
            self.probe_ = {k: arrays[f"probe.{k}"] for k in ("mu", "sd", "coef", "intercept")}
        if config.method == "probe-ensemble":
            n = len({k.split(".")[1] for k in arrays if k.startswith("probes.")})
            self.probes_ = [{k: arrays[f"probes.{i}.{k}"] for k in ("mu", "sd", "coef", "intercept")} for i in range(n)]
        if config.method in ("crosstune", "no-labels"):
            from .head import load_head

            state = {k[5:]: v for k, v in arrays.items() if k.startswith("head.")}
            self.head_ = load_head(state, self.n_features_, len(self.classes_), config)
        return self


def _concat_features(a: Features, b: Features) -> tuple[np.ndarray, np.ndarray]:
    t = max(a.x.shape[1], b.x.shape[1])

    def pad(f: Features) -> tuple[np.ndarray, np.ndarray]:
        extra = t - f.x.shape[1]
        return np.pad(f.x, ((0, 0), (0, extra), (0, 0))), np.pad(f.mask, ((0, 0), (0, extra)))

    (xa, ma), (xb, mb) = pad(a), pad(b)
    return np.concatenate([xa, xb]), np.concatenate([ma, mb])


def _same_folds(a: list[np.ndarray] | None, b: list[np.ndarray] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
