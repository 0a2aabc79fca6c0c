"""Logit fusion with two experts (T = 2) on a mixed prompt set: does dynamic fusion earn its cost?

Models (bench/fusion_smol.py, a stated substitute for the Qwen2.5-Coder pair, whose 1.5B in
fp32 does not fit a run on 2 shared cores: timing in docs/fusion.md): SmolLM2-135M-Instruct
as the large *and* the small base, and two LoRA experts tuned from it on different skills
(``capital`` → `` [[X]]``, ``region`` → `` {{X}}``). The reported set (fixed in
bench/fusion_smol.py before any result: 20 capital, 20 region and 10 general prompts of
held-out countries / bench/fusion_general.py) is disjoint from the development set used for
any change to dynamic fusion.

Arms, all greedy, stop strings ``]]``, ``}}``, newline, at most 10 tokens: the base alone
(large = small), each expert alone, proxy-tuning (α = 1) with each expert and with both, and
dynamic fusion with both (grid 0..2 step 0.1, one expert active per step). With the large
model equal to the small base, proxy-tuning with one expert is that expert's own
distribution (``z_L + z_t − z_S = z_t``); the comparisons that carry information are the
two-expert ones. Paired differences per prompt (better / worse / two-sided sign-test p).

Speed: proxy (both) vs dynamic (both) on the same 16 prompts at a fixed 12 tokens (no stop),
in one process, in rotating order, best of the repeats per arm, as seconds per generated
token.

    python bench/fusion_multi.py [--set eval|dev] [--repeats 3]   # runs, writes bench/results/fusion_multi.json
    python bench/fusion_multi.py --render [--write-docs]           # re-renders the docs section
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import json
import math
import sys
import time
from typing import Any

from _common import fmt, loadavg, machine, machine_line, publish_results, save_results, stamp
from fusion_smol import CACHE, STOPS, base_dir, correct, expert_dir, prompt_sets

STEM = "fusion_multi"
MAX_TOKENS = 10
ARMS = ("base", "expert capital", "expert region", "proxy capital", "proxy region", "proxy both", "dynamic both")
TITLES = {
    "base": "base alone (large = small)", "expert capital": "expert `capital` alone", "expert region": "expert `region` alone",
    "proxy capital": "proxy-tuning, `capital` (α=1)", "proxy region": "proxy-tuning, `region` (α=1)",
    "proxy both": "proxy-tuning, both (α=1 each)", "dynamic both": "dynamic fusion, both",
}
SKILL_ORDER = ("capital", "region", "general")


def load_models(threads: int) -> dict[str, Any]:
    import torch

    from blackbox.provider import load_provider

    torch.set_num_threads(threads)
    return {"base": load_provider(f"hf-causal:{base_dir()}?max_batch=16"),
            "capital": load_provider(f"hf-causal:{expert_dir('capital')}?max_batch=16"),
            "region": load_provider(f"hf-causal:{expert_dir('region')}?max_batch=16")}


def run_arm(arm: str, m: dict[str, Any], prompts: list[str], max_tokens: int = MAX_TOKENS, stop: tuple[str, ...] = STOPS) -> dict[str, Any]:
    """Texts, tokens, seconds (and dynamic's per-step weights) of one arm on ``prompts``."""
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.types import GenerateRequest

    t0 = time.perf_counter()
    if arm in ("base", "large", "small", "expert capital", "expert region"):
        p = m[arm.split()[-1]]
        res = p.generate(GenerateRequest(prompts=tuple(prompts), max_tokens=max_tokens, stop=stop))
        return {"texts": list(res.texts), "seconds": time.perf_counter() - t0, "weights": None}
    experts = [m["capital"], m["region"]] if arm.endswith("both") else [m[arm.split()[1]]]
    mode = "dynamic" if arm.startswith("dynamic") else "proxy"
    # m holds "base" (large = small, this script) or "large" and "small" (bench/fusion_qwen_multi.py)
    large, small = (m["large"], m["small"]) if "large" in m else (m["base"], m["base"])
    fusion = LogitFusion(large, small, experts, FusionConfig(mode=mode, max_tokens=max_tokens, stop=stop, batch_size=16))
    out = fusion.generate(prompts)
    return {"texts": out.texts, "seconds": time.perf_counter() - t0, "weights": out.weights, "n_tokens": out.n_tokens,
            "token_texts": [[fusion.tokenizer.decode([t]) for t in toks] for toks in out.tokens]}


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign-test p-value of ``better`` vs ``worse`` (ties dropped)."""
    n = better + worse
    if n == 0:
        return 1.0
    k = min(better, worse)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired(a: list[bool], b: list[bool]) -> dict[str, Any]:
    better = sum(x and not y for x, y in zip(a, b))
    worse = sum(y and not x for x, y in zip(a, b))
    return {"diff": (sum(a) - sum(b)) / len(a), "better": better, "worse": worse, "p": round(sign_test(better, worse), 4)}


def timing(m: dict[str, Any], prompts: list[str], repeats: int, tokens: int = 12) -> dict[str, Any]:
    """Seconds per generated token of proxy (both) and dynamic (both), rotating order, min over repeats."""
    arms = ["proxy both", "dynamic both"]
    secs: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(repeats):
        for a in (arms if r % 2 == 0 else arms[::-1]):
            out = run_arm(a, m, prompts, max_tokens=tokens, stop=())
            secs[a].append(out["seconds"] / max(out["n_tokens"], 1))
    best = {a: min(v) for a, v in secs.items()}
    return {"prompts": len(prompts), "tokens": tokens, "repeats": repeats, "s_per_token": {a: [round(x, 5) for x in v] for a, v in secs.items()},
            "best_s_per_token": {a: round(v, 5) for a, v in best.items()}, "ratio_dynamic_to_proxy": round(best["dynamic both"] / best["proxy both"], 3)}


QWEN_TIMING = CACHE / "qwen_timing.json"


def time_qwen(threads: int, tokens: int = 16) -> dict[str, Any]:
    """Why the Qwen pair was not run: load time and greedy seconds of the 0.5B (the smaller of
    the pair) on one prompt; the 1.5B has 3x its parameters and every fused step runs both."""
    import torch

    from blackbox.provider import load_provider
    from blackbox.types import GenerateRequest
    from fusion_assets import assemble

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    p = load_provider(f"hf-causal:{assemble('small')}")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    p.generate(GenerateRequest(prompts=("Country: France\nCapital:",), max_tokens=tokens))
    out = {"model": "Qwen2.5-Coder-0.5B-Instruct (GGUF, fp32)", "load_s": round(load_s, 1), "tokens": tokens,
           "generate_s": round(time.perf_counter() - t0, 2), "load": loadavg()}
    QWEN_TIMING.write_text(json.dumps(out))
    return out


def measure(which: str, threads: int, repeats: int) -> dict[str, Any]:
    info = machine()
    rows = prompt_sets()[which]
    prompts = [r["prompt"] for r in rows]
    m = load_models(threads)
    arms: dict[str, Any] = {}
    traces: dict[str, Any] = {}
    for arm in ARMS:
        out = run_arm(arm, m, prompts)
        ok = [correct(r, t) for r, t in zip(rows, out["texts"])]
        arms[arm] = {"correct": ok, "accuracy": sum(ok) / len(ok), "seconds": round(out["seconds"], 2),
                     "by_skill": {s: [sum(o for o, r in zip(ok, rows) if r["skill"] == s), sum(r["skill"] == s for r in rows)] for s in SKILL_ORDER},
                     "outputs": out["texts"]}
        if arm == "dynamic both":
            # the per-step weights of the first prompt of each skill (for the plot)
            for skill in ("capital", "region"):
                i = next(j for j, r in enumerate(rows) if r["skill"] == skill)
                traces[skill] = {"prompt": prompts[i], "tokens": out["token_texts"][i], "weights": [[round(x, 3) for x in w] for w in out["weights"][i]]}
            share = [0, 0, 0]  # steps where capital / region / no expert was active
            for ws in out["weights"]:
                for w in ws:
                    share[0 if w[0] > 0 else 1 if w[1] > 0 else 2] += 1
            arms[arm]["active_steps"] = {"capital": share[0], "region": share[1], "none": share[2]}
        print(json.dumps({"arm": arm, "accuracy": round(arms[arm]["accuracy"], 4), "by_skill": arms[arm]["by_skill"], "s": arms[arm]["seconds"], "load": loadavg()}), flush=True)
    dyn = arms["dynamic both"]["correct"]
    pairs = {f"dynamic both vs {a}": paired(dyn, arms[a]["correct"]) for a in ("proxy both", "proxy capital", "proxy region")}
    pairs["proxy both vs proxy capital"] = paired(arms["proxy both"]["correct"], arms["proxy capital"]["correct"])
    pairs["proxy both vs proxy region"] = paired(arms["proxy both"]["correct"], arms["proxy region"]["correct"])
    speed = timing(m, prompts[:16], repeats)
    print(json.dumps({"timing": speed, "load": loadavg()}), flush=True)
    info["loadavg_at_end"] = loadavg()
    return {**stamp(info), "set": which, "n": len(rows), "skills": [r["skill"] for r in rows], "prompts": prompts,
            "answers": [r["answer"] for r in rows], "max_tokens": MAX_TOKENS, "stops": list(STOPS), "arms": arms, "paired": pairs,
            "timing": speed, "qwen_timing": json.loads(QWEN_TIMING.read_text()) if QWEN_TIMING.is_file() else None, "traces": traces, "experts": {s: json.loads((expert_dir(s) / "train_info.json").read_text()) for s in ("capital", "region")}}


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section (pure: everything comes from the results file)."""
    n = r["n"]
    counts = {s: r["skills"].count(s) for s in SKILL_ORDER}
    lines = [
        f"## Logit fusion with two experts (T = 2): SmolLM2-135M substitute, {r['set']} set of {n} prompts",
        "",
        f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}. Models: bench/fusion_smol.py (SmolLM2-135M-Instruct as large "
        f"and small base; experts LoRA-tuned from it on `capital` → ` [[X]]` and `region` → ` {{{{X}}}}`, {r['experts']['capital']['steps']} steps each). "
        f"Prompts fixed before any result: {counts['capital']} capital, {counts['region']} region (held-out countries), {counts['general']} general questions. "
        f"Greedy, at most {r['max_tokens']} tokens, stops `]]`, `}}}}`, newline. With large = small, proxy-tuning with one expert is that expert "
        "(`z_L + z_t − z_S = z_t`).",
        "",
        "| arm | accuracy | capital | region | general | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        a = r["arms"][arm]
        cells = " | ".join(f"{a['by_skill'][s][0]}/{a['by_skill'][s][1]}" for s in SKILL_ORDER)
        lines.append(f"| {TITLES[arm]} | {sum(a['correct'])}/{n} ({100 * a['accuracy']:.1f}%) | {cells} | {a['seconds']:.1f} |")
    act = r["arms"]["dynamic both"].get("active_steps")
    lines += ["", "Paired, per prompt (better / worse; two-sided sign test):", "", "| comparison | accuracy difference | better | worse | p |", "|---|---|---|---|---|"]
    for k, v in r["paired"].items():
        lines.append(f"| {k} | {100 * v['diff']:+.1f} points | {v['better']} | {v['worse']} | {'< 0.001' if v['p'] < 0.001 else fmt(v['p'])} |")
    t = r["timing"]
    b = t["best_s_per_token"]
    lines += [
        "",
        f"Speed ({t['prompts']} prompts, {t['tokens']} tokens, no stop, best of {t['repeats']} in rotating order): proxy (both) "
        f"{b['proxy both'] * 1000:.1f} ms per token, dynamic (both) {b['dynamic both'] * 1000:.1f} ms per token: "
        f"**{t['ratio_dynamic_to_proxy']:.2f}×** proxy's time (target ≤ 1.10×).",
    ]
    if act:
        lines.append(f"Dynamic fusion's active expert over all its steps: `capital` {act['capital']}, `region` {act['region']}, none (α = 0) {act['none']}.")
    q = r.get("qwen_timing")
    if q:
        lines += ["", f"Why not the Qwen2.5-Coder pair: on this machine {q['model']} alone loaded in {q['load_s']:.0f} s and generated "
                  f"{q['tokens']} greedy tokens for one prompt in {q['generate_s']:.1f} s (load {q['load'][0]}); the 1.5B has 3× its parameters and every "
                  "fused step runs the large model, the small base and both experts, over 7 arms and two expert trainings."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("eval", "dev"), default="eval")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-qwen", action="store_true", help="only time the Qwen 0.5B on one prompt (stored in the cache, reported with the next run)")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if args.time_qwen:
        print(json.dumps(time_qwen(args.threads)))
        return 0
    if not args.render:
        res = measure(args.set, args.threads, args.repeats)
        if args.set == "dev":  # development runs are kept out of the docs
            out = CACHE / "fusion_multi_dev.json"
            out.write_text(json.dumps(res, indent=1, ensure_ascii=False))
            print("dev results in", out)
            return 0
        save_results(STEM, res, {STEM: "docs/benchmarks.md"})
    publish_results(STEM, render_section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
