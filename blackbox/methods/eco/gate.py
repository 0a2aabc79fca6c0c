"""The ECO gate: is this prompt about something to forget?

Three layers, combined into one score that is calibrated as a whole:

1. **Entity matcher** (:class:`EntityMatcher`): finds which known entity a prompt mentions.
   Forget targets (and their aliases) and other known entities (retain targets) are matched
   against the prompt's word n-grams, exactly or within a small edit distance (optimal
   string alignment: one edit for names of 5–9 characters, two from 10), via a
   deletion index so a prompt costs a few dictionary look-ups. Overlapping matches are
   resolved longest-first, then by distance, so "South Sudan" is not "Sudan" and "Niger"
   (an exact match of a known entity) is not a misspelled "Nigeria".
2. **Learned classifier**: logistic regression (scikit-learn) on entity features, hashed
   word and character n-grams and, optionally, sentence embeddings from an encoder
   provider (e.g. ``sentence-encoder:minilm``). It is trained with hard negatives: the
   forget prompts with their target swapped for other entities, plus template variety.
3. **Exact-match layer** (optional, on by default): a prompt that mentions a forget target
   gets a score above every classifier score.

The threshold is calibrated, not hand-set: on held-out negative (retain/general) prompts,
split-conformal calibration picks ``τ`` as the ``⌈(n+1)(1−α)⌉``-th smallest score, so a new
exchangeable negative prompt is flagged (score ``> τ``) with probability at most ``α``.
That needs ``n ≥ ⌈(1−α)/α⌉`` calibration prompts; fewer is an error that says how many.
Calibration may come in groups (e.g. everyday prompts, and near neighbours: the same
question about other entities): ``τ`` is the largest of the groups' thresholds, so the bound
holds within each group, not only on their mixture (a marginal bound let the rare near
neighbours through at several times ``α``).

**Scope** (:data:`SCOPES`): ``entity`` flags every prompt about a forget target (named, or
judged so by the classifier); ``fact`` flags a prompt only when it names a forget target
*and* the classifier finds it asks the forgotten fact (other facts about the entity pass);
``topic`` has no entity: the classifier alone (on sentence embeddings and content-word
n-grams) decides.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from blackbox.errors import ConfigError, bad_value

WORD = re.compile(r"\w+", re.UNICODE)
SCOPES = ("entity", "topic", "fact")
OTHER_FACTS_GROUP = "same entity, other facts"
EXACT_BONUS = 1e3  # the exact-match layer's score: above any logistic-regression logit here


def normalize(text: str) -> str:
    """Lower case, accents stripped (``Curaçao`` → ``curacao``)."""
    nfkd = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in nfkd if not unicodedata.combining(ch)).lower()


def words(text: str) -> list[tuple[str, int, int]]:
    """``(normalized word, start, end)`` for each word of ``text`` (positions in ``text``)."""
    return [(normalize(m.group()), m.start(), m.end()) for m in WORD.finditer(text)]


def edit_tolerance(name: str) -> int:
    """Edits allowed when matching ``name`` (normalized): 0 below 5 chars, 1 below 10, else 2."""
    n = len(name.replace(" ", ""))
    return 0 if n < 5 else 1 if n < 10 else 2


def osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (edits + adjacent transpositions); ``limit + 1`` if above."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def _deletes(s: str, k: int) -> set[str]:
    out, frontier = {s}, {s}
    for _ in range(k):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


@dataclass(frozen=True)
class Match:
    """One entity mention: character span in the text, entity, edit distance, forget or not."""

    start: int
    end: int
    entity: str
    distance: int
    forget: bool


class EntityMatcher:
    """Finds mentions of known entities (forget targets and others) in a text, with typos."""

    def __init__(self, forget: dict[str, Sequence[str]], others: Iterable[str] = ()) -> None:
        """``forget``: ``{target: aliases}``; ``others``: names of known non-forget entities."""
        self.forget = {t: tuple(dict.fromkeys([t, *a])) for t, a in forget.items()}
        forget_norm = {normalize(" ".join(w for w, _, _ in words(n))) for aliases in self.forget.values() for n in aliases}
        self.others = tuple(dict.fromkeys(o for o in others if normalize(" ".join(w for w, _, _ in words(o))) not in forget_norm))
        # alias (normalized, single-spaced) -> (entity, is_forget)
        self._names: dict[str, tuple[str, bool]] = {}
        for target, aliases in self.forget.items():
            for a in aliases:
                key = " ".join(w for w, _, _ in words(a))
                if key:
                    self._names[key] = (target, True)
        for o in self.others:
            key = " ".join(w for w, _, _ in words(o))
            if key and key not in self._names:
                self._names[key] = (o, False)
        self.max_words = max((k.count(" ") + 1 for k in self._names), default=1)
        self._index: dict[str, set[str]] = {}
        self._cache: dict[str, list[Match]] = {}
        for key in self._names:
            for d in _deletes(key, edit_tolerance(key)):
                self._index.setdefault(d, set()).add(key)

    def to_json(self) -> dict[str, Any]:
        return {"forget": {t: list(a) for t, a in self.forget.items()}, "others": list(self.others)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "EntityMatcher":
        return cls({t: tuple(a) for t, a in obj["forget"].items()}, obj.get("others", ()))

    def _lookup(self, gram: str) -> tuple[str, int] | None:
        """Closest known name to ``gram`` within its tolerance: ``(name, distance)``."""
        if gram in self._names:
            return gram, 0
        best: tuple[str, int] | None = None
        n = len(gram.replace(" ", ""))
        # A key within tolerance is at most 2 (1) letters longer than the gram: deletes of the
        # gram need only reach that deep (keys of >= 10 letters allow 2 edits, >= 5 allow 1).
        depth = 2 if n >= 8 else 1 if n >= 4 else 0
        for d in _deletes(gram, depth):
            for key in self._index.get(d, ()):
                tol = edit_tolerance(key)
                dist = osa_distance(gram, key, tol)
                if dist <= tol and (best is None or (dist, key) < (best[1], best[0])):
                    best = (key, dist)
        return best

    def matches(self, text: str) -> list[Match]:
        """Non-overlapping mentions, longest (in words) first, then closest."""
        cached = self._cache.get(text)
        if cached is None:
            cached = self._matches(text)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[text] = cached
        return list(cached)

    def _matches(self, text: str) -> list[Match]:
        ws = words(text)
        cands: list[tuple[int, int, int, int, str]] = []  # (-n_words, distance, i, j, name)
        for i in range(len(ws)):
            for n in range(1, self.max_words + 1):
                j = i + n
                if j > len(ws):
                    break
                gram = " ".join(w for w, _, _ in ws[i:j])
                hit = self._lookup(gram)
                if hit is not None:
                    cands.append((-n, hit[1], i, j, hit[0]))
        cands.sort()
        used = [False] * len(ws)
        out = []
        for _, dist, i, j, name in cands:
            if any(used[i:j]):
                continue
            for k in range(i, j):
                used[k] = True
            entity, is_forget = self._names[name]
            out.append(Match(ws[i][1], ws[j - 1][2], entity, dist, is_forget))
        return sorted(out, key=lambda m: m.start)

    def forget_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of forget-target mentions (for token selection)."""
        return [(m.start, m.end) for m in self.matches(text) if m.forget]

    def features(self, text: str) -> np.ndarray:
        """``[exact forget, fuzzy forget, other entity, forget and other, n forget mentions]``."""
        ms = self.matches(text)
        f = [m for m in ms if m.forget]
        o = [m for m in ms if not m.forget]
        exact = float(any(m.distance == 0 for m in f))
        fuzzy = float(bool(f) and not exact)
        return np.array([exact, fuzzy, float(bool(o)), float(bool(f) and bool(o)), float(len(f))], dtype=np.float64)


# --- paraphrase / template variety ----------------------------------------------------------
FRAMES = (
    "Tell me about {e}.",
    "What do you know about {e}?",
    "{e}",
    "Some facts about {e}:",
    "Q: Tell me something about {e}\nA:",
    "Describe {e} in one sentence.",
    "Where is {e} located?",
    "What language do people speak in {e}?",
    "What is {e} famous for?",
    "I am travelling to {e} next week. Any tips?",
    "Write a short poem about {e}.",
    "How big is {e}?",
)
"""Generic frames that mention an entity; used for positives (forget targets) and hard negatives."""

OTHER_FACTS = (
    "What is the population of {e}?", "What currency is used in {e}?", "What is the flag of {e} like?",
    "Who is the head of state of {e}?", "What is the national dish of {e}?", "What is the climate like in {e}?",
    "What time zone is {e} in?", "What is the history of {e}?", "Which sports are popular in {e}?",
    "What is the area of {e}?", "Which countries border {e}?", "What is the main religion in {e}?",
    "When did {e} become independent?", "What is the economy of {e} based on?", "What is the national animal of {e}?",
    "How do people greet each other in {e}?", "What is the highest mountain in {e}?", "What is the longest river in {e}?",
)
"""Questions about other facts of an entity (with :data:`FRAMES`): ``fact`` scope's negatives, "the rest of what is known"."""


_SYLLABLES = ("ka", "lo", "ver", "an", "dri", "mo", "sel", "ta", "ru", "nis", "bel", "gor", "a", "e", "os", "ia", "tan", "qu", "zen", "pol")


def synthetic_names(n: int, seed: int = 0) -> list[str]:
    """``n`` made-up proper names (e.g. "Velmoria"): hard negatives that teach the classifier
    that an unfamiliar name in a forget prompt's place is *not* a forget target."""
    rng = np.random.default_rng([seed, 13])
    out: list[str] = []
    while len(out) < n:
        k = int(rng.integers(2, 5))
        name = "".join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=k)).capitalize()
        if len(name) >= 4 and name not in out:
            out.append(name)
    return out


def misspell(name: str, rng: np.random.Generator) -> str:
    """One random edit (swap, drop, double or replace a letter) inside a name of ≥ 5 letters."""
    if len(name) < 5:
        return name
    i = int(rng.integers(1, len(name) - 2))
    op = int(rng.integers(4))
    if op == 0:
        return name[:i] + name[i + 1] + name[i] + name[i + 2 :]
    if op == 1:
        return name[:i] + name[i + 1 :]
    if op == 2:
        return name[:i] + name[i] + name[i:]
    letter = "aeioulnrst"[int(rng.integers(10))]
    return name[:i] + letter + name[i + 1 :]


def replace_entity(prompt: str, spans: Sequence[tuple[int, int]], new: str) -> str:
    out, last = [], 0
    for s, e in sorted(spans):
        out.append(prompt[last:s])
        out.append(new)
        last = e
    out.append(prompt[last:])
    return "".join(out)


def augment(
    forget: Sequence[tuple[str, str]],
    others: Sequence[str],
    matcher: EntityMatcher,
    *,
    seed: int = 0,
    n_swaps: int = 12,
    scope: str = "entity",
    n_synthetic: int = 64,
) -> tuple[list[str], list[str], list[str]]:
    """Extra training prompts: ``(positives, hard negatives about other entities, same-entity negatives)``.

    For each forget ``(prompt, target)``: lower-cased and misspelled copies (positives). The
    generic :data:`FRAMES` with the target are positives for ``entity`` scope (everything about
    the target is forgotten) and same-entity negatives for ``fact`` scope (other facts about it
    are kept). Every positive (the forget prompts included) with its target swapped for
    ``n_swaps`` other entities is a hard negative.
    """
    rng = np.random.default_rng([seed, 7])
    pos: list[str] = []
    neg: list[str] = []
    same: list[str] = []
    forget_norm = {normalize(t) for _, t in forget}
    synthetic = [n for n in synthetic_names(n_synthetic, seed) if not matcher.forget_spans(n) and normalize(n) not in forget_norm]
    pool = list(others) + synthetic
    targets = list(dict.fromkeys(t for _, t in forget))
    forget_prompts = {normalize(p) for p, _ in forget}
    own = [p for p, _ in forget if matcher.forget_spans(p)]  # the forget prompts: positives of the caller's
    for prompt, target in forget:
        if matcher.forget_spans(prompt):
            pos += [prompt.lower(), replace_entity(prompt, matcher.forget_spans(prompt), misspell(target, rng))]
    for target in targets:
        for frame in FRAMES + (OTHER_FACTS if scope == "fact" else ()):
            text = frame.format(e=target)
            if scope == "fact":
                if normalize(text) not in forget_prompts:
                    same.append(text)
            else:
                pos.append(text)
    # Every positive also with other entities in the target's place, n_swaps times: each
    # template then appears in both classes in the same proportion, so its words carry no
    # evidence and the classifier must look at the entity (with fewer swaps of the generic
    # frames, "Tell me ..." itself became a forget signal: unseen-country FPR several %).
    swapped = []
    for text in own + pos:
        spans = matcher.forget_spans(text)
        if spans:
            for k in rng.choice(len(pool), size=min(n_swaps, len(pool)), replace=False):
                swapped.append(replace_entity(text, spans, pool[int(k)]))
    if scope != "fact":
        neg += swapped
    else:
        # fact scope: the classifier judges the question and the entity rule comes on top, so
        # the forgotten question about other entities is a positive, and the other questions
        # about them are negatives (the entity's own name then carries no evidence either way)
        pos += swapped
        for frame in FRAMES + OTHER_FACTS:
            for k in rng.choice(len(pool), size=min(n_swaps, len(pool)), replace=False):
                text = frame.format(e=pool[int(k)])
                if normalize(text) not in forget_prompts:
                    neg.append(text)
    return pos, list(dict.fromkeys(neg)), same


# --- calibration ---------------------------------------------------------------------------
def min_calibration_size(alpha: float) -> int:
    """Held-out negatives needed for a split-conformal false-positive bound ``alpha``."""
    return int(math.ceil((1.0 - alpha) / alpha - 1e-9))


def conformal_threshold(neg_scores: Sequence[float], alpha: float) -> float:
    """``τ`` such that a new exchangeable negative scores ``> τ`` with probability ``≤ alpha``."""
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise bad_value("fpr", "a false-positive level in (0, 1)", alpha)
    s = np.sort(np.asarray(neg_scores, dtype=np.float64))
    n = s.size
    need = min_calibration_size(alpha)
    if n < need:
        reachable = 1.0 / (n + 1) if n else None
        hint = f"; with {n} the smallest reachable level is {reachable:.4g}" if reachable else ""
        raise ConfigError(
            f"calibration: a false-positive level of {alpha:g} needs at least {need} held-out retain/general "
            f"prompts, received {n}{hint} (add retain/general prompts or raise the level)"
        )
    k = int(math.ceil((n + 1) * (1.0 - alpha)))
    return float(s[k - 1])


def calibration_groups(calibration: Sequence[str] | dict[str, Sequence[str]], alpha: float) -> dict[str, list[str]]:
    """``{group: prompts}`` to calibrate on; a group too small for ``alpha`` on its own joins
    the first group (its prompts still count, in the pooled bound)."""
    if not isinstance(calibration, dict):
        return {"all": list(calibration)}
    need = min_calibration_size(alpha)
    items = [(str(g), list(p)) for g, p in calibration.items()]
    if not items:
        return {"all": []}
    out = {items[0][0]: list(items[0][1])}
    for g, p in items[1:]:
        if len(p) >= need:
            out[g] = p
        else:
            out[items[0][0]] += p
    return out


# --- the gate ----------------------------------------------------------------------------------
@dataclass
class GateConfig:
    """How the gate is built; every field is stored in the artifact."""

    fpr: float = 0.01
    """False-positive level the threshold is calibrated to (on held-out retain/general prompts)."""
    exact_match: bool = True
    """Flag every prompt that mentions a forget target or alias (exactly or with a typo)."""
    hash_features: int = 2**14
    """Width of the hashed word/character n-gram features (0: no lexical n-grams)."""
    entity_weight: float = 3.0
    """Scale of the entity features relative to the unit-norm n-gram and embedding blocks."""
    c: float = 1.0
    """Inverse regularisation strength of the logistic regression."""
    n_swaps: int = 12
    """Hard negatives per forget prompt (its target swapped for other entities)."""
    seed: int = 0
    other_features: bool = False
    """Give the classifier the "names another known entity" features. Off: a prompt about an
    entity seen only at test time has them off too, so training on known others (where they
    are on) taught a rule unseen entities do not follow (unseen-country FPR 8.6% vs 0.0% off, dev)."""
    char_ngrams: bool = True
    """Character n-grams (3-5) beside word n-grams. Off in every scope's fit (job.gate_config): in
    entity and fact scope they made a new name score by its spelling's likeness to the training
    names, so names held out for calibration did not stand for names met in use (the fuzzy
    matcher catches typos instead); in topic scope they carried the templates' phrasing (stop_words)."""
    scope: str = "entity"
    """What is forgotten: ``entity`` (all about a target), ``fact`` (the listed facts only), ``topic`` (no entity)."""
    stop_words: bool = False
    """Leave English function words ("which", "is", "in", ...) out of the word n-grams. On for
    ``topic`` scope (with no character n-grams): a topic is carried by content words and meaning,
    and the forget templates' function words made other questions phrased alike score as on-topic
    ("{c}'s capital is which city?" flagged for 97-99% of dev countries when forgetting
    "{c} is part of which continent?"; 23.9/30.5/26.5% dev false positives on 3 splits, 0.1/0.8/0.0% without)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.fpr, (int, float)) and 0 < self.fpr < 1):
            raise bad_value("fpr", "a false-positive level in (0, 1)", self.fpr)
        if not isinstance(self.hash_features, int) or self.hash_features < 0:
            raise bad_value("hash_features", "an int >= 0", self.hash_features)
        if not (isinstance(self.c, (int, float)) and self.c > 0):
            raise bad_value("c", "a number > 0", self.c)
        if self.scope not in SCOPES:
            raise bad_value("scope", f"one of {', '.join(SCOPES)}", self.scope)


class Gate:
    """Entity matcher + logistic regression + calibrated threshold. ``score``/``flags``/``spans``."""

    def __init__(self, config: GateConfig, matcher: EntityMatcher, encoder: Any = None) -> None:
        self.config = config
        self.matcher = matcher
        self.encoder = encoder  # a provider with `embed`, or None
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0
        self.threshold_: float | None = None
        self.group_thresholds_: dict[str, float] = {}
        self._hasher: Any = None

    # features ---------------------------------------------------------------------------
    def _hashers(self) -> Any:
        if self._hasher is None and self.config.hash_features:
            from sklearn.feature_extraction.text import HashingVectorizer

            n = self.config.hash_features
            stop = "english" if self.config.stop_words else None
            self._hasher = (
                HashingVectorizer(n_features=n, analyzer="word", ngram_range=(1, 2), stop_words=stop, alternate_sign=False, norm="l2",
                                  lowercase=True),
            ) + ((HashingVectorizer(n_features=n, analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False, norm="l2", lowercase=True),)
                 if self.config.char_ngrams else ())
        return self._hasher

    def _entity_features(self, texts: Sequence[str]) -> np.ndarray:
        ent = np.stack([self.matcher.features(t) for t in texts]) * self.config.entity_weight
        if not self.config.other_features:
            ent[:, 2:4] = 0.0
        return ent

    def features(self, texts: Sequence[str]) -> Any:
        """Sparse feature matrix ``(n, n_features)``."""
        from scipy import sparse

        blocks = [sparse.csr_matrix(self._entity_features(texts))]
        hashers = self._hashers()
        if hashers:
            norm = [normalize(t) for t in texts]
            blocks += [h.transform(norm) for h in hashers]
        if self.encoder is not None:
            from blackbox.types import EmbedRequest

            vecs = self.encoder.embed(EmbedRequest(texts=tuple(texts), normalize=True)).vectors
            blocks.append(sparse.csr_matrix(np.asarray(vecs, dtype=np.float64)))
        return sparse.hstack(blocks, format="csr")

    # fit ----------------------------------------------------------------------------------
    def fit(self, positives: Sequence[str], negatives: Sequence[str], calibration: Sequence[str] | dict[str, Sequence[str]]) -> "Gate":
        """Train on positives vs negatives, then calibrate the threshold on ``calibration``
        (a list, or ``{group: prompts}``: the threshold then bounds each group's rate)."""
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        if not positives:
            raise bad_value("forget", "at least one forget prompt", "none")
        if not negatives:
            raise bad_value("retain", "at least one retain or general prompt for training the gate", "none")
        X = self.features(list(positives) + list(negatives))
        y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        clf = LogisticRegression(C=self.config.c, class_weight="balanced", max_iter=5000, random_state=self.config.seed)
        # One BLAS thread, as for BlackVIP's head (and as bench/ runs): L-BFGS on these small,
        # wide problems only contends for cores (a 160 x 32773 fit took 1.03 s with 2 threads on
        # a busy 2-core machine, 0.03 s with one).
        with threadpool_limits(limits=1):
            clf.fit(X, y)
        self.coef_ = np.asarray(clf.coef_[0], dtype=np.float64)
        self.intercept_ = float(clf.intercept_[0])
        groups = calibration_groups(calibration, self.config.fpr)
        # fact scope: the other-facts group calibrates the question classifier itself (its prompts
        # may name held-out entities, and the entity rule comes on top of it anyway)
        def scorer(group: str) -> Any:
            return (lambda t: self._logits(list(t))) if self.config.scope == "fact" and group == OTHER_FACTS_GROUP else self.score

        self.group_thresholds_ = {g: conformal_threshold(scorer(g)(p), self.config.fpr) for g, p in groups.items()}
        self.threshold_ = max(self.group_thresholds_.values())
        return self

    def _check_fitted(self) -> None:
        if self.coef_ is None or self.threshold_ is None:
            raise ConfigError("gate: not fitted yet; call fit(...) or load a fitted gate")

    # inference ------------------------------------------------------------------------------
    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores (logit; plus a large bonus when a forget target is named and ``exact_match``)."""
        if self.coef_ is None:
            raise ConfigError("gate: not fitted yet; call fit(...) or load a fitted gate")
        texts = list(texts)
        if not texts:
            return np.zeros(0)
        logits = self._logits(texts)
        if self.config.scope == "fact":
            # the fact's entity must be named: without it a prompt cannot ask the listed fact
            named = np.array([bool(self.matcher.forget_spans(t)) for t in texts])
            return np.where(named, logits, logits - EXACT_BONUS)
        if self.config.exact_match and self.config.scope == "entity":
            named = np.array([bool(self.matcher.forget_spans(t)) for t in texts])
            logits = np.where(named, EXACT_BONUS + logits, logits)
        return logits

    def _logits(self, texts: list[str]) -> np.ndarray:
        """``features(texts) @ coef + intercept`` block by block (no sparse stacking: faster per prompt)."""
        coef = self.coef_
        ent = self._entity_features(texts)
        out = ent @ coef[: ent.shape[1]] + self.intercept_  # type: ignore[index]
        pos = ent.shape[1]
        hashers = self._hashers()
        if hashers:
            norm = [normalize(t) for t in texts]
            for h in hashers:
                X = h.transform(norm)
                out = out + np.asarray(X @ coef[pos : pos + X.shape[1]]).ravel()  # type: ignore[index]
                pos += X.shape[1]
        if self.encoder is not None:
            from blackbox.types import EmbedRequest

            vecs = np.asarray(self.encoder.embed(EmbedRequest(texts=tuple(texts), normalize=True)).vectors, dtype=np.float64)
            out = out + vecs @ coef[pos : pos + vecs.shape[1]]  # type: ignore[index]
        return np.asarray(out, dtype=np.float64)

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        """Boolean per text: flagged for corruption (score above the calibrated threshold)."""
        self._check_fitted()
        return self.score(texts) > self.threshold_

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where the forget target is mentioned in ``text`` (for entity token selection)."""
        return self.matcher.forget_spans(text)

    # persistence ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        self._check_fitted()
        from dataclasses import asdict

        return {
            "config": asdict(self.config),
            "matcher": self.matcher.to_json(),
            "intercept": self.intercept_,
            "threshold": self.threshold_,
            "group_thresholds": dict(self.group_thresholds_),
            "n_features": int(self.coef_.size),  # type: ignore[union-attr]
            "encoder_dim": self._encoder_dim(),
        }

    def _encoder_dim(self) -> int:
        width = 5 + (2 if self.config.char_ngrams else 1) * self.config.hash_features
        return int(self.coef_.size - width) if self.coef_ is not None else 0  # type: ignore[union-attr]

    def arrays(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {"gate.coef": np.asarray(self.coef_, dtype=np.float64)}

    @classmethod
    def from_json(cls, obj: dict[str, Any], arrays: dict[str, np.ndarray], encoder: Any = None) -> "Gate":
        gate = cls(GateConfig(**{"other_features": True, **obj["config"]}), EntityMatcher.from_json(obj["matcher"]), encoder)
        gate.coef_ = np.asarray(arrays["gate.coef"], dtype=np.float64)
        gate.intercept_ = float(obj["intercept"])
        gate.threshold_ = float(obj["threshold"])
        gate.group_thresholds_ = {str(k): float(v) for k, v in obj.get("group_thresholds", {}).items()}
        if gate.coef_.size != int(obj["n_features"]):
            raise ConfigError(f"gate: stored coefficients have {gate.coef_.size} entries, the artifact says {obj['n_features']}")
        if int(obj.get("encoder_dim", 0)) > 0 and encoder is None:
            raise ConfigError(f"gate: was trained with {obj['encoder_dim']}-d sentence embeddings; pass the same encoder provider")
        return gate


@dataclass
class GateReport:
    """Recall on forget prompts and false-positive rate on negatives."""

    recall: float
    false_positive_rate: float
    n_positive: int
    n_negative: int
    missed: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)
