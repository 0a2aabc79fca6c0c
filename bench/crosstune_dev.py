"""CrossTune's class-level defaults judged on development splits, never on the suite's test splits.

Protocol (fixed before any of these runs; issue 18, second pass):

* Tasks: the seven suite tasks of ``bench/text_tasks.py``. For each, the suite's test split
  (``split_test(task, 500, seed 0)``) is removed first; a development split of 500 texts is
  drawn from the rest (``split_test(pool, 500, seed 1)``, as ``crosstune_suite.py --dev``) and
  the shots (16 per class) are drawn from what remains with seeds 100-104, so no dev text is
  a shot and no test text is seen.
* Arms (MiniLM features): the first version's default (``crosstune-v1``: ``select_rule =
  margin``, ``pair_similarity = 0``) and linear probe (``linear-probe-v1``), and the candidate
  class-level changes: **A** ``pair_similarity = 10`` (sentence pairs: the two segments'
  cosine joins the probe's input, weakly penalised), for the probe and for CrossTune's probe;
  **B** ``select_rule = stacked`` (head, probe and zero-shot weighted by out-of-fold log-loss
  on the shots); **C** the head + probe blend always (no fallback; read from the same fits).
* Decision rule: A ships if CrossTune with A (margin rule) has a dev suite mean at least 0.5
  points above ``crosstune-v1`` and no task more than 1.0 point below it. Then, with A's
  decision applied, the selection rule with the highest dev suite mean among B, C and the
  margin rule ships, provided it is at least 0.5 points above the margin rule and no task is
  more than 1.0 point below it; otherwise the margin rule stays. Nothing else is tuned here.

Per-seed lines go to ``--log`` (``--from-log`` summarises one); the summary is written to
``bench/results/crosstune_dev.json`` and renders the ``crosstune_dev`` section of docs/crosstune.md.

    python bench/crosstune_dev.py --log /tmp/ct_dev.log [--write-docs]
    python bench/crosstune_dev.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _common import command_line, loadavg, machine, machine_line, publish_results, save_results, today
from crosstune_suite import SUITE_TASKS, run, run_args, summarise

V1 = {"select_rule": "margin", "pair_similarity": 0.0}
DEV_ARMS = {
    "crosstune-v1": dict(V1),
    "linear-probe-v1": {"method": "linear-probe", **V1},
    "zero-shot": {"method": "zero-shot"},
    "pair-similarity": {**V1, "pair_similarity": 10.0},
    "linear-probe-pair-similarity": {"method": "linear-probe", "pair_similarity": 10.0},
    "stacked": {**V1, "select_rule": "stacked"},
    "stacked-pair-similarity": {"select_rule": "stacked", "pair_similarity": 10.0},
}
LABELS = {
    "crosstune-v1": "CrossTune v1 (margin rule)", "linear-probe-v1": "linear probe v1", "zero-shot": "zero-shot",
    "pair-similarity": "A: + pair cosine", "linear-probe-pair-similarity": "probe + pair cosine",
    "crosstune-v1:blend": "C: always blend", "pair-similarity:blend": "A + C",
    "stacked": "B: stacked", "stacked-pair-similarity": "A + B",
}


def _mean(rows: dict[tuple[str, str], dict[str, Any]], tasks: list[str], arm: str) -> float | None:
    if not all((t, arm) in rows for t in tasks):
        return None
    return statistics.mean(100 * rows[(t, arm)]["acc_mean"] for t in tasks)


def _passes(rows: dict[tuple[str, str], dict[str, Any]], tasks: list[str], arm: str, ref: str) -> tuple[bool, float, float]:
    """(passes the rule, suite-mean gain, worst task difference) of ``arm`` over ``ref``, in points."""
    gain = _mean(rows, tasks, arm) - _mean(rows, tasks, ref)
    worst = min(100 * (rows[(t, arm)]["acc_mean"] - rows[(t, ref)]["acc_mean"]) for t in tasks)
    return gain >= 0.5 and worst >= -1.0, gain, worst


def decide(rows_list: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the docstring's decision rule to the summary rows (pure)."""
    rows = {(r["task"], r["arm"]): r for r in rows_list}
    tasks = list(dict.fromkeys(r["task"] for r in rows_list))
    a_ok, a_gain, a_worst = _passes(rows, tasks, "pair-similarity", "crosstune-v1")
    margin = "pair-similarity" if a_ok else "crosstune-v1"
    rules = {"margin": margin, "always blend": f"{margin}:blend", "stacked": "stacked-pair-similarity" if a_ok else "stacked"}
    verdicts = {}
    for rule, arm in rules.items():
        if rule != "margin":
            ok, gain, worst = _passes(rows, tasks, arm, margin)
            verdicts[rule] = {"arm": arm, "passes": ok, "gain": gain, "worst": worst}
    passing = [r for r, v in verdicts.items() if v["passes"]]
    rule = max(passing, key=lambda r: verdicts[r]["gain"]) if passing else "margin"
    return {"pair_similarity": {"ships": a_ok, "gain": a_gain, "worst": a_worst}, "rules": verdicts, "rule": rule, "arm": rules[rule]}


def render_section(name: str, results: dict[str, Any]) -> str:
    """The docs section, from bench/results/crosstune_dev.json only (pure)."""
    rows_list, info = results["rows"], results["info"]
    rows = {(r["task"], r["arm"]): r for r in rows_list}
    tasks = list(dict.fromkeys(r["task"] for r in rows_list))
    arms = [a for a in LABELS if all((t, a) in rows for t in tasks)]
    out = ["### Development runs: the candidate defaults on dev splits (not the test splits)", "",
           f"Accuracy (%) on a development split of 500 texts per task, disjoint from the suite's test split and from the shots, "
           f"mean over seeds {info['seeds']} (16 shots per class, MiniLM features). The protocol and the decision rule were fixed in "
           "`bench/crosstune_dev.py`'s docstring before these runs.", "",
           "| task | " + " | ".join(LABELS[a] for a in arms) + " |", "|" + "---|" * (1 + len(arms))]
    for t in tasks:
        out.append(f"| {t} | " + " | ".join(f"{100 * rows[(t, a)]['acc_mean']:.1f}" for a in arms) + " |")
    out.append("| **suite mean** | " + " | ".join(f"**{_mean(rows, tasks, a):.1f}**" for a in arms) + " |")
    d = results["decision"]
    ps = d["pair_similarity"]
    out += ["", f"Decision: A (pair cosine) {'ships' if ps['ships'] else 'does not ship'} (suite mean {ps['gain']:+.2f} points over v1, "
            f"worst task {ps['worst']:+.1f}; needs ≥ +0.5 and ≥ −1.0). Selection rules against the margin rule"
            f"{' with A' if ps['ships'] else ''}: "
            + "; ".join(f"{r} {v['gain']:+.2f} (worst task {v['worst']:+.1f}, {'passes' if v['passes'] else 'fails'})" for r, v in d["rules"].items())
            + f". Chosen: **{d['rule']}**.", "",
            f"Command: `{info['command']}` ({info['date']}); {info['machine']}."]
    if results.get("note"):
        out += ["", results["note"]]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=SUITE_TASKS)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed0", type=int, default=100, help="first seed of the shots (the suite reports seeds 0-4)")
    ap.add_argument("--arms", default=",".join(DEV_ARMS))
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=500, help="size of the dev split (and of the test split removed before it)")
    run_args(ap)
    args = ap.parse_args()
    if args.render:
        publish_results("crosstune_dev", render_section, args.write_docs)
        return
    args.dev, args.features = True, "minilm"
    m = machine()
    if args.from_log:
        records = [json.loads(line) for line in Path(args.from_log).read_text().splitlines() if line.strip()]
    else:
        records = run(args, DEV_ARMS)
    m["loadavg_at_end"] = loadavg()
    seeds = sorted({r["seed"] for r in records})
    info = {"command": command_line().split(" --note ")[0], "date": today(), "machine": machine_line(m),
            "seeds": f"{seeds[0]}-{seeds[-1]}" if seeds else ""}
    rows = summarise(records, {})
    save_results("crosstune_dev", {"info": info, "note": args.note, "rows": rows, "decision": decide(rows)}, {"crosstune_dev": "docs/crosstune.md"})
    publish_results("crosstune_dev", render_section, args.write_docs)


if __name__ == "__main__":
    main()
