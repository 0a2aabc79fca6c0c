"""Label descriptions written by an LLM and chosen on the shots (``--describe-labels-with``).

For every label without a given description, a generator (any provider with ``text``,
through a :class:`~blackbox.client.Client`: cached, and budgeted by its ledger) writes
``describe_n`` candidate descriptions, each from a prompt showing the label, the other
labels and a different pair of the label's few-shot texts. The choice uses the shots only:

1. per label, in turn, the candidate (or the template description) whose zero-shot
   accuracy on the shots is highest, ties to the mean margin of the true class, then to
   the template (zero-shot has no fitted parameters, so this is an honest estimate);
2. the configured model is fitted with the template descriptions and with the picked ones;
   the picked ones are kept only if the fitted model's out-of-fold accuracy on the shots is
   strictly higher, ties broken by the out-of-fold log-loss (the selection's estimate for
   ``crosstune``; zero-shot's accuracy, then margin, for ``zero-shot``).

Given descriptions (a ``--labels`` file, or the built-in corpora's) are never replaced.
Methods that do not read descriptions (``linear-probe``, ``no-labels``, ``probe-ensemble``)
generate nothing.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from blackbox.client import Client
from blackbox.types import GenerateRequest

from .augment import first_line
from .config import CrossTuneConfig
from .data import PAIR_SEP, describe_labels

USES_DESCRIPTIONS = ("crosstune", "zero-shot")
_PREFIX = re.compile(r"^\s*(?:[-*•]|\d+[.)]|description\s*:|definition\s*:)\s*", re.IGNORECASE)


def description_prompt(label: str, classes: Sequence[str], examples: Sequence[str]) -> str:
    """The chat prompt asking for one description of ``label``."""
    shown = [" ".join(e.replace(PAIR_SEP, " | ").split())[:300] for e in examples]
    lines = [f"A text classifier sorts texts into these categories: {', '.join(classes)}.",
             f"Examples of texts in the category \"{label}\":"]
    lines += [f"- {e}" for e in shown]
    lines.append(f"Write one sentence that describes what texts in the category \"{label}\" are like. Answer with the sentence only.")
    return "\n".join(lines)


def parse_description(raw: str, label: str, min_chars: int = 8, max_chars: int = 300) -> str | None:
    """The first non-empty line of ``raw`` (bullets, quotes and a ``Description:`` prefix
    stripped, cut to ``max_chars``), or None when it is too short or has no letters."""
    line = first_line(raw, _PREFIX)
    if line is None:
        return None
    line = line[:max_chars].strip()
    if len(line) < min_chars or not re.search(r"[^\W\d_]", line):
        return None
    return line


def generate_candidates(client: Client, classes: Sequence[str], texts: Sequence[str], labels: Sequence[str], *,
                        n: int = 3, seed: int = 0, temperature: float = 0.7, max_tokens: int = 40,
                        describe: Sequence[str] | None = None) -> dict[str, Any]:
    """``n`` candidate descriptions for each label in ``describe`` (default: every class),
    in one generation request per round ``i < n`` (label ``c``'s prompt shows two of its
    shots drawn with ``(seed, c, i)``). Returns ``{"candidates": {label: [text, ...]},
    "raw": {label: [raw, ...]}, "queries": int}``; unparseable and repeated answers are
    dropped, so a label may get fewer than ``n``."""
    targets = list(classes if describe is None else describe)
    by_class = {c: [t for t, y in zip(texts, labels) if y == c] for c in classes}
    q0 = client.ledger.queries if client.ledger is not None else 0
    cands: dict[str, list[str]] = {c: [] for c in targets}
    raws: dict[str, list[str]] = {c: [] for c in targets}
    for i in range(n if targets else 0):
        prompts = []
        for c in targets:
            pool = by_class[c]
            rng = np.random.default_rng([seed, list(classes).index(c), i, 17])
            ex = [pool[j] for j in rng.choice(len(pool), size=min(2, len(pool)), replace=False)]
            prompts.append(description_prompt(c, classes, ex))
        round_seed = int(np.random.SeedSequence([seed, i, 19]).generate_state(1)[0] >> 1)
        req = GenerateRequest(prompts=tuple(prompts), max_tokens=max_tokens, temperature=temperature, stop=("\n",),
                              seed=round_seed, chat=True)
        for c, raw in zip(targets, client.generate(req).texts):
            raws[c].append(raw if isinstance(raw, str) else "")
            text = parse_description(raw, c)
            if text and text not in cands[c]:
                cands[c].append(text)
    return {"candidates": cands, "raw": raws, "queries": (client.ledger.queries - q0) if client.ledger is not None else None}


def _zero_shot_fit(pooled: np.ndarray, label_vecs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean margin of the true class) of the cosine zero-shot rule on the shots."""
    center = pooled.mean(0)
    a = pooled - center
    b = label_vecs - center
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    s = a @ b.T
    rows = np.arange(len(y))
    other = s.copy()
    other[rows, y] = -np.inf
    return float((s.argmax(1) == y).mean()), float((s[rows, y] - other.max(1)).mean())


def pick_by_zero_shot(featurizer: Any, texts: Sequence[str], labels: Sequence[str], base: dict[str, str],
                      candidates: dict[str, list[str]]) -> tuple[dict[str, str], dict[str, Any]]:
    """Per label in turn, the description (base first) with the best zero-shot accuracy
    (then margin) on the shots, the other labels held at their current pick."""
    classes = sorted(base)
    y = np.array([classes.index(v) for v in labels])
    pooled = featurizer(list(texts)).pooled().astype(np.float64)
    pick = dict(base)
    vec = {c: featurizer([base[c]]).pooled()[0].astype(np.float64) for c in classes}
    scores: dict[str, list[float]] = {}
    for c in classes:
        options = [base[c]] + [t for t in candidates.get(c, []) if t != base[c]]
        if len(options) == 1:
            continue
        opt_vecs = featurizer(options).pooled().astype(np.float64)
        best, best_key, accs = 0, None, []
        for k in range(len(options)):
            lv = np.stack([opt_vecs[k] if d == c else vec[d] for d in classes])
            key = _zero_shot_fit(pooled, lv, y)
            accs.append(key[0])
            if best_key is None or key > best_key:  # strict: ties keep the earlier (base first)
                best, best_key = k, key
        pick[c], vec[c] = options[best], opt_vecs[best]
        scores[c] = accs
    key = _zero_shot_fit(pooled, np.stack([vec[c] for c in classes]), y)
    return pick, {"zero_shot_acc_per_option": scores, "zero_shot_key": list(key)}


def shots_estimate(clf: Any) -> tuple[float, float] | None:
    """The fitted model's (accuracy, −log-loss) out of fold on its shots, for what predicts
    (the selection's estimate: ``crosstune`` with ``select``); None without a selection."""
    sel = clf.train_info_.get("selection")
    if sel:
        return float(sel["oof_acc"][sel["choice"]]), -float(sel["oof_loss"][sel["choice"]])
    return None


def choose_descriptions(featurizer: Any, config: CrossTuneConfig, texts: Sequence[str], labels: Sequence[str],
                        given: dict[str, str], candidates: dict[str, list[str]]) -> tuple[Any, dict[str, Any]]:
    """Fit ``config`` with the base descriptions (given, else the template) and with the
    zero-shot picks among ``candidates``; return ``(fitted classifier, report)`` for the one
    with the better accuracy estimate on the shots (ties: the base)."""
    from .estimator import CrossTuneClassifier

    classes = sorted(set(map(str, labels)))
    base = describe_labels(classes, given, config.description_template)
    free = {c: v for c, v in candidates.items() if c not in given}  # given descriptions win
    picked, zs = pick_by_zero_shot(featurizer, texts, labels, base, free)
    base_clf = CrossTuneClassifier(featurizer, config, base).fit(texts, labels)
    report: dict[str, Any] = {"candidates": free, "picked": {c: picked[c] for c in classes if picked[c] != base[c]}, **zs}
    if picked == base:
        return base_clf, {**report, "used": False, "reason": "no candidate beat the base descriptions' zero-shot accuracy on the shots"}
    new_clf = CrossTuneClassifier(featurizer, config, picked).fit(texts, labels)
    est = (shots_estimate(base_clf), shots_estimate(new_clf))
    if est[0] is None or est[1] is None:  # zero-shot, or a head without selection: zero-shot (accuracy, margin) decides
        est = (_zero_shot_fit(*_pooled_and_vectors(featurizer, texts, labels, base)), tuple(zs["zero_shot_key"]))
    report.update(estimate_base=list(est[0]), estimate_picked=list(est[1]))
    if est[1] > est[0]:
        return new_clf, {**report, "used": True}
    return base_clf, {**report, "used": False, "reason": "the picked descriptions did not raise the accuracy estimate on the shots"}


def _pooled_and_vectors(featurizer: Any, texts: Sequence[str], labels: Sequence[str], desc: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled shots, pooled descriptions (in class order) and class indices."""
    classes = sorted(desc)
    y = np.array([classes.index(v) for v in labels])
    return (featurizer(list(texts)).pooled().astype(np.float64), featurizer([desc[c] for c in classes]).pooled().astype(np.float64), y)
