"""Paired comparison of two optimizers at one budget over many seeds (default recipes).

`bench/optimizers.py` reports medians of a few seeds; where two arms land within the seed
spread, this settles the order with more seeds and a paired test: both arms run on the same
seeds, and the per-seed differences give a mean, its standard error and a win count. Writes
``bench/results/optimizers_paired.json`` and renders the `optimizers_paired` section of
docs/benchmarks.md from it (``--render`` re-renders without measuring).

    python bench/optimizers_paired.py --problem rosenbrock --dim 100 --budget 2000 --seeds 20 spsa-gc spsa --write-docs
    python bench/optimizers_paired.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (pins BLAS threads before numpy)

import argparse
import statistics
from typing import Any, Callable

import numpy as np
from _common import fmt, machine, machine_line, publish_results, save_results, stamp

from blackbox import testing
from blackbox.optim import make_optimizer
from blackbox.problems import SUITE, make_problem

STEM = "optimizers_paired"


def final_loss(name: str, f: Callable[..., Any], dim: int, budget: int, seed: int) -> float:
    """Loss of the recommended point after ``budget`` queries from x0 = 0 (noise-free for suite problems)."""
    opt = make_optimizer(name, np.zeros(dim), seed=seed, budget=budget)
    while opt.can_ask():
        opt.tell(np.asarray(f(opt.ask()), dtype=np.float64))
    return float(f(opt.recommend()[None, :])[0])


def render_section(name: str, results: dict[str, Any]) -> str:
    """The `optimizers_paired` section from the saved results."""
    r = results["result"]
    first, second = r["first"], r["second"]
    lines = [
        "## Optimizers: a near-tie settled with more seeds (`bench/optimizers_paired.py`)",
        "",
        f"- Command: `{results['command']}`; {results['date']}; {machine_line(results['machine'])}.",
        f"- Both default recipes on the same {r['seeds']} seeds (x0 = 0, budget {r['budget']} queries), "
        f"problem `{r['problem']}` (d = {r['dim']}); loss of the recommended point.",
        "",
        f"| | {first} | {second} |",
        "|---|---:|---:|",
        f"| median of seeds 0-4 | {fmt(r['median_first_seeds0_4'], 5)} | {fmt(r['median_second_seeds0_4'], 5)} |",
        f"| median of all seeds | {fmt(r['median_first'], 5)} | {fmt(r['median_second'], 5)} |",
        "",
        f"Paired difference {first} − {second}: mean {fmt(r['paired_mean'], 3)} ± {fmt(r['paired_se'], 2)} (SE); "
        f"{first} lower on {r['first_lower_in']} of {r['seeds']} seeds.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", nargs="?", help="optimizer whose loss is the minuend (e.g. spsa-gc)")
    ap.add_argument("second", nargs="?", help="optimizer it is compared with (e.g. spsa)")
    ap.add_argument("--problem", default="rosenbrock", choices=("rosenbrock", "sphere", *SUITE))
    ap.add_argument("--dim", type=int, default=100, help="dimension (suite problems: their own d)")
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--render", action="store_true", help="only re-render the section from the saved JSON")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = ap.parse_args()
    if not args.render:
        if not args.first or not args.second:
            raise SystemExit("first, second: expected two optimizer names (e.g. spsa-gc spsa), received fewer")
        if args.problem in SUITE:
            prob = make_problem(args.problem)
            f, dim = prob.clean, prob.d
        else:
            f, dim = getattr(testing, args.problem), args.dim
        a = [final_loss(args.first, f, dim, args.budget, s) for s in range(args.seeds)]
        b = [final_loss(args.second, f, dim, args.budget, s) for s in range(args.seeds)]
        diffs = [x - y for x, y in zip(a, b)]
        result = {
            "problem": args.problem, "dim": dim, "budget": args.budget, "seeds": args.seeds,
            "first": args.first, "second": args.second, "first_losses": a, "second_losses": b,
            "median_first": statistics.median(a), "median_second": statistics.median(b),
            "median_first_seeds0_4": statistics.median(a[:5]), "median_second_seeds0_4": statistics.median(b[:5]),
            "paired_mean": statistics.mean(diffs), "paired_se": statistics.stdev(diffs) / len(diffs) ** 0.5,
            "first_lower_in": sum(d < 0 for d in diffs),
        }
        save_results(STEM, {**stamp(machine()), "result": result}, {STEM: "docs/benchmarks.md"})
    publish_results(STEM, render_section, args.write_docs)


if __name__ == "__main__":
    main()
