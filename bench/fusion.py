"""Logit fusion on real models: Qwen2.5-Coder-Instruct 1.5B (large) steered by a 0.5B expert.

Models: the Qwen2.5-Coder-Instruct 0.5B / 1.5B GGUF pair of ../shared/ASSETS.md (one
tokenizer), assembled and sha256-checked by bench/fusion_assets.py; the expert is the 0.5B
fine-tuned with LoRA by bench/fusion_expert.py (run that first) to answer
``Country: X\\nCapital:`` with the strict format `` [[capital]]``.

Evaluation (greedy, held-out countries never seen in fine-tuning):

* **task**: ``Country: X\\nCapital:``; correct iff the output is exactly ``[[<capital>`` before
  the stop string ``]]``;
* **general**: ``Q: What is the capital of X?\\nA:``; correct iff the first line contains the
  capital. The general set is selected from a pool of other held-out countries as the
  knowledge the 1.5B has and the 0.5B lacks (1.5B right, 0.5B base wrong), so the large
  model's general accuracy is 100% by construction; the question is how much the fusions keep.

Systems: large base, small base, small expert, proxy-tuning (α = 1), dynamic fusion (grid
0..2 step 0.1); golden-section refinement is measured on the dynamic run's own steps
(teacher-forced: objective, α, greedy token, time). Speed: tokens/s of each in
the same run, plus an ABAB timing of large / proxy / dynamic on the same prompts. Top-k
variant: at every step of the proxy and dynamic runs, the greedy choice of the top-k
variant (the large model's top-k log-probs only, emulating an API from the same local
model) is compared with the full-vocabulary choice (teacher-forced on the full run's path).

    python bench/fusion.py [--n-task 16] [--n-general-pool 32] [--threads 2] [--write-docs]
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import command_line, emit, loadavg, machine, machine_line, today, write_section
from fusion_assets import DEFAULT_CACHE, hf_dir
from fusion_expert import GENERAL_TEMPLATE, TASK_TEMPLATE, expert_dir, split

KS = (5, 10, 20)


def task_ok(text: str, capital: str) -> bool:
    return text.strip() == f"[[{capital}"


def general_ok(text: str, capital: str) -> bool:
    first = text.strip().split("\n")[0]
    return capital.lower() in first.lower()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-task", type=int, default=16)
    ap.add_argument("--n-general-pool", type=int, default=32)
    ap.add_argument("--n-general", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refine", type=int, default=12)
    ap.add_argument("--refine-sample", type=int, default=64, help="decoding steps on which refinement is measured")
    ap.add_argument("--timing-tokens", type=int, default=10)
    ap.add_argument("--timing-repeats", type=int, default=1)
    ap.add_argument("--models", nargs=3, metavar=("LARGE", "SMALL", "EXPERT"), help="other model directories (smoke tests)")
    ap.add_argument("--no-select", action="store_true", help="general set without the large-right/small-wrong selection (smoke tests)")
    ap.add_argument("--phase", choices=("all", "base"), default="all", help="base: only the base models' runs (stored for reuse)")
    ap.add_argument("--wait-expert", type=float, default=0.0, help="seconds to wait for the expert directory to appear")
    ap.add_argument("--skip-small", action="store_true", help="do not evaluate the small base alone")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from blackbox.methods.fusion import arith
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.providers.hf_causal import HFCausalProvider
    from blackbox.types import GenerateRequest

    torch.set_num_threads(args.threads)
    info = machine()
    t_start = time.time()
    if args.models:
        dirs = args.models
    else:
        dirs = [hf_dir("large"), hf_dir("small"), expert_dir()]
    large, small = (HFCausalProvider(d, max_batch=args.batch) for d in dirs[:2])
    expert = None  # loaded after the base models' runs: it may still be training (--wait-expert)
    # phase "base" (the base models only, e.g. while the expert trains) stores its results
    # here; a later full run with the same settings reuses them instead of recomputing
    key = {k: getattr(args, k) for k in ("n_task", "n_general_pool", "n_general", "max_tokens", "batch", "no_select")}
    base_file = (DEFAULT_CACHE / "fusion_base_runs.json") if not args.models else None
    stored = json.loads(base_file.read_text()) if base_file is not None and base_file.is_file() else None
    if stored is not None and stored.get("key") != key:
        stored = None
    emit({"event": "loaded", "seconds": round(time.time() - t_start, 1), "peak_rss_gb": round(peak_rss_gb(), 2)})

    _, held = split()
    task_set = held[: args.n_task]
    pool = held[args.n_task : args.n_task + args.n_general_pool]

    def plain(provider: Any, prompts: list[str], stop: tuple[str, ...]) -> tuple[list[str], int, float]:
        t0 = time.perf_counter()
        out = provider.generate(GenerateRequest(prompts=tuple(prompts), max_tokens=args.max_tokens, stop=stop))
        return list(out.texts), out.usage.completion_tokens, time.perf_counter() - t0

    # general set: knowledge the 1.5B has and the 0.5B lacks -----------------------------
    if stored is not None:
        general_set = [tuple(x) for x in stored["general_set"]]
        selection = stored["selection"]
    elif args.no_select:
        general_set = pool[: args.n_general]
        selection = {}
    else:
        gprompts = [GENERAL_TEMPLATE.format(c=c) for c, _ in pool]
        lg, _, _ = plain(large, gprompts, ("\n",))
        sg, _, _ = plain(small, gprompts, ("\n",))
        general_set = [pc for pc, a, b in zip(pool, lg, sg) if args.no_select or (general_ok(a, pc[1]) and not general_ok(b, pc[1]))][: args.n_general]
        selection = {"pool": len(pool), "large_right": sum(general_ok(a, c[1]) for a, c in zip(lg, pool)),
                     "small_right": sum(general_ok(b, c[1]) for b, c in zip(sg, pool)), "selected": len(general_set)}
    emit({"event": "general_selection", **selection})

    sets = {
        "task": ([TASK_TEMPLATE.format(c=c) for c, _ in task_set], [k for _, k in task_set], ("]]", "\n"), task_ok),
        "general": ([GENERAL_TEMPLATE.format(c=c) for c, _ in general_set], [k for _, k in general_set], ("\n",), general_ok),
    }
    rows: dict[str, dict[str, Any]] = {}
    agreement = {}

    def record(name: str, set_name: str, texts: list[str], n_tok: int, secs: float) -> None:
        prompts, caps, _, ok = sets[set_name]
        row = rows.setdefault(name, {"correct": {}, "n": {}, "tokens": 0, "seconds": 0.0})
        row["correct"][set_name] = sum(ok(t, k) for t, k in zip(texts, caps))
        row["n"][set_name] = len(caps)
        row["tokens"] += n_tok
        row["seconds"] += secs
        row.setdefault("examples", {})[set_name] = texts[:3]

    if stored is not None:
        rows.update(stored["rows"])
    for name in ("large base (1.5B)", "small base (0.5B)", "small expert (0.5B LoRA)"):
        if name in rows or (args.skip_small and name.startswith("small base")):
            continue
        if name.startswith("small expert"):
            if args.phase == "base":
                continue
            deadline = time.time() + args.wait_expert
            while not (Path(dirs[2]) / "train_info.json").is_file():  # written last by fusion_expert.py
                if time.time() > deadline:
                    raise SystemExit("no expert: run `python bench/fusion_expert.py` first")
                time.sleep(10)
            time.sleep(2)
            expert = HFCausalProvider(dirs[2], max_batch=args.batch)
            emit({"event": "expert_loaded", "seconds": round(time.time() - t_start, 1)})
        prov = {"large base (1.5B)": large, "small base (0.5B)": small}.get(name, expert)
        for set_name, (prompts, caps, stop, _) in sets.items():
            texts, n_tok, secs = plain(prov, prompts, stop)
            record(name, set_name, texts, n_tok, secs)
        emit({"event": "system", "name": name, **{k: v for k, v in rows[name].items() if k != "examples"}})

    if args.phase == "base":
        if base_file is not None:
            base_file.write_text(json.dumps({"key": key, "general_set": general_set, "selection": selection, "rows": rows}))
        emit({"event": "base_stored", "file": str(base_file)})
        return 0
    summary_extra = {"base_rows_reused": stored is not None}

    fusion_time: dict[str, float] = {}
    configs = {
        "proxy-tuning (α=1)": FusionConfig(mode="proxy", alpha=1.0),
        "dynamic fusion (grid)": FusionConfig(mode="dynamic"),
    }
    # golden-section refinement, measured teacher-forced on the dynamic run's steps: how much it
    # lowers the objective, how far it moves α, how often it changes the greedy token and its cost
    refine_stats = {"steps": 0, "alpha_moved": 0, "token_changed": 0, "obj_grid": 0.0, "obj_refined": 0.0, "grid_s": 0.0, "refine_s": 0.0}
    grid = FusionConfig().grid()
    weights_log: dict[str, list[float]] = {}
    for name, base_cfg in configs.items():
        for set_name, (prompts, caps, stop, _) in sets.items():
            cfg = FusionConfig(**{**base_cfg.__dict__, "max_tokens": args.max_tokens, "stop": stop, "batch_size": args.batch})
            fusion = LogitFusion(large, small, [expert], cfg)
            inner = fusion.fuse_row
            spent = [0.0]

            def timed_fuse(zl: Any, zs: Any, ze: Any, _inner: Any = inner, _spent: list = spent) -> Any:
                t0 = time.perf_counter()
                out = _inner(zl, zs, ze)
                _spent[0] += time.perf_counter() - t0
                return out

            fusion.fuse_row = timed_fuse  # type: ignore[method-assign]
            agree = agreement.setdefault(name, {k: [0, 0] for k in KS})

            hook = [0.0]

            def on_step(step: dict[str, Any], _fusion: Any = fusion, _agree: dict = agree, _hook: list = hook, _dyn: bool = base_cfg.mode == "dynamic") -> None:
                t0 = time.perf_counter()
                zl, zs, ze, tok = step["large"], step["small"], step["experts"], step["token"]
                if _dyn and refine_stats["steps"] < args.refine_sample:
                    t1 = time.perf_counter()
                    w0, j0 = arith.dynamic_weights(zl, zs, ze, grid)
                    t2 = time.perf_counter()
                    w1, j1 = arith.dynamic_weights(zl, zs, ze, grid, refine=args.refine)
                    t3 = time.perf_counter()
                    refine_stats["grid_s"] += t2 - t1
                    refine_stats["refine_s"] += t3 - t2
                    refine_stats["steps"] += 1
                    refine_stats["obj_grid"] += j0
                    refine_stats["obj_refined"] += j1
                    refine_stats["alpha_moved"] += int(abs(float(w1.sum() - w0.sum())) > 1e-3)
                    refined_tok = int(torch.argmax(arith.proxy_logits(zl, zs, ze, w1)))
                    refine_stats["token_changed"] += int(refined_tok != tok)
                logp = torch.log_softmax(zl, -1)
                for k in KS:
                    top = torch.topk(logp, k)
                    ids, zl_u, zs_u, ze_u = arith.topk_union(top.indices, top.values, zs, ze, k)
                    fused, _ = LogitFusion.fuse_row(_fusion, zl_u, zs_u, ze_u)
                    _agree[k][0] += int(ids[int(torch.argmax(fused))]) == tok
                    _agree[k][1] += 1
                _hook[0] += time.perf_counter() - t0  # measurement only: taken out of the run's time

            res = fusion.generate(prompts, on_step=on_step)
            record(name, set_name, res.texts, res.n_tokens, res.seconds - hook[0])
            fusion_time[name] = fusion_time.get(name, 0.0) + spent[0]
            weights_log.setdefault(name, []).extend(s[0] for w in res.weights for s in w)
        row = rows[name]
        row["fusion_arith_share"] = fusion_time[name] / row["seconds"]
        row["mean_weight"] = statistics.fmean(weights_log[name]) if weights_log[name] else None
        emit({"event": "system", "name": name, **{k: v for k, v in row.items() if k != "examples"}})
    emit({"event": "refine", **refine_stats})

    # ABAB timing on identical prompts, fixed length (no stop) --------------------------
    tprompts = sets["task"][0][: args.batch] + []
    times: dict[str, list[float]] = {"large": [], "proxy": [], "dynamic": []}
    toks: dict[str, int] = {}
    for _ in range(args.timing_repeats if args.timing_repeats > 0 else 0):
        for name in times:
            if name == "large":
                t0 = time.perf_counter()
                out = large.generate(GenerateRequest(prompts=tuple(tprompts), max_tokens=args.timing_tokens))
                times[name].append(time.perf_counter() - t0)
                toks[name] = out.usage.completion_tokens
            else:
                res = LogitFusion(large, small, [expert], FusionConfig(mode=name, max_tokens=args.timing_tokens, batch_size=args.batch)).generate(tprompts)
                times[name].append(res.seconds)
                toks[name] = res.n_tokens
    tps = {k: toks[k] / statistics.median(v) for k, v in times.items() if v}
    emit({"event": "timing", "tokens_per_s": tps, "seconds": times, "tokens": toks})

    # summary -----------------------------------------------------------------------------
    info["loadavg_at_end"] = loadavg()
    total = time.time() - t_start
    table = []
    for name, row in rows.items():
        c, n = row["correct"], row["n"]
        mixed = (c["task"] + c["general"]) / max(n["task"] + n["general"], 1)
        table.append({
            "system": name, "task": c["task"] / max(n["task"], 1), "general": c["general"] / max(n["general"], 1), "mixed": mixed,
            "tokens_per_s": row["tokens"] / row["seconds"], "fusion_arith_share": row.get("fusion_arith_share"), "mean_weight": row.get("mean_weight"),
        })
    agree_out = {name: {k: a / max(b, 1) for k, (a, b) in v.items()} for name, v in agreement.items()}
    n_steps = {name: v[KS[0]][1] for name, v in agreement.items()}
    summary = {**summary_extra, "selection": selection, "table": table, "refine": refine_stats, "topk_agreement": agree_out, "topk_steps": n_steps, "timing_tokens_per_s": tps,
               "n_task": len(sets["task"][1]), "n_general": len(sets["general"][1]), "seconds": round(total, 1),
               "peak_rss_gb": round(peak_rss_gb(), 2), "examples": {n: r.get("examples") for n, r in rows.items()}}
    emit({"event": "summary", **summary})
    if args.write_docs:
        text = render(summary, info, args)
        write_section("fusion", text)
        # the same table in docs/fusion.md, between its results markers
        doc = _common.REPO / "docs" / "fusion.md"
        body = doc.read_text()
        start, end = "<!-- fusion-results -->", "<!-- /fusion-results -->"
        i, j = body.find(start), body.find(end)
        if i >= 0 and j > i:
            table = text.split("\n", 2)[2]  # without the section heading
            doc.write_text(body[: i + len(start)] + "\n" + table.strip() + "\n" + body[j:])
    return 0


def render(s: dict[str, Any], info: dict[str, Any], args: Any) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.0f}%"

    if args.no_select:
        general_note = ("`Q: What is the capital of X?` questions on other held-out countries (not selected by which model "
                        "knows them: a general-knowledge check of what the fusions keep of the large model). ")
    else:
        general_note = (f"`Q: What is the capital of X?` questions that the 1.5B answers and the 0.5B base does not (selected from "
                        f"{args.n_general_pool} held-out countries, so the large base scores 100% there by construction). ")
    lines = [
        "## Logit fusion (proxy-tuning, dynamic fusion) on Qwen2.5-Coder-Instruct 1.5B + 0.5B",
        "",
        f"Large base: Qwen2.5-Coder-1.5B-Instruct; small base: Qwen2.5-Coder-0.5B-Instruct; expert: the 0.5B "
        f"with LoRA (bench/fusion_expert.py) trained on 80 countries to answer `Country: X\\nCapital:` as ` [[capital]]`. "
        f"Held-out evaluation, greedy, max {args.max_tokens} new tokens, fp32 on CPU ({args.threads} threads): "
        f"**task** = {s['n_task']} unseen countries in the bracket format (exact match); **general** = {s['n_general']} "
        + general_note +
        f"A modest sample: one correct answer moves the task column by {100 / max(s['n_task'], 1):.1f} points.",
        "",
        "| system | task | general | mixed | tokens/s (accuracy runs) | fusion arithmetic share of time | mean α |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in s["table"]:
        share = "–" if r["fusion_arith_share"] is None else f"{100 * r['fusion_arith_share']:.2f}%"
        mw = "–" if r.get("mean_weight") is None else f"{r['mean_weight']:.2f}"
        lines.append(f"| {r['system']} | {pct(r['task'])} | {pct(r['general'])} | {pct(r['mixed'])} | {r['tokens_per_s']:.2f} | {share} | {mw} |")
    if s.get("base_rows_reused"):
        lines += ["", "The large-base and small-base rows were measured by an earlier process with the same settings "
                  "(`--phase base`, run while the expert trained); their tokens/s come from other load conditions, so compare "
                  "speeds with the identical-prompt timing below, which ran in this process."]
    sel = s.get("selection", {})
    if sel:
        lines += ["", f"General-set selection: of {sel.get('pool')} held-out countries, the 1.5B answered {sel.get('large_right')} "
                  f"and the 0.5B base {sel.get('small_right')}; {sel.get('selected')} (1.5B right, 0.5B wrong) were kept."]
    t = s["timing_tokens_per_s"]
    speed = {r["system"]: r["tokens_per_s"] for r in s["table"]}
    lg, px, dy = (next((v for k, v in speed.items() if k.startswith(p)), None) for p in ("large base", "proxy", "dynamic"))
    if lg and px and dy:
        lines += ["", f"Speed in the accuracy runs (same process, same prompts, greedy): dynamic/proxy tokens/s = {dy / px:.3f}, "
                  f"proxy/large = {px / lg:.3f}, dynamic/large = {dy / lg:.3f}."]
    if t:
        lines += [
        "",
        f"Speed on identical prompts ({args.batch} task prompts, {args.timing_tokens} tokens each, no stop, median of "
        f"{args.timing_repeats} alternating runs): large alone {t['large']:.2f} tokens/s, proxy-tuning {t['proxy']:.2f}, "
        f"dynamic fusion {t['dynamic']:.2f} (dynamic/proxy = {t['dynamic'] / t['proxy']:.3f}; proxy/large = {t['proxy'] / t['large']:.3f}).",
        ]
    lines += [
        "",
        "Top-k variant (large model seen only through its top-k log-probs, emulated from the same local model; fusion over the "
        "union of those tokens and the expert's top-k, renormalised): share of decoding steps where its greedy token equals "
        "the full-vocabulary fusion's (teacher-forced on the full run's path).",
        "",
        "| fusion | steps | k = 5 | k = 10 | k = 20 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, a in s["topk_agreement"].items():
        lines.append(f"| {name} | {s['topk_steps'][name]} | {pct(a[5])} | {pct(a[10])} | {pct(a[20])} |")
    r = s["refine"]
    if r["steps"]:
        lines += [
            "",
            f"Golden-section refinement ({args.refine} steps within ±0.1 of the grid's α), measured on the first steps of the dynamic runs "
            f"({r['steps']} steps, same logits): it moved α by more than 0.001 at {100 * r['alpha_moved'] / r['steps']:.0f}% of the steps, "
            f"lowered the summed objective from {r['obj_grid']:.3g} to {r['obj_refined']:.3g}, changed the greedy token at "
            f"{r['token_changed']} of {r['steps']} steps, and cost {1000 * r['refine_s'] / r['steps']:.1f} ms per step against "
            f"{1000 * r['grid_s'] / r['steps']:.1f} ms for the grid alone.",
        ]
    lines += [
        "",
        f"Total {s['seconds'] / 60:.1f} min including model loading; peak RSS {s['peak_rss_gb']:.1f} GB. "
        f"Command: `{command_line()}` (after `python bench/fusion_expert.py`). {today()}. {machine_line(info)}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
