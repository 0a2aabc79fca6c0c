"""Generated label descriptions (``--describe-labels-with``) on the task suite, paired.

For every task and seed of bench/crosstune_suite.py (same test split, same shots, same cached
MiniLM features), the default CrossTune and zero-shot are fitted three ways: with the
template description of every label (what a user without descriptions gets), with the
descriptions SmolLM2-135M-Instruct writes and the shots choose (``describe.generate_candidates``
then ``describe.choose_descriptions``, as ``fit --describe-labels-with`` does, every label
treated as undescribed), and with the suite's hand-written descriptions. Per-seed lines go to
``--log`` as they come; the summary goes to ``bench/results/crosstune_describe.json`` and
renders the ``crosstune_describe`` section of docs/crosstune.md.

    python bench/crosstune_describe.py [--tasks a,b] [--seeds 1] [--write-docs]
    python bench/crosstune_describe.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _common import command_line, loadavg, machine, machine_line, publish_results, save_results, today
from crosstune_suite import footer, keep, output_args, task_args

ARMS = ("template", "generated", "hand")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(args.threads)
    from text_tasks import load_task

    from blackbox.client import Client, DiskCache, Ledger
    from blackbox.methods.crosstune.config import CrossTuneConfig
    from blackbox.methods.crosstune.data import k_shot, split_test
    from blackbox.methods.crosstune.describe import choose_descriptions, generate_candidates
    from blackbox.methods.crosstune.estimator import CrossTuneClassifier
    from blackbox.methods.crosstune.features import Featurizer
    from blackbox.provider import load_provider

    featurizer = Featurizer(Client(load_provider("sentence-encoder:minilm"), cache=DiskCache(args.cache), ledger=Ledger()))
    writer = Client(load_provider(args.writer), cache=DiskCache(args.writer_cache), ledger=Ledger())
    done = set()
    if args.log and Path(args.log).exists():
        done = {(r["task"], r["seed"]) for r in map(json.loads, Path(args.log).read_text().splitlines()) if r}
    log = Path(args.log).open("a") if args.log else None
    out: list[dict[str, Any]] = []
    for task in args.tasks.split(","):
        ds = load_task(task)
        pool, test = split_test(ds, args.n_test, 0)
        for seed in range(args.seed0, args.seed0 + args.seeds):
            if (task, seed) in done:
                continue
            s = k_shot(pool, args.shots, seed)
            q0 = writer.ledger.queries
            gen = generate_candidates(writer, s.classes, s.texts, s.labels, n=args.n, seed=seed)
            rec: dict[str, Any] = {"task": task, "seed": seed, "classes": len(s.classes), "n_test": len(test),
                                   "writer_queries": writer.ledger.queries - q0,
                                   "candidates_per_label": statistics.mean(len(v) for v in gen["candidates"].values())}
            for method in ("crosstune", "zero-shot"):
                cfg = CrossTuneConfig(seed=seed, method=method)
                accs = {}
                accs["template"] = CrossTuneClassifier(featurizer, cfg, {}).fit(s.texts, s.labels).score(test.texts, test.labels)
                clf, rep = choose_descriptions(featurizer, cfg, s.texts, s.labels, {}, gen["candidates"])
                accs["generated"] = clf.score(test.texts, test.labels)
                accs["hand"] = CrossTuneClassifier(featurizer, cfg, s.descriptions).fit(s.texts, s.labels).score(test.texts, test.labels)
                rec[method] = accs
                rec[f"{method}_used"] = rep["used"]
                rec[f"{method}_picked"] = len(rep.get("picked", {}))
            rec["example"] = {c: gen["candidates"][c][:1] for c in s.classes[:2]}
            keep(rec, out, log)
    return out


def render_section(name: str, results: dict[str, Any]) -> str:
    """The docs section, from bench/results/crosstune_describe.json only (pure)."""
    rows, info = results["rows"], results["info"]
    m = statistics.mean
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["task"], []).append(r)
    head = ("| task (classes) | seeds | zero-shot: template | generated | hand-written | CrossTune: template | **generated** | "
            "hand-written | generated used (CrossTune / zero-shot, of seeds) | writer queries |")
    lines = [head, "|" + "---|" * 10]
    for task, recs in by.items():
        cell = [f"{100 * m(r[meth][arm] for r in recs):.1f}" for meth in ("zero-shot", "crosstune") for arm in ARMS]
        cell[4] = f"**{cell[4]}**"
        used = f"{sum(r['crosstune_used'] for r in recs)} / {sum(r['zero-shot_used'] for r in recs)}"
        lines.append(f"| {task} ({recs[0]['classes']}) | {len(recs)} | " + " | ".join(cell) + f" | {used} | {m(r['writer_queries'] for r in recs):.0f} |")

    def diff(meth: str, a: str, b: str) -> str:
        d = [100 * (r[meth][a] - r[meth][b]) for r in rows]
        return f"{m(d):+.1f} ({sum(x > 0 for x in d)}W/{sum(x < 0 for x in d)}L)"

    return "\n".join([
        "### Generated label descriptions on the suite (SmolLM2-135M-Instruct writes, the shots choose)",
        "",
        f"Accuracy (%) on each task's fixed test split ({rows[0]['n_test']} texts), {info['shots']} shots per class, MiniLM "
        f"features, seeds as given. *Template*: every label described as `{info['template']}`; *generated*: "
        f"{info['n']} candidates per label written by {info['writer']} and chosen on the shots as `--describe-labels-with` does "
        "(every label treated as undescribed, so the template is the fallback); *hand-written*: the suite's descriptions.",
        "", *lines, "",
        f"Paired over task-seeds: CrossTune generated − template {diff('crosstune', 'generated', 'template')}, generated − "
        f"hand-written {diff('crosstune', 'generated', 'hand')}; zero-shot generated − template "
        f"{diff('zero-shot', 'generated', 'template')}, generated − hand-written {diff('zero-shot', 'generated', 'hand')}.",
        "",
        *footer(results),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    task_args(ap, 500)
    ap.add_argument("--n", type=int, default=3, help="candidate descriptions per label")
    ap.add_argument("--writer", default="hf-causal:smollm2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "blackbox" / "bench-crosstune-suite.sqlite"))
    ap.add_argument("--writer-cache", default=str(Path.home() / ".cache" / "blackbox" / "bench-crosstune-describe.sqlite"))
    output_args(ap)
    args = ap.parse_args()
    if args.render:
        publish_results("crosstune_describe", render_section, args.write_docs)
        return
    from blackbox.methods.crosstune.config import CrossTuneConfig

    m = machine()
    rows = [json.loads(x) for x in Path(args.from_log).read_text().splitlines() if x.strip()] if args.from_log else run(args)
    m["loadavg_at_end"] = loadavg()
    info = {"command": command_line().split(" --note ")[0], "date": today(), "machine": machine_line(m), "shots": args.shots,
            "n": args.n, "writer": args.writer, "template": CrossTuneConfig().description_template}
    save_results("crosstune_describe", {"info": info, "note": args.note, "rows": rows}, {"crosstune_describe": "docs/crosstune.md"})
    publish_results("crosstune_describe", render_section, args.write_docs)


if __name__ == "__main__":
    main()
