"""BlackVIP, paired over seeds: MNIST and Fashion-MNIST against EfficientNet-Lite0 (ImageNet)
queried as a black box, locally and through a top-5 HTTP endpoint.

Per data set and seed, every arm runs on the same few-shot split (16 shots per class) at the
same budget of black-box image queries (training, including head refits; test evaluations are
extra and reported apart):

- ``no prompt + head``: a head on the un-prompted outputs (measured inside every run, same split);
- ``full + head`` / ``pad + head``: input-independent prompts; the "best input-independent"
  row takes, per seed, the one with the lower *held-out training-shot* loss (never the test);
- ``Coordinator + SPSA + head``: plain SPSA;
- ``Coordinator + SPSA-GC + head (default)``: the defaults (autoencoder encoder trained without
  labels on the training images, held-out early stopping) — fully black-box;
- ``... target features (white-box)``: the Coordinator reads the target network's own
  features (``encoder=target-features``), not black-box;
- ``... top-5 HTTP endpoint``: the default against a loopback server that serves the same
  network in the Hugging Face Inference API format (8-bit PNG in, top-5 {label, score} out).

Runs are independent, so the grid is split across worker processes that append one JSON line
per finished run to a parts file (nothing is lost when a worker is stopped); ``--merge``
gathers the parts into ``bench/results/blackvip.json`` and renders the docs section from it.
``--http-speed`` measures the endpoint at concurrency 8 vs 1 with a simulated 20 ms service
time (``bench/results/blackvip_http.json``); ``--speed-only`` the batched-probe check.

    python bench/blackvip.py --datasets mnist --seeds 0 1 2 3 4 --parts /tmp/bv-parts/mnist.jsonl
    python bench/blackvip.py --datasets fashion-mnist --seeds 0 1 2 3 4 --parts /tmp/bv-parts/fashion.jsonl
    python bench/blackvip.py --merge /tmp/bv-parts/*.jsonl --write-docs
    python bench/blackvip.py --http-speed --write-docs
    python bench/blackvip.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (pins BLAS threads before numpy)

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from _common import loadavg, machine, machine_line, publish_results, save_results, stamp

from blackbox.methods.blackvip.config import BlackVIPConfig
from blackbox.methods.blackvip.data import load_dataset
from blackbox.methods.blackvip.method import BlackVIP
from blackbox.provider import load_provider

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "providers"))

SIZE = 64
SPEC = f"efficientnet-lite0?size={SIZE}"
BUDGET = 10000
N_TEST = 500
DEFAULT = "Coordinator + SPSA-GC + head (default)"
HTTP = "Coordinator + SPSA-GC + head, top-5 HTTP endpoint"
NOES = "Coordinator + SPSA-GC + head, no early stopping"
NOPROMPT = "no prompt + head"
BEST_II = "best input-independent + head"
# name -> config overrides ("http": through the top-5 endpoint)
ARMS: dict[str, dict[str, Any]] = {
    DEFAULT: {"eval_every": 20},
    "Coordinator + SPSA + head": {"optimizer": "spsa", "eval_every": 20},
    "full + head": {"prompt": "full"},
    "pad + head": {"prompt": "pad"},
    "Coordinator + SPSA-GC + head, target features (white-box)": {"encoder": "target-features"},
    HTTP: {"http": True},
    NOES: {"holdout": 0.0},
}
KEEP = ("test_accuracy", "linear_head_accuracy", "zero_shot_accuracy", "queries", "eval_queries", "wall_seconds", "steps",
        "unused_budget", "stopped_early", "selected_queries", "holdout_loss", "holdout_accuracy", "white_box")


FEATURES: dict[tuple[str, int, str], Path] = {}  # (dataset, seed, encoder) -> a cached features file


def run_arm(provider: Any, data: Any, dataset: str, overrides: dict[str, Any], seed: int, budget: int) -> dict[str, Any]:
    cfg = BlackVIPConfig(**{"eval_every": 0, **overrides, "seed": seed, "budget": budget, "n_test": N_TEST, "checkpoint_every": 1000})
    tmp = Path(tempfile.mkdtemp(prefix="bvbench-"))
    try:
        # Arms of one seed share the split, hence the encoder and its features: computed once
        # (the run would compute the very same file) and copied into each run directory.
        key = (dataset, seed, cfg.encoder)
        (tmp / "run").mkdir()
        if cfg.prompt == "coordinator" and key in FEATURES:
            shutil.copy(FEATURES[key], tmp / "run" / "features.safetensors")
        run = BlackVIP(provider, data, cfg, tmp / "run", provider_spec=SPEC, dataset=dataset)
        res = run.fit().to_json()
        if cfg.prompt == "coordinator" and key not in FEATURES:
            FEATURES[key] = Path(tempfile.mkdtemp(prefix="bvfeat-")) / "features.safetensors"
            shutil.copy(tmp / "run" / "features.safetensors", FEATURES[key])
        hist = tmp / "run" / "history.jsonl"
        rows = [json.loads(l) for l in hist.read_text().splitlines()] if hist.exists() else []
        out = {k: res[k] for k in KEEP if k in res}
        out["curve"] = [(h["queries"], h["test_accuracy"]) for h in rows if "test_accuracy" in h]
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def http_provider(stack: Any, top_k: int = 5, delay: float = 0.0, concurrency: int = 8) -> Any:
    """The same network behind a loopback HF-format endpoint (server in this process)."""
    from hf_image_server import efficientnet_classify, make_app, serve

    from blackbox.providers.hf_image_api import HFImageProvider

    classify, labels = efficientnet_classify(SIZE)
    url = stack.enter_context(serve(make_app(classify, labels, top_k=top_k, delay=delay)))
    return HFImageProvider(url, labels, top_k=top_k, concurrency=concurrency)


def worker(args: argparse.Namespace) -> None:
    """Run the grid (seed-major, so finished seeds are complete) and append each run to --parts."""
    import contextlib

    parts = Path(args.parts)
    parts.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if parts.exists():  # resume: skip what a stopped worker already finished
        for line in parts.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["arm"], r["seed"]))
    provider = load_provider(SPEC)
    with contextlib.ExitStack() as stack:
        remote = http_provider(stack) if any(ARMS[a].get("http") for a in args.arms) else None
        for dataset in args.datasets:
            data = load_dataset(dataset)
            for seed in args.seeds:
                for arm in args.arms:
                    if (dataset, arm, seed) in done:
                        continue
                    over = {k: v for k, v in ARMS[arm].items() if k != "http"}
                    t = time.perf_counter()
                    res = run_arm(remote if ARMS[arm].get("http") else provider, data, dataset, over, seed, args.budget)
                    row = {"dataset": dataset, "arm": arm, "seed": seed, "budget": args.budget, "load": loadavg(),
                           "seconds": time.perf_counter() - t, **res}
                    with open(parts, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


def merge(args: argparse.Namespace) -> None:
    rows = [json.loads(l) for p in args.merge for l in Path(p).read_text().splitlines() if l.strip()]
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        runs.setdefault(r["dataset"], {}).setdefault(r["arm"], {})[str(r["seed"])] = {
            k: v for k, v in r.items() if k not in ("dataset", "arm", "seed")}
    info = machine()
    info["loadavg_during_runs"] = [min(r["load"][0] for r in rows), max(r["load"][0] for r in rows)] if rows else None
    budgets = sorted({r["budget"] for r in rows})
    settings = {"budget": budgets[0] if len(budgets) == 1 else budgets, "shots": 16, "n_test": N_TEST, "spec": SPEC,
                "worker_command": "python bench/blackvip.py --datasets DATASET --seeds 0 1 2 3 4 --parts FILE",
                "cpu_seconds_of_runs": round(sum(r["seconds"] for r in rows))}
    save_results("blackvip", {**stamp(info), "settings": settings, "runs": runs}, {"blackvip": DOC})
    publish_results("blackvip", render_section, args.write_docs)


def http_speed(args: argparse.Namespace) -> None:
    """Concurrency 8 vs sequential against the endpoint with a 20 ms simulated service time.

    Twice: with the server running the network live on this machine's cores (which the client
    shares on a loopback test, unlike a real endpoint), and with the server answering from the
    network's outputs computed before the timing, so that the 20 ms is the whole service time
    as on a remote endpoint with its own hardware."""
    import contextlib
    import hashlib

    from hf_image_server import decode_image, efficientnet_classify, make_app, serve

    from blackbox.providers.hf_image_api import HFImageProvider, encode_png
    from blackbox.types import ClassifyRequest

    x = load_dataset("mnist").images[:args.http_images]
    classify, labels = efficientnet_classify(SIZE)
    # what the server will decode, and the network's answer to it
    decoded = np.stack([decode_image(encode_png(im)) for im in x])
    table = {hashlib.sha1(d.tobytes()).hexdigest(): p for d, p in zip(decoded, classify(decoded))}

    def lookup(batch: np.ndarray) -> np.ndarray:
        return np.stack([table[hashlib.sha1(np.ascontiguousarray(b).tobytes()).hexdigest()] for b in batch])

    res: dict[str, Any] = {"images": len(x), "delay_s": 0.02, "top_k": 5}
    for mode, fn in (("precomputed answers", lookup), ("live model", classify)):
        out: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(serve(make_app(fn, labels, top_k=5, delay=0.02)))
            seq, par = HFImageProvider(url, labels, top_k=5, concurrency=1), HFImageProvider(url, labels, top_k=5, concurrency=8)
            seq.classify(ClassifyRequest(inputs=x[:4]))  # warm up connections and the model
            par.classify(ClassifyRequest(inputs=x[:16]))
            for name, p in (("sequential", seq), ("concurrency 8", par), ("sequential again", seq), ("concurrency 8 again", par)):
                t = time.perf_counter()
                out[name] = {"scores": p.classify(ClassifyRequest(inputs=x)).scores, "seconds": time.perf_counter() - t}
        secs = {k: v["seconds"] for k, v in out.items()}
        res[mode] = {"seconds": secs,
                     "identical": all(np.array_equal(out["sequential"]["scores"], v["scores"], equal_nan=True) for v in out.values()),
                     "speedup": (secs["sequential"] + secs["sequential again"]) / (secs["concurrency 8"] + secs["concurrency 8 again"])}
    info = machine()
    info["loadavg_at_end"] = loadavg()
    save_results("blackvip_http", {**stamp(info), "http": res}, {"blackvip_http": DOC})
    publish_results("blackvip_http", render_section, args.write_docs)


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


def _paired(a: dict[str, float], b: dict[str, float]) -> tuple[list[float], list[str]]:
    seeds = sorted(set(a) & set(b), key=int)
    return [a[s] - b[s] for s in seeds], seeds


def _ms(d: list[float]) -> str:
    """Mean ± standard error of paired differences, in points, with wins/losses."""
    if not d:
        return "–"
    m = 100 * statistics.mean(d)
    se = 100 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    w, l = sum(x > 0 for x in d), sum(x < 0 for x in d)
    return f"{m:+.1f} ± {se:.1f} ({w}W/{l}L)" if len(d) > 1 else f"{m:+.1f} (1 seed)"


def _acc(vals: list[float]) -> str:
    if not vals:
        return "–"
    m = 100 * statistics.mean(vals)
    return f"{m:.1f} ± {100 * statistics.stdev(vals) / math.sqrt(len(vals)):.1f}" if len(vals) > 1 else f"{m:.1f}"


def best_input_independent(arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per seed, ``full`` or ``pad``, whichever had the lower held-out training-shot loss."""
    full, pad = arms.get("full + head", {}), arms.get("pad + head", {})
    out = {}
    for s in set(full) & set(pad):
        pick = "full" if full[s]["holdout_loss"] <= pad[s]["holdout_loss"] else "pad"
        out[s] = {**(full[s] if pick == "full" else pad[s]), "picked": pick}
    return out


def reach(curve: list[list[float]], target: float) -> int | None:
    """Training queries at the first test evaluation at or above ``target`` (None: never)."""
    for q, a in curve:
        if a >= target - 1e-12:
            return int(q)
    return None


def dataset_body(name: str, arms: dict[str, dict[str, Any]], budget: int) -> list[str]:
    arms = dict(arms)
    bii = best_input_independent(arms)
    if bii:
        arms[BEST_II] = bii
    # the no-prompt head on full probabilities (the same in every local arm of a seed), and on
    # the top-5 answers of the HTTP endpoint (measured inside that arm's runs)
    base = {s: x["linear_head_accuracy"] for a, by in arms.items() if a != HTTP for s, x in by.items()}
    base5 = {s: x["linear_head_accuracy"] for s, x in arms.get(HTTP, {}).items()}
    acc = {a: {s: x["test_accuracy"] for s, x in by.items()} for a, by in arms.items()}
    order = [DEFAULT, "Coordinator + SPSA + head", "full + head", "pad + head", BEST_II,
             NOES, "Coordinator + SPSA-GC + head, target features (white-box)", HTTP]
    lines = [f"### {name}", "",
             "| arm | black-box? | seeds | test accuracy % (mean ± SE) | minus no-prompt head, points (mean ± SE, wins/losses) "
             "| training queries (mean) | unused budget (mean) | stopped early |",
             "|---|---|---|---|---|---|---|---|",
             f"| {NOPROMPT} | yes | {len(base)} | {_acc(list(base.values()))} | 0 | 160 | | |"]
    if base5:
        lines.append(f"| {NOPROMPT}, top-5 HTTP endpoint | yes | {len(base5)} | {_acc(list(base5.values()))} | "
                     f"{_ms(_paired(base5, base)[0])} | 160 | | |")
    for a in [o for o in order if o in arms]:
        by = arms[a]
        bb = "**no** (reads the target's weights)" if "white-box" in a else "yes"
        extra = " (" + ", ".join(f"{by[s]['picked']}" for s in sorted(by, key=int)) + ")" if a == BEST_II else ""
        ref = base5 if a == HTTP else base
        lines.append(
            f"| {a}{extra} | {bb} | {len(by)} | {_acc(list(acc[a].values()))} | {_ms(_paired(acc[a], ref)[0])}"
            f"{' (vs. its own top-5 no-prompt head)' if a == HTTP else ''} | "
            f"{statistics.mean(x['queries'] for x in by.values()):,.0f} | {statistics.mean(x['unused_budget'] for x in by.values()):,.0f} | "
            f"{sum(bool(x['stopped_early']) for x in by.values())}/{len(by)} |")
    lines += ["", "Paired comparisons (points, mean ± standard error over seeds, wins/losses) and the issue's targets:", ""]

    def cmp(a: str, b: str, label: str, target: float | None) -> None:
        if a in acc and b in acc:
            d, seeds = _paired(acc[a], acc[b])
            verdict = ""
            if target is not None and len(d) > 1:
                verdict = " — target ≥ {:+.1f}: **{}**".format(100 * target, "met" if statistics.mean(d) >= target else "missed")
            lines.append(f"- {label}: {_ms(d)} over seeds {', '.join(seeds)}{verdict}")

    if DEFAULT in acc:
        d, seeds = _paired(acc[DEFAULT], base)
        verdict = " — target ≥ +2.0: **{}**".format("met" if d and statistics.mean(d) >= 0.02 else "missed") if len(d) > 1 else ""
        lines.append(f"- default minus no-prompt head: {_ms(d)} over seeds {', '.join(seeds)}{verdict}")
    cmp(DEFAULT, BEST_II, "Coordinator (default) minus best input-independent prompt", 0.0)
    cmp(DEFAULT, "Coordinator + SPSA + head", "SPSA-GC (default) minus plain SPSA", 0.0)
    cmp("Coordinator + SPSA-GC + head, target features (white-box)", DEFAULT, "target features (white-box) minus default", None)
    cmp(HTTP, DEFAULT, "top-5 HTTP endpoint minus default (what seeing only the top 5 through 8-bit PNGs costs)", None)
    if base5:
        d, seeds = _paired(base5, base)
        lines.append(f"- no-prompt head on the top-5 answers minus on all 1,000 probabilities: {_ms(d)} over seeds {', '.join(seeds)}")
    cmp(NOES, DEFAULT, "without early stopping (holdout=0, last prompt) minus default", None)
    spsa = arms.get("Coordinator + SPSA + head", {})
    if DEFAULT in arms and spsa:
        cells = []
        for s in sorted(set(arms[DEFAULT]) & set(spsa), key=int):
            curve = arms[DEFAULT][s]["curve"]
            if not curve:
                continue
            target = curve[-1][1]
            qg, qs = reach(curve, target), reach(spsa[s]["curve"], target)
            cells.append(f"seed {s} ({100 * target:.1f}%): SPSA-GC {qg if qg is not None else 'never'}, "
                         f"SPSA {qs if qs is not None else 'never'}")
        lines += ["", "Queries to reach the default's accuracy, SPSA-GC vs SPSA: training queries until the test accuracy along "
                  "training first reaches the default's last evaluated accuracy. Along training the head is fitted on the 120 "
                  "non-held-out shots and the test is read every 20 steps (the final figures above use the head refit on all 160 "
                  "at the selected prompt, a different scale): " + "; ".join(cells) + "."]
    return lines


def docs_body(r: dict[str, Any]) -> str:
    st = r["settings"]
    lines = [
        "## BlackVIP: MNIST and Fashion-MNIST, paired over seeds (EfficientNet-Lite0 black box, locally and through a top-5 HTTP endpoint)",
        "",
        f"Merged {r['date']} with `{r['command']}` from worker runs `{st['worker_command']}` "
        f"({st['cpu_seconds_of_runs'] / 60:.0f} min of runs in all); raw results in `bench/results/blackvip.json`.",
        f"- Machine: {machine_line(r['machine'])}" + (f"; 1-min load average during the runs {r['machine']['loadavg_during_runs'][0]}–"
                                                       f"{r['machine']['loadavg_during_runs'][1]}" if r['machine'].get('loadavg_during_runs') else "") + ".",
        f"- Black box: `{st['spec']}`, probabilities only (the HTTP arm: top-5 scores of 8-bit PNGs). Per data set and seed, "
        f"16 shots per class (160 training images; the prompt's loss sees 120, the other 40 choose the prompt), {st['n_test']} test images, "
        f"the same split for every arm, budget {st['budget']:,} training queries (head refits included; test evaluations extra).",
        "- Black-box arms read nothing of the target but its answers; the Coordinator's default encoder is an autoencoder trained "
        "without labels on the 160 training images. The white-box row reads the target's own features.",
        "",
    ]
    for ds, arms in r["runs"].items():
        lines += dataset_body(ds, arms, st["budget"]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def http_body(r: dict[str, Any]) -> str:
    h = r["http"]
    modes = ("precomputed answers", "live model")
    lines = [
        "## BlackVIP: the top-5 HTTP endpoint at concurrency 8 vs sequential",
        "",
        f"Measured {r['date']} with `{r['command']}`; machine: {machine_line(r['machine'])}. Raw results in `bench/results/blackvip_http.json`.",
        "",
        f"{h['images']} MNIST images, one request each, to a loopback server in the Hugging Face Inference API format (top {h['top_k']}) "
        f"whose service time is {1000 * h['delay_s']:.0f} ms per request (it sleeps for what its own work left of that), each setting "
        f"twice, alternating. *Precomputed answers*: the server answers with `{SPEC.split('?')[0]}`'s outputs at {SIZE}×{SIZE}, computed "
        "before the timing, as a remote endpoint computes on its own hardware. *Live model*: the server runs the network per "
        "request on the same 2 cores as the client, so past the first request or two the cores, not the 20 ms, set the pace.",
        "",
        "| setting | " + " | ".join(f"wall s, {m}" for m in modes) + " |",
        "|---|" + "---|" * len(modes),
        *[f"| {k} | " + " | ".join(f"{h[m]['seconds'][k]:.2f}" for m in modes) + " |" for k in h[modes[0]]["seconds"]],
        "",
    ]
    for m in modes:
        lines.append(f"- {m}: concurrency 8 over sequential (sums of both passes) **{h[m]['speedup']:.1f}×**, scores identical in every "
                     f"pass: {h[m]['identical']}.")
    sp = h[modes[0]]["speedup"]
    lines += ["", f"Target (≥ 3× at concurrency 8 with a 20 ms service time, same result): **{'met' if sp >= 3 else 'missed'}** with the "
              f"service time as the endpoint's whole cost ({sp:.1f}×); with the network running live on the client's own busy cores "
              f"the speed-up is {h[modes[1]]['speedup']:.1f}×."]
    return "\n".join(lines) + "\n"


DOC = "docs/benchmarks.md"
STEMS = ("blackvip", "blackvip_http", "blackvip_speed")


def render_section(name: str, r: dict[str, Any]) -> str:
    """Docs sections from bench/results/{blackvip,blackvip_http,blackvip_speed}.json only."""
    if name == "blackvip":
        return docs_body(r)
    if name == "blackvip_http":
        return http_body(r)
    if name == "blackvip_speed":
        return speed_body(r)
    raise KeyError(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), help="arm names (default: all)")
    ap.add_argument("--budget", type=int, default=BUDGET)
    ap.add_argument("--parts", default="/tmp/bv-parts/parts.jsonl", help="append one JSON line per finished run here")
    ap.add_argument("--merge", nargs="+", metavar="PARTS", help="merge parts files into bench/results/blackvip.json")
    ap.add_argument("--http-speed", action="store_true", help="only the concurrency check of the HTTP endpoint")
    ap.add_argument("--http-images", type=int, default=64)
    ap.add_argument("--speed-only", action="store_true", help="only the batched-vs-per-probe check")
    ap.add_argument("--speed-steps", type=int, default=8)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--render", nargs="*", default=None, metavar="STEM", help=f"only render from results files ({', '.join(STEMS)})")
    args = ap.parse_args()
    if args.render is not None:
        stems = args.render or [s for s in STEMS if _common.results_path(s).exists()]
        if set(stems) - set(STEMS):
            raise SystemExit(f"--render: expected some of {', '.join(STEMS)}, received {' '.join(stems)}")
        for stem in stems:
            publish_results(stem, render_section, args.write_docs)
    elif args.merge:
        merge(args)
    elif args.http_speed:
        http_speed(args)
    elif args.speed_only:
        info = machine()
        res = speed(load_provider("efficientnet-lite0?size=96"), load_dataset("mnist"), args.speed_steps)
        info["loadavg_at_end"] = loadavg()
        save_results("blackvip_speed", {**stamp(info), "settings": {"speed_steps": args.speed_steps, "q": BlackVIPConfig().q}, "speed": res},
                     {"blackvip_speed": DOC})
        publish_results("blackvip_speed", render_section, args.write_docs)
    else:
        bad = set(args.arms) - set(ARMS)
        if bad:
            raise SystemExit(f"--arms: expected names among {list(ARMS)}, received {sorted(bad)}")
        worker(args)


if __name__ == "__main__":
    main()
