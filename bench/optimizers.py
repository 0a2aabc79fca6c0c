"""Query efficiency: loss reached after 2k / 10k / (20k) / 50k objective evaluations.

Problems (both from ``blackbox.testing``, started at x0 = 0):

* ``logistic``, d = 1000 — reported as excess loss f − f*, where f* comes from L-BFGS
  (scipy) with the analytic gradient, computed once;
* ``rosenbrock``, d = 100 — reported as the loss itself (minimum 0).

Arms: our ``spsa``, ``spsa-gc``, ``zo-sgd``, ``cma-es`` and nevergrad's ``SPSA`` and
``NGOpt`` (nevergrad asked and told one candidate at a time, parametrization
``ng.p.Array(init=zeros(d))``). Every arm runs with its defaults and, for ours, "tuned": the
best point of a small grid (FD optimizers: ``step0`` ∈ {0.003, 0.03, 0.3}; cma-es:
``sigma`` ∈ {0.1, 0.5, 2}) chosen by the median over seeds at the selection checkpoint
(20k queries on logistic, 10k on rosenbrock). Nevergrad arms run with defaults only.

Protocol ``--protocol budget`` (default): every checkpoint is its own run, given that many
queries as its budget, because both our defaults (Spall's stability constant o = 10% of
the steps the budget allows) and nevergrad's (NGOpt picks its algorithm from the budget)
plan for the budget they are given; the number is the loss of the *recommended* point when
the run ends (our optimizers: ``f(opt.recommend())``, evaluated outside the budget;
nevergrad: ``opt.recommend()``). Grid points run at the selection budget only; the
selected one then runs at the other budgets too. ``--protocol anytime``: one run with a
50k budget, read when its query count first reaches each checkpoint; a grid point that is
not selected stops at the selection checkpoint.

To make the full run affordable on 2 cores, the independent runs of one arm (all seeds and
grid points) advance in lockstep and the objective is called once per round on all their
candidates stacked: ``f`` is row-wise, so every run sees exactly its own losses and query
count (values can differ from one-run-at-a-time evaluation only in the last bits of BLAS
rounding). Arms run in parallel on ``--workers`` processes, BLAS pinned to one thread each.

    python bench/optimizers.py                 # full run (about 20 minutes on 2 cores)
    python bench/optimizers.py --quick         # smoke test (budget 1000, 2 seeds)
    python bench/optimizers.py --write-docs    # also rewrite the `optimizers` section of docs/benchmarks.md

Prints one JSON object per result row on stdout, then a summary line.
"""

from __future__ import annotations

import _common  # noqa: F401  (pins BLAS threads before numpy loads)

import argparse
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from _common import command_line, emit, fmt, loadavg, machine, machine_line, today, write_section
from blackbox.optim import make_optimizer
from blackbox.testing import logistic, logistic_data, rosenbrock

BUDGET = 50_000
PROBLEMS: dict[str, dict[str, Any]] = {
    "logistic": {"d": 1000, "checkpoints": (2000, 10_000, 20_000, 50_000), "select_at": 20_000},
    "rosenbrock": {"d": 100, "checkpoints": (2000, 10_000, 50_000), "select_at": 10_000},
}
QUICK_BUDGET = 400
QUICK_CHECKPOINTS = (100, 200, 400)
QUICK_SELECT = 200
OBJECTIVES = {"logistic": logistic, "rosenbrock": rosenbrock}

FD_ARMS = ("spsa", "spsa-gc", "spsa-gc/segmented", "zo-sgd")
# Variants of a recipe run as arms of their own, defaults only (no grid): BlackVIP's
# segmented perturbation, which the spsa-gc recipe no longer uses by default.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"spsa-gc/segmented": ("spsa-gc", {"perturbation": "segmented"})}
GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    **{a: ("step0", (0.003, 0.03, 0.3)) for a in FD_ARMS if a not in VARIANTS},
    **{a: ("step0", ()) for a in VARIANTS},
    "cma-es": ("sigma", (0.1, 0.5, 2.0)),
}
OUR_ARMS = (*FD_ARMS, "cma-es")
NG_ARMS = {"ng-SPSA": "SPSA", "ng-NGOpt": "NGOpt"}
SEEDS = 5
# Measured before the full run (see docs): NGOpt / SPSA in nevergrad cost ~1-3 ms of
# optimizer time per query in these dimensions, i.e. minutes per 50k-query run, so the
# nevergrad arms get fewer seeds than ours (--ng-seeds).
NG_SEEDS = 3


# --------------------------------------------------------------------------------------
# One run: our optimizer or a nevergrad one behind the same small interface.
# --------------------------------------------------------------------------------------
class OursRun:
    def __init__(self, arm: str, d: int, seed: int, budget: int, overrides: dict[str, float]) -> None:
        arm, fixed = VARIANTS.get(arm, (arm, {}))
        self.opt = make_optimizer(arm, np.zeros(d), seed=seed, budget=budget, **{**fixed, **overrides})

    @property
    def queries(self) -> int:
        return self.opt.queries

    def can_ask(self) -> bool:
        return self.opt.can_ask()

    def ask(self) -> np.ndarray:
        return self.opt.ask()

    def tell(self, losses: np.ndarray) -> None:
        self.opt.tell(losses)

    def recommend(self) -> np.ndarray:
        return self.opt.recommend()

    def extras(self) -> dict[str, Any]:
        hp = self.opt.resolved_hyperparameters()
        out = {k: hp[k] for k in ("a", "c", "step0", "sigma", "popsize", "variant") if k in hp}
        if "calibrated" in hp:
            out["backoffs"] = hp["calibrated"]["backoffs"]
        return out


class NevergradRun:
    def __init__(self, name: str, d: int, seed: int, budget: int) -> None:
        import nevergrad as ng

        param = ng.p.Array(init=np.zeros(d))
        param.random_state = np.random.RandomState(seed)
        self.opt = ng.optimizers.registry[name](parametrization=param, budget=budget)
        self.budget = budget
        self.queries = 0
        self._cand = None

    def can_ask(self) -> bool:
        return self.queries < self.budget

    def ask(self) -> np.ndarray:
        self._cand = self.opt.ask()
        return np.asarray(self._cand.value, dtype=np.float64)[None, :]

    def tell(self, losses: np.ndarray) -> None:
        self.opt.tell(self._cand, float(losses[0]))
        self._cand = None
        self.queries += 1

    def recommend(self) -> np.ndarray:
        return np.asarray(self.opt.recommend().value, dtype=np.float64)

    def extras(self) -> dict[str, Any]:
        info = self.opt._info() if hasattr(self.opt, "_info") else {}
        return {k: str(v) for k, v in info.items()}


@dataclass
class Run:
    setting: str  # "default" or e.g. "step0=0.03"
    seed: int
    impl: Any
    checkpoints: tuple[int, ...]
    stop_at: int
    records: dict[int, dict[str, float]] = field(default_factory=dict)
    time_s: float = 0.0
    budget: int = 0

    def active(self) -> bool:
        return self.impl.queries < self.stop_at and self.impl.can_ask()

    def due(self) -> list[int]:
        """Checkpoints reached for the first time (or left unreachable by the budget)."""
        q = self.impl.queries
        exhausted = not self.impl.can_ask()
        return [c for c in self.checkpoints if c not in self.records and (q >= c or exhausted)]


def drive(runs: list[Run], f: Any) -> None:
    """Advance all runs in lockstep until none is active; record checkpoints on the way."""
    while True:
        act = [r for r in runs if r.active()]
        if not act:
            return
        Xs = []
        for r in act:
            t = time.perf_counter()
            Xs.append(r.impl.ask())
            r.time_s += time.perf_counter() - t
        losses = f(np.concatenate(Xs, axis=0))
        off = 0
        due: list[tuple[Run, list[int]]] = []
        for r, X in zip(act, Xs):
            t = time.perf_counter()
            r.impl.tell(losses[off:off + X.shape[0]])
            r.time_s += time.perf_counter() - t
            off += X.shape[0]
            cps = r.due()
            if cps:
                due.append((r, cps))
        if due:
            # Recommended points, evaluated outside every budget, in one batch.
            P = np.stack([r.impl.recommend() for r, _ in due])
            vals = f(P)
            for (r, cps), v in zip(due, vals):
                for c in cps:
                    r.records[c] = {"queries": int(r.impl.queries), "loss": float(v)}


# --------------------------------------------------------------------------------------
# One arm on one problem (all seeds, all grid points): the unit of work of a worker.
# --------------------------------------------------------------------------------------
def run_group(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Run several arms of one problem in one lockstep (bigger objective batches)."""
    t0, c0 = time.perf_counter(), time.process_time()
    problem, arms = task["problem"], task["arms"]
    budget, cps, select_at = task["budget"], tuple(task["checkpoints"]), task["select_at"]
    per_budget = task.get("protocol", "budget") == "budget"
    d = PROBLEMS[problem]["d"]
    f = OBJECTIVES[problem]
    if problem == "logistic":
        logistic_data(d)  # build the cached data set once, before anything is timed

    def new_runs(arm: str, setting: str, overrides: dict[str, float], stop: int,
                 budgets: list[int] | None = None) -> list[Run]:
        # Per-budget protocol: one run per checkpoint, given that checkpoint as its budget
        # (budget-aware defaults such as o = 10% of the steps see the real budget); anytime
        # protocol: one run with the full budget, read at every checkpoint.
        budgets = budgets if budgets is not None else (list(cps) if per_budget else [budget])
        out = []
        for b in budgets:
            rc = (b,) if per_budget else cps
            for s in task["seeds"][arm]:
                impl = NevergradRun(NG_ARMS[arm], d, s, b) if arm in NG_ARMS else OursRun(arm, d, s, b, overrides)
                out.append(Run(setting, s, impl, rc, min(stop, b), budget=b))
        return out

    ng_arms = [a for a in arms if a in NG_ARMS]
    our_arms = [a for a in arms if a not in NG_ARMS]
    grids: dict[str, dict[str, list[Run]]] = {a: {"default": new_runs(a, "default", {}, budget)} for a in ng_arms}
    aliases: dict[str, dict[str, str]] = {a: {} for a in arms}
    # Our defaults first calibrate (a few rounds); a grid point equal to what the default
    # resolved to (e.g. step0 = 30·c = 0.3) is the same run and is not run twice.
    defaults = {a: new_runs(a, "default", {}, select_at) for a in our_arms}
    calib = [r for rs in defaults.values() for r in rs]
    while any(getattr(r.impl.opt, "phase", "run") != "run" for r in calib):
        drive([_limit(r, r.impl.queries + 1) for r in calib], f)
    overrides_of: dict[str, dict[str, float]] = {"default": {}}
    for a in our_arms:
        for r in defaults[a]:
            r.stop_at = min(select_at, r.budget)
        key, values = GRIDS[a]
        resolved = {_resolved(r.impl, key) for r in defaults[a]}
        grids[a] = {"default": defaults[a]}
        for v in values:
            name = f"{key}={v:g}"
            overrides_of[name] = {key: v}
            if len(resolved) == 1 and next(iter(resolved)) == v:
                aliases[a][name] = "default"
            else:
                grids[a][name] = new_runs(a, name, {key: v}, select_at, [select_at] if per_budget else None)
    # Phase 1: every run up to the selection checkpoint (nevergrad runs straight to the end).
    drive([r for a in arms for rs in grids[a].values() for r in rs], f)
    # Selection by the median at the selection checkpoint; then default + selected go on.
    selected: dict[str, str | None] = {a: None for a in ng_arms}
    for a in our_arms:
        g = grids[a]
        med = {n: float(np.median([r.records[select_at]["loss"] for r in rs if select_at in r.records]))
               for n, rs in g.items()}
        candidates = [n for n in g if n != "default" or aliases[a]]
        if not candidates:  # a defaults-only variant
            selected[a] = None
            for r in g["default"]:
                r.stop_at = r.budget
            continue
        selected[a] = min(candidates, key=lambda n: med[n])
        if per_budget and selected[a] != "default":  # the selected point's other budgets
            g[selected[a]] += new_runs(a, selected[a], overrides_of[selected[a]], budget,
                                       [b for b in cps if b != select_at])
        for n in {"default", selected[a]}:
            for r in g[n]:
                r.stop_at = r.budget
    drive([r for a in our_arms for n in {"default", selected[a] or "default"} for r in grids[a][n]], f)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return [
        {
            "problem": problem,
            "arm": a,
            "group": list(arms),
            "selected": selected[a],
            "aliases": aliases[a],
            "wall_s": wall,
            "cpu_s": cpu,
            "runs": [
                {
                    "setting": r.setting,
                    "seed": r.seed,
                    "records": r.records,
                    "optimizer_s": r.time_s,
                    "final_queries": int(r.impl.queries),
                    "extras": r.impl.extras(),
                }
                for rs in grids[a].values()
                for r in rs
            ],
        }
        for a in arms
    ]


def _limit(r: Run, stop: int) -> Run:
    r.stop_at = stop
    return r


def _resolved(impl: OursRun, key: str) -> float | None:
    hp = impl.opt.resolved_hyperparameters()
    return hp.get(key)


# --------------------------------------------------------------------------------------
# The optimum of the logistic problem.
# --------------------------------------------------------------------------------------
def logistic_optimum(d: int) -> dict[str, float]:
    from scipy.optimize import minimize

    from blackbox.testing import LOGISTIC_L2

    A, y = logistic_data(d)
    n = A.shape[0]

    def fg(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = A @ w
        loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * LOGISTIC_L2 * (w @ w)
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid, overflow-free
        return float(loss), A.T @ (p - y) / n + LOGISTIC_L2 * w

    t = time.perf_counter()
    res = minimize(fg, np.zeros(d), jac=True, method="L-BFGS-B",
                   options={"maxiter": 20_000, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-10})
    fstar = float(logistic(res.x))  # the benchmark's own objective at the optimum
    return {
        "f_star": fstar,
        "grad_norm": float(np.linalg.norm(fg(res.x)[1])),
        "iterations": int(res.nit),
        "message": str(res.message),
        "time_s": time.perf_counter() - t,
    }


# --------------------------------------------------------------------------------------
# Aggregation, targets, docs.
# --------------------------------------------------------------------------------------
def aggregate(results: list[dict[str, Any]], fstar: float | None, cps_by_problem: dict[str, tuple[int, ...]],
              select_by_problem: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for res in results:
        problem, arm = res["problem"], res["arm"]
        cps = cps_by_problem[problem]
        by_setting: dict[str, list[dict[str, Any]]] = {}
        for r in res["runs"]:
            by_setting.setdefault(r["setting"], []).append(r)

        def row(kind: str, setting: str, variant: str) -> dict[str, Any]:
            rs = sorted(by_setting[setting], key=lambda r: r["seed"])
            out: dict[str, Any] = {
                "kind": kind,
                "problem": problem,
                "arm": arm,
                "variant": variant,
                "setting": setting,
                "seeds": sorted({r["seed"] for r in rs}),
            }
            med, per_seed, queries = {}, {}, {}
            n_seeds = len({r["seed"] for r in rs})
            for c in cps:
                vals = [r["records"][c]["loss"] for r in rs if c in r["records"]]
                if len(vals) < n_seeds:
                    continue
                vals_rep = [v - fstar for v in vals] if (problem == "logistic" and fstar is not None) else vals
                med[str(c)] = float(np.median(vals_rep))
                per_seed[str(c)] = vals_rep
                queries[str(c)] = sorted({r["records"][c]["queries"] for r in rs if c in r["records"]})
            out["metric"] = "excess_loss" if problem == "logistic" and fstar is not None else "loss"
            out["median"] = med
            out["per_seed"] = per_seed
            out["queries_at_checkpoint"] = queries
            out["optimizer_s_per_run"] = float(np.median([r["optimizer_s"] for r in rs]))
            ex = [r["extras"] for r in rs]
            if ex and "backoffs" in ex[0]:
                out["backoffs"] = [e["backoffs"] for e in ex]
                out["step0"] = sorted({e["step0"] for e in ex})
                out["c"] = sorted({e["c"] for e in ex})
            elif ex and "popsize" in ex[0]:
                out["popsize"] = ex[0]["popsize"]
                out["cma_variant"] = ex[0]["variant"]
            elif ex and ex[0]:
                out["ng_info"] = ex[0]
            return out

        if res["selected"] is None:
            rows.append(row("result", "default", "default"))
            continue
        rows.append(row("result", "default", "default"))
        tuned = row("result", res["selected"], "tuned")
        tuned["selected_by"] = f"median at {select_by_problem[problem]} queries"
        if res["selected"] == "default":
            alias = next((k for k, v in res["aliases"].items() if v == "default"), None)
            tuned["setting"] = f"default (= {alias})" if alias else "default"
        rows.append(tuned)
        for setting in by_setting:
            g = row("grid", setting, "grid")
            if setting == "default":
                alias = next((k for k, v in res["aliases"].items() if v == "default"), None)
                g["setting"] = f"{alias} (= default)" if alias else "default"
            g["selected"] = setting == res["selected"]
            rows.append(g)
    return rows


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    res = {(r["problem"], r["arm"], r["variant"]): r for r in rows if r["kind"] == "result"}
    comps = []
    for problem in PROBLEMS:
        a, b = res.get((problem, "spsa-gc", "default")), res.get((problem, "spsa", "default"))
        if not a or not b:
            continue
        for c, va in a["median"].items():
            vb = b["median"].get(c)
            if vb is not None:
                comps.append({"problem": problem, "queries": int(c), "spsa-gc": va, "spsa": vb, "ok": va <= vb,
                              "per_seed": {"spsa-gc": a["per_seed"][c], "spsa": b["per_seed"][c]}})
    ta = {"description": "default spsa-gc no worse than default spsa (median) at every checkpoint",
          "comparisons": comps, "holds": bool(comps) and all(c["ok"] for c in comps)}
    tb: dict[str, Any] = {"description": "logistic, 20k queries: default spsa-gc excess loss below nevergrad NGOpt's and SPSA's (medians)"}
    g = res.get(("logistic", "spsa-gc", "default"))
    at = "20000"
    if g and at in g["median"]:
        vals = {"spsa-gc": g["median"][at]}
        for ng_arm in NG_ARMS:
            r = res.get(("logistic", ng_arm, "default"))
            if r and at in r["median"]:
                vals[ng_arm] = r["median"][at]
        tb["values"] = vals
        others = [v for k, v in vals.items() if k != "spsa-gc"]
        tb["holds"] = len(others) == len(NG_ARMS) and all(vals["spsa-gc"] < v for v in others)
    else:
        tb["holds"] = None
        tb["note"] = "no 20000-query checkpoint in this mode"
    return {"a": ta, "b": tb}


def _table(rows: list[dict[str, Any]], problem: str, cps: tuple[int, ...], x0: float) -> list[str]:
    metric = next((r["metric"] for r in rows if r["problem"] == problem), "loss")
    head = "excess loss f − f*" if metric == "excess_loss" else "loss"
    cols = " | ".join(f"{c // 1000}k" if c >= 1000 else str(c) for c in cps)
    out = [
        f"| arm | variant | setting | seeds | {cols} |",
        "|---|---|---|---:|" + "---:|" * len(cps),
    ]
    order = {a: i for i, a in enumerate((*OUR_ARMS, *NG_ARMS))}
    for r in sorted((r for r in rows if r["kind"] == "result" and r["problem"] == problem),
                    key=lambda r: (order[r["arm"]], r["variant"] != "default")):
        vals = " | ".join(fmt(r["median"].get(str(c))) for c in cps)
        out.append(f"| {r['arm']} | {r['variant']} | {r['setting']} | {len(r['seeds'])} | {vals} |")
    return [f"**{problem}** (d = {PROBLEMS[problem]['d']}): median {head} of the recommended point over seeds "
            f"(at x0 = 0: {fmt(x0)})", "", *out]


def _grid_table(rows: list[dict[str, Any]], select_by_problem: dict[str, int]) -> list[str]:
    out = ["| problem | arm | grid point | median at selection checkpoint | selected |", "|---|---|---|---:|:---:|"]
    for r in rows:
        if r["kind"] != "grid":
            continue
        sel = str(select_by_problem[r["problem"]])
        out.append(f"| {r['problem']} | {r['arm']} | {r['setting']} | {fmt(r['median'].get(sel))} | {'✓' if r['selected'] else ''} |")
    return out


def _ng_note(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    if summary["ng_seeds"] >= summary["seeds"]:
        return ""
    cost = ", ".join(
        f"{r['arm'][3:]} {1e3 * r['optimizer_s_per_run'] / summary['budget']:.1f} ms on {r['problem']}"
        for r in rows if r["kind"] == "result" and r["arm"] in NG_ARMS
    )
    return (
        f" Fewer nevergrad seeds because nevergrad's own time per ask/tell pair (measured in this run: {cost}; "
        f"median over seeds) makes {summary['seeds']} seeds of {summary['budget']}-query runs, one candidate at a time, "
        "the longest part of the benchmark."
    )


def _flat_note(rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """Arms whose recommended point ends (almost) where it started."""
    notes = []
    for r in rows:
        if r["kind"] != "result" or r["variant"] != "default" or not r["median"]:
            continue
        x0 = summary["x0_loss"][r["problem"]]
        if r["metric"] == "excess_loss":
            x0 -= summary["logistic_optimum"]["f_star"]
        last = r["median"][max(r["median"], key=int)]
        if abs(last - x0) <= 0.01 * abs(x0):
            notes.append(f"{r['arm']} on {r['problem']} ({fmt(last)} vs {fmt(x0)} at x0)")
    if not notes:
        return []
    why = (" (nevergrad's SPSA uses fixed gains a = 1e-5, c = 0.1 and recommends the running average of "
           "its iterates, so with its defaults it barely moves at these scales.)") if any("ng-SPSA" in n for n in notes) else ""
    return ["- Still within 1% of the loss at x0 after the full budget: " + "; ".join(notes) + "." + why]


def docs_body(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    quick = summary["quick"]
    cpsp = summary["checkpoints"]
    fs = summary.get("logistic_optimum") or {}
    t = summary["targets"]
    lines = [
        "## Query efficiency (`bench/optimizers.py`)",
        "",
        f"- Command: `{summary['command']}`" + (" — **smoke run (`--quick`), not representative**" if quick else ""),
        f"- Date: {summary['date']}; wall time {summary['wall_s'] / 60:.1f} min with {summary['workers']} worker process(es); "
        f"CPU time of all processes {summary['cpu_s'] / 60:.1f} min",
        f"- Machine: {machine_line(summary['machine'])}",
        (f"- Protocol `budget`: each checkpoint is a separate run given that many queries as its budget "
         f"(budget-aware defaults plan for it), x0 = 0; seeds {summary['seeds']} for our optimizers, "
         if summary.get("protocol", "anytime") == "budget" else
         f"- Protocol `anytime`: budget {summary['budget']} queries per run, read at each checkpoint, x0 = 0; "
         f"seeds {summary['seeds']} for our optimizers, ") +
        f"{summary['ng_seeds']} for the nevergrad arms (nevergrad {summary.get('nevergrad', '?')})." + _ng_note(rows, summary),
        f"- Logistic optimum f* = {fs.get('f_star', float('nan')):.12f} (scipy L-BFGS-B with the analytic gradient, "
        f"{fs.get('iterations', '?')} iterations, final ‖∇f‖ = {fs.get('grad_norm', float('nan')):.1e}).",
        ("- Numbers are the loss of the *recommended* point (our optimizers: the current iterate / CMA mean; "
         "nevergrad: `recommend()`) when the run has spent its budget (cma-es stops at the last whole generation "
         "that fits). Calibration queries of our FD optimizers count against the budget."
         if summary.get("protocol", "anytime") == "budget" else
         "- Numbers are the loss of the *recommended* point (our optimizers: the current iterate / CMA mean; "
         "nevergrad: `recommend()`), recorded when a run's query count first reaches the checkpoint; "
         "cma-es records at the first generation boundary at or past it (e.g. 2016 for 2000 with popsize 24). "
         "Calibration queries of our FD optimizers count against the budget."),
        "- \"tuned\" = best grid point by the median at 20k queries (logistic) / 10k (rosenbrock); grids: "
        "FD step0 ∈ {0.003, 0.03, 0.3}, cma-es sigma ∈ {0.1, 0.5, 2}. nevergrad SPSA and NGOpt: defaults only (no tuned rows). "
        "With a deterministic objective, c calibrates to c_min = 0.01 and the default step0 = 30·c = 0.3, i.e. "
        "the default *is* the grid point step0 = 0.3 (as sigma = 0.5 is cma-es's default); such grid points reuse the default runs. "
        + ("Grid points run at the selection budget only; the selected one also at the other budgets."
         if summary.get("protocol", "anytime") == "budget" else
         "Grid points that are not selected stop at the selection checkpoint."),
        "- `spsa-gc/segmented` is the spsa-gc recipe with BlackVIP's segmented ±U[0.5, 1] directions "
        "(the recipe's default before 2026-11-28, and what `blackbox blackvip` uses); defaults only.",
        "- The runs of one arm advance in lockstep and the objective is called once per round on all their candidates "
        "stacked (it is row-wise, so each run's losses and query counts are unchanged).",
        *_flat_note(rows, summary),
        "",
    ]
    for problem in PROBLEMS:
        if problem not in cpsp:
            continue
        x0 = summary["x0_loss"][problem] - (fs.get("f_star", 0.0) if problem == "logistic" else 0.0)
        lines += _table(rows, problem, tuple(cpsp[problem]), x0) + [""]
    lines += ["Grid (tuning) results:", "", *_grid_table(rows, summary["select_at"]), ""]
    a, b = t["a"], t["b"]
    def _pair(c: dict[str, Any]) -> str:
        # Enough digits that a miss never prints as two equal numbers.
        digits = 3
        while digits < 8 and fmt(c["spsa-gc"], digits) == fmt(c["spsa"], digits):
            digits += 1
        return f"{fmt(c['spsa-gc'], digits)} vs {fmt(c['spsa'], digits)}"

    comp = "; ".join(
        f"{c['problem']} {c['queries'] // 1000 if c['queries'] >= 1000 else c['queries']}{'k' if c['queries'] >= 1000 else ''}: "
        f"{_pair(c)}{'' if c['ok'] else ' ✗'}"
        for c in a["comparisons"]
    )
    misses = [c for c in a["comparisons"] if not c["ok"] and "per_seed" in c]
    if misses:
        comp += ". Per-seed range at each miss: " + "; ".join(
            f"{c['problem']} {c['queries']}: spsa-gc {fmt(min(c['per_seed']['spsa-gc']), 5)}–{fmt(max(c['per_seed']['spsa-gc']), 5)}, "
            f"spsa {fmt(min(c['per_seed']['spsa']), 5)}–{fmt(max(c['per_seed']['spsa']), 5)}"
            for c in misses
        )
    lines += [
        "Targets:",
        "",
        f"- (a) default spsa-gc no worse than default spsa at equal queries (medians, spsa-gc vs spsa): "
        f"**{'holds' if a['holds'] else 'does not hold'}** — {comp}.",
    ]
    if b.get("holds") is None:
        lines.append(f"- (b) logistic at 20k: not measured in this run ({b.get('note', '')}).")
    else:
        vals = ", ".join(f"{k} {fmt(v)}" for k, v in b["values"].items())
        lines.append(
            f"- (b) logistic at 20k queries, default spsa-gc excess loss below nevergrad NGOpt's and SPSA's: "
            f"**{'holds' if b['holds'] else 'does not hold'}** — {vals}."
        )
    lines += ["", "Wall / CPU time per work unit (all seeds and grid points of its arms, one worker process): " + ", ".join(
        f"{p}/{a_} {s:.0f} / {summary['group_cpu_s'][(p, a_)]:.0f} s" for (p, a_), s in summary["group_wall_s"].items()) + "."]
    return "\n".join(lines)


def load_output(path: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and summary from a run's stdout (JSON lines), as ``docs_body`` takes them."""
    import json

    rows, summary = [], None
    with open(path) as fh:
        for line in fh:
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            if obj.get("kind") == "summary":
                summary = obj
            elif obj.get("kind") in ("result", "grid"):
                rows.append(obj)
    if summary is None:
        raise SystemExit(f"--render: expected a summary line in {path}, found none")
    for k in ("group_wall_s", "group_cpu_s"):  # "problem/arms" keys back to tuples
        summary[k] = {tuple(key.split("/", 1)): v for key, v in summary[k].items()}
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"smoke mode: budget {QUICK_BUDGET}, 2 seeds, 1 nevergrad seed")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the `optimizers` section of docs/benchmarks.md")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--seeds", type=int, default=None, help=f"seeds for our optimizers (default {SEEDS})")
    ap.add_argument("--ng-seeds", type=int, default=None, help=f"seeds for the nevergrad arms (default {NG_SEEDS})")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the budget and every checkpoint by this (for timing probes; not for reporting)")
    ap.add_argument("--protocol", choices=("budget", "anytime"), default="budget",
                    help="budget: one run per checkpoint with that budget (default); anytime: one 50k run read at each checkpoint")
    ap.add_argument("--render", metavar="JSONL", default=None,
                    help="only rebuild the docs section from a previous run's stdout (with --write-docs)")
    ap.add_argument("--arms", default=None, help="comma-separated subset of arms (for debugging)")
    ap.add_argument("--problems", default=None, help="comma-separated subset of problems (for debugging)")
    args = ap.parse_args()
    if args.render:
        rows, summary = load_output(args.render)
        summary["targets"] = targets(rows)
        body = docs_body(rows, summary)
        if args.write_docs:
            write_section("optimizers", body)
        else:
            print(body)
        return

    info = machine()
    t_start = time.perf_counter()
    quick = args.quick
    budget = QUICK_BUDGET if quick else BUDGET
    scale = 1.0 if quick else args.scale
    budget = int(round(budget * scale))
    seeds = args.seeds or (2 if quick else SEEDS)
    ng_seeds = args.ng_seeds or (1 if quick else NG_SEEDS)
    problems = args.problems.split(",") if args.problems else list(PROBLEMS)
    arms = args.arms.split(",") if args.arms else [*OUR_ARMS, *NG_ARMS]
    cps = {p: (QUICK_CHECKPOINTS if quick else tuple(int(round(c * scale)) for c in PROBLEMS[p]["checkpoints"]))
           for p in problems}
    select_at = {p: (QUICK_SELECT if quick else int(round(PROBLEMS[p]["select_at"] * scale))) for p in problems}

    # Work units: the FD arms of a problem share one lockstep (larger objective batches),
    # so do the nevergrad arms; cma-es is a unit of its own. Longest first.
    groups = [[a for a in FD_ARMS if a in arms], [a for a in ("cma-es",) if a in arms], [a for a in NG_ARMS if a in arms]]
    groups = [g for g in groups if g]
    tasks = []
    for p in problems:
        for g in groups:
            tasks.append({"problem": p, "arms": g, "budget": budget, "checkpoints": cps[p], "select_at": select_at[p],
                          "protocol": args.protocol,
                          "seeds": {a: list(range(ng_seeds if a in NG_ARMS else seeds)) for a in g}})
    cost = {"ng-NGOpt": 4, "ng-SPSA": 3, "cma-es": 2}
    tasks.sort(key=lambda t: -sum(cost.get(a, 3) for a in t["arms"]) * (2 if t["problem"] == "logistic" else 1))

    results: list[dict[str, Any]] = []
    optimum = None
    ctx = mp.get_context("fork")
    pool = ctx.Pool(max(1, args.workers))
    try:
        pending = pool.imap_unordered(run_group, tasks)
        if "logistic" in problems:
            optimum = logistic_optimum(PROBLEMS["logistic"]["d"])  # in the parent, while workers run
        for group in pending:
            results.extend(group)
            res = group[0]
            print(f"# done {res['problem']}/{'+'.join(res['group'])} in {res['wall_s']:.0f} s "
                  f"(cpu {res['cpu_s']:.0f} s; elapsed {time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    info["loadavg_at_end"] = loadavg()
    fstar = optimum["f_star"] if optimum else None
    rows = aggregate(results, fstar, cps, select_at)
    for r in rows:
        emit(r)
    try:
        import nevergrad

        ng_version = nevergrad.__version__
    except Exception:  # pragma: no cover
        ng_version = None
    summary = {
        "kind": "summary",
        "benchmark": "optimizers",
        "command": command_line(),
        "date": today(),
        "quick": quick,
        "wall_s": time.perf_counter() - t_start,
        "cpu_s": time.process_time() + sum({(r["problem"], tuple(r["group"])): r["cpu_s"] for r in results}.values()),
        "workers": args.workers,
        "machine": info,
        "budget": budget,
        "protocol": args.protocol,
        "seeds": seeds,
        "ng_seeds": ng_seeds,
        "x0_loss": {p: float(OBJECTIVES[p](np.zeros(PROBLEMS[p]["d"]))) for p in problems},
        "nevergrad": ng_version,
        "checkpoints": cps,
        "select_at": select_at,
        "logistic_optimum": optimum,
        "targets": targets(rows),
        "group_wall_s": {(r["problem"], "+".join(r["group"])): r["wall_s"] for r in results},
        "group_cpu_s": {(r["problem"], "+".join(r["group"])): r["cpu_s"] for r in results},
    }
    out = dict(summary)
    for k in ("group_wall_s", "group_cpu_s"):
        out[k] = {f"{p}/{a}": s for (p, a), s in summary[k].items()}
    emit(out)
    if args.write_docs:
        write_section("optimizers", docs_body(rows, summary))


if __name__ == "__main__":
    main()
