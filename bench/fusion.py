"""Logit fusion on real models: Qwen2.5-Coder-Instruct 1.5B (large) steered by a 0.5B expert.

Models: the Qwen2.5-Coder-Instruct 0.5B / 1.5B GGUF pair of bench/fusion_assets.py (one
tokenizer), assembled and sha256-checked by bench/fusion_assets.py; the expert is the 0.5B
fine-tuned with LoRA by bench/fusion_expert.py (run that first) to answer
``Country: X\\nCapital:`` with the strict format `` [[capital]]``.

Evaluation sets (greedy):

* **task**: ``Country: X\\nCapital:`` on held-out countries never seen in fine-tuning; correct
  iff the output before the stop string ``]]`` is exactly ``[[<capital>`` (case and accents
  folded, nothing else);
* **general, capitals**: ``Q: What is the capital of X?\\nA:`` on other held-out countries;
* **general, other**: ``Q: <question>\\nA:`` from the hand-written pool of
  bench/fusion_general.py (science, history, literature, ...: outside the expert's task).

Both general sets are *selected* on purpose: knowledge the 1.5B has and the 0.5B
lacks (the 1.5B base right, the 0.5B base wrong in the same greedy decoding), so the large
base scores 100% there by construction; the question is how much the fusions keep. A
general answer is right iff its first line holds the answer as whole words (case and
accents folded), whatever the format (`` [[Paris]]`` counts). The base models' accuracy on
the whole unselected pools is reported too.

Systems: large base, small base, small expert, proxy-tuning (α = 1), dynamic fusion (grid
0..2 step 0.1). Golden-section refinement and the top-k variant (the large model's top-k
log-probs only, emulated from the same local model, fused over the union with the expert's
top-k) are measured teacher-forced on the dynamic / proxy runs' own steps.

Speed: tokens/s of large alone, proxy and dynamic on the same prompts, in one process, each
repeated in rotating order (fixed length, no stop), plus the time of the fusion arithmetic
per decoding step.

The work is split into phases (each one process, results merged into one JSON file in the
cache directory) so that each heavy command stays short on a shared machine:

    python bench/fusion.py --phase base            # selection + base models
    python bench/fusion.py --phase fusion --sets task
    python bench/fusion.py --phase fusion --sets general_capitals
    python bench/fusion.py --phase fusion --sets general_other
    python bench/fusion.py --phase timing
    python bench/fusion.py --phase report --write-docs

The report phase writes the summary (accuracies, speeds, settings; no per-token data) to
``bench/results/fusion.json`` and renders the ``fusion`` section of docs/benchmarks.md from
it; ``python bench/fusion.py --phase report --write-docs`` needs the phases' cache file,
while the docs test re-renders from the committed ``bench/results/fusion.json`` alone.
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import command_line, emit, loadavg, machine, machine_line, today
from fusion_assets import DEFAULT_CACHE, hf_dir
from fusion_expert import GENERAL_TEMPLATE, N_TRAIN, TASK_TEMPLATE, expert_dir, split
from fusion_general import QUESTIONS, TEMPLATE as OTHER_TEMPLATE, contains_answer, fold

KS = (5, 10, 20)
SET_NAMES = ("task", "general_capitals", "general_other")
SET_TITLES = {"task": "task", "general_capitals": "general: capitals", "general_other": "general: other"}
SYSTEMS = ("large base (1.5B)", "small base (0.5B)", "small expert (0.5B LoRA)", "proxy-tuning (α=1)", "dynamic fusion (grid)")


def task_ok(text: str, capital: str) -> bool:
    """Exactly ``[[capital`` before the ``]]`` stop (case and accents folded)."""
    return fold(text.strip()) == fold(f"[[{capital}")


def general_ok(text: str, answers: Any) -> bool:
    return contains_answer(text, tuple(answers) if isinstance(answers, (list, tuple)) else (answers,))


OK = {"task": task_ok, "general_capitals": general_ok, "general_other": general_ok}
STOPS = {"task": ("]]", "\n"), "general_capitals": ("\n",), "general_other": ("\n",)}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def results_path(args: Any) -> Path:
    return Path(args.results).expanduser() if args.results else DEFAULT_CACHE / "fusion_bench.json"


def load_results(args: Any, key: dict[str, Any]) -> dict[str, Any]:
    p = results_path(args)
    if p.is_file():
        data = json.loads(p.read_text())
        if data.get("key") == key:
            return data
    return {"key": key, "sets": {}, "rows": {}, "phases": {}}


def save_results(args: Any, key: dict[str, Any], update: Any) -> dict[str, Any]:
    """Merge into the results file (re-read first: phases run as separate processes)."""
    data = load_results(args, key)
    update(data)
    p = results_path(args)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, p)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("base", "fusion", "timing", "report"), required=True)
    ap.add_argument("--sets", default=",".join(SET_NAMES), help="fusion phase: comma-separated sets to evaluate")
    ap.add_argument("--systems", default="expert,proxy,dynamic", help="fusion phase: comma-separated subset of expert, proxy, dynamic")
    ap.add_argument("--n-task", type=int, default=24)
    ap.add_argument("--n-general", type=int, default=24, help="questions kept per general set after selection")
    ap.add_argument("--capital-pool", type=int, default=72, help="held-out countries (not in the task set) to select from")
    ap.add_argument("--other-pool", type=int, default=len(QUESTIONS), help="questions of bench/fusion_general.py to select from")
    ap.add_argument("--max-tokens-task", type=int, default=8)
    ap.add_argument("--max-tokens-general", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refine", type=int, default=12)
    ap.add_argument("--refine-sample", type=int, default=48, help="decoding steps (per set) on which refinement is measured")
    ap.add_argument("--timing-tokens", type=int, default=12)
    ap.add_argument("--timing-repeats", type=int, default=3)
    ap.add_argument("--results", default="", help="JSON file the phases share (default: in the model cache)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)

    key = {k: getattr(args, k) for k in ("n_task", "n_general", "capital_pool", "other_pool", "max_tokens_task", "max_tokens_general", "batch")}
    if args.phase == "report":
        data = load_results(args, key)
        return report(data, args)

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    info = machine()
    info["command"] = command_line()
    info["date"] = today()
    info["threads"] = args.threads
    {"base": phase_base, "fusion": phase_fusion, "timing": phase_timing}[args.phase](args, key, info, t_start)
    return 0


# --- helpers ----------------------------------------------------------------------------
def provider(path: Any, args: Any) -> Any:
    from blackbox.providers.hf_causal import HFCausalProvider

    return HFCausalProvider(path, max_batch=args.batch)


def max_tokens(set_name: str, args: Any) -> int:
    return args.max_tokens_task if set_name == "task" else args.max_tokens_general


def plain(prov: Any, prompts: list[str], stop: tuple[str, ...], n_max: int) -> dict[str, Any]:
    from blackbox.types import GenerateRequest

    t0 = time.perf_counter()
    out = prov.generate(GenerateRequest(prompts=tuple(prompts), max_tokens=n_max, stop=stop))
    return {"texts": list(out.texts), "tokens": out.usage.completion_tokens, "seconds": time.perf_counter() - t0}


def score(set_name: str, texts: list[str], answers: list[Any]) -> list[bool]:
    return [bool(OK[set_name](t, a)) for t, a in zip(texts, answers)]


def finish_phase(args: Any, key: dict[str, Any], info: dict[str, Any], t_start: float, name: str, update: Any) -> None:
    info["loadavg_at_end"] = loadavg()
    info["seconds"] = round(time.time() - t_start, 1)
    info["peak_rss_gb"] = round(peak_rss_gb(), 2)

    def merged(data: dict[str, Any]) -> None:
        update(data)
        data["phases"][name] = info

    save_results(args, key, merged)
    emit({"event": "phase_done", "phase": name, **{k: info[k] for k in ("seconds", "loadavg_at_start", "loadavg_at_end", "peak_rss_gb") if k in info}})


# --- phase: selection and base models ---------------------------------------------------
def phase_base(args: Any, key: dict[str, Any], info: dict[str, Any], t_start: float) -> None:
    large, small = provider(hf_dir("large"), args), provider(hf_dir("small"), args)
    emit({"event": "loaded", "seconds": round(time.time() - t_start, 1)})
    _, held = split()
    task = held[: args.n_task]
    cap_pool = held[args.n_task : args.n_task + args.capital_pool]
    other_pool = QUESTIONS[: args.other_pool]
    pools = {
        "task": ([TASK_TEMPLATE.format(c=c) for c, _ in task], [k for _, k in task], [c for c, _ in task]),
        "general_capitals": ([GENERAL_TEMPLATE.format(c=c) for c, _ in cap_pool], [[k] for _, k in cap_pool], [c for c, _ in cap_pool]),
        "general_other": ([OTHER_TEMPLATE.format(q=q) for q, _ in other_pool], [list(a) for _, a in other_pool], [q for q, _ in other_pool]),
    }
    outs: dict[str, dict[str, Any]] = {}
    for set_name, (prompts, answers, _) in pools.items():
        for sys_name, prov in (("large base (1.5B)", large), ("small base (0.5B)", small)):
            r = plain(prov, prompts, STOPS[set_name], max_tokens(set_name, args))
            r["ok"] = score(set_name, r["texts"], answers)
            outs.setdefault(set_name, {})[sys_name] = r
            emit({"event": "pool_run", "set": set_name, "system": sys_name, "n": len(prompts), "correct": sum(r["ok"]), "seconds": round(r["seconds"], 1)})

    sets, rows, selection = {}, {}, {}
    for set_name, (prompts, answers, items) in pools.items():
        lg, sm = outs[set_name]["large base (1.5B)"], outs[set_name]["small base (0.5B)"]
        if set_name == "task":
            idx = list(range(len(prompts)))
        else:
            cand = [i for i in range(len(prompts)) if lg["ok"][i] and not sm["ok"][i]]
            idx = cand[: args.n_general]
            selection[set_name] = {"pool": len(prompts), "large_right": sum(lg["ok"]), "small_right": sum(sm["ok"]),
                                   "both_right": sum(a and b for a, b in zip(lg["ok"], sm["ok"])), "large_right_small_wrong": len(cand), "kept": len(idx)}
        sets[set_name] = {"prompts": [prompts[i] for i in idx], "answers": [answers[i] for i in idx], "items": [items[i] for i in idx]}
        for sys_name, r in outs[set_name].items():
            share = len(idx) / max(len(prompts), 1)  # selected rows' share of the pool's run (time/tokens pro rata)
            rows.setdefault(sys_name, {})[set_name] = {
                "texts": [r["texts"][i] for i in idx], "ok": [r["ok"][i] for i in idx],
                "tokens": r["tokens"] * share, "seconds": r["seconds"] * share,
                "pool_correct": sum(r["ok"]), "pool_n": len(prompts),
            }
    emit({"event": "selection", **selection})

    def update(data: dict[str, Any]) -> None:
        data["sets"] = sets
        data["selection"] = selection
        for sys_name, per in rows.items():
            data["rows"].setdefault(sys_name, {}).update(per)

    finish_phase(args, key, info, t_start, "base", update)


# --- phase: expert and fusions ----------------------------------------------------------
def phase_fusion(args: Any, key: dict[str, Any], info: dict[str, Any], t_start: float) -> None:
    import torch

    from blackbox.methods.fusion import arith
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion

    data = load_results(args, key)
    if not data.get("sets"):
        raise SystemExit("run --phase base first (same settings)")
    if not (expert_dir() / "train_info.json").is_file():
        raise SystemExit("no expert: run `python bench/fusion_expert.py` first")
    large, small, expert = provider(hf_dir("large"), args), provider(hf_dir("small"), args), provider(expert_dir(), args)
    emit({"event": "loaded", "seconds": round(time.time() - t_start, 1)})
    grid = FusionConfig().grid()
    rows: dict[str, dict[str, Any]] = {}
    for set_name in [s for s in args.sets.split(",") if s]:
        s = data["sets"][set_name]
        prompts, answers = s["prompts"], s["answers"]
        stop, n_max = STOPS[set_name], max_tokens(set_name, args)
        chosen = args.systems.split(",")
        if "expert" in chosen:
            r = plain(expert, prompts, stop, n_max)
            r["ok"] = score(set_name, r["texts"], answers)
            rows.setdefault("small expert (0.5B LoRA)", {})[set_name] = r
            emit({"event": "system", "set": set_name, "system": "small expert (0.5B LoRA)", "correct": sum(r["ok"]), "n": len(prompts)})
        for sys_name, mode in (("proxy-tuning (α=1)", "proxy"), ("dynamic fusion (grid)", "dynamic")):
            if mode not in chosen:
                continue
            cfg = FusionConfig(mode=mode, alpha=1.0, max_tokens=n_max, stop=stop, batch_size=args.batch)
            fusion = LogitFusion(large, small, [expert], cfg)
            spent = [0.0]
            inner = fusion.fuse_batch

            def timed(zl: Any, zs: Any, ze: Any, _inner: Any = inner, _spent: list = spent) -> Any:
                t0 = time.perf_counter()
                out = _inner(zl, zs, ze)
                _spent[0] += time.perf_counter() - t0
                return out

            fusion.fuse_batch = timed  # type: ignore[method-assign]
            agree = {k: [0, 0] for k in KS}
            ref = {"steps": 0, "alpha_moved": 0, "token_changed": 0, "obj_grid": 0.0, "obj_refined": 0.0, "grid_s": 0.0, "refine_s": 0.0}
            hook = [0.0]

            def on_step(st: dict[str, Any], _fusion: Any = fusion, _agree: dict = agree, _ref: dict = ref, _hook: list = hook, _dyn: bool = mode == "dynamic") -> None:
                t0 = time.perf_counter()
                zl, zs, ze, tok = st["large"], st["small"], st["experts"], st["token"]
                if _dyn and _ref["steps"] < args.refine_sample:
                    t1 = time.perf_counter()
                    w0, j0 = arith.dynamic_weights(zl, zs, ze, grid)
                    t2 = time.perf_counter()
                    w1, j1 = arith.dynamic_weights(zl, zs, ze, grid, refine=args.refine)
                    t3 = time.perf_counter()
                    _ref["grid_s"] += t2 - t1
                    _ref["refine_s"] += t3 - t2
                    _ref["steps"] += 1
                    _ref["obj_grid"] += j0
                    _ref["obj_refined"] += j1
                    _ref["alpha_moved"] += int(abs(float(w1.sum() - w0.sum())) > 1e-3)
                    _ref["token_changed"] += int(int(torch.argmax(arith.proxy_logits(zl, zs, ze, w1))) != tok)
                logp = torch.log_softmax(zl.double(), -1)
                for k in KS:
                    top = torch.topk(logp, k)
                    ids, fused, _ = _fusion.fuse_topk_row(top.indices, top.values, zs, ze, k=k)
                    _agree[k][0] += int(ids[int(torch.argmax(fused))]) == tok
                    _agree[k][1] += 1
                _hook[0] += time.perf_counter() - t0  # measurement only: taken out of the run's time

            res = fusion.generate(prompts, on_step=on_step)
            ok = score(set_name, res.texts, answers)
            w = [x[0] for row in res.weights for x in row]
            rows.setdefault(sys_name, {})[set_name] = {
                "texts": res.texts, "ok": ok, "tokens": res.n_tokens, "seconds": res.seconds - hook[0], "arith_s": spent[0],
                "weights": [[round(x[0], 3) for x in row] for row in res.weights], "mean_weight": statistics.fmean(w) if w else None,
                "topk_agree": agree, "refine": ref if mode == "dynamic" else None,
            }
            emit({"event": "system", "set": set_name, "system": sys_name, "correct": sum(ok), "n": len(prompts),
                  "tokens": res.n_tokens, "seconds": round(res.seconds - hook[0], 1), "arith_s": round(spent[0], 2),
                  "topk_agree": {k: a / max(b, 1) for k, (a, b) in agree.items()}})

    def update(d: dict[str, Any]) -> None:
        for sys_name, per in rows.items():
            d["rows"].setdefault(sys_name, {}).update(per)

    finish_phase(args, key, info, t_start, f"fusion:{args.sets}:{args.systems}", update)


# --- phase: speed on identical prompts --------------------------------------------------
def phase_timing(args: Any, key: dict[str, Any], info: dict[str, Any], t_start: float) -> None:
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.types import GenerateRequest

    large, small, expert = provider(hf_dir("large"), args), provider(hf_dir("small"), args), provider(expert_dir(), args)
    _, held = split()
    prompts = [TASK_TEMPLATE.format(c=c) for c, _ in held[: args.batch]]
    n = args.timing_tokens

    def run(name: str, tokens: int) -> dict[str, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        if name == "large":
            out = large.generate(GenerateRequest(prompts=tuple(prompts), max_tokens=tokens))
            n_tok, arith_s = out.usage.completion_tokens, 0.0
        else:
            fusion = LogitFusion(large, small, [expert], FusionConfig(mode=name, max_tokens=tokens, batch_size=args.batch))
            inner, spent = fusion.fuse_batch, [0.0]

            def timed(zl: Any, zs: Any, ze: Any) -> Any:
                t1 = time.perf_counter()
                o = inner(zl, zs, ze)
                spent[0] += time.perf_counter() - t1
                return o

            fusion.fuse_batch = timed  # type: ignore[method-assign]
            res = fusion.generate(prompts)
            n_tok, arith_s = res.n_tokens, spent[0]
        return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "tokens": n_tok, "arith_s": arith_s}

    names = ["large", "proxy", "dynamic"]
    for name in names:  # warm-up: page the weights in, allocate caches
        run(name, 2)
    emit({"event": "warm", "seconds": round(time.time() - t_start, 1), "loadavg": loadavg()})
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    for rep in range(args.timing_repeats):
        order = names[rep % 3 :] + names[: rep % 3]  # rotate the order between repeats
        for name in order:
            r = run(name, n)
            r["loadavg1"] = loadavg()[0] if loadavg() else None
            runs[name].append(r)
            emit({"event": "timing_run", "rep": rep, "system": name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}})

    def update(d: dict[str, Any]) -> None:
        d["timing"] = {"runs": runs, "prompts": len(prompts), "tokens_per_prompt": n, "repeats": args.timing_repeats}

    finish_phase(args, key, info, t_start, "timing", update)


# --- report -------------------------------------------------------------------------------
def report(data: dict[str, Any], args: Any) -> int:
    rows, sets = data.get("rows", {}), data.get("sets", {})
    if not sets:
        raise SystemExit("no results: run the phases first (same settings)")
    table = []
    for sys_name in SYSTEMS:
        per = rows.get(sys_name)
        if not per:
            continue
        line: dict[str, Any] = {"system": sys_name}
        tok = sec = 0.0
        for set_name in SET_NAMES:
            r = per.get(set_name)
            if r is not None:
                line[set_name] = [sum(r["ok"]), len(r["ok"])]
                tok += r["tokens"]
                sec += r["seconds"]
        if all(s in line for s in SET_NAMES):
            line["mixed"] = [sum(line[s][0] for s in SET_NAMES), sum(line[s][1] for s in SET_NAMES)]
        line["tokens_per_s"] = tok / sec if sec else None
        ar = [per[s].get("arith_s") for s in SET_NAMES if s in per and per[s].get("arith_s") is not None]
        line["arith_share"] = sum(ar) / sec if ar and sec else None
        ws = [w for s in SET_NAMES if s in per and per[s].get("weights") for row in per[s]["weights"] for w in row]
        line["mean_weight"] = statistics.fmean(ws) if ws else None
        table.append(line)
    agree = {}
    for sys_name in ("proxy-tuning (α=1)", "dynamic fusion (grid)"):
        per = rows.get(sys_name, {})
        tot = {k: [0, 0] for k in KS}
        for s in per.values():
            for k, (a, b) in (s.get("topk_agree") or {}).items():
                tot[int(k)][0] += a
                tot[int(k)][1] += b
        if tot[KS[0]][1]:
            agree[sys_name] = tot
    ref = {"steps": 0, "alpha_moved": 0, "token_changed": 0, "obj_grid": 0.0, "obj_refined": 0.0, "grid_s": 0.0, "refine_s": 0.0}
    for s in rows.get("dynamic fusion (grid)", {}).values():
        for k in ref:
            ref[k] += (s.get("refine") or {}).get(k, 0)
    timing = data.get("timing")
    tsum = None
    if timing:
        tsum = {}
        for name, runs in timing["runs"].items():
            tps = [r["tokens"] / r["seconds"] for r in runs]
            tsum[name] = {"median_tokens_per_s": statistics.median(tps), "all": tps, "arith_s_per_token": statistics.median(r["arith_s"] / r["tokens"] for r in runs),
                          "cpu_tokens_per_s": statistics.median(r["tokens"] / r["cpu_s"] for r in runs)}
    summary = {"table": table, "selection": data.get("selection"), "topk_agreement": agree, "refine": ref, "timing": tsum,
               "phases": data.get("phases"), "examples": {s: {n: rows[n][s]["texts"][:4] for n in SYSTEMS if s in rows.get(n, {})} for s in SET_NAMES}}
    emit({"event": "summary", **summary})
    # The committed raw results: the summary (no per-token data) and what the renderer reads.
    _common.save_results("fusion", {
        "summary": summary,
        "sets": {k: {"prompts": v["prompts"]} for k, v in sets.items()},
        "timing": {"prompts": (data.get("timing") or {}).get("prompts"), "tokens_per_prompt": (data.get("timing") or {}).get("tokens_per_prompt"),
                   "repeats": (data.get("timing") or {}).get("repeats")} if data.get("timing") else None,
        "args": {k: getattr(args, k) for k in ("batch", "max_tokens_task", "max_tokens_general", "refine")},
    }, {"fusion": "docs/benchmarks.md"})
    _common.publish_results("fusion", render_section, args.write_docs)
    return 0


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section, from bench/results/fusion.json only."""
    from types import SimpleNamespace

    return render(r["summary"], {"sets": r["sets"], "timing": r["timing"], "phases": r["summary"].get("phases")}, SimpleNamespace(**r["args"]))


def render(s: dict[str, Any], data: dict[str, Any], args: Any) -> str:
    def frac(x: list[int] | None) -> str:
        return "–" if not x else f"{100 * x[0] / max(x[1], 1):.0f}% ({x[0]}/{x[1]})"

    sets = data["sets"]
    sel = s.get("selection") or {}
    phases = s.get("phases") or {}
    n = {k: len(sets[k]["prompts"]) for k in SET_NAMES if k in sets}
    lines = [
        "## Logit fusion (proxy-tuning, dynamic fusion) on Qwen2.5-Coder-Instruct 1.5B + 0.5B",
        "",
        f"Large base: Qwen2.5-Coder-1.5B-Instruct; small base: Qwen2.5-Coder-0.5B-Instruct; expert: the 0.5B with LoRA "
        f"(bench/fusion_expert.py) trained on {N_TRAIN} countries to answer `Country: X\\nCapital:` as ` [[capital]]`, with a KL term that "
        f"keeps it at the small base on off-task prompts (see bench/fusion_expert.py). Greedy, fp32 "
        f"on CPU, batches of {args.batch}. **task**: {n.get('task')} held-out countries in the bracket format, exact match (case and "
        f"accents folded), max {args.max_tokens_task} new tokens. **general: capitals**: `Q: What is the capital of X?\\nA:` on other "
        f"held-out countries; **general: other**: `Q: ...\\nA:` questions outside the task (science, history, literature, ..., "
        f"bench/fusion_general.py); both max {args.max_tokens_general} new tokens, right iff the answer is in the first line as whole "
        f"words (any format, so ` [[Paris]]` counts). Both general sets are **selected** as knowledge the 1.5B has and the 0.5B "
        f"lacks (1.5B base right and 0.5B base wrong in the same greedy decoding), so the large base scores 100% and the small "
        f"base 0% there by construction.",
        "",
    ]
    for k in ("general_capitals", "general_other"):
        if k in sel:
            x = sel[k]
            lines.append(f"- Selection, {SET_TITLES[k]}: pool {x['pool']}; 1.5B right {x['large_right']}, 0.5B right {x['small_right']}, "
                         f"both {x['both_right']}; 1.5B-only {x['large_right_small_wrong']}, of which {x['kept']} kept.")
    lines += [
        "",
        "| system | task | general: capitals | general: other | mixed (all three) | tokens/s (accuracy runs) | fusion arithmetic share | mean α |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in s["table"]:
        share = "–" if r["arith_share"] is None else f"{100 * r['arith_share']:.2f}%"
        mw = "–" if r["mean_weight"] is None else f"{r['mean_weight']:.2f}"
        tps = "–" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.2f}"
        lines.append(f"| {r['system']} | {frac(r.get('task'))} | {frac(r.get('general_capitals'))} | {frac(r.get('general_other'))} | "
                     f"{frac(r.get('mixed'))} | {tps} | {share} | {mw} |")
    t = s.get("timing")
    tp = (data.get("timing") or {})
    if t:
        lg, px, dy = (t[k]["median_tokens_per_s"] for k in ("large", "proxy", "dynamic"))
        lines += [
            "",
            f"**Speed on identical prompts** ({tp['prompts']} task prompts in one batch, {tp['tokens_per_prompt']} new tokens each, "
            f"no stop; {tp['repeats']} repeats in rotating order after a warm-up; median tokens/s):",
            "",
            "| system | tokens/s (median) | all repeats | fusion arithmetic per token |",
            "| --- | ---: | --- | ---: |",
        ]
        for k, label in (("large", "large base alone"), ("proxy", "proxy-tuning"), ("dynamic", "dynamic fusion")):
            a = t[k]
            lines.append(f"| {label} | {a['median_tokens_per_s']:.3f} | {', '.join(f'{x:.3f}' for x in a['all'])} | "
                         f"{1000 * a['arith_s_per_token']:.2f} ms |")
        lines += ["", f"dynamic/proxy = {dy / px:.3f} (target ≥ 0.97), proxy/large = {px / lg:.3f}, dynamic/large = {dy / lg:.3f}."]
    agree = s.get("topk_agreement") or {}
    if agree:
        lines += [
            "",
            "**Top-k variant** (large model seen only through its top-k log-probs, emulated from the same local model; fusion over "
            "the union of those tokens and the expert's top-k, renormalised): share of decoding steps of the accuracy runs (all "
            "three sets) where its greedy token equals the full-vocabulary fusion's, teacher-forced on the full run's path.",
            "",
            "| fusion | steps | k = 5 | k = 10 | k = 20 |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, a in agree.items():
            lines.append(f"| {name} | {a[KS[0]][1]} | " + " | ".join(f"{100 * a[k][0] / max(a[k][1], 1):.0f}%" for k in KS) + " |")
    r = s["refine"]
    if r["steps"]:
        lines += [
            "",
            f"**Golden-section refinement** ({args.refine} steps within ±0.1 of the grid's α), teacher-forced on {r['steps']} steps of the "
            f"dynamic runs: it moved α by more than 0.001 at {100 * r['alpha_moved'] / r['steps']:.0f}% of the steps, lowered the summed "
            f"objective from {r['obj_grid']:.4g} to {r['obj_refined']:.4g}, changed the greedy token at {r['token_changed']} of "
            f"{r['steps']} steps, and cost {1000 * r['refine_s'] / r['steps']:.1f} ms per step against {1000 * r['grid_s'] / r['steps']:.1f} ms "
            f"for the grid alone (one row at a time).",
        ]
    lines += ["", "Runs (each phase one process; `python bench/fusion.py` + the flags shown):", ""]
    for name, ph in phases.items():
        la, lb = ph.get("loadavg_at_start"), ph.get("loadavg_at_end")
        lines.append(f"- {name}: `{ph['command']}`, {ph['date']}, {ph['seconds'] / 60:.1f} min, {ph.get('threads')} torch threads, "
                     f"peak RSS {ph.get('peak_rss_gb')} GB, load average (1/5/15 min) at start {la[0]}/{la[1]}/{la[2]}, at end {lb[0]}/{lb[1]}/{lb[2]}.")
    any_ph = next(iter(phases.values()), None)
    if any_ph:
        lines += ["", f"Machine: {machine_line({k: v for k, v in any_ph.items() if not k.startswith('loadavg')})}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
