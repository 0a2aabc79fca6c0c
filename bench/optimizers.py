"""Optimizer defaults on a problem suite nobody tuned them on: excess loss at 2k/10k/20k queries.

Problems: ``blackbox.problems.SUITE`` (12 problems, d = 10..10,000; see docs/optimizers.md),
instance 0 (the suite the defaults were chosen on) or ``--instance 1`` (the held-out family:
new optima, rotations and data, and constants moved by up to a decade). Every problem starts
at x0 = 0 and reports the noise-free excess loss f(x) − f* of the *recommended* point.

Arms, all with their defaults: our ``spsa``, ``spsa-gc``, ``zo-sgd``, ``cma-es``;
nevergrad ``NGOpt`` and ``SPSA`` (asked and told one candidate at a time,
``ng.p.Array(init=zeros(d))``); cmaes ``SepCMA`` with sigma = 0.5 (cmaes has no default
sigma; 0.5 is what our cma-es recipe uses). Protocol: each budget is its own run given that
many queries (budget-aware defaults plan for it), 5 seeds; SepCMA, which does not know its
budget, runs once per seed and its smaller budgets are read where a run of that budget would
stop (identical, checked). nevergrad 1.0.12's NGOpt needs a one-line compatibility shim under
numpy >= 2.4 (``_numpy2_shim``).

Each finished run is appended to a JSON-lines log (``--log``, default under /tmp), so an
interrupted run continues where it stopped and arms can be added later; the summary
(per-seed excess losses and medians) goes to ``bench/results/optimizers.json`` (parts
``suite`` and ``heldout``), from which ``--render`` rebuilds the table, the
performance-profile plot (docs/img/optimizers_profile.png) and the docs section.

    python bench/optimizers.py                          # full grid (hours on 2 shared cores)
    python bench/optimizers.py --arms spsa-gc --budgets 20000
    python bench/optimizers.py --render --write-docs    # table + plot + docs from the JSON
    python bench/optimizers.py --quick                  # smoke run (2 problems, 1 seed, 500 queries)
"""

from __future__ import annotations

import _common  # noqa: F401  (pins BLAS threads before numpy loads)

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, fmt, load_results, machine, machine_line, publish_results, save_results, today
from blackbox.optim import make_optimizer
from blackbox.problems import EXTRA, SUITE, make_problem

OUR_ARMS = ("spsa", "spsa-gc", "zo-sgd", "cma-es")
# The evidence behind the default rule. Runnable: spsa-gc with the two-ends test and without
# adaptation. Kept as records of earlier code (they cannot be re-run from this tree): the code
# before this rule (commit fcb43bd), the guard's run-noise tolerance with the two-ends test
# and with the slope test (commit 9f24b25, before the anchor reset).
VARIANTS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "spsa-gc:before": None,
    "spsa-gc:9f24b25-ends": None,
    "spsa-gc:9f24b25": None,
    "spsa-gc:ends": ("spsa-gc", {"adapt_test": "ends"}),
    "spsa-gc:fixed": ("spsa-gc", {"adapt": False}),
    "spsa-gc:hybrid": ("spsa-gc", {"adapt_test": "hybrid"}),
}
PEER_ARMS = ("ng-NGOpt", "ng-SPSA", "SepCMA")
ARMS = (*OUR_ARMS, *PEER_ARMS)
BUDGETS = (2000, 10_000, 20_000)
SEEDS = 5
SEPCMA_SIGMA = 0.5
RESULTS = REPO / "bench" / "results"
PLOT = REPO / "docs" / "img" / "optimizers_profile.png"
TARGET_ARM, TARGET_BUDGET = "spsa-gc", 20_000
LOGISTIC_BEFORE = 3.31e-05  # default spsa-gc on the built-in logistic, 20k queries, before the adaptive gain
FULL_GRID = "python bench/optimizers.py && python bench/optimizers.py --instance 1"


PART = {0: "suite", 1: "heldout"}


def _part(instance: int) -> str:
    return PART.get(instance, f"instance{instance}")


# --------------------------------------------------------------------------------------
# One run.
# --------------------------------------------------------------------------------------
def _evaluate(prob: Any, X: np.ndarray, seeds: np.ndarray | None) -> np.ndarray:
    if not prob.stochastic or seeds is None:
        return np.asarray(prob.fn(X), dtype=np.float64)
    out = np.empty(X.shape[0])
    for s in np.unique(seeds):
        idx = np.flatnonzero(seeds == s)
        out[idx] = prob.fn(X[idx], seed=int(s))
    return out


def run_one(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one arm on one problem with one budget and seed; return its record (SepCMA: also
    the records of the smaller budgets listed in ``task["also"]``, read off the same run)."""
    arm, name, inst, budget, seed = task["arm"], task["problem"], task["instance"], task["budget"], task["seed"]
    prob = make_problem(name, inst)
    d = prob.d
    t0 = time.perf_counter()
    opt_s = 0.0
    extras: dict[str, Any] = {}
    early: list[dict[str, Any]] = []
    rs = np.random.default_rng([seed, 12345])
    if arm in OUR_ARMS or arm in VARIANTS:
        base, overrides = VARIANTS.get(arm) or (arm, {})
        opt = make_optimizer(base, np.zeros(d), seed=seed, budget=budget, **overrides)
        while opt.can_ask():
            t = time.perf_counter()
            X = opt.ask()
            seeds = opt.candidate_seeds()
            opt_s += time.perf_counter() - t
            L = _evaluate(prob, X, seeds)
            t = time.perf_counter()
            opt.tell(L)
            opt_s += time.perf_counter() - t
        x, queries = opt.recommend(), opt.queries
        hp = opt.resolved_hyperparameters()
        for k in ("a", "c", "step0", "sigma"):
            if k in hp and hp[k] is not None:
                extras[k] = hp[k]
        if "calibrated" in hp:
            extras["backoffs"] = hp["calibrated"]["backoffs"]
        if "gain" in hp and hp["gain"] is not None:
            extras["gain"] = hp["gain"]
    elif arm == "SepCMA":
        import cmaes

        es = cmaes.SepCMA(mean=np.zeros(d), sigma=SEPCMA_SIGMA, seed=seed)
        queries = 0
        # SepCMA does not know its budget: a run given B queries is the first generations of
        # a longer run, so the smaller budgets (task "also") are read off this run where a
        # run of that budget would stop (the mean then), not run again.
        also = sorted(task.get("also", ()))
        early: list[dict[str, Any]] = []
        while queries + es.population_size <= budget:
            while also and queries + es.population_size > also[0]:
                b = also.pop(0)
                early.append({**task, "budget": b, "excess": float(prob.excess(np.asarray(es.mean, dtype=np.float64))[0]),
                              "queries": int(queries), "optimizer_s": opt_s, "wall_s": time.perf_counter() - t0,
                              "extras": {"read_from_budget": budget}})
            t = time.perf_counter()
            X = np.stack([es.ask() for _ in range(es.population_size)])
            opt_s += time.perf_counter() - t
            L = _evaluate(prob, X, np.full(len(X), int(rs.integers(2**31))))
            t = time.perf_counter()
            es.tell(list(zip(X, L.tolist())))
            opt_s += time.perf_counter() - t
            queries += len(X)
        x = np.asarray(es.mean, dtype=np.float64)
        for b in also:  # budgets too large for even one more generation end where this run does
            early.append({**task, "budget": b, "excess": float(prob.excess(x)[0]), "queries": int(queries),
                          "optimizer_s": opt_s, "wall_s": time.perf_counter() - t0, "extras": {"read_from_budget": budget}})
        extras["also"] = [r["budget"] for r in early]
    else:
        import nevergrad as ng

        _numpy2_shim()
        # The metamodel's inner Powell overflows on rosenbrock_10 and warns on every step.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="scipy")
        param = ng.p.Array(init=np.zeros(d))
        param.random_state = np.random.RandomState(seed)
        opt = ng.optimizers.registry[arm[3:]](parametrization=param, budget=budget)
        for i in range(budget):
            t = time.perf_counter()
            try:
                cand = opt.ask()
            except Exception as exc:  # noqa: BLE001 - a peer's own failure is a result, recorded as such
                return [{**task, "excess": None, "error": f"{type(exc).__name__}: {exc} (ask {i + 1} of {budget})",
                         "queries": i, "optimizer_s": opt_s, "wall_s": time.perf_counter() - t0, "extras": {}}]
            v = np.asarray(cand.value, dtype=np.float64)[None, :]
            opt_s += time.perf_counter() - t
            loss = float(_evaluate(prob, v, np.array([int(rs.integers(2**31))]))[0])
            t = time.perf_counter()
            opt.tell(cand, loss)
            opt_s += time.perf_counter() - t
        x, queries = np.asarray(opt.recommend().value, dtype=np.float64), budget
        info = opt._info() if hasattr(opt, "_info") else {}
        extras = {k: str(v) for k, v in info.items()}
    excess = float(prob.excess(x)[0])
    rec = {**task, "excess": excess, "queries": int(queries), "optimizer_s": opt_s,
           "wall_s": time.perf_counter() - t0, "extras": extras}
    rec.pop("also", None)
    for r in early if arm == "SepCMA" else []:
        r.pop("also", None)
    return [rec, *early] if arm == "SepCMA" else [rec]


def _numpy2_shim() -> None:
    """Let nevergrad 1.0.12's metamodel run under numpy >= 2.4.

    NGOpt's metamodel step (``nevergrad.optimization.metamodel``) calls ``float()`` on the
    1-element array that scikit-learn's ``predict`` returns; numpy 2.4 made that a TypeError
    (a deprecation since 1.25), so NGOpt raised on rosenbrock_10 after ~118 asks. The module's
    own ``float`` is shadowed by one that takes the single element, which is what the call
    meant under older numpy; nothing else in nevergrad changes.
    """
    from nevergrad.optimization import metamodel

    def _float(x: Any) -> float:
        a = np.asarray(x)
        return float(a.reshape(-1)[0]) if a.size == 1 else float(x)

    metamodel.float = _float  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------
# Summary, targets, table, profile.
# --------------------------------------------------------------------------------------
def summarise(records: list[dict[str, Any]], instance: int) -> dict[str, Any]:
    """Per (problem, arm, budget): per-seed excess losses and the median."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    seen: set[tuple[Any, ...]] = set()
    for r in sorted(records, key=lambda r: (r["problem"], r["arm"], r["budget"], r["seed"])):
        key = (r["problem"], r["arm"], r["budget"], r["seed"])
        if r.get("excess") is None:
            c = cells.setdefault(r["problem"], {}).setdefault(r["arm"], {}).setdefault(str(r["budget"]), {"seeds": [], "excess": []})
            c.setdefault("errors", []).append({"seed": r["seed"], "error": r.get("error", "")})
            continue
        if key in seen:  # a cell run twice (e.g. by overlapping invocations): the first record counts
            continue
        seen.add(key)
        c = cells.setdefault(r["problem"], {}).setdefault(r["arm"], {}).setdefault(str(r["budget"]), {"seeds": [], "excess": []})
        c["seeds"].append(r["seed"])
        c["excess"].append(r["excess"])
    for arms in cells.values():
        for budgets in arms.values():
            for c in budgets.values():
                c["median"] = float(np.median(c["excess"])) if c["excess"] else None
    problems = {}
    for name in (*SUITE, *EXTRA):
        if name not in cells:
            continue
        p = make_problem(name, instance)
        problems[name] = {"d": p.d, "f0": p.f0(), "f_star": p.f_star, "f_star_how": p.f_star_how,
                          "stresses": p.stresses, "stochastic": p.stochastic}
    return {"instance": instance, "problems": problems, "cells": cells}


def _has(cell: dict[str, Any], arm: str, b: str) -> bool:
    """True when the arm has at least one finished (not failed) run at budget ``b``."""
    return arm in cell and b in cell[arm] and cell[arm][b].get("median") is not None


def floor_of(f0_excess: float) -> float:
    """Excess losses below 1e-9 of the start's excess count as solved (ties in the profile)."""
    return max(1e-9 * f0_excess, 1e-300)


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets for default spsa-gc at 20k queries, against the peers."""
    b = str(TARGET_BUDGET)
    rows, wins, worst = [], 0, 0.0
    for name, arms in summary["cells"].items():
        if name not in SUITE or not _has(arms, TARGET_ARM, b):
            continue
        fl = floor_of(summary["problems"][name]["f0"] - summary["problems"][name]["f_star"])
        ours = max(arms[TARGET_ARM][b]["median"], fl)
        peers = {a: max(arms[a][b]["median"], fl) for a in PEER_ARMS if _has(arms, a, b)}
        if not peers:
            continue
        ng = peers.get("ng-NGOpt")
        best = min(peers.values())
        ok_ng = ng is not None and ours <= ng
        ratio = ours / best
        wins += ok_ng
        worst = max(worst, ratio)
        rows.append({"problem": name, "spsa-gc": ours, "ngopt": ng, "best_peer": best, "ratio_to_best_peer": ratio,
                     "no_worse_than_ngopt": ok_ng, "within_3x": ratio <= 3.0})
    n_ng = sum(r["ngopt"] is not None for r in rows)
    n = len(rows)
    return {"problems": n, "problems_with_ngopt": n_ng, "no_worse_than_ngopt": wins,
            "ngopt_missing": [r["problem"] for r in rows if r["ngopt"] is None],
            "fraction": wins / n_ng if n_ng else float("nan"),
            "worst_ratio_to_best_peer": worst, "rows": rows,
            "holds_80pct": n_ng > 0 and wins >= 0.8 * n_ng, "holds_3x": n > 0 and all(r["within_3x"] for r in rows)}


def profile(summary: dict[str, Any], budget: int, arms: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Dolan–Moré profile over the suite problems where the target arm has a result: for each
    arm, the fraction of those problems on which its excess is within τ of the best arm's. An
    arm without a result on a problem (not run, or failed) never counts as within τ there."""
    b = str(budget)
    ratios: dict[str, list[float]] = {a: [] for a in arms}
    for name, cell in summary["cells"].items():
        if name not in SUITE or not _has(cell, TARGET_ARM, b):
            continue
        fl = floor_of(summary["problems"][name]["f0"] - summary["problems"][name]["f_star"])
        vals = {a: max(cell[a][b]["median"], fl) for a in arms if _has(cell, a, b)}
        best = min(vals.values())
        for a in arms:
            ratios[a].append(vals[a] / best if a in vals else math.inf)
    taus = np.logspace(0, 8, 600)
    n = len(ratios[arms[0]]) if arms else 0
    return taus, {a: np.array([np.mean(np.array(r) <= t) for t in taus]) for a, r in ratios.items()}, n


def plot_profile(summary: dict[str, Any], path: Path, heldout: dict[str, Any] | None = None) -> None:
    """Save the performance profile at each budget with at least two arms as a PNG (and the
    held-out family's at the target budget, when it has two arms there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for summ, budgets in ((summary, BUDGETS), (heldout, (TARGET_BUDGET,))):
        if summ is None:
            continue
        cells = [c for n, c in summ["cells"].items() if n in SUITE]
        for budget in budgets:
            arms_b = [a for a in ARMS if any(_has(c, a, str(budget)) for c in cells)]
            if TARGET_ARM in arms_b and len(arms_b) >= 2:
                panels.append((summ, budget, arms_b))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.2), squeeze=False)
    for ax, (summary, budget, arms_b) in zip(axes[0], panels):
        cells = [c for n, c in summary["cells"].items() if n in SUITE]
        taus, prof, n = profile(summary, budget, arms_b)
        for a in arms_b:
            ran = sum(_has(c, a, str(budget)) for c in cells if _has(c, TARGET_ARM, str(budget)))
            ax.step(taus, prof[a], where="post", label=f"{a} ({ran}/{n} problems)",
                    lw=2.4 if a == TARGET_ARM else 1.3, ls="-" if a in OUR_ARMS else "--", color=f"C{ARMS.index(a)}")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("τ (excess loss / best arm's excess loss)")
        ax.set_ylabel("fraction of problems within τ")
        ax.set_title(f"{budget // 1000}k queries, instance {summary['instance']}, median over seeds", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def _table(summary: dict[str, Any], b: str) -> list[str]:
    """Markdown rows (header included) of the medians at budget ``b``; seeds marked when not 5."""
    lines = ["| problem | d | f(x0) − f* | " + " | ".join(ARMS) + " |", "|---|---:|---:|" + "---:|" * len(ARMS)]
    for name in [n for n in (*SUITE, *EXTRA) if n in summary["cells"]]:
        cell, p = summary["cells"][name], summary["problems"][name]
        vals = {a: cell[a][b]["median"] for a in ARMS if _has(cell, a, b)}
        failed = {a: len(cell[a][b].get("errors", [])) for a in ARMS if a in cell and b in cell[a]}
        if not vals and not any(failed.values()):
            continue
        best = min(vals.values()) if vals else None
        row = []
        for a in ARMS:
            if a not in vals:
                row.append(f"failed ({failed[a]})" if failed.get(a) else "–")
                continue
            s = fmt(vals[a])
            if vals[a] == best:
                s = f"**{s}**"
            if a == TARGET_ARM and "ng-NGOpt" in vals:
                fl = floor_of(p["f0"] - p["f_star"])
                if max(vals[a], fl) > max(vals["ng-NGOpt"], fl):
                    s += " ✗"
            n = len(cell[a][b]["excess"])
            if n != SEEDS:
                s += f" ({n})"
            if failed.get(a):
                s += f", failed {failed[a]}"
            row.append(s)
        lines.append(f"| {name} | {p['d']} | {fmt(p['f0'] - p['f_star'])} | " + " | ".join(row) + " |")
    return lines


def paired_ratio(cell: dict[str, Any], arm: str, base: str, b: str) -> tuple[float, int, int] | None:
    """Median over common seeds of arm/base excess (both floored at 1e-300), seeds where arm is
    worse, and the number of common seeds; None without a common seed."""
    if not (_has(cell, arm, b) and _has(cell, base, b)):
        return None
    x = dict(zip(cell[arm][b]["seeds"], cell[arm][b]["excess"]))
    y = dict(zip(cell[base][b]["seeds"], cell[base][b]["excess"]))
    common = sorted(set(x) & set(y))
    if not common:
        return None
    r = [max(x[s], 1e-300) / max(y[s], 1e-300) for s in common]
    return float(np.median(r)), sum(v > 1.0 for v in r), len(r)


def _variants_table(summary: dict[str, Any], title: str = "The choice of rule") -> list[str]:
    """Markdown lines of the 'choice of rule' table (20k queries), empty when no variant ran."""
    lines: list[str] = []
    var_arms = [v for v in VARIANTS if any(v in c for c in summary["cells"].values())]
    if var_arms:
        b = str(TARGET_BUDGET)
        cols = [a for a in ("spsa-gc", "spsa", "zo-sgd") if any(a in c for c in summary["cells"].values())]
        cols += var_arms
        lines += [f"**{title}** (20k queries, seeds as marked; `spsa-gc` = the default now. Records of earlier "
                  "code: `spsa-gc:before` = commit fcb43bd (guard tolerance from x0's noise only, two-ends test); "
                  "`spsa-gc:9f24b25-ends` = the guard's tolerance from the run's noise, two-ends test; `spsa-gc:9f24b25` = "
                  "that with the slope test (both before the anchor reset). Runnable: `spsa-gc:ends` = `adapt_test=ends`; "
                  "`spsa-gc:fixed` = adaptation off; `spsa-gc:hybrid` = `adapt_test=hybrid`, the two-ends test with the "
                  "slope only for a window that test cannot close)", "", "| problem | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for name in [n for n in SUITE if n in summary["cells"]]:
            cell = summary["cells"][name]
            row = []
            for a in cols:
                if _has(cell, a, b):
                    n = len(cell[a][b]["excess"])
                    row.append(fmt(cell[a][b]["median"]) + ("" if n == SEEDS else f" ({n})"))
                else:
                    row.append("–")
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines += ["", "Paired on common seeds: median per-seed ratio variant / `spsa-gc` (worse on k of n seeds; "
                  "excess losses at machine precision make ratios there noise)", "",
                  "| problem | " + " | ".join(var_arms) + " |", "|---|" + "---:|" * len(var_arms)]
        for name in [n for n in (*SUITE, *EXTRA) if n in summary["cells"]]:
            cell = summary["cells"][name]
            pr = [paired_ratio(cell, a, TARGET_ARM, b) for a in var_arms]
            if not any(pr):
                continue
            lines.append(f"| {name} | " + " | ".join("–" if r is None else f"{r[0]:.3g} ({r[1]}/{r[2]})" for r in pr) + " |")
        lines.append("")
    return lines


def docs_body(summary: dict[str, Any], heldout: dict[str, Any] | None, sweep: dict[str, Any] | None = None) -> str:
    """The markdown section for docs/benchmarks.md."""
    meta = summary["meta"]
    t = targets(summary)
    lines = [
        "## Optimizer defaults on the problem suite (`bench/optimizers.py`)",
        "",
        f"- Commands: {'; '.join(f'`{c}`' for c in meta['commands'])} (the full grid: `{FULL_GRID}`); "
        "rendered by `python bench/optimizers.py --render --write-docs` from `bench/results/optimizers.json`.",
        f"- Date: {meta['date']}; machine: {machine_line(meta['machine'])}.",
        f"- Problems: `blackbox.problems.SUITE`, instance {summary['instance']}; x0 = 0; numbers are medians over seeds "
        "of the noise-free excess loss f(x) − f* of the recommended point when the run has spent its budget "
        "(each budget a separate run). nevergrad " + str(meta.get("nevergrad", "?")) + ", cmaes " + str(meta.get("cmaes", "?")) + "; "
        f"SepCMA sigma = {SEPCMA_SIGMA}.",
        f"- Seeds per cell: {meta['seeds_note']}",
        "",
    ]
    for b in [str(b) for b in BUDGETS]:
        lines += [f"**{int(b) // 1000}k queries** (bold: best arm; ✗ after spsa-gc: worse than NGOpt)", ""]
        lines += _table(summary, b)
        lines.append("")
    lines += _variants_table(summary)
    if sweep is not None:
        lines += _sweep_lines(sweep, summary)
    errs = sorted({(a, e["error"].split(" (ask")[0]) for c in summary["cells"].values() for a, bs in c.items()
                   for bc in bs.values() for e in bc.get("errors", [])})
    if errs:
        lines += ["Failed runs (the peer raised; such a run has no result and is left out of its cell's median): "
                  + "; ".join(f"{a}: `{e}`" for a, e in errs) + ".", ""]
    lines += [
        "![performance profile](img/optimizers_profile.png)",
        "",
        "Targets (default spsa-gc, 20k queries, medians; excess below 1e-9 of the start's counts as solved):",
        "",
        f"- No worse than NGOpt on ≥ 80% of the suite: **{'holds' if t['holds_80pct'] else 'does not hold'}** — "
        f"{t['no_worse_than_ngopt']} of the {t['problems_with_ngopt']} problems where NGOpt has a result "
        f"({100 * t['fraction']:.0f}%)" + (f"; NGOpt has none on {', '.join(t['ngopt_missing'])} (it raised)"
                                          if t["ngopt_missing"] else "") + ".",
        f"- Never more than 3× worse than the best peer: **{'holds' if t['holds_3x'] else 'does not hold'}** — worst ratio "
        f"{t['worst_ratio_to_best_peer']:.3g}" + (" (" + "; ".join(
            f"{r['problem']} {fmt(r['spsa-gc'])} vs {fmt(r['best_peer'])}" for r in t["rows"] if not r["within_3x"]) + ")"
            if not t["holds_3x"] else "") + ".",
    ]
    lg = summary["cells"].get("logistic", {}).get(TARGET_ARM, {}).get(str(TARGET_BUDGET))
    if lg:
        lines.append(
            f"- Built-in `logistic` (d = 1,000, not in the suite): default spsa-gc excess loss at 20k queries "
            f"{fmt(lg['median'])} (median of {len(lg['excess'])} seeds; per seed {', '.join(fmt(v) for v in lg['excess'])}) "
            f"against {fmt(LOGISTIC_BEFORE)} before the adaptive gain (median of 5 seeds, the previous version of this "
            f"section): **{'at least as good' if lg['median'] <= LOGISTIC_BEFORE else 'worse'}**.")
    if heldout is not None:
        th = targets(heldout)
        lines += [
            f"- Held-out family (instance {heldout['instance']}, not used to choose anything; "
            f"{heldout['meta']['seeds_note']}): no worse than NGOpt on {th['no_worse_than_ngopt']} of {th['problems_with_ngopt']} "
            f"({100 * th['fraction']:.0f}%); worst ratio to the best peer {th['worst_ratio_to_best_peer']:.3g}"
            + (" (" + "; ".join(f"{r['problem']} {fmt(r['spsa-gc'])} vs {fmt(r['best_peer'])}"
                                for r in th["rows"] if not r["within_3x"]) + ")" if not th["holds_3x"] else "") + ".",
            "",
            f"**Held-out family, instance {heldout['instance']}, {TARGET_BUDGET // 1000}k queries** "
            f"(`{FULL_GRID.split(' && ')[1]}`; seeds marked when not {SEEDS})",
            "",
            *_table(heldout, str(TARGET_BUDGET)),
            "",
            *_variants_table(heldout, f"Held-out family, instance {heldout['instance']}: rule variants"),
        ]
    lines += ["", "Problems (f* and how it was obtained):", "", "| problem | d | stresses | f* | how |", "|---|---:|---|---:|---|"]
    for name, p in summary["problems"].items():
        cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (pipes inside a table cell)
        lines.append(f"| {name} | {p['d']} | {cell(p['stresses'])} | {p['f_star']:.6g} | {cell(p['f_star_how'])} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------
def load_log(path: Path) -> list[dict[str, Any]]:
    """Records of finished runs (a torn last line is ignored)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def render_section(name: str, results: dict[str, Any]) -> str:
    """The `optimizers` section of docs/benchmarks.md from bench/results/optimizers.json."""
    return docs_body(results["suite"], results.get("heldout"), results.get("gain_sweep"))


def summarise_logs(instances: list[int], commands: list[str] | None = None) -> None:
    """Rebuild bench/results/optimizers.json from the run logs of these instances."""
    import cmaes
    import nevergrad

    try:
        results = load_results("optimizers")
    except SystemExit:
        results = {}
    for inst in instances:
        keep = [r for r in load_log(_log_path(inst)) if r["instance"] == inst]
        if not keep:
            continue
        summary = summarise(keep, inst)
        counts = sorted({len(b["excess"]) for arms_ in summary["cells"].values() for bs in arms_.values() for b in bs.values()})
        info = machine()
        old = results.get(_part(inst), {}).get("meta", {})
        summary["meta"] = {
            "commands": commands if commands is not None else old.get("commands", []),
            "date": today(), "machine": info, "nevergrad": nevergrad.__version__, "cmaes": cmaes.__version__,
            "seeds_note": f"{SEEDS} unless marked (n)" if SEEDS in counts else f"{counts}",
            "run_wall_s": {a: float(sum(r["wall_s"] for r in keep if r["arm"] == a)) for a in ARMS},
        }
        summary["targets"] = targets(summary)
        results[_part(inst)] = summary
    results.pop("script", None)
    results.pop("sections", None)
    save_results("optimizers", results, {"optimizers": "docs/benchmarks.md"}, script="bench/optimizers.py")


def render(write_docs: bool) -> None:
    """Rebuild the plot and the docs section from the committed JSON."""
    results = load_results("optimizers")
    plot_profile(results["suite"], PLOT, results.get("heldout"))
    publish_results("optimizers", render_section, write_docs)


SWEEP_GRID = tuple(float(a) for a in np.logspace(-5, -1, 13))
SWEEP_SEEDS = 3
SWEEP_C = (1e-3, 1e-4, 1e-5)


def gain_sweep(problem: str, instance: int = 0) -> None:
    """A hindsight gain: spsa-gc with adaptation off and ``a`` fixed on a grid (power and
    constant schedules, c = c_min, guard on), ``SWEEP_SEEDS`` seeds, into the results file.

    What no gain rule can beat on this problem (a rule only picks a gain sequence; a fixed gain
    chosen per problem with hindsight is the usual bound), to tell a miss of the rule from a miss
    of the estimator.
    """
    prob = make_problem(problem, instance)
    t0 = time.perf_counter()

    def row(schedule: str, a: float, c: float) -> dict[str, Any]:
        ex = []
        for seed in range(SWEEP_SEEDS):
            opt = make_optimizer("spsa-gc", np.zeros(prob.d), seed=seed, budget=TARGET_BUDGET, adapt=False, a=a, c=c,
                                 schedule=schedule)
            while opt.can_ask():
                X = opt.ask()
                opt.tell(_evaluate(prob, X, opt.candidate_seeds()))
            ex.append(float(prob.excess(opt.recommend())[0]))
        print(f"# {schedule} a={a:.2g} c={c:.2g}: {fmt(float(np.median(ex)))}", file=sys.stderr, flush=True)
        return {"schedule": schedule, "a": a, "c": c, "excess": ex, "median": float(np.median(ex))}

    rows = [row(schedule, a, 0.01) for schedule in ("power", "constant") for a in SWEEP_GRID]
    # The best power-schedule gain again with smaller perturbations: is the finite-difference
    # bias (O(c²)) what stops it?
    best = min((r for r in rows if r["schedule"] == "power"), key=lambda r: r["median"])
    c_rows = [row("power", best["a"], c) for c in SWEEP_C]
    results = load_results("optimizers")
    results.pop("script", None)
    results.pop("sections", None)
    results["gain_sweep"] = {"problem": problem, "instance": instance, "budget": TARGET_BUDGET, "seeds": SWEEP_SEEDS,
                             "c": 0.01, "rows": rows, "c_rows": c_rows, "wall_s": time.perf_counter() - t0,
                             "meta": {"date": today(), "machine": machine(),
                                      "command": f"python bench/optimizers.py --gain-sweep {problem}"}}
    save_results("optimizers", results, {"optimizers": "docs/benchmarks.md"}, script="bench/optimizers.py")


def _sweep_lines(sweep: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The hindsight-gain paragraph: best fixed gain per schedule against the default and the best peer."""
    b = str(sweep["budget"])
    cell = summary["cells"].get(sweep["problem"], {})
    p = summary["problems"][sweep["problem"]]
    fl = floor_of(p["f0"] - p["f_star"])
    peers = [max(cell[a][b]["median"], fl) for a in PEER_ARMS if _has(cell, a, b)]
    best = {}
    for r in sweep["rows"]:
        if r["schedule"] not in best or r["median"] < best[r["schedule"]]["median"]:
            best[r["schedule"]] = r
    ours = cell.get(TARGET_ARM, {}).get(b, {}).get("median")
    parts = [f"{s} schedule: a = {r['a']:.2g} gives {fmt(r['median'])} (per seed {', '.join(fmt(v) for v in r['excess'])})"
             for s, r in best.items()]
    return [
        f"**A gain chosen with hindsight** on `{sweep['problem']}` (`{sweep['meta']['command']}`; {sweep['meta']['date']}, "
        f"{machine_line(sweep['meta']['machine'])}): `spsa-gc` with adaptation off, `c` = {sweep['c']}, the guard on, "
        f"`a` on {len(SWEEP_GRID)} values from {SWEEP_GRID[0]:.0e} to {SWEEP_GRID[-1]:.0e}, {sweep['seeds']} seeds, "
        f"{int(b) // 1000}k queries. Best median per schedule — " + "; ".join(parts) + ". "
        f"The default's adaptive gain: {fmt(ours)}; the best peer: {fmt(min(peers)) if peers else '–'} "
        f"(3× of it: {fmt(3 * min(peers)) if peers else '–'}). Every gain on the grid:",
        "",
        "| a | " + " | ".join(f"{a:.1e}" for a in SWEEP_GRID) + " |",
        "|---|" + "---:|" * len(SWEEP_GRID),
        *[f"| {s} | " + " | ".join(fmt(r["median"]) for r in sweep["rows"] if r["schedule"] == s) + " |" for s in best],
        "",
    ] + ([f"Smaller perturbations at the best power-schedule gain (a = {best['power']['a']:.2g}): "
          + "; ".join(f"c = {r['c']:.0e}: {fmt(r['median'])} (per seed {', '.join(fmt(v) for v in r['excess'])})"
                      for r in sweep["c_rows"]) + ".", ""] if sweep.get("c_rows") else [])


def _log_path(instance: int) -> Path:
    return Path("/tmp") / f"blackbox_optimizers_runs{instance}.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instance", type=int, default=0, help="0: the tuning suite; 1: the held-out family")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    ap.add_argument("--problems", default=",".join(SUITE), help="comma-separated problems")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--log", default=None, help="JSON-lines log of finished runs (default bench/results/optimizers_runs<instance>.jsonl, not committed)")
    ap.add_argument("--fresh", action="store_true", help="re-run the selected cells even if the log has them")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 problems, 1 seed, budget 500; nothing saved")
    ap.add_argument("--render", action="store_true", help="only rebuild table, plot and docs from the JSON")
    ap.add_argument("--summarise", action="store_true", help="only rebuild bench/results/optimizers.json from the run logs")
    ap.add_argument("--commands", default=None, help="with --summarise: ';'-separated commands that filled the logs (recorded)")
    ap.add_argument("--gain-sweep", default=None, metavar="PROBLEM",
                    help="spsa-gc with a fixed gain on a grid on PROBLEM (instance 0), into the results file")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the `optimizers` section of docs/benchmarks.md")
    args = ap.parse_args()
    if args.render:
        render(args.write_docs)
        return
    if args.gain_sweep:
        gain_sweep(args.gain_sweep)
        if args.write_docs:
            render(True)
        return
    if args.summarise:
        summarise_logs([0, 1], args.commands.split(";") if args.commands else None)
        return
    arms = args.arms.split(",")
    problems = args.problems.split(",")
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = args.seeds
    runnable = (*ARMS, *(v for v, spec in VARIANTS.items() if spec is not None))
    for a in arms:
        if a not in runnable:
            raise SystemExit(f"--arms: expected names from {', '.join(runnable)}, received {a!r}")
    for p in problems:
        if p not in SUITE and p not in EXTRA:
            raise SystemExit(f"--problems: expected names from {', '.join((*SUITE, *EXTRA))}, received {p!r}")
    if args.quick:
        problems, budgets, seeds = problems[:2], [500], 1
    log = Path(args.log) if args.log else _log_path(args.instance)
    done = [] if args.quick else load_log(log)
    key = lambda r: (r["arm"], r["problem"], r["instance"], r["budget"], r["seed"])  # noqa: E731
    tasks = [{"arm": a, "problem": p, "instance": args.instance, "budget": b, "seed": s}
             for p in problems for a in arms for b in budgets for s in range(seeds)]
    have = {key(r) for r in done}
    if args.fresh:
        done = [r for r in done if key(r) not in {key(t) for t in tasks}]
        have = {key(r) for r in done}
    todo = [t for t in tasks if key(t) not in have]
    # SepCMA: one run per (problem, seed) at the largest budget it still needs; the smaller
    # budgets it needs are read off that run (see run_one).
    sep: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for t in todo:
        if t["arm"] == "SepCMA":
            sep.setdefault((t["problem"], t["seed"]), []).append(t)
    todo = [t for t in todo if t["arm"] != "SepCMA"]
    for ts in sep.values():
        ts.sort(key=lambda t: t["budget"])
        todo.append({**ts[-1], "also": [t["budget"] for t in ts[:-1]]})
    cost = {"ng-NGOpt": 20, "ng-SPSA": 3, "SepCMA": 2}
    todo.sort(key=lambda t: -t["budget"] * cost.get(t["arm"], 1) * (1 + make_problem(t["problem"], t["instance"]).d / 1000))
    for p in problems:
        make_problem(p, args.instance).f_star  # optima computed once, before forking
    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(max(1, args.workers)) as pool:
        for recs in pool.imap_unordered(run_one, todo):
            for rec in recs:
                done.append(rec)
                if not args.quick:
                    with open(log, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                result = f"excess {rec['excess']:.3g}" if rec["excess"] is not None else f"failed: {rec.get('error')}"
                print(f"# {rec['arm']} {rec['problem']} {rec['budget']} s{rec['seed']}: {result} "
                      f"({rec['wall_s']:.1f} s; elapsed {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    if args.quick:
        for r in done:
            print(json.dumps({k: r[k] for k in ("arm", "problem", "budget", "seed", "excess")}))
        return
    summarise_logs([args.instance], None)
    if args.write_docs:
        render(True)


if __name__ == "__main__":
    main()
