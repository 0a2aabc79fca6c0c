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

Third pass (stated here before its runs, same tasks, splits, seeds and features; the rows
above are kept and the runs are not repeated: the fits are deterministic, and each new fit's
out-of-fold accuracy of the plain blend is checked against the earlier log's): the test-split
suite showed the head dragging the blend below the probe, so three candidates against the
shipped default (``pair-similarity``: A with the margin rule):
**D** ``select_rule = weighted`` (the head's weight against the probe's, 0 / .25 / .5 / .75 / 1,
chosen per fit by out-of-fold accuracy on the shots, no zero-shot fallback); **E** ``head_cv``
(the head ensemble fitted at three regularisation levels, dropout / weight decay 0.5 / 0.5,
0.25 / 0.05 and 0.75 / 5, the level kept by out-of-fold accuracy on the shots); **D + E**.
Decision: each passes if its dev suite mean is at least 0.5 points above ``pair-similarity``
and no task is more than 1.0 point below it; of those that pass, the one with the highest
suite mean ships (none passing: the default stays).

Fourth pass (stated here before its runs, same tasks, splits, seeds and features; earlier rows
kept, not re-run): a correctness fix of the estimator, not a tuning. Each fold's head was
early-stopped on the fold that then scores it out of fold, so the head's (and the blend's)
out-of-fold accuracy, which the model selection reads, is biased upward. **F** ``inner_epochs``:
fold ``k``'s head trains for an epoch count chosen on inner splits of the other folds only
(one head per pair of folds, early-stopped on each of the pair; fold ``k``'s count is the mean
of the counts found on the other folds), margin rule, pair cosine. Decision: F passes if its
dev suite mean is at least 0.5 points above ``pair-similarity`` (the shipped default) and no
task is more than 1.0 point below it; then it becomes the default. Either way the bias is
reported: for ``pair-similarity`` and F, the mean out-of-fold accuracy on the shots of the
head and of the blend minus their accuracy on the dev split (same fits).

Fourth pass, second candidate (added after F's run, stated here before its own run): F's table
of out-of-fold minus dev accuracy showed the linear probe's out-of-fold accuracy overstated too
(+4.1 points on average): its ``probe_cs`` value is the one with the best out-of-fold accuracy
over all folds, and that maximum is what the selection reads. **G** = F + ``probe_inner``: in the
out-of-fold estimate, fold ``k``'s probe takes the C chosen on the other folds only (nested;
the final probe's C is chosen as before). Same rule against ``pair-similarity``; if F and G
both pass, the one with the higher dev suite mean becomes the default. The bias table gains G.

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

# the arms before the fourth pass pin inner_epochs = probe_inner = False: they were measured before those existed
V1 = {"select_rule": "margin", "pair_similarity": 0.0, "inner_epochs": False, "probe_inner": False}
OLD = {"inner_epochs": False, "probe_inner": False}
DEV_ARMS = {
    "crosstune-v1": dict(V1),
    "linear-probe-v1": {"method": "linear-probe", **V1},
    "zero-shot": {"method": "zero-shot"},
    "pair-similarity": {**V1, "pair_similarity": 10.0},
    "linear-probe-pair-similarity": {"method": "linear-probe", "pair_similarity": 10.0},
    "stacked": {**V1, "select_rule": "stacked"},
    "stacked-pair-similarity": {"select_rule": "stacked", "pair_similarity": 10.0, **OLD},
    # third pass (D, E, D + E; all with A)
    "weighted": {"select_rule": "weighted", "pair_similarity": 10.0, **OLD},
    "head-cv": {"select_rule": "margin", "pair_similarity": 10.0, "head_cv": True, **OLD},
    "weighted-head-cv": {"select_rule": "weighted", "pair_similarity": 10.0, "head_cv": True, **OLD},
    # fourth pass (F: the out-of-fold fix, with A and the margin rule)
    "inner-epochs": {"select_rule": "margin", "pair_similarity": 10.0, "inner_epochs": True, "probe_inner": False},
    "inner-epochs-probe": {"select_rule": "margin", "pair_similarity": 10.0, "inner_epochs": True, "probe_inner": True},
}
THIRD = ("weighted", "head-cv", "weighted-head-cv")
FOURTH = ("inner-epochs", "inner-epochs-probe")
LABELS = {
    "crosstune-v1": "CrossTune v1 (margin rule)", "linear-probe-v1": "linear probe v1", "zero-shot": "zero-shot",
    "pair-similarity": "A: + pair cosine", "linear-probe-pair-similarity": "probe + pair cosine",
    "crosstune-v1:blend": "C: always blend", "pair-similarity:blend": "A + C",
    "stacked": "B: stacked", "stacked-pair-similarity": "A + B",
    "weighted": "D: weighted blend", "head-cv": "E: head CV", "weighted-head-cv": "D + E",
    "inner-epochs": "F: inner epochs", "inner-epochs:blend": "F, blend",
    "inner-epochs-probe": "G: F + nested probe C", "inner-epochs-probe:blend": "G, blend",
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
    out = {"pair_similarity": {"ships": a_ok, "gain": a_gain, "worst": a_worst}, "rules": verdicts, "rule": rule, "arm": rules[rule]}
    if all(_mean(rows, tasks, a) is not None for a in THIRD):
        # third pass: each candidate against the shipped default (A with the margin rule)
        out["third"] = _against_default(rows, tasks, THIRD)
    fourth = tuple(a for a in FOURTH if _mean(rows, tasks, a) is not None)
    if fourth:  # fourth pass (F, then G): the same, for the candidates measured
        out["fourth"] = _against_default(rows, tasks, fourth)
    return out


def _against_default(rows: dict[tuple[str, str], dict[str, Any]], tasks: list[str], arms: tuple[str, ...]) -> dict[str, Any]:
    """Each of ``arms`` against the shipped default (``pair-similarity``); the passing one
    with the highest suite-mean gain ships (None: none passes)."""
    cands = {}
    for arm in arms:
        ok, gain, worst = _passes(rows, tasks, arm, "pair-similarity")
        cands[arm] = {"passes": ok, "gain": gain, "worst": worst}
    passing = [a for a, v in cands.items() if v["passes"]]
    return {"candidates": cands, "ships": max(passing, key=lambda a: cands[a]["gain"]) if passing else None}


def oof_bias(records: list[dict[str, Any]], arms: tuple[str, ...] = ("pair-similarity", *FOURTH)) -> dict[str, Any] | None:
    """Per arm and task: mean out-of-fold accuracy on the shots minus mean dev accuracy, for the
    head ensemble and the blend (same fits; points). Positive: the shots overstate it."""
    out: dict[str, Any] = {}
    for arm in arms:
        recs = [r for r in records if r["arm"] == arm and r.get("oof_acc") and r.get("candidate_acc")]
        if not recs:
            continue
        per: dict[str, Any] = {}
        for t in dict.fromkeys(r["task"] for r in recs):
            rs = [r for r in recs if r["task"] == t]
            per[t] = {c: 100 * statistics.mean(r["oof_acc"][c] - r["candidate_acc"][c] for r in rs)
                      for c in ("crosstune", "blend", "linear-probe")}
        out[arm] = {"tasks": per, "mean": {c: statistics.mean(v[c] for v in per.values()) for c in ("crosstune", "blend", "linear-probe")},
                    "choices": {t: dict(sorted({c: sum(r["task"] == t and r.get("choice") == c for r in recs)
                                                 for c in {r.get("choice") for r in recs}}.items())) for t in per}}
    return out or None


def reuse_check(records: list[dict[str, Any]]) -> dict[str, int] | None:
    """How many third-pass ``weighted`` fits (the shipped default's head and probe, another
    rule) reproduce the earlier ``pair-similarity`` fit's out-of-fold accuracies exactly: the
    evidence that the earlier runs' rows stand without repeating them."""
    old = {(r["task"], r["seed"]): r for r in records if r["arm"] == "pair-similarity"}
    new = [r for r in records if r["arm"] == "weighted" and (r["task"], r["seed"]) in old]
    if not new:
        return None
    same = sum(all(r["oof_acc"][k] == old[(r["task"], r["seed"])]["oof_acc"][k] for k in ("crosstune", "blend", "linear-probe"))
               for r in new)
    return {"fits": len(new), "identical": same}


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
            + f". Chosen: **{d['rule']}**."]
    if d.get("third"):
        th = d["third"]
        out += ["", "Third pass, against the shipped default (A with the margin rule): "
                + "; ".join(f"{LABELS[a]} {v['gain']:+.2f} (worst task {v['worst']:+.1f}, {'passes' if v['passes'] else 'fails'})"
                            for a, v in th["candidates"].items())
                + f". {'Ships: **' + LABELS[th['ships']] + '**' if th['ships'] else 'None ships; the default stays'}."]
        rc = results.get("reuse_check")
        if rc:
            out[-1] += (f" The earlier columns were not re-run: {rc['identical']} of {rc['fits']} third-pass fits of D reproduce the earlier "
                        "A fit's out-of-fold accuracies (head, probe, blend) exactly.")
    if d.get("fourth"):
        fo = d["fourth"]
        out += ["", "Fourth pass (the out-of-fold fix), against the shipped default: "
                + "; ".join(f"{LABELS[a]} {v['gain']:+.2f} (worst task {v['worst']:+.1f}, {'passes' if v['passes'] else 'fails'})"
                            for a, v in fo["candidates"].items())
                + ". " + (f"**{LABELS[fo['ships']].split(':')[0]} becomes the default.**" if fo["ships"]
                          else "The default stays; the fix is kept as options.")]
    bias = results.get("oof_bias")
    if bias:
        out += ["", "Out-of-fold accuracy on the shots minus accuracy on the dev split (points, mean over the seeds; same fits): "
                "positive means the shots overstate the candidate the selection reads.", "",
                "| task | " + " | ".join(f"{LABELS[a]}: {c}" for a in bias for c in ("head", "blend", "probe")) + " |",
                "|" + "---|" * (1 + 3 * len(bias))]
        for t in tasks:
            if all(t in bias[a]["tasks"] for a in bias):
                out.append(f"| {t} | " + " | ".join(f"{bias[a]['tasks'][t][c]:+.1f}" for a in bias for c in ("crosstune", "blend", "linear-probe")) + " |")
        out.append("| **mean** | " + " | ".join(f"**{bias[a]['mean'][c]:+.1f}**" for a in bias for c in ("crosstune", "blend", "linear-probe")) + " |")
    out += ["",
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
        if args.skip_done and args.log:
            # the arms measured earlier into the same log count too (the summary is of the whole log)
            records = [json.loads(line) for line in Path(args.log).read_text().splitlines() if line.strip()]
    m["loadavg_at_end"] = loadavg()
    seeds = sorted({r["seed"] for r in records})
    info = {"command": command_line().split(" --note ")[0], "date": today(), "machine": machine_line(m),
            "seeds": f"{seeds[0]}-{seeds[-1]}" if seeds else ""}
    rows = summarise(records, {})
    save_results("crosstune_dev", {"info": info, "note": args.note, "rows": rows, "decision": decide(rows), "reuse_check": reuse_check(records),
                                  "oof_bias": oof_bias(records)},
                 {"crosstune_dev": "docs/crosstune.md"})
    publish_results("crosstune_dev", render_section, args.write_docs)


if __name__ == "__main__":
    main()
