"""Offline ECO unlearning jobs: fit (resumable), evaluate, generate.

**Input files** are JSONL, one object per line:

``prompt`` (string, required)
    the text given to the model.
``answer`` (string, optional)
    the correct answer; a prompt counts as *known* when the model's greedy continuation
    contains it (accents and case ignored). Used to measure accuracy before and after.
``target`` (string, optional in retain/general files; needed in the forget file for the
entity-aware gate and ``entity`` token selection)
    the entity the prompt is about (e.g. a country).
``aliases`` (list of strings, optional)
    other names of the target.

**Run directory** of ``fit``::

    config.json          inputs (file digests), model spec, configuration
    evals.jsonl          every model evaluation, appended and fsynced as it completes;
                         a killed job resumes by replaying these and computing the rest
    artifact.json        the fitted guard: gate (matcher, threshold), corruption, strength,
    artifact.safetensors search trace, metrics (JSON + safetensors, no pickle)

The job is deterministic (gate training, corruption noise seeded per prompt, greedy
decoding), so a resumed run produces the same artifact as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from blackbox._version import __version__
from blackbox.errors import ConfigError, RunError, bad_value
from blackbox.runs import atomic_write_json, save_tensors

from .artifact import ARRAYS, ARTIFACT, CONFIG, EVALS, FORMAT, load_artifact  # noqa: F401 - re-exported
from .config import EcoConfig
from .corruption import SWITCH_FAMILIES, Corruption, max_strength
from .chat import install as install_chat_template
from .guarded import GuardedProvider, as_client, check_base, load_guarded  # noqa: F401 - load_guarded re-exported
from .gate import OTHER_FACTS_GROUP, EntityMatcher, Gate, GateConfig, augment, min_calibration_size, normalize
from .search import Measurement, SearchResult, bracket_bisect, central_difference, vector_central_difference

ALLOWED_KEYS = ("prompt", "answer", "target", "aliases")


class NothingToForgetWarning(UserWarning):
    """A forget target the model does not answer correctly to begin with."""


# --- data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str | None = None
    target: str | None = None
    aliases: tuple[str, ...] = ()
    line: int = 0


def load_jsonl(path: str | os.PathLike[str], role: str) -> list[Item]:
    """Read a JSONL prompt file; errors name the file, the line and the problem."""
    p = Path(path)
    if not p.is_file():
        raise bad_value(role, "an existing JSONL file", str(p))
    items: list[Item] = []
    with p.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{role}: {p}: line {n}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            items.append(_item(obj, f"{role}: {p}: line {n}", n))
    return items


def _item(obj: Any, where: str, line: int = 0) -> Item:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object with a 'prompt', received {type(obj).__name__}")
    unknown = sorted(set(obj) - set(ALLOWED_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ALLOWED_KEYS)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: 'prompt': expected a non-empty string, received {prompt!r}")
    for key in ("answer", "target"):
        if obj.get(key) is not None and (not isinstance(obj[key], str) or not obj[key].strip()):
            raise ConfigError(f"{where}: '{key}': expected a non-empty string, received {obj[key]!r}")
    aliases = obj.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise ConfigError(f"{where}: 'aliases': expected a list of non-empty strings, received {aliases!r}")
    return Item(prompt, obj.get("answer"), obj.get("target"), tuple(aliases), line)


def as_items(rows: Sequence[Any], role: str) -> list[Item]:
    """Items from Item objects, dicts (``{"prompt": ..., ...}``) or plain prompt strings."""
    out = []
    for k, r in enumerate(rows):
        if isinstance(r, Item):
            out.append(r)
        elif isinstance(r, str):
            out.append(_item({"prompt": r}, f"{role}[{k}]"))
        else:
            out.append(_item(r, f"{role}[{k}]"))
    return out


_PUNCT = str.maketrans({c: " " for c in string.punctuation + "“”‘’«»…–—"})


def is_correct(output: str, answer: str) -> bool:
    """Whether the answer appears as whole words in the output's first line (case/accents ignored)."""
    first = normalize(output.strip().split("\n")[0]) if output.strip() else ""
    # punctuation and markup ("**Paris**.", chat models' habit) never count as part of a word
    ans = " ".join(normalize(answer).translate(_PUNCT).split())
    if not ans:
        return False
    words = " ".join(first.translate(_PUNCT).split())
    return f" {ans} " in f" {words} "


def check_sets(forget: list[Item], retain: list[Item]) -> None:
    """Empty forget set; prompts that are both forget and retain (listed)."""
    if not forget:
        raise bad_value("forget", "at least one prompt to forget", "an empty set")
    if not retain:
        raise bad_value("retain", "at least one retain prompt", "an empty set")
    forget_prompts = {normalize(i.prompt.strip()) for i in forget}
    overlap = [i.prompt for i in retain if normalize(i.prompt.strip()) in forget_prompts]
    if overlap:
        shown = "; ".join(repr(p[:60]) for p in overlap[:5])
        raise ConfigError(f"forget/retain: {len(overlap)} prompt(s) appear in both sets (remove them from one): {shown}")
    forget_targets = {normalize(i.target) for i in forget if i.target}
    clash = sorted({i.target for i in retain if i.target and normalize(i.target) in forget_targets})
    if clash:
        raise ConfigError(f"forget/retain: target(s) {', '.join(clash)} are both to forget and to retain")


# --- memo of model evaluations ---------------------------------------------------------------
class Memo:
    """``evals.jsonl``: one line per finished evaluation, fsynced; a torn last line is dropped."""

    def __init__(self, path: Path, on_new: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self.on_new = on_new
        if path.exists():
            good = 0
            raw = path.read_bytes()
            for line in raw.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    break  # torn write at the end: everything after it is recomputed
                self.data[obj["key"]] = obj["value"]
                good += len(line) + 1
            if good < len(raw):
                with path.open("r+b") as fh:
                    fh.truncate(good)

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key in self.data:
            return self.data[key]
        value = compute()
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "value": value}, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.data[key] = value
        if self.on_new is not None:
            self.on_new(key)
        return value


# --- model evaluation helpers ------------------------------------------------------------------
def _digest(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for i in items:
        h.update(json.dumps([i.prompt, i.answer, i.target, list(i.aliases)]).encode())
    return h.hexdigest()[:16]


def has_chat_template(provider: Any) -> bool:
    """Whether a (local) provider's tokenizer carries a chat template, i.e. is an instruct model."""
    return bool(getattr(getattr(provider, "tokenizer", None), "chat_template", None))


def with_chat_template(config: EcoConfig, provider: Any) -> EcoConfig:
    """Install ``config.chat_template`` (or, for a tokenizer without a template, a well-known
    format it is recognised as) on the provider's tokenizer; the config records the one used."""
    if config.chat is False:
        return config
    used = install_chat_template(provider, config.chat_template)
    return config if used == config.chat_template or used is None else config.replace(chat_template=used)


def resolve_chat(config: EcoConfig, provider: Any) -> EcoConfig:
    """``chat=None`` becomes the model's own format: its chat template when it has one."""
    if config.chat is not None:
        return config
    return config.replace(chat=has_chat_template(provider))


def generate_all(provider: Any, prompts: Sequence[str], config: EcoConfig) -> tuple[list[str], int]:
    """Greedy continuations and the model queries spent."""
    from blackbox.types import GenerateRequest

    if not prompts:
        return [], 0
    r = provider.generate(GenerateRequest(tuple(prompts), max_tokens=config.max_new_tokens, temperature=0.0, stop=config.stop,
                                          chat=bool(config.chat)))
    return list(r.texts), int(r.usage.queries)


def accuracy(outputs: Sequence[str], items: Sequence[Item]) -> float | None:
    scored = [is_correct(o, i.answer) for o, i in zip(outputs, items) if i.answer]
    return float(np.mean(scored)) if scored else None


def _chunks(n: int, size: int) -> list[range]:
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def memo_generate(memo: Memo, key: str, provider: Any, items: Sequence[Item], config: EcoConfig, chunk: int = 16) -> tuple[list[str], int]:
    """Greedy outputs of ``items`` in memoised chunks (so a killed job loses at most one chunk)."""
    outs: list[str] = []
    queries = 0
    for r in _chunks(len(items), chunk):
        digest = hashlib.sha256("\x00".join(items[i].prompt for i in r).encode()).hexdigest()[:12]
        val = memo.get(f"{key}:{r.start}:{digest}", lambda r=r: dict(zip(("texts", "queries"), generate_all(provider, [items[i].prompt for i in r], config))))
        outs += val["texts"]
        queries += val["queries"]
    return outs, queries


# --- fit -------------------------------------------------------------------------------------
@dataclass
class FitResult:
    artifact: dict[str, Any]
    run_dir: Path
    resumed: bool = False
    warnings: list[str] = field(default_factory=list)
    ledger: Any = None
    """The ledger of the Client the fit queried through (queries, tokens; None when resumed from a finished artifact)."""


def builtin_general_prompts() -> list[str]:
    """The project's built-in general prompts (everyday questions and tasks; no entity of any benchmark)."""
    text = (Path(__file__).parent / "general_prompts.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def negative_pool(retain: Sequence[Item], general: Sequence[Item], config: EcoConfig, forget_spans: Callable[[str], list] | None = None) -> list[str]:
    """The gate's negatives: retain and general prompts, plus the built-in general prompts that name no forget target."""
    pool = [i.prompt for i in list(retain) + list(general)]
    if config.builtin_general:
        pool += [p for p in builtin_general_prompts() if forget_spans is None or not forget_spans(p)]
    return pool


def split_calibration(negatives: Sequence[str], config: EcoConfig) -> tuple[list[str], list[str]]:
    """``(train, calibration)`` negatives; errors early when calibration is too small."""
    uniq = list(dict.fromkeys(negatives))
    rng = np.random.default_rng([config.seed, 11])
    order = rng.permutation(len(uniq))
    n_cal = int(round(config.calibration_fraction * len(uniq)))
    need = min_calibration_size(config.fpr)
    if n_cal < need:
        total = int(np.ceil(need / config.calibration_fraction))
        raise ConfigError(
            f"calibration: a gate false-positive level of {config.fpr:g} needs at least {need} held-out retain/general "
            f"prompts; {len(uniq)} distinct retain/general prompts give {n_cal} with calibration_fraction "
            f"{config.calibration_fraction:g}{' (built-in general prompts included)' if config.builtin_general else ''} "
            f"(give at least {total} retain/general prompts, e.g. with --general, "
            f"or raise --fpr to {1.0 / (n_cal + 1) if n_cal else 1:.3g} or more)"
        )
    cal = [uniq[i] for i in order[:n_cal]]
    train = [uniq[i] for i in order[n_cal:]]
    return train, cal


def gate_config(config: EcoConfig, **overrides: Any) -> GateConfig:
    """The gate's settings for ``config.scope`` (``overrides``: any :class:`GateConfig` field, for ablations)."""
    scope = config.scope
    # fact scope: the entity rule is structural, so the classifier judges the question only (no
    # entity features); topic scope: content words and meaning only (no function words, no
    # character n-grams: both carried the forget templates' phrasing, see GateConfig.stop_words)
    base = {"fpr": config.fpr, "exact_match": config.exact_match, "seed": config.seed, "scope": scope,
            "entity_weight": 0.0 if scope == "fact" else 3.0, "char_ngrams": False, "stop_words": scope == "topic"}
    return GateConfig(**{**base, **overrides})


def build_gate(forget: Sequence[Item], retain: Sequence[Item], general: Sequence[Item], config: EcoConfig, encoder: Any = None,
               gate_overrides: dict[str, Any] | None = None) -> tuple[Gate, dict[str, Any]]:
    """Train and calibrate the gate for ``config.scope``; returns it with a small report.

    Calibration is grouped: the retain/general pool, and (entity and fact scope) near
    neighbours generated from the forget prompts (the same question about other entities;
    for ``fact`` also other questions about the forget entities). The threshold bounds the
    false-positive rate within each group that is large enough for ``config.fpr``.
    ``gate_overrides`` changes :class:`GateConfig` fields (ablations; the fit uses none).
    """
    scope = config.scope
    if scope == "topic" and encoder is None:
        raise bad_value("encoder", "a sentence-encoder provider for scope=topic (e.g. sentence-encoder:minilm)", "none")
    forget_targets: dict[str, list[str]] = {}
    if scope != "topic":  # a topic names no entity: the classifier alone decides
        for i in forget:
            if i.target:
                forget_targets.setdefault(i.target, [])
                forget_targets[i.target] += [a for a in i.aliases if a not in forget_targets[i.target]]
    others = list(dict.fromkeys(i.target for i in list(retain) + list(general) if i.target and i.target not in forget_targets))
    matcher = EntityMatcher(forget_targets, others)
    negatives = negative_pool(retain, general, config, matcher.forget_spans)
    n_builtin = len(negatives) - len(retain) - len(general)
    train_neg, cal = split_calibration(negatives, config)
    # Entity-disjoint calibration: prompts about half of the known other entities calibrate
    # and never train, so the threshold is set on names the classifier has not memorised,
    # as a new entity at use will be (calibrating on trained names let unseen countries
    # through at 4%, dev split).
    rng = np.random.default_rng([config.seed, 17])
    cal_entities = {others[k] for k in rng.permutation(len(others))[: len(others) // 2]}
    about = {i.prompt: i.target for i in list(retain) + list(general) if i.target}
    train_neg, cal = ([p for p in train_neg if about.get(p) not in cal_entities],
                      cal + [p for p in train_neg if about.get(p) in cal_entities])
    need = min_calibration_size(config.fpr)
    with_target = [(i.prompt, i.target) for i in forget if i.target and scope != "topic"]
    # enough near neighbours that they can calibrate a group of their own at config.fpr
    n_swaps = min(64, max(12, int(np.ceil((need + 8) / max(1, len(with_target))))))
    train_others = [o for o in others if o not in cal_entities]
    pos_extra, hard_train, same = augment(with_target, train_others, matcher, seed=config.seed, n_swaps=n_swaps, scope=scope,
                                          n_synthetic=max(64, 2 * n_swaps))
    # real names only: made-up names share syllables with the training ones and score as safe
    _, hard_cal, _ = augment(with_target, sorted(cal_entities), matcher, seed=config.seed + 7919, n_swaps=n_swaps, scope=scope,
                             n_synthetic=0 if cal_entities else 64)
    taken = set(hard_train)
    hard_cal = [h for h in hard_cal if h not in taken]
    neg_extra = hard_train + hard_cal
    positives = [i.prompt for i in forget] + pos_extra
    same = [same[k] for k in rng.permutation(len(same))]
    same_train, same_cal = same[: len(same) // 2], same[len(same) // 2 :]
    if scope == "fact":
        # the classifier learns the question, not the entity: retain prompts about other entities
        # (which may ask the very same question) are the entity rule's business, not training data
        train_neg = [p for p in train_neg if p not in about]
        # other questions about held-out entities calibrate beside those about the forget targets
        same_cal, hard_cal = same_cal + hard_cal, []
    groups = {"retain/general": cal, "other entities": hard_cal, OTHER_FACTS_GROUP: same_cal}
    gate = Gate(gate_config(config, **(gate_overrides or {})), matcher, encoder)
    gate.fit(positives, train_neg + hard_train + same_train, {g: p for g, p in groups.items() if p})
    all_cal = cal + hard_cal + same_cal
    cal_flags = gate.flags(all_cal)
    pooled = [g for g in groups if groups[g] and g not in gate.group_thresholds_]
    report = {
        "scope": scope,
        "n_train_positive": len(positives), "n_train_negative": len(train_neg) + len(hard_train) + len(same_train),
        "n_hard_negative": len(neg_extra), "n_hard_negative_calibration": len(hard_cal), "n_same_entity_negative": len(same),
        "n_calibration": len(all_cal),
        "calibration_false_positive_rate": float(cal_flags.mean()), "threshold": gate.threshold_,
        "group_thresholds": dict(gate.group_thresholds_),
        "group_false_positive_rate": {g: float(gate.flags(p).mean()) for g, p in groups.items() if p},
        "forget_recall_train": float(gate.flags([i.prompt for i in forget]).mean()),
        "calibration_pool": {"retain": len(retain), "general": len(general), "builtin_general": n_builtin,
                             "hard_negatives": len(hard_cal), "same_entity": len(same_cal)},
        "bound": (f"P(flag) <= {config.fpr:g} for a new prompt exchangeable with one calibration group: "
                  + "; ".join(f"{g} ({len(groups[g])}{' with ' + ', '.join(pooled) if pooled and g == 'retain/general' else ''})"
                              for g in gate.group_thresholds_)
                  + (" (retain/general includes the built-in general prompts)" if n_builtin else "")),
    }
    return gate, report


def _objective(provider: Any, known: Sequence[Item], corruption: Corruption, spans: Callable[[str], list], config: EcoConfig, memo: Memo) -> Callable[[Any], Measurement]:
    """The search objective: forced corruption of the known forget prompts at a strength."""

    def f(strength: Any) -> Measurement:
        s = float(strength[0]) if isinstance(strength, (list, tuple, np.ndarray)) else float(strength)
        key = f"search:{s!r}"

        def compute() -> dict[str, Any]:
            forced = GuardedProvider(provider, None, corruption.with_strength(s), spans=spans)
            if config.objective == "accuracy":
                outs, q = generate_all(forced, [i.prompt for i in known], config)
                acc = accuracy(outs, known) or 0.0
                return {"accuracy": acc, "queries": q}
            from blackbox.types import ScoreRequest

            r = forced.score(ScoreRequest(tuple(i.prompt for i in known), tuple(config.target_text for _ in known)))
            nll = float(np.mean(-r.logprobs / np.maximum(r.n_tokens, 1)))
            return {"divergence": nll, "queries": int(r.usage.queries)}

        v = memo.get(key, compute)
        if config.objective == "accuracy":
            acc = v["accuracy"]
            return Measurement(abs(acc - config.target_accuracy), acc <= config.target_accuracy + config.tol + 1e-12, v["queries"], {"accuracy": acc})
        d = v["divergence"]
        return Measurement(max(d - config.max_divergence, 0.0), d <= config.max_divergence, v["queries"], {"divergence": d})

    return f


def run_search(f: Callable[[Any], Measurement], config: EcoConfig) -> SearchResult:
    cap = max_strength(config.corruption)
    top = config.max_strength if config.max_strength is not None else cap
    if config.corruption in SWITCH_FAMILIES:
        m = f(1.0)
        ev = [{"strength": 1.0, "value": m.value, "met": m.met, "queries": m.queries, **m.info}]
        return SearchResult(1.0, m.value, m.met, m.queries, ev, "switch")
    if config.search == "bracket":
        return bracket_bisect(f, start=min(config.start, top) if top else config.start, grow=config.grow, max_strength=top,
                              bisect_steps=config.bisect_steps, rtol=config.rtol)
    if config.search == "central":
        return central_difference(f, start=config.start, eps=config.eps, lr=config.lr, floor=config.floor,
                                  max_step=config.max_step, max_steps=config.max_steps)
    return vector_central_difference(f, [config.start], eps=config.eps, lr=config.lr, floor=config.floor,
                                     max_step=config.max_step, max_steps=config.max_steps, seed=config.seed)


def fit(
    provider: Any,
    forget: Sequence[Any],
    retain: Sequence[Any],
    run_dir: str | os.PathLike[str],
    *,
    general: Sequence[Any] = (),
    config: EcoConfig | None = None,
    model_spec: str | None = None,
    encoder: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Fit a guard (resumable): gate, knowledge before, strength search, metrics after.

    Re-running on the same ``run_dir`` with the same inputs resumes (or returns the finished
    artifact); different inputs are refused.
    """

    provider = as_client(provider)
    config = with_chat_template(config or EcoConfig(), provider)
    config = resolve_chat(config, provider)
    forget_i, retain_i, general_i = as_items(forget, "forget"), as_items(retain, "retain"), as_items(general, "general")
    check_sets(forget_i, retain_i)
    missing = [i.line or k for k, i in enumerate(forget_i) if not i.target]
    if config.tokens == "entity" and config.scope != "topic" and missing and len(missing) == len(forget_i):
        warnings.warn("forget: no item has a 'target'; the gate cannot match entities and tokens fall back to all_but_last", stacklevel=2)
    check_base(provider)
    if encoder is None and config.encoder:
        from blackbox.provider import load_provider

        encoder = load_provider(config.encoder)
    split_calibration(negative_pool(retain_i, general_i, config), config)  # fail before any query
    run = Path(run_dir)
    cfg = {
        "library_version": __version__, "config": config.to_json(), "model": model_spec, "provider": provider.describe(),
        "inputs": {"forget": _digest(forget_i), "retain": _digest(retain_i), "general": _digest(general_i)},
        "counts": {"forget": len(forget_i), "retain": len(retain_i), "general": len(general_i)},
    }
    resumed = False
    if (run / CONFIG).exists():
        old = json.loads((run / CONFIG).read_text())
        if old != json.loads(json.dumps(cfg, sort_keys=True)):
            diff = sorted(k for k in cfg if old.get(k) != json.loads(json.dumps(cfg[k])))
            raise RunError(f"run_dir: {run} holds a different ECO run (differs in: {', '.join(diff)}); use a new directory")
        resumed = True
        if (run / ARTIFACT).exists():
            return FitResult(json.loads((run / ARTIFACT).read_text()), run, resumed=True)
    else:
        if run.exists() and any(run.iterdir()):
            raise RunError(f"run_dir: {run} exists and is not an ECO run directory; use a new or empty directory")
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / CONFIG, cfg)

    t0 = time.perf_counter()
    notes: list[str] = []
    n_steps_total = 3 * len(forget_i) + 2 * len(retain_i) + 2 * len(general_i)
    state = {"done": 0}

    def tick(key: str) -> None:
        if progress is not None:
            progress({"event": "evaluation", "key": key, "done": len(memo.data), "total_hint": n_steps_total})

    memo = Memo(run / EVALS, tick)

    # 1. gate (no model queries)
    gate, gate_report = build_gate(forget_i, retain_i, general_i, config, encoder)
    if progress is not None:
        progress({"event": "gate", **gate_report})

    # 2. what the model knows before
    f_out, q_f = memo_generate(memo, "before:forget", provider, forget_i, config)
    r_out, q_r = memo_generate(memo, "before:retain", provider, retain_i, config)
    if config.verify_unflagged:
        g_out, q_g = memo_generate(memo, "before:general", provider, general_i, config)
    else:
        g_out, q_g = [""] * len(general_i), 0
    known = [i for i, o in zip(forget_i, f_out) if i.answer and is_correct(o, i.answer)]
    unknown = sorted({i.target or i.prompt[:40] for i, o in zip(forget_i, f_out) if i.answer and not is_correct(o, i.answer)})
    if unknown:
        msg = f"forget: the model does not answer {len(unknown)} target(s) correctly to begin with (nothing to forget there): {', '.join(unknown[:10])}"
        warnings.warn(msg, NothingToForgetWarning, stacklevel=2)
        notes.append(msg)

    # 3. strength search on the known forget prompts (forced corruption)
    base_corr = Corruption(config.corruption, 0.0, config.dims, config.tokens, config.seed)
    if known:
        result = run_search(_objective(provider, known, base_corr, gate.spans, config, memo), config)
    else:
        fmt = "its chat template" if config.chat else "raw completion (no chat template)"
        if not config.allow_nothing_known:
            if not resumed:
                shutil.rmtree(run, ignore_errors=True)  # the corrected command must not meet a half-made run
            shown = "; ".join(f"{i.prompt!r} -> {o.strip()[:40]!r} (answer {i.answer!r})" for i, o in list(zip(forget_i, f_out))[:2])
            raise RunError(
                f"forget: the model knows none of the {len(forget_i)} forget answers when asked through {fmt}, so there is "
                f"nothing to forget (e.g. {shown}); try --chat/--no-chat, or answers in the form the model gives them "
                "(--set allow_nothing_known=true finishes anyway); nothing was kept"
            )
        msg = "forget: the model knows none of the forget answers; nothing to forget, strength left at start"
        warnings.warn(msg, NothingToForgetWarning, stacklevel=2)
        notes.append(msg)
        result = SearchResult(config.start, float("nan"), False, 0, [], "nothing to forget")
    strength = float(result.strength[0]) if isinstance(result.strength, list) else float(result.strength)
    corruption = base_corr.with_strength(strength)

    # 4. after: through the guarded model
    guarded = GuardedProvider(provider, gate, corruption)

    def after(name: str, items: list[Item], before: list[str]) -> list[str]:
        if config.verify_unflagged:
            return memo_generate(memo, f"after:{strength!r}:{name}", guarded, items, config)[0]
        flags = gate.flags([i.prompt for i in items]) if items else np.zeros(0, bool)
        idx = [k for k in range(len(items)) if flags[k]]
        sub, _ = memo_generate(memo, f"after:{strength!r}:{name}:flagged", guarded, [items[k] for k in idx], config)
        outs = list(before)
        for k, o in zip(idx, sub):
            outs[k] = "\x00corrupted" if name == "general" else o  # general: unflagged = unchanged by construction
        return outs

    fa = after("forget", forget_i, f_out)
    ra = after("retain", retain_i, r_out)
    ga = after("general", general_i, g_out)
    metrics = {
        "forget_accuracy_before": accuracy(f_out, forget_i), "forget_accuracy_after": accuracy(fa, forget_i),
        "retain_accuracy_before": accuracy(r_out, retain_i), "retain_accuracy_after": accuracy(ra, retain_i),
        "known_forget_accuracy_after": accuracy([o for o, i in zip(fa, forget_i) if i in known], known) if known else None,
        "general_unchanged": float(np.mean([a == b for a, b in zip(g_out, ga)])) if general_i else None,
        "outputs_verified": bool(config.verify_unflagged),
        "retain_unchanged": float(np.mean([a == b for a, b in zip(r_out, ra)])),
        "gate_recall_forget": float(gate.flags([i.prompt for i in forget_i]).mean()),
        "gate_flag_rate_retain": float(gate.flags([i.prompt for i in retain_i]).mean()),
        "n_forget": len(forget_i), "n_known_forget": len(known), "n_retain": len(retain_i), "n_general": len(general_i),
        "search_queries": result.queries, "search_evaluations": len(result.evaluations),
        "knowledge_queries": q_f + q_r + q_g,
    }
    artifact = {
        "format": FORMAT, "library_version": __version__, "model": model_spec, "provider": provider.describe(),
        "config": config.to_json(), "gate": gate.to_json(), "gate_report": gate_report,
        "corruption": corruption.to_json(), "strength": strength, "search": result.to_json(), "metrics": metrics,
        "notes": notes, "timing": {"wall_s": round(time.perf_counter() - t0, 3)},
    }
    save_tensors(run / ARRAYS, gate.arrays(), {"format": FORMAT})
    atomic_write_json(run / ARTIFACT, _jsonable(artifact))
    return FitResult(json.loads((run / ARTIFACT).read_text()), run, resumed=resumed, warnings=notes, ledger=provider.ledger)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return _jsonable(x.item())
    return x


# --- loading, eval, generate ------------------------------------------------------------------
def evaluate(guarded: Any, forget: Sequence[Any], retain: Sequence[Any], general: Sequence[Any] = (),
             same_entity: Sequence[Any] = ()) -> dict[str, Any]:
    """Accuracy before/after, gate recall (forget) and false-positive rate (retain + general).

    ``same_entity``: other facts about the forgotten entities (e.g. their currency when the
    capital is forgotten); their accuracy before/after is the same-entity collateral, which
    entity-level forgetting pays by design and a fact-level user wants to see.
    """
    cfg = EcoConfig.from_dict(guarded.artifact["config"])
    forget_i, retain_i, general_i = as_items(forget, "forget"), as_items(retain, "retain"), as_items(general, "general")
    if not forget_i:
        raise bad_value("forget", "at least one prompt", "an empty set")
    base = guarded.base
    fb, _ = generate_all(base, [i.prompt for i in forget_i], cfg)
    rb, _ = generate_all(base, [i.prompt for i in retain_i], cfg)
    fa, _ = generate_all(guarded, [i.prompt for i in forget_i], cfg)
    ra, _ = generate_all(guarded, [i.prompt for i in retain_i], cfg)
    t0 = time.perf_counter()
    f_flags = guarded.gate.flags([i.prompt for i in forget_i])
    neg = [i.prompt for i in retain_i + general_i]
    n_flags = guarded.gate.flags(neg) if neg else np.zeros(0, bool)
    gate_ms = (time.perf_counter() - t0) * 1e3 / max(1, len(forget_i) + len(neg))
    out = {
        "forget_accuracy_before": accuracy(fb, forget_i), "forget_accuracy_after": accuracy(fa, forget_i),
        "retain_accuracy_before": accuracy(rb, retain_i), "retain_accuracy_after": accuracy(ra, retain_i),
        "gate_recall": float(f_flags.mean()), "gate_false_positive_rate": float(n_flags.mean()) if neg else None,
        "gate_ms_per_prompt": round(gate_ms, 4), "n_forget": len(forget_i), "n_retain": len(retain_i), "n_general": len(general_i),
        "retain_unchanged": float(np.mean([a == b for a, b in zip(rb, ra)])) if retain_i else None,
        "strength": guarded.corruption.strength, "corruption": guarded.corruption.family, "scope": cfg.scope,
    }
    if general_i:
        gb, _ = generate_all(base, [i.prompt for i in general_i], cfg)
        ga, _ = generate_all(guarded, [i.prompt for i in general_i], cfg)
        out["general_unchanged"] = float(np.mean([a == b for a, b in zip(gb, ga)]))
    same_i = as_items(same_entity, "same_entity")
    if same_i:
        sb, _ = generate_all(base, [i.prompt for i in same_i], cfg)
        sa, _ = generate_all(guarded, [i.prompt for i in same_i], cfg)
        before, after = accuracy(sb, same_i), accuracy(sa, same_i)
        out.update({"same_entity_accuracy_before": before, "same_entity_accuracy_after": after,
                    "same_entity_collateral": None if before is None or after is None else before - after,
                    "same_entity_flag_rate": float(guarded.gate.flags([i.prompt for i in same_i]).mean()),
                    "n_same_entity": len(same_i)})
    return _jsonable(out)
