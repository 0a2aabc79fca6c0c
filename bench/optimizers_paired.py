"""Paired comparison of two optimizers at one budget over many seeds (default recipes).

`bench/optimizers.py` reports medians of 5 seeds; where two arms land within the seed
spread, this settles the order with more seeds and a paired test: both arms run on the same
seeds, and the per-seed differences give a mean, its standard error and a win count.

    python bench/optimizers_paired.py --problem rosenbrock --dim 100 --budget 2000 --seeds 20 spsa-gc spsa
"""

from __future__ import annotations

import _common  # noqa: F401  (pins BLAS threads before numpy)

import argparse
import statistics

import numpy as np
from _common import command_line, emit, machine, today

from blackbox import testing
from blackbox.optim import make_optimizer


def final_loss(name: str, f, dim: int, budget: int, seed: int) -> float:
    """Loss of the recommended point after ``budget`` queries from x0 = 0."""
    opt = make_optimizer(name, np.zeros(dim), seed=seed, budget=budget)
    while opt.can_ask():
        X = opt.ask()
        opt.tell(np.array([f(x) for x in X]))
    return float(f(opt.recommend()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", help="optimizer whose loss is the minuend (e.g. spsa-gc)")
    ap.add_argument("second", help="optimizer it is compared with (e.g. spsa)")
    ap.add_argument("--problem", default="rosenbrock", choices=("rosenbrock", "sphere"))
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    f = getattr(testing, args.problem)
    a = [final_loss(args.first, f, args.dim, args.budget, s) for s in range(args.seeds)]
    b = [final_loss(args.second, f, args.dim, args.budget, s) for s in range(args.seeds)]
    diffs = [x - y for x, y in zip(a, b)]
    emit({
        "command": command_line(), "date": today(), "machine": machine(), "problem": args.problem, "dim": args.dim,
        "budget": args.budget, "seeds": args.seeds, "first": args.first, "second": args.second,
        "median_first": statistics.median(a), "median_second": statistics.median(b),
        "median_first_seeds0_4": statistics.median(a[:5]), "median_second_seeds0_4": statistics.median(b[:5]),
        "paired_mean": statistics.mean(diffs), "paired_se": statistics.stdev(diffs) / len(diffs) ** 0.5,
        "first_lower_in": sum(d < 0 for d in diffs),
    })


if __name__ == "__main__":
    main()
