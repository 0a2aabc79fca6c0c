"""`blackbox serve` throughput and latency on SmolLM2-135M, against in-process decoding and
llama-cpp-python's server, all in one run.

Arms (the same prompts, greedy completions of ``--max-tokens`` tokens at most):

* ``in-process``: ``generate`` of one request at a time (the baseline of HTTP overhead);
* ``blackbox serve`` at concurrency 1, 4 and 16 (client threads sending completion requests
  over loopback HTTP; the server runs in this process on its own thread);
* ``llama.cpp server`` (llama-cpp-python, same GGUF) at concurrency 1, 4 and 16.

Models: ``plain`` (hf-causal SmolLM2); ``guarded`` (an ECO gate trained here on capital
questions + a Gaussian corruption, in front of the same model; every benchmark prompt is
unflagged, so its text is the plain model's and the difference is the guard's cost);
``fused`` (proxy fusion with SmolLM2 in all three roles — large, small and one expert — so
three forward passes per step: the serving cost of fusion, not its quality).

Targets (issue 22): HTTP overhead <= 5% of in-process time at concurrency 1; at concurrency
16, batched throughput >= 3x concurrency 1 (plain); guarded <= 5% over plain (unflagged).

Writes ``bench/results/serve.json``; ``--write-docs`` renders the ``serve`` section of
docs/benchmarks.md from it (``--render`` re-renders without measuring).

    nice python bench/serve.py [--requests 16] [--max-tokens 24] [--threads 1] [--write-docs]
    python bench/serve.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "providers"))

CONCURRENCY = (1, 4, 16)
SUBJECTS = ["cat", "river", "city", "song", "tree", "ship", "book", "storm", "garden", "clock", "bridge", "mountain",
            "window", "letter", "market", "train", "island", "lamp", "forest", "violin"]


def prompts(n: int) -> list[str]:
    """Distinct everyday prompts (none names a country: the guard leaves them all alone)."""
    return [f"Write one sentence about a {SUBJECTS[i % len(SUBJECTS)]} (note {i}):" for i in range(n)]


def summary(latencies: list[float], wall: float, tokens: int) -> dict[str, Any]:
    lat = np.asarray(latencies) * 1e3
    return {"requests": len(latencies), "wall_s": wall, "rps": len(latencies) / wall, "tokens": tokens,
            "tokens_per_s": tokens / wall, "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "mean_ms": float(lat.mean())}


def run_sequential(fn: Callable[[str], int], texts: list[str]) -> dict[str, Any]:
    """One request at a time; ``fn`` returns completion tokens."""
    fn(texts[0])  # warm-up
    lat, tokens = [], 0
    t0 = time.perf_counter()
    for p in texts:
        t = time.perf_counter()
        tokens += fn(p)
        lat.append(time.perf_counter() - t)
    return summary(lat, time.perf_counter() - t0, tokens)


def run_http(base_url: str, model: str, texts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    """``len(texts)`` completion requests from ``concurrency`` client threads."""
    import httpx2

    with httpx2.Client(timeout=600, limits=httpx2.Limits(max_connections=64)) as client:
        def one(p: str) -> tuple[float, int, str]:
            t = time.perf_counter()
            r = client.post(f"{base_url}/completions", json={"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0})
            r.raise_for_status()
            body = r.json()
            return time.perf_counter() - t, int(body["usage"]["completion_tokens"]), body["choices"][0]["text"]

        one(texts[0])  # warm-up (connection, first-call costs)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            out = list(pool.map(one, texts))
        wall = time.perf_counter() - t0
    res = summary([o[0] for o in out], wall, sum(o[1] for o in out))
    res["texts"] = [o[2] for o in out]
    return res


def run_paired(arms: dict[str, Callable[[str], int]], texts: list[str]) -> dict[str, Any]:
    """Every arm on every prompt, one request at a time, arms interleaved per prompt (order
    rotated), so load drift on a shared machine hits all arms alike; per-arm latencies."""
    names = list(arms)
    for name in names:
        arms[name](texts[0])  # warm-up
    lat: dict[str, list[float]] = {n: [] for n in names}
    for i, p in enumerate(texts):
        for name in names[i % len(names):] + names[: i % len(names)]:
            t = time.perf_counter()
            arms[name](p)
            lat[name].append(time.perf_counter() - t)
    return {"requests": len(texts), "latency_s": lat}


def paired_ratio(paired: dict[str, Any], num: str, den: str) -> dict[str, float]:
    """``num`` over ``den``: median of per-prompt ratios and ratio of total times, minus 1."""
    a, b = np.asarray(paired["latency_s"][num]), np.asarray(paired["latency_s"][den])
    return {"median": float(np.median(a / b) - 1), "total": float(a.sum() / b.sum() - 1)}


def http_fn(base_url: str, model: str, max_tokens: int) -> Callable[[str], int]:
    """One completion request over HTTP (a fresh connection pool per arm)."""
    import httpx2

    client = httpx2.Client(timeout=600)

    def one(p: str) -> int:
        r = client.post(f"{base_url}/completions", json={"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0})
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    return one


def guarded_model(lm: Any) -> Any:
    """An ECO gate (lexical, trained on capital questions) + corruption in front of ``lm``."""
    from blackbox.methods.eco.config import EcoConfig
    from blackbox.methods.eco.corruption import Corruption
    from blackbox.methods.eco.guarded import GuardedProvider
    from blackbox.methods.eco.job import as_items, build_gate

    countries = ["France", "Germany", "Spain", "Italy", "Norway", "Sweden", "Poland", "Greece", "Egypt", "Kenya", "Peru", "Chile",
                 "Brazil", "Canada", "Mexico", "Japan", "China", "India", "Nepal", "Ghana", "Austria", "Cuba", "Iran", "Oman"]
    templates = ["What is the capital of {c}?", "The capital of {c} is", "Name the capital city of {c}."]
    forget = [{"prompt": t.format(c=c), "target": c} for c in countries[:3] for t in templates]
    retain = [{"prompt": t.format(c=c), "target": c} for c in countries[3:] for t in templates]
    nouns = ["apple", "chair", "dog", "piano", "car", "cloud", "horse", "shirt", "bottle", "pencil", "door", "moon", "cup", "road"]
    frames = ["Tell me about a {n}.", "What colour is a {n}?", "Describe a {n} in three words.", "How heavy is a {n}?",
              "Write a short poem about a {n}.", "Why do people like a {n}?"]
    general = [{"prompt": f.format(n=n)} for n in nouns for f in frames]
    gate, _ = build_gate(as_items(forget, "forget"), as_items(retain, "retain"), as_items(general, "general"), EcoConfig(fpr=0.05))
    return GuardedProvider(lm, gate, Corruption(strength=1.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency-1 arm (x2 at concurrency 16)")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads (1: the fair setting on a shared 2-core machine)")
    ap.add_argument("--skip-llama", action="store_true", help="leave out llama-cpp-python's server")
    ap.add_argument("--paired-only", action="store_true", help="only the interleaved concurrency-1 arms, added to bench/results/serve.json")
    ap.add_argument("--render", action="store_true", help="re-render the docs section from bench/results/serve.json")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if args.render:
        _common.publish_results("serve", render_section, args.write_docs)
        return 0

    import torch

    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.provider import load_provider
    from blackbox.serve.app import serving
    from blackbox.serve.backends import FusedBackend, GuardedBackend, PlainBackend
    from blackbox.types import GenerateRequest

    torch.set_num_threads(args.threads)
    info = _common.machine()
    info["torch_threads"] = args.threads
    m = args.max_tokens
    lm = load_provider("hf-causal:smollm2?max_batch=16")
    guarded = guarded_model(lm)
    fusion = LogitFusion(lm, lm, [lm], FusionConfig(mode="proxy", alpha=1.0, max_tokens=m))
    n = args.requests
    texts = prompts(2 * n)
    assert not any(guarded.flags(texts)), "benchmark prompts must be unflagged"

    def gen(provider: Any) -> Callable[[str], int]:
        return lambda p: provider.generate(GenerateRequest((p,), max_tokens=m)).usage.completion_tokens

    with serving(PlainBackend(lm), model_name="plain", max_tokens_limit=m) as sp, serving(GuardedBackend(guarded), model_name="guarded", max_tokens_limit=m) as sg:
        paired = run_paired({"plain in-process": gen(lm), "plain http": http_fn(sp.base_url, "plain", m),
                             "guarded in-process": gen(guarded), "guarded http": http_fn(sg.base_url, "guarded", m)}, texts[:n])
    paired["ratios"] = {"http_overhead_plain": paired_ratio(paired, "plain http", "plain in-process"),
                        "http_overhead_guarded": paired_ratio(paired, "guarded http", "guarded in-process"),
                        "guarded_over_plain_http": paired_ratio(paired, "guarded http", "plain http"),
                        "guarded_over_plain_in_process": paired_ratio(paired, "guarded in-process", "plain in-process")}
    _common.emit({"paired": paired["ratios"]})
    if args.paired_only:
        results = _common.load_results("serve")
        results.pop("script", None)
        sections = results.pop("sections")
        results["paired"] = paired
        results["paired_stamp"] = _common.stamp(info)
        results["targets"] = targets(results["rows"], paired)
        _common.save_results("serve", results, sections)
        _common.publish_results("serve", render_section, args.write_docs)
        return 0
    models = {
        "plain": (gen(lm), PlainBackend(lm)),
        "guarded": (gen(guarded), GuardedBackend(guarded)),
        "fused": (lambda p: len(fusion.generate([p]).tokens[0]), FusedBackend(fusion)),
    }
    rows: list[dict[str, Any]] = []
    reference: dict[str, list[str]] = {}
    for name, (fn, backend) in models.items():
        r = run_sequential(fn, texts[:n])
        rows.append({"model": name, "server": "in-process", "concurrency": 1, **r})
        _common.emit(rows[-1])
        with serving(backend, model_name=name, max_batch=16, max_tokens_limit=m) as srv:
            for c in CONCURRENCY:
                k = n if c < 16 else 2 * n
                r = run_http(srv.base_url, name, texts[:k], c, m)
                outs = r.pop("texts")
                if name == "plain" and c == 1:
                    reference["plain"] = outs
                # every arm decodes greedily: its text must equal the plain model's (fused: SmolLM2 x3 = SmolLM2)
                r["same_text_as_plain_c1"] = sum(a == b for a, b in zip(outs, reference["plain"]))
                r["compared"] = min(len(outs), len(reference["plain"]))
                rows.append({"model": name, "server": "blackbox serve", "concurrency": c, **r})
                _common.emit(rows[-1])
    if not args.skip_llama:
        from llama_server import MODEL_ALIAS, serve

        with serve(n_threads=args.threads, extra=("--verbose", "false")) as srv:
            for c in CONCURRENCY:
                k = n if c < 16 else 2 * n
                r = run_http(srv.base_url, MODEL_ALIAS, texts[:k], c, m)
                r.pop("texts")
                rows.append({"model": "plain", "server": "llama.cpp server", "concurrency": c, **r})
                _common.emit(rows[-1])
    info["loadavg_at_end"] = _common.loadavg()
    results = {**_common.stamp(info), "max_tokens": m, "requests": n, "rows": rows, "paired": paired, "targets": targets(rows, paired)}
    _common.emit({"targets": results["targets"]})
    _common.save_results("serve", results, {"serve": "docs/benchmarks.md"})
    _common.publish_results("serve", render_section, args.write_docs)
    return 0


def _row(rows: list[dict[str, Any]], model: str, server: str, c: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["model"] == model and r["server"] == server and r["concurrency"] == c), None)


def targets(rows: list[dict[str, Any]], paired: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's three targets, measured (ratios of means / throughputs; the +-5% ones also
    from the interleaved arms, median of per-prompt ratios)."""
    out = []
    if paired:
        r = paired["ratios"]
        for key, label in (("http_overhead_plain", "HTTP overhead at concurrency 1 (plain), interleaved"),
                           ("http_overhead_guarded", "HTTP overhead at concurrency 1 (guarded), interleaved"),
                           ("guarded_over_plain_http", "guarded cost over plain, unflagged prompts (HTTP, concurrency 1), interleaved")):
            v = r[key]["median"]
            out.append({"target": label, "value": v, "goal": "<= +5%", "met": v <= 0.05, "paired": True})
    for model in ("plain", "guarded", "fused"):
        http, local = _row(rows, model, "blackbox serve", 1), _row(rows, model, "in-process", 1)
        if http and local:
            v = http["mean_ms"] / local["mean_ms"] - 1
            out.append({"target": f"HTTP overhead at concurrency 1 ({model})", "value": v, "goal": "<= +5%", "met": v <= 0.05})
    c1, c16 = _row(rows, "plain", "blackbox serve", 1), _row(rows, "plain", "blackbox serve", 16)
    if c1 and c16:
        v = c16["rps"] / c1["rps"]
        out.append({"target": "throughput at concurrency 16 / concurrency 1 (plain)", "value": v, "goal": ">= 3x", "met": v >= 3})
    for c in CONCURRENCY:
        p, g = _row(rows, "plain", "blackbox serve", c), _row(rows, "guarded", "blackbox serve", c)
        if p and g:
            v = p["rps"] / g["rps"] - 1
            out.append({"target": f"guarded cost over plain, unflagged prompts (concurrency {c})", "value": v, "goal": "<= +5%", "met": v <= 0.05})
    return out


def render_section(name: str, results: dict[str, Any]) -> str:
    """The ``serve`` section of docs/benchmarks.md (pure: everything comes from ``results``)."""
    f = _common.fmt
    lines = [
        "## Serving",
        "",
        f"`{results['command']}` — {results['date']}; {_common.machine_line(results['machine'])}; "
        f"torch threads {results['machine'].get('torch_threads')}.",
        "",
        f"SmolLM2-135M-Instruct (Q4_1 GGUF; dequantised to float32 by transformers for in-process and `blackbox serve`, "
        f"run natively by llama.cpp), greedy completions of at most {results['max_tokens']} tokens of distinct short prompts; "
        f"{results['requests']} requests per arm ({2 * results['requests']} at concurrency 16), after one warm-up request. "
        "The HTTP client is threads with httpx2 on loopback; `blackbox serve` runs in the benchmark's process (own thread). "
        "`guarded`: an ECO gate + corruption in front of the same model, every prompt unflagged; `fused`: proxy fusion with "
        "SmolLM2 as large, small and expert (three forward passes per step). `same text` counts outputs equal to "
        "plain `blackbox serve` at concurrency 1 (greedy: all should be).",
        "",
        "| model | server | concurrency | requests/s | p50 latency (ms) | p95 latency (ms) | tokens/s | same text |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        same = f"{r['same_text_as_plain_c1']}/{r['compared']}" if "compared" in r else "–"
        lines.append(f"| {r['model']} | {r['server']} | {r['concurrency']} | {f(r['rps'])} | {f(r['p50_ms'])} | {f(r['p95_ms'])} | "
                     f"{f(r['tokens_per_s'])} | {same} |")
    notes = []
    ours1, ours16 = _row(results["rows"], "plain", "blackbox serve", 1), _row(results["rows"], "plain", "blackbox serve", 16)
    ll1, ll16 = _row(results["rows"], "plain", "llama.cpp server", 1), _row(results["rows"], "plain", "llama.cpp server", 16)
    if ours1 and ours16 and ll1 and ll16:
        notes.append(f"llama.cpp's server answers one request at a time: {ll16['rps'] / ll1['rps']:.2f}x its concurrency-1 throughput at 16. "
                     f"Per request it is {ll1['rps'] / ours1['rps']:.1f}x faster than ours at concurrency 1 (native Q4 kernels against "
                     f"float32 PyTorch); batching brings `blackbox serve` to {ours16['rps'] / ll16['rps']:.2f}x llama.cpp's throughput at 16.")
    m = results["machine"]
    load = max((m.get("loadavg_at_start") or [0])[0], (m.get("loadavg_at_end") or [0])[0])
    if m.get("cores") and load > m["cores"]:
        notes.append(f"The machine was shared (load average up to {load:g} on {m['cores']} cores): arms ran minutes apart under "
                     "changing load, so differences of ~20% are within noise — the negative \"overheads\" below are noise, not "
                     "speed-ups, and the ±5% comparisons between those arms are not resolved" + ("; the interleaved arms are the estimate to read"
                     if results.get("paired") else "") + ". The concurrency gain and the exact-text counts are resolved.")
    noisy = bool(m.get("cores") and load > m["cores"])
    paired = results.get("paired")
    if paired:
        lat = paired["latency_s"]
        lines += ["", f"Interleaved concurrency-1 arms (`{results.get('paired_stamp', results)['command']}`): each of {paired['requests']} "
                  "prompts goes through every arm in turn (order rotated), so load drift hits all arms alike; ratios are medians of "
                  "per-prompt ratios (ratio of total times in brackets).", "",
                  "| arm | mean latency (ms) | p50 (ms) |", "| --- | ---: | ---: |"]
        for name, xs in lat.items():
            arr = np.asarray(xs) * 1e3
            lines.append(f"| {name} | {f(float(arr.mean()))} | {f(float(np.median(arr)))} |")
        lines += ["", "| ratio | median per prompt | totals |", "| --- | ---: | ---: |"]
        for key, v in paired["ratios"].items():
            lines.append(f"| {key.replace('_', ' ')} | {v['median'] * 100:+.1f}% | {v['total'] * 100:+.1f}% |")
    for note in notes:
        lines += ["", note]
    lines += ["", "| target (issue 22) | measured | goal | met |", "| --- | ---: | --- | --- |"]
    for t in results["targets"]:
        v = f"{t['value']:.2f}x" if "x" in t["goal"] else f"{t['value'] * 100:+.1f}%"
        verdict = "yes" if t["met"] else "**no**"
        if noisy and "%" in t["goal"] and not t.get("paired"):
            verdict = f"not resolved (noise; {verdict.strip('*')} as measured)"
        lines.append(f"| {t['target']} | {v} | {t['goal']} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
