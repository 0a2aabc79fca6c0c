"""CrossTune over the public task suite (bench/text_tasks.py): baselines, default, ablations.

For every task, seed and arm on the same cached features (16 shots per class, a fixed test
split per task, paired seeds): zero-shot, the linear probe, default CrossTune (the head
ensemble with the model selection on the shots), and the ablations that separate its parts:
the head without selection (``head-only``, read from the same fit), descriptions in attention
without the zero-shot prior (``no-prior``), the prior without attention (``prior-only``: a
learnt scale and class biases on the zero-shot cosine), the ensemble of linear probes without
attention (``probe-ensemble``) and the head without label descriptions (``no-labels``); and the
first version's default and probe (``crosstune-v1``, ``linear-probe-v1``: no pair cosine), so the
change chosen on development splits by ``bench/crosstune_dev.py`` is compared paired, on the same
shots. Nothing here is chosen on the test split.
Per-seed lines are appended to ``--log`` as they come (a stopped run keeps them;
``--from-log`` summarises such a log); the summary goes to ``bench/results/crosstune_suite.json``
and renders the ``crosstune_suite`` section of docs/crosstune.md.

    python bench/crosstune_suite.py [--tasks a,b] [--seeds 5] [--shots 16] [--n-test 500] [--write-docs]
    python bench/crosstune_suite.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _common import command_line, emit, loadavg, machine, machine_line, publish_results, save_results, today

FEATURES = {"minilm": "sentence-encoder:minilm", "smollm2": "hf-causal:smollm2"}
# arm -> CrossTuneConfig overrides (besides the seed); "head-only" and "blend" are read from the default fit
ARM_CONFIG = {
    "zero-shot": {"method": "zero-shot"},
    "linear-probe": {"method": "linear-probe"},
    "crosstune": {},
    "no-prior": {"prior": False, "select": False},
    "prior-only": {"attention": False, "select": False},
    "probe-ensemble": {"method": "probe-ensemble"},
    "no-labels": {"method": "no-labels"},
    # the first version's defaults (before pair_similarity; bench/crosstune_dev.py chose the change)
    "crosstune-v1": {"pair_similarity": 0.0, "select_rule": "margin"},
    "linear-probe-v1": {"method": "linear-probe", "pair_similarity": 0.0},
}
DERIVED = ("head-only", "blend")
SUITE_TASKS = ("tweets-sentiment,fortunes-topic,fortunes-language,wordnet-supersense,wordnet-pos,"
               "wordnet-sense-pair,fortunes-same-topic")
ARMS = list(ARM_CONFIG) + list(DERIVED)


def keep(rec: dict[str, Any], records: list[dict[str, Any]], log: Any) -> None:
    """Print one per-seed line, keep it, and append it to the open ``--log`` file (if any) at once."""
    emit(rec)
    records.append(rec)
    if log:
        log.write(json.dumps(rec) + "\n")
        log.flush()


def run(args: argparse.Namespace, arm_config: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Measure ``args.arms`` (names in ``arm_config``, default :data:`ARM_CONFIG`) on every task and seed."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from text_tasks import load_task

    from blackbox.client import Client, DiskCache, Ledger
    from blackbox.methods.crosstune.config import CrossTuneConfig
    from blackbox.methods.crosstune.data import k_shot, split_test
    from blackbox.methods.crosstune.estimator import SELECT_ORDER, CrossTuneClassifier, macro_f1
    from blackbox.methods.crosstune.features import Featurizer
    from blackbox.provider import load_provider

    cache = DiskCache(args.cache)
    provider = load_provider(FEATURES[args.features])
    featurizer = Featurizer(Client(provider, cache=cache, ledger=Ledger()))
    done = set()
    if args.skip_done and args.log and Path(args.log).exists():
        done = {(r["task"], r["seed"], r["arm"]) for r in map(json.loads, Path(args.log).read_text().splitlines()) if r}
    log = Path(args.log).open("a") if args.log else None
    records = []
    for task in args.tasks.split(","):
        ds = load_task(task)
        pool, test = split_test(ds, args.n_test, 0)
        if args.dev:
            # development split: drawn from the few-shot pool, disjoint from the test split
            pool, test = split_test(pool, args.n_test, 1)
        for seed in range(args.seed0, args.seed0 + args.seeds):
            s = k_shot(pool, args.shots, seed)
            t0 = time.perf_counter()
            featurizer(s.texts)
            featurizer(test.texts)
            feat_s = time.perf_counter() - t0
            for arm in args.arms.split(","):
                if (task, seed, arm) in done:  # measured by an earlier, stopped run (its line is in the log)
                    continue
                over = (arm_config or ARM_CONFIG)[arm]
                cfg = CrossTuneConfig(**{"seed": seed, **over})
                clf = CrossTuneClassifier(featurizer, cfg, s.descriptions)
                c0 = time.process_time()
                clf.fit(s.texts, s.labels)
                cpu = time.process_time() - c0
                ev = clf.evaluate(test.texts, test.labels)
                rec = {"task": task, "seed": seed, "arm": arm, "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"],
                       "fit_cpu_seconds": cpu, "classes": len(s.classes), "n_test": len(test), "feature_seconds": feat_s}
                sel = clf.train_info_.get("selection")
                if sel:
                    rec.update(choice=sel["choice"], oof_acc=sel["oof_acc"], oof_loss=sel["oof_loss"])
                out = [rec]
                if sel:
                    # every candidate's test accuracy, for the ablations and to compare selection rules
                    rec["candidate_acc"] = {}
                    for cand in SELECT_ORDER + (("stacked",) if sel.get("rule") == "stacked" else ()):
                        pred = [s.classes[i] for i in clf.candidate_scores(test.texts, cand).argmax(1)]
                        acc = float(np.mean([p == t for p, t in zip(pred, test.labels)]))
                        rec["candidate_acc"][cand] = acc
                        d = "head-only" if cand == "crosstune" else cand
                        if d in DERIVED:
                            # derived arms of another fit than the default's are named after it
                            name = d if arm == "crosstune" else f"{arm}:{d}"
                            out.append({**rec, "arm": name, "accuracy": acc, "macro_f1": macro_f1(test.labels, pred, s.classes)})
                for r in out:
                    keep(r, records, log)
    return records


def summarise(records: list[dict[str, Any]], sources: dict[str, str]) -> list[dict[str, Any]]:
    """One row per (task, arm): mean ± std over seeds, per-seed accuracy, selection counts."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    seen = set()
    for r in records:
        if (r["task"], r["arm"], r["seed"]) in seen:  # a task measured by two shards: the first line counts
            continue
        seen.add((r["task"], r["arm"], r["seed"]))
        groups.setdefault((r["task"], r["arm"]), []).append(r)
    rows = []
    for (task, arm), recs in groups.items():
        acc, f1 = [r["accuracy"] for r in recs], [r["macro_f1"] for r in recs]
        row = {"task": task, "arm": arm, "seeds": len(recs), "classes": recs[0]["classes"], "n_test": recs[0]["n_test"],
               "source": sources.get(task, ""), "acc_mean": statistics.mean(acc), "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
               "f1_mean": statistics.mean(f1), "per_seed": {str(r["seed"]): r["accuracy"] for r in recs},
               "fit_cpu_s_mean": statistics.mean(r["fit_cpu_seconds"] for r in recs)}
        if arm == "crosstune":
            row["choices"] = {c: sum(r.get("choice") == c for r in recs) for c in sorted({r.get("choice") for r in recs if r.get("choice")})}
        rows.append(row)
    return rows


def _paired(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, int, int]:
    diffs = [100 * (a["per_seed"][k] - b["per_seed"][k]) for k in a["per_seed"] if k in b["per_seed"]]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return statistics.mean(diffs), se, sum(x > 1e-9 for x in diffs), sum(x < -1e-9 for x in diffs)


def render_section(name: str, results: dict[str, Any]) -> str:
    """The docs section, from bench/results/crosstune_suite.json only (pure)."""
    rows, info = results["rows"], results["info"]
    by = {(r["task"], r["arm"]): r for r in rows}
    tasks = list(dict.fromkeys(r["task"] for r in rows))

    def cell(t: str, a: str) -> str:
        r, ct = by.get((t, a)), by.get((t, "crosstune"))
        if not r:
            return "–"
        few = f" ({r['seeds']} seeds)" if ct and r["seeds"] < ct["seeds"] else ""
        return f"{100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f}{few}"

    # the first version's default and probe, where the run measured them (paired with the default)
    v1 = all((t, "crosstune-v1") in by for t in tasks)
    v1_cols = " | linear probe v1 | CrossTune v1" if v1 else ""
    lines = [f"| task (classes, test texts; source) | seeds | zero-shot | linear probe{v1_cols} | **CrossTune** (default) | chosen on the shots "
             "(of the seeds) | CrossTune − best baseline (paired) |" + (" CrossTune − v1 (paired) |" if v1 else ""), "|" + "---|" * (10 if v1 else 7)]
    gains, worst, vs_v1 = [], [], []
    for t in tasks:
        ct = by[(t, "crosstune")]
        base = max((by[(t, a)] for a in ("zero-shot", "linear-probe", "linear-probe-v1") if (t, a) in by), key=lambda r: r["acc_mean"])
        m, se, w, l = _paired(ct, base)
        gains.append(m)
        worst.append((m, t))
        ch = ", ".join(f"{k} {v}" for k, v in ct.get("choices", {}).items())
        mid = f" | {cell(t, 'linear-probe-v1')} | {cell(t, 'crosstune-v1')}" if v1 else ""
        row = (f"| {t} ({ct['classes']}, {ct['n_test']}; {ct['source']}) | {ct['seeds']} | {cell(t, 'zero-shot')} | {cell(t, 'linear-probe')}{mid} | "
               f"**{cell(t, 'crosstune')}** | {ch} | {m:+.1f} ± {se:.1f} ({w}W/{l}L) vs {base['arm']} |")
        if v1:
            m1, se1, w1, l1 = _paired(ct, by[(t, "crosstune-v1")])
            vs_v1.append(m1)
            row += f" {m1:+.1f} ± {se1:.1f} ({w1}W/{l1}L) |"
        lines.append(row)
    avg = statistics.mean(gains)
    lowest = min(worst)
    flat = [f"{t} ({m:+.1f})" for m, t in worst if m < 1.0]
    out = ["### CrossTune on the task suite: 16 shots per class, MiniLM features",
           "",
           "Accuracy (%) on a fixed test split per task, mean ± std over the seeds given per row (seeds 0, 1, ...; each seed "
           "draws its own few-shot set, and every arm of a seed sees the same shots and the same cached features). *Best "
           f"baseline* is whichever of zero-shot and the linear probe{' (either version)' if v1 else ''} has the higher mean on that task (picked on the test "
           "split, which flatters the baselines); paired differences are mean ± standard error over the seeds, with wins and "
           "losses. The default predicts with the blend of the head ensemble and the probe unless the head, the probe or "
           "zero-shot beats the blend's out-of-fold accuracy on the shots by more than 5 points."
           + (" On sentence pairs the probe (alone and in the blend) also reads the cosine of the two segments "
              "(`pair_similarity = 10`, chosen on development splits: see below); *v1* is the first version "
              "without it, measured in the same run on the same shots, and the best baseline is the better of "
              "zero-shot and both probes." if v1 else ""),
           "", *lines, "",
           f"Suite average of CrossTune − best baseline: **{avg:+.1f} points** (target ≥ +2.0); lowest task: {lowest[1]} "
           f"**{lowest[0]:+.1f}** (target ≥ −1.0)."
           + (f" Suite average of CrossTune − CrossTune v1: **{statistics.mean(vs_v1):+.1f} points**." if v1 else ""), "",
           "**Where CrossTune does not help** (less than one point over the better baseline): "
           + (", ".join(flat) if flat else "none") + ".", ""]
    abl = ["head-only", "blend", "no-prior", "prior-only", "probe-ensemble", "no-labels"]
    names = {"head-only": "head ensemble, no selection", "blend": "blend head + probe", "no-prior": "descriptions in attention, no prior",
             "prior-only": "prior, no attention", "probe-ensemble": "probe ensemble, no attention", "no-labels": "head, no descriptions"}
    out += ["Ablations (accuracy %, mean ± std; the first two are read from the default's own fit; an ablation measured on "
            "fewer seeds than the default says so in its cell):", "",
            "| task | " + " | ".join(names[a] for a in abl) + " |", "|" + "---|" * (1 + len(abl))]
    for t in tasks:
        out.append(f"| {t} | " + " | ".join(cell(t, a) for a in abl) + " |")
    avgs = []
    for a in ["zero-shot", "linear-probe", "linear-probe-v1", "crosstune", "crosstune-v1", *abl]:
        if all((t, a) in by and by[(t, a)]["seeds"] == by[(t, "crosstune")]["seeds"] for t in tasks):
            avgs.append(f"{a} {100 * statistics.mean(by[(t, a)]['acc_mean'] for t in tasks):.1f}")
    out += ["", "Suite means: " + ", ".join(avgs) + ".", "",
            f"Command: `{info['command']}` ({info['date']}); {info['machine']}. Features: {info['features']}; "
            f"{info['shots']} shots per class."]
    if results.get("note"):
        out += ["", results["note"]]
    return "\n".join(out)


def task_args(ap: argparse.ArgumentParser, n_test: int, n_test_help: str = "test texts per task") -> None:
    """--tasks, --seeds (1), --seed0, --shots and --n-test, for the scripts measured beside the suite."""
    ap.add_argument("--tasks", default=SUITE_TASKS)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=n_test, help=n_test_help)


def footer(results: dict[str, Any]) -> list[str]:
    """The section's last lines: the command, date and machine, then the note if any."""
    info = results["info"]
    return [f"Command: `{info['command']}` ({info['date']}); {info['machine']}.", *(["", results["note"]] if results.get("note") else [])]


def output_args(ap: argparse.ArgumentParser) -> None:
    """The per-seed log, a note for the section and the render flags (shared with crosstune_bbt.py)."""
    ap.add_argument("--log", default=None, help="append per-seed JSON lines here as they come")
    ap.add_argument("--from-log", default=None, help="summarise a per-seed log instead of measuring")
    ap.add_argument("--note", default="", help="a paragraph rendered under the section")
    ap.add_argument("--render", action="store_true", help="render the section from the results file only")
    ap.add_argument("--write-docs", action="store_true", help="write the rendered section into its docs file")


def run_args(ap: argparse.ArgumentParser) -> None:
    """--threads, --cache, --skip-done and the output flags, for :func:`run` (shared with crosstune_dev.py)."""
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "blackbox" / "bench-crosstune-suite.sqlite"))
    ap.add_argument("--skip-done", action="store_true", help="skip the (task, seed, arm) lines already in --log")
    output_args(ap)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=SUITE_TASKS)
    ap.add_argument("--features", default="minilm", choices=sorted(FEATURES))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--arms", default=",".join(ARM_CONFIG))
    ap.add_argument("--dev", action="store_true", help="measure on a development split of the pool (disjoint from the test split); "
                                                       "writes only --log, never the results file")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=500)
    run_args(ap)
    args = ap.parse_args()
    if args.render:
        publish_results("crosstune_suite", render_section, args.write_docs)
        return
    from text_tasks import TASKS

    m = machine()
    if args.from_log:
        records = [json.loads(line) for line in Path(args.from_log).read_text().splitlines() if line.strip()]
    else:
        records = run(args)
        if args.dev:
            return
    m["loadavg_at_end"] = loadavg()
    info = {"command": command_line().split(" --note ")[0], "date": today(), "machine": machine_line(m), "features": FEATURES[args.features], "shots": args.shots}
    rows = summarise(records, {k: v[1] for k, v in TASKS.items()})
    save_results("crosstune_suite", {"info": info, "note": args.note, "rows": rows}, {"crosstune_suite": "docs/crosstune.md"})
    publish_results("crosstune_suite", render_section, args.write_docs)


if __name__ == "__main__":
    main()
