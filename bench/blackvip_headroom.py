"""How far a learned head on the black box's outputs can go with no prompt at all.

BlackVIP's default reads the black box through a learned head, so the head on the
*un-prompted* outputs is the baseline every prompt is measured against. This script asks
how much room above that baseline the black box leaves at 16 shots, with two cheap levers
that need no training:

* the black box's input size (``efficientnet-lite0?size=S``): more pixels per digit, more
  cost per query;
* several fixed views of each image queried separately (identity, inverted, a 4-pixel
  border crop resized back, a red tint), their outputs concatenated for the head: more
  queries per image.

Same splits as ``bench/blackvip.py`` (``few_shot_split(mnist, 16, 1000, seed)``), same
head (``Head(C=0.1)``, the default's ``head_C``), black box queried through its
probabilities only. Raw results (one accuracy per seed, size and view set) go to
``bench/results/blackvip_headroom.json``; the docs section is rendered from that file
(``--render`` re-renders without measuring).

    python bench/blackvip_headroom.py --seeds 0 1 2 --write-docs
    python bench/blackvip_headroom.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (pins BLAS threads before numpy)

import argparse
import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
from _common import emit, loadavg, machine, machine_line, publish_results, save_results, stamp

from blackbox.methods.blackvip.config import BlackVIPConfig
from blackbox.methods.blackvip.data import few_shot_split, load_dataset
from blackbox.methods.blackvip.method import BlackBoxImages
from blackbox.methods.blackvip.outputs import Head
from blackbox.provider import load_provider

SIZES = (96, 128, 160, 224)
STEM = "blackvip_headroom"
VIEW_SETS = (("identity",), ("invert",), ("crop",), ("red",), ("identity", "crop"),
             ("identity", "invert", "crop"), ("identity", "invert", "crop", "red"))


def _crop(x: np.ndarray) -> np.ndarray:
    """Drop a 4-pixel border and resize back (bilinear): the digit fills more of the frame."""
    import torch

    t = torch.as_tensor(x).permute(0, 3, 1, 2)[:, :, 4:-4, 4:-4]
    t = torch.nn.functional.interpolate(t, size=x.shape[1:3], mode="bilinear", align_corners=False)
    return t.permute(0, 2, 3, 1).contiguous().numpy()


VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "invert": lambda x: 1.0 - x,
    "crop": _crop,
    "red": lambda x: x * np.array([1.0, 0.2, 0.2], dtype=x.dtype),
}


def head_accuracy(probs: list[np.ndarray], n_train: int, y_train: np.ndarray, y_test: np.ndarray, C: float) -> float:
    """Test accuracy of one head on the concatenated probabilities of several views."""
    F = np.concatenate(probs, axis=1)
    head = Head(C).fit(F[:n_train], y_train, 10)
    return float(np.mean(head.log_probs(F[n_train:]).argmax(axis=1) == y_test))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--render", action="store_true", help="only render the section from bench/results/blackvip_headroom.json")
    args = ap.parse_args()
    if args.render:
        publish_results(STEM, render_section, args.write_docs)
        return

    t_start = time.perf_counter()
    info = machine()
    data = load_dataset("mnist")
    C = BlackVIPConfig().head_C
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        tr, te = few_shot_split(data, 16, args.n_test, seed)
        x = data.images[np.concatenate([tr, te])]
        y_train, y_test = data.labels[tr], data.labels[te]
        for size in args.sizes:
            bb = BlackBoxImages(load_provider(f"efficientnet-lite0?size={size}"))
            views = ("identity",) if size != 96 else tuple(VIEWS)
            probs = {}
            for v in views:
                s0 = bb.seconds
                probs[v] = bb.probs(VIEWS[v](x))
                ms = 1e3 * (bb.seconds - s0) / len(x)
                if v == "identity":
                    row = {"kind": "size", "seed": seed, "size": size, "ms_per_image": ms,
                           "accuracy": head_accuracy([probs[v]], len(tr), y_train, y_test, C)}
                    emit(row)
                    rows.append(row)
            if size == 96:
                for vs in VIEW_SETS:
                    row = {"kind": "views", "seed": seed, "views": list(vs), "queries_per_image": len(vs),
                           "accuracy": head_accuracy([probs[v] for v in vs], len(tr), y_train, y_test, C)}
                    emit(row)
                    rows.append(row)
    info["loadavg_at_end"] = loadavg()
    summary = {"kind": "summary", "benchmark": STEM, "wall_s": time.perf_counter() - t_start}
    emit(summary)
    save_results(STEM, {**stamp(info), **summary, "settings": {"seeds": args.seeds, "sizes": args.sizes, "n_test": args.n_test}, "rows": rows},
                 {STEM: "docs/benchmarks.md"})
    publish_results(STEM, render_section, args.write_docs)


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section, from bench/results/blackvip_headroom.json only."""
    return docs_body(r["rows"], r, SimpleNamespace(**r["settings"]))


def docs_body(rows: list[dict[str, Any]], summary: dict[str, Any], args: Any) -> str:
    seeds = args.seeds
    lines = [
        "## BlackVIP: how far a head on the un-prompted outputs goes (`bench/blackvip_headroom.py`)",
        "",
        f"- Command: `{summary['command']}`; raw results in `bench/results/blackvip_headroom.json`",
        f"- Date: {summary['date']}; wall time {summary['wall_s']:.0f} s",
        f"- Machine: {machine_line(summary['machine'])}",
        f"- Same splits as the BlackVIP table (16 shots per class, {args.n_test:,} test images, seeds {', '.join(map(str, seeds))}); "
        "the default's head (logistic regression, C = 0.1) on the black box's probabilities, **no prompt**.",
        "",
        "Black-box input size (one query per image). Test accuracy in %, per seed and median; ms per image through the black box:",
        "",
        "| input size | " + " | ".join(f"seed {s}" for s in seeds) + " | median | ms / image |",
        "|---|" + "---|" * (len(seeds) + 2),
    ]
    base = {}
    for size in args.sizes:
        r = [x for x in rows if x["kind"] == "size" and x["size"] == size]
        accs = [x["accuracy"] for x in r]
        base[size] = statistics.median(accs)
        lines.append(f"| {size} | " + " | ".join(f"{100 * a:.1f}" for a in accs) +
                     f" | **{100 * statistics.median(accs):.1f}** | {statistics.median([x['ms_per_image'] for x in r]):.1f} |")
    lines += [
        "",
        "Fixed views at input size 96, queried separately and concatenated for the head (k views = k queries per image):",
        "",
        "| views | queries / image | " + " | ".join(f"seed {s}" for s in seeds) + " | median |",
        "|---|---|" + "---|" * (len(seeds) + 1),
    ]
    best = 0.0
    for vs in VIEW_SETS:
        r = [x for x in rows if x["kind"] == "views" and tuple(x["views"]) == vs]
        if not r:
            continue
        accs = [x["accuracy"] for x in r]
        best = max(best, statistics.median(accs))
        lines.append(f"| {' + '.join(vs)} | {len(vs)} | " + " | ".join(f"{100 * a:.1f}" for a in accs) +
                     f" | **{100 * statistics.median(accs):.1f}** |")
    top = max(base.values())
    reach = "reaches" if max(top, best) >= 0.85 else "does not reach"
    lines += [
        "",
        f"Reading: the no-prompt head's median is {100 * base.get(96, float('nan')):.1f}% at the default size 96 and at most "
        f"{100 * top:.1f}% at any size tried, at up to {max(args.sizes) ** 2 / 96 ** 2:.1f}× the pixels per query; the best "
        f"fixed-view median is {100 * best:.1f}%. The better of the two {reach} 85% on the median of these seeds. Either "
        "lever raises the no-prompt baseline itself, so it does not move a prompt's gain over that baseline. The white-box "
        "ceiling of the default prompt design is in the `blackvip_ceiling` section.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
