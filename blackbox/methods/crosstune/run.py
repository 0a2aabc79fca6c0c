"""Run directories for CrossTune (used by the CLI; plain files, JSON and safetensors only).

Layout of ``--run-dir DIR``::

    config.json        what was asked: features spec, data file and fields, shots, seed,
                       hyperparameters, augmentation spec, label descriptions
    train.jsonl        the sampled few-shot set
    descriptions.json  with --describe-labels-with: the generated candidates and the choice
    augment.jsonl      generated examples, one line each (appended as they come: resumable)
    model.safetensors  the fitted head (tensors + JSON meta in the header); model.json mirror
    result.json        queries, head training time, augmentation counts
    cache.sqlite       the provider cache (features and generations), reused by eval/predict

Running ``fit`` again with the same arguments on the same directory resumes an interrupted
augmentation and refits from the saved data: cached features and saved generations cost no
new queries. Different arguments on an existing run are an error listing what differs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from blackbox._version import __version__
from blackbox.errors import RunError
from blackbox.runs import atomic_write_json, discard_unless_checkpointed, prepare_run_dir

from .augment import AUGMENT_FILE, generate_examples, generator_client
from .config import LEGACY, CrossTuneConfig
from .describe import USES_DESCRIPTIONS, choose_descriptions, generate_candidates
from .data import describe_labels, k_shot, load_dataset, load_descriptions, load_table, save_table
from .estimator import CrossTuneClassifier
from .features import Featurizer

CONFIG, TRAIN, RESULT, CACHE, DESCRIBE = "config.json", "train.jsonl", "result.json", "cache.sqlite", "descriptions.json"
Progress = Callable[[str, int, int], None]


def _progress(progress: Progress | None, label: str) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(label, done, total))


def fit_run(
    run_dir: str | Path,
    *,
    features: str,
    train: str,
    shots: int,
    config: CrossTuneConfig,
    text_field: str = "text",
    label_field: str = "label",
    descriptions_file: str | None = None,
    augment_with: str | None = None,
    describe_with: str | None = None,
    cache: str | None = None,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Sample the few-shot set, (resume) augmentation, fit, save; returns the summary."""
    d = Path(run_dir)
    if config.augment_n and not augment_with:
        raise RunError("augmentation: augment_n > 0 needs a generator provider (--augment-with SPEC)")
    descriptions = load_descriptions(descriptions_file) if descriptions_file else {}
    asked = {
        "version": __version__,
        "features": features,
        "train": str(Path(train).resolve()) if Path(train).exists() else train,
        "text_field": text_field,
        "label_field": label_field,
        "shots": shots,
        "config": config.to_json(),
        "augment_with": augment_with,
        "descriptions": descriptions,
    }
    if describe_with:  # only when asked, so runs made before the option resume unchanged
        asked["describe_with"] = describe_with
    if (d / CONFIG).is_file():
        old = json.loads((d / CONFIG).read_text())
        # a run started before an option existed resumes with the value it was started with
        missing = {k: v for k, v in LEGACY.items() if k not in (old.get("config") or {})}
        if missing and isinstance(old.get("config"), dict):
            config = CrossTuneConfig(**{**config.to_json(), **missing})
            asked["config"] = {k: v for k, v in config.to_json().items() if k not in missing}
        diff = sorted(k for k in asked if k != "version" and old.get(k) != asked[k])
        if diff:
            raise RunError(f"run directory {d}: exists with different settings ({', '.join(diff)}); use a new --run-dir")
    prepare_run_dir(d, "CrossTune")
    # A fit that fails before its first checkpoint (the model, or generated examples) leaves no
    # directory behind, so the corrected command is not refused as "different settings".
    with discard_unless_checkpointed(d, "model.json", AUGMENT_FILE):
        return _fit_in(d, asked, features=features, train=train, shots=shots, config=config, text_field=text_field,
                       label_field=label_field, descriptions=descriptions, augment_with=augment_with, cache=cache,
                       progress=progress, stop_after=stop_after, describe_with=describe_with)


def _fit_in(d: Path, asked: dict[str, Any], *, features: str, train: str, shots: int, config: CrossTuneConfig,
            text_field: str, label_field: str, descriptions: dict[str, str], augment_with: str | None, cache: str | None,
            progress: Progress | None, stop_after: int | None, describe_with: str | None = None) -> dict[str, Any]:
    # Validate data and capabilities before anything is written or queried.
    pool = load_dataset(train, text_field=text_field, label_field=label_field)
    few = k_shot(pool, shots, config.seed)
    given = {c: v for c, v in {**pool.descriptions, **descriptions}.items() if c in few.classes}
    few.descriptions = describe_labels(few.classes, given, config.description_template)
    featurizer = Featurizer(features, cache=cache or (d / CACHE))
    gen_client = generator_client(augment_with, cache=cache or (d / CACHE)) if augment_with and config.augment_n else None
    free = [c for c in few.classes if c not in given]
    desc_client = None
    if describe_with and config.method in USES_DESCRIPTIONS and free:
        # budgeted: one generation per candidate and label, refused by the ledger past that
        desc_client = generator_client(describe_with, cache=cache or (d / CACHE), what="label descriptions",
                                       max_queries=config.describe_n * len(free))
    if not (d / CONFIG).is_file():
        atomic_write_json(d / CONFIG, asked)
    save_table(few, d / TRAIN)

    described: dict[str, Any] | None = None
    if desc_client is not None:
        gen = generate_candidates(desc_client, few.classes, few.texts, few.labels, n=config.describe_n, seed=config.seed,
                                  temperature=config.describe_temperature, max_tokens=config.describe_max_tokens, describe=free)
        desc_client.close()
        chosen, described = choose_descriptions(featurizer, config, few.texts, few.labels, given, gen["candidates"])
        described.update(provider=describe_with, queries=gen["queries"], raw=gen["raw"])
        few.descriptions = dict(chosen.descriptions_)
        atomic_write_json(d / DESCRIBE, json.loads(json.dumps(described, default=str)))
    elif describe_with:
        described = {"provider": describe_with, "used": False, "queries": 0,
                     "reason": "every label has a given description" if not free else f"method {config.method} reads no descriptions"}

    report: dict[str, Any] = {"generated": 0, "unparsed": 0, "kept": 0, "dropped": 0, "generation_queries": 0}
    generated, sources = None, None
    if gen_client is not None:
        out = generate_examples(
            gen_client, few.texts, few.labels, few.descriptions, n_per_class=config.augment_n, seed=config.seed,
            shots=config.augment_shots, temperature=config.augment_temperature, max_tokens=config.augment_max_tokens,
            path=d / AUGMENT_FILE, progress=_progress(progress, "generating"), stop_after=stop_after,
        )
        report.update(generated=out["generated"], unparsed=out["unparsed"], generation_queries=out["queries"])
        gen_client.close()
        if not out["complete"]:
            return {"complete": False, **report}
        generated, sources = out["examples"], out["sources"]

    t0 = time.perf_counter()
    clf = CrossTuneClassifier(featurizer, config, few.descriptions)
    clf.fit(few.texts, few.labels, generated=generated, progress=_progress(progress, "features"),
            generated_sources=sources if generated is not None else None)
    if clf.augment_report_:
        report.update(kept=clf.augment_report_["kept"], dropped=clf.augment_report_["dropped"] + report["unparsed"])
    clf.save(d)
    summary = {
        "complete": True,
        "method": config.method,
        "classes": clf.classes_,
        "n_train": len(few),
        "queries": int(featurizer.queries) + int(report["generation_queries"] or 0) + int((described or {}).get("queries") or 0),
        "feature_queries": int(featurizer.queries),
        "train_seconds": float(clf.train_info_.get("train_seconds", 0.0)),
        "fit_seconds": time.perf_counter() - t0,
        "augment": report,
        "describe": None if described is None else {k: described[k] for k in ("provider", "used", "queries", "picked", "reason") if k in described},
        "train_info": clf.train_info_,
        "ledger": featurizer.client.ledger.snapshot() if featurizer.client.ledger is not None else None,
    }
    atomic_write_json(d / RESULT, json.loads(json.dumps(summary, default=str)))
    featurizer.close()
    return summary


def _load(run_dir: str | Path, cache: str | None) -> tuple[CrossTuneClassifier, dict[str, Any], Featurizer]:
    d = Path(run_dir)
    if not (d / CONFIG).is_file():
        raise RunError(f"run directory: expected a CrossTune run (with {CONFIG}) at {d}")
    asked = json.loads((d / CONFIG).read_text())
    meta = json.loads((d / "model.json").read_text()) if (d / "model.json").is_file() else None
    if meta is None:
        raise RunError(f"run directory {d}: not fitted yet (no model); run `blackbox crosstune fit` to finish it")
    f = meta["features"]
    featurizer = Featurizer(asked["features"], mode=f["mode"], layer=f["layer"], max_tokens=f["max_tokens"], cache=cache or (d / CACHE))
    return CrossTuneClassifier.load(d, featurizer), asked, featurizer


def eval_run(run_dir: str | Path, test: str, *, allow_unseen: bool = False, text_field: str | None = None,
             label_field: str | None = None, cache: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and counts of a fitted run on a labelled file."""
    clf, asked, featurizer = _load(run_dir, cache)
    data = load_dataset(test, text_field=text_field or asked["text_field"], label_field=label_field or asked["label_field"])
    clf._check_labels(data.labels, allow_unseen)  # before any query
    q0 = featurizer.queries
    out = clf.evaluate(data.texts, data.labels, allow_unseen=allow_unseen, progress=_progress(progress, "features"))
    out["queries"] = featurizer.queries - q0
    featurizer.close()
    return out


def predict_run(run_dir: str | Path, input_file: str, *, text_field: str | None = None, cache: str | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
    """Labels and probabilities for the texts of a file (labels in it, if any, are ignored)."""
    clf, asked, featurizer = _load(run_dir, cache)
    data = load_table(input_file, text_field=text_field or asked["text_field"], label_field=None, require_labels=False)
    q0 = featurizer.queries
    proba = clf.predict_proba(data.texts, progress=_progress(progress, "features"))
    rows = [
        {"text": t, "label": clf.classes_[int(p.argmax())], "proba": {c: round(float(v), 6) for c, v in zip(clf.classes_, p)}}
        for t, p in zip(data.texts, proba)
    ]
    out = {"predictions": rows, "n": len(rows), "queries": featurizer.queries - q0}
    featurizer.close()
    return out
