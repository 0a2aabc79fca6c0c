"""Logit fusion with two experts (T = 2) on the Qwen2.5-Coder pair: 1.5B large, 0.5B small base.

Issue 21 item 1 on the real pair (bench/fusion_multi.py runs the same design on a SmolLM2
substitute). Models: Qwen2.5-Coder-1.5B-Instruct as the large model and
Qwen2.5-Coder-0.5B-Instruct as the small base (the GGUF of bench/fusion_assets.py, converted
once to fp32 safetensors), and two experts LoRA-tuned from the 0.5B by bench/fusion_smol.py's
trainer, data and recipe (``capital`` → `` [[X]]``, ``region`` → `` {{X}}``), merged and kept on
disk in the Qwen cache. Prompt sets, scoring, stop strings and token limit are
bench/fusion_smol.py's / bench/fusion_multi.py's, fixed before any result: the reported set
is 20 capital, 20 region and 10 general prompts. Each expert's accuracy on the development
set is recorded with its training.

Arms (greedy): the large model alone, the small base alone, each expert alone,
proxy-tuning (α = 1) with each expert and with both, and dynamic fusion with both (the
shipped defaults; nothing chosen on this set). Paired per-prompt differences and the speed
comparison (proxy vs dynamic, both experts, 16 prompts × 12 tokens, rotating order) are
bench/fusion_multi.py's functions.

The run is long on 2 CPU cores: every finished arm is written to
bench/results/fusion_qwen_multi.json at once, and a re-run skips the arms already there (same
prompts). Models are loaded when an arm first needs them: at most the four of the fused arms
(about 12 GB in fp32).

Tail check on the development set (``--tail-dev``; rule written here before its run). The
``--api`` run showed the server's outputs equal to the local fp32 1.5B cut to its own top-k, so
this check uses that local emulation only (no server). Prompts: bench/fusion_smol.py's
development set, disjoint from the reported one, cut by ``API_SUBSET``'s rule (the first 10
capital, 10 region and 5 general development prompts: 25). Proxy-tuning, both experts, α = 1,
k = 5, 10, 20, each of ``large_tail`` small, uniform, floor; reference: exact fusion (the 1.5B
local in fp32). Measures, against exact: teacher-forced token agreement (as in ``--api``) and
the prompts whose output equals exact's. Rule: the tail with the most token agreement summed
over the three k is the one recommended for a small base unlike the served model; a tie goes
to more equal outputs summed over k, then to ``small`` (the shipped default). Only if that
tail is not ``small``, the same local top-k runs on the ``--api`` prompts of the reported set
(``API_SUBSET``) for the chosen tail and for ``small`` (a re-run that checks a437593's outputs),
paired against exact. The shipped default is not changed by this run. Results:
bench/results/fusion_qwen_tail_dev.json, section ``fusion_qwen_tail_dev``.

``--tail-why`` (analysis, nothing chosen): the same 25 development prompts, ``small`` tail, each
k; teacher-forced on exact fusion's output, every step where the top-k pick differs from exact's
token, with that token's rank in the large model's full distribution, whether it was returned,
whether the cap below the lowest returned log-probability bound it, and the token picked.
Results: bench/results/fusion_qwen_tail_why.json, section ``fusion_qwen_tail_why``.

    pip install -e ".[bench-large]"                     # the 1.5B GGUF parts
    python bench/fusion_qwen_multi.py [--threads 2] [--steps 12] [--repeats 3]
    python bench/fusion_qwen_multi.py --tail-dev --threads 1 [--write-docs]
    python bench/fusion_qwen_multi.py --tail-why --threads 1 [--write-docs]
    python bench/fusion_qwen_multi.py --render [--write-docs]     # both sections
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import fmt, loadavg, machine, machine_line, publish_results, results_path, save_results, stamp
from fusion_assets import DEFAULT_CACHE, hf_dir
from fusion_general import fold
from fusion_multi import MAX_TOKENS, SKILL_ORDER, paired, run_arm, timing
from fusion_smol import SKILLS, STOPS, correct, prompt_sets, train

STEM = "fusion_qwen_multi"
SECTIONS = {STEM: "docs/benchmarks.md"}
ARMS = ("large", "small", "expert capital", "expert region", "proxy capital", "proxy region", "proxy both", "dynamic both")
TITLES = {
    "large": "1.5B large alone", "small": "0.5B small base alone", "expert capital": "expert `capital` alone (0.5B + LoRA)",
    "expert region": "expert `region` alone (0.5B + LoRA)", "proxy capital": "proxy-tuning, `capital` (α=1)",
    "proxy region": "proxy-tuning, `region` (α=1)", "proxy both": "proxy-tuning, both (α=1 each)", "dynamic both": "dynamic fusion, both",
}
MODELS = {"large": "Qwen2.5-Coder-1.5B-Instruct", "small": "Qwen2.5-Coder-0.5B-Instruct"}
PAIRS = (("dynamic both", "proxy both"), ("dynamic both", "proxy capital"), ("dynamic both", "proxy region"),
         ("proxy both", "proxy capital"), ("proxy both", "proxy region"), ("proxy both", "large"), ("dynamic both", "large"))


def expert_path(skill: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The merged 0.5B expert of ``skill`` (fp32 safetensors directory)."""
    return cache / f"multi-expert-{skill}"


def needs(arm: str) -> set[str]:
    """Models an arm reads (keys of the model dict)."""
    if arm in ("large", "small"):
        return {arm}
    if arm.startswith("expert "):
        return {arm.split()[1]}
    experts = set(SKILLS) if arm.endswith("both") else {arm.split()[1]}
    return {"large", "small", *experts}


def load(name: str, m: dict[str, Any]) -> None:
    """Load model ``name`` ("large", "small" or a skill) into ``m`` (hf-causal, fp32, batches of 16)."""
    load_dir(name, hf_dir(name) if name in MODELS else expert_path(name), m)


def load_dir(name: str, path: Path, m: dict[str, Any]) -> None:
    """Load the model directory ``path`` into ``m[name]``."""
    from blackbox.provider import load_provider

    t0 = time.perf_counter()
    m[name] = load_provider(f"hf-causal:{path}?max_batch=16")
    print(json.dumps({"loaded": name, "s": round(time.perf_counter() - t0, 1), "load": loadavg()}), flush=True)


SWEEP = DEFAULT_CACHE / "multi_expert_sweep.json"
# The training recipe is chosen on the development set only, by a rule fixed before the
# sweep ran: the (steps, lr) whose two experts answer the most development prompts of their
# own skill (10 each); a tie goes to more general development answers kept, then fewer steps.
# (12, 3e-3) is bench/fusion_smol.py's recipe for SmolLM2.
SWEEP_GRID = ((12, 3e-3), (40, 1e-3), (40, 3e-3))


def sweep_dir(steps: int, lr: float, skill: str) -> Path:
    return DEFAULT_CACHE / f"sweep-{steps}-{lr:g}-{skill}"


def sweep(threads: int, batch: int) -> dict[str, Any]:
    """Train both experts for every recipe of ``SWEEP_GRID``, score them on the development set
    and keep the chosen recipe's experts as the benchmark's (the others are deleted)."""
    import shutil

    rows = prompt_sets()["dev"]
    done = json.loads(SWEEP.read_text()) if SWEEP.is_file() else {"batch": batch, "threads": threads, "runs": [],
                                                                  "rule": "most own-skill development answers (both experts), then general, then fewer steps"}
    for steps, lr in SWEEP_GRID:
        if any(r["steps"] == steps and r["lr"] == lr for r in done["runs"]):
            continue
        run: dict[str, Any] = {"steps": steps, "lr": lr, "experts": {}}
        for skill in SKILLS:
            out = sweep_dir(steps, lr, skill)
            train(skill, steps, threads, lr=lr, batch=batch, base=hf_dir("small"), out=out)
            m: dict[str, Any] = {}
            load_dir(skill, out, m)
            res = run_arm(f"expert {skill}", m, [r["prompt"] for r in rows])
            sc = score(rows, res["texts"])
            run["experts"][skill] = {"by_skill": sc["by_skill"], "outputs": sc["outputs"], "train": json.loads((out / "train_info.json").read_text())}
            del m
            gc.collect()
        run["own"] = sum(run["experts"][s]["by_skill"][s][0] for s in SKILLS)
        run["general"] = sum(run["experts"][s]["by_skill"]["general"][0] for s in SKILLS)
        print(json.dumps({k: v for k, v in run.items() if k != "experts"} | {"by_skill": {s: e["by_skill"] for s, e in run["experts"].items()}}), flush=True)
        done["runs"].append(run)
        SWEEP.write_text(json.dumps(done))
    best = max(done["runs"], key=lambda r: (r["own"], r["general"], -r["steps"]))
    done["chosen"] = {"steps": best["steps"], "lr": best["lr"]}
    for r in done["runs"]:
        for skill in SKILLS:
            d = sweep_dir(r["steps"], r["lr"], skill)
            if r is best and d.is_dir():
                if expert_path(skill).exists():
                    shutil.rmtree(expert_path(skill))
                d.replace(expert_path(skill))
            elif d.is_dir():
                shutil.rmtree(d)
    SWEEP.write_text(json.dumps(done))
    return done


def train_experts(steps: int, threads: int, batch: int, lr: float) -> None:
    """Train each missing expert with bench/fusion_smol.py's trainer from the 0.5B."""
    for skill in SKILLS:
        if not (expert_path(skill) / "train_info.json").is_file():
            train(skill, steps, threads, lr=lr, batch=batch, base=hf_dir("small"), out=expert_path(skill))
            gc.collect()


def score(rows: list[dict[str, Any]], texts: list[str]) -> dict[str, Any]:
    """Per-prompt correctness, accuracy and counts by skill of one arm's outputs."""
    ok = [correct(r, t) for r, t in zip(rows, texts)]
    return {"correct": ok, "accuracy": sum(ok) / len(ok), "outputs": texts,
            "by_skill": {s: [sum(o for o, r in zip(ok, rows) if r["skill"] == s), sum(r["skill"] == s for r in rows)] for s in SKILL_ORDER}}


def expert_dev(skill: str, m: dict[str, Any]) -> dict[str, Any]:
    """Train info and the expert's greedy accuracy on the development set (all 30 prompts)."""
    rows = prompt_sets()["dev"]
    out = run_arm(f"expert {skill}", m, [r["prompt"] for r in rows])
    info = json.loads((expert_path(skill) / "train_info.json").read_text())
    return {"train": info, "dev": {**score(rows, out["texts"]), "seconds": round(out["seconds"], 1)}}


def fresh(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """An empty results record for this prompt set (no arm measured yet)."""
    info = machine()
    return {**stamp(info), "set": "eval", "n": len(rows), "skills": [r["skill"] for r in rows], "prompts": [r["prompt"] for r in rows],
            "answers": [r["answer"] for r in rows], "max_tokens": MAX_TOKENS, "stops": list(STOPS), "threads": args.threads,
            "models": MODELS, "experts": {}, "arms": {}, "paired": {}, "timing": None, "traces": {}, "complete": False, "resumed": []}


def checkpoint(res: dict[str, Any], api: bool = False) -> None:
    # the API phase keeps the arms' machine record and notes its own load
    if api:
        res["api"]["load_at_end"] = loadavg()
    else:
        res["machine"]["loadavg_at_end"] = loadavg()
    save_results(STEM, res, SECTIONS)


def dynamic_extras(res: dict[str, Any], rows: list[dict[str, Any]], out: dict[str, Any]) -> None:
    """Dynamic fusion's active expert per step, and the weight trace of each skill's first prompt."""
    share = {"capital": 0, "region": 0, "none": 0}
    for ws in out["weights"]:
        for w in ws:
            share["capital" if w[0] > 0 else "region" if w[1] > 0 else "none"] += 1
    res["arms"]["dynamic both"]["active_steps"] = share
    for skill in ("capital", "region"):
        i = next(j for j, r in enumerate(rows) if r["skill"] == skill)
        res["traces"][skill] = {"prompt": rows[i]["prompt"], "tokens": out["token_texts"][i], "weights": [[round(x, 3) for x in w] for w in out["weights"][i]]}


def measure(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rows = prompt_sets()["eval"]
    res = fresh(rows, args)
    path = results_path(STEM)
    if path.is_file() and not args.restart:
        old = json.loads(path.read_text())
        if old.get("prompts") == res["prompts"] and old.get("max_tokens") == MAX_TOKENS:
            res = old
            res["resumed"].append({"date": stamp()["date"], "load": loadavg(), "arms_done": list(old["arms"])})
    if SWEEP.is_file():
        res["expert_sweep"] = json.loads(SWEEP.read_text())
    train_experts(args.steps, args.train_threads, args.batch, args.lr)
    m: dict[str, Any] = {}
    for skill in SKILLS:
        if skill not in res["experts"]:
            load(skill, m)
            res["experts"][skill] = expert_dev(skill, m)
            print(json.dumps({"expert": skill, "dev_by_skill": res["experts"][skill]["dev"]["by_skill"], "load": loadavg()}), flush=True)
            checkpoint(res)
    prompts = [r["prompt"] for r in rows]
    for arm in ARMS:
        if arm in res["arms"]:
            continue
        for name in sorted(needs(arm) - set(m)):
            load(name, m)
        out = run_arm(arm, m, prompts)
        res["arms"][arm] = {**score(rows, out["texts"]), "seconds": round(out["seconds"], 2), "load": loadavg()}
        if arm == "dynamic both":
            dynamic_extras(res, rows, out)
        print(json.dumps({"arm": arm, "accuracy": res["arms"][arm]["accuracy"], "by_skill": res["arms"][arm]["by_skill"], "s": res["arms"][arm]["seconds"],
                          "load": loadavg()}), flush=True)
        checkpoint(res)
    res["paired"] = {f"{a} vs {b}": paired(res["arms"][a]["correct"], res["arms"][b]["correct"]) for a, b in PAIRS}
    checkpoint(res)
    if res["timing"] is None and args.repeats > 0:
        for name in sorted(needs("proxy both") - set(m)):
            load(name, m)
        res["timing"] = {**timing(m, prompts[:16], args.repeats), "load": loadavg()}
        print(json.dumps({"timing": res["timing"]}), flush=True)
    res["complete"] = res["timing"] is not None
    checkpoint(res)


# --- the large model behind llama.cpp's server (issue 21 item 3 with a genuinely different small base) ---
# Fixed before any API result: the first 10 capital, 10 region and 5 general prompts of the
# reported set; proxy-tuning with both experts (α = 1) and the default tail, as
# bench/fusion_api.py runs it on the SmolLM2 substitute; k = 5, 10, 20.
API_SUBSET = {"capital": 10, "region": 10, "general": 5}
API_ALIAS = "qwen15"


def api_rows(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the API subset in the reported set (the first of each skill, in order)."""
    left = dict(API_SUBSET)
    out = []
    for i, r in enumerate(rows):
        if left.get(r["skill"], 0) > 0:
            left[r["skill"]] -= 1
            out.append(i)
    return out


def measure_api(args: argparse.Namespace) -> None:
    """Exact fusion (1.5B local) vs top-k fusion with the 1.5B GGUF behind llama.cpp's server."""
    import torch

    from blackbox.client import Client
    from blackbox.methods.fusion.decode import LogitFusion
    from blackbox.provider import load_provider
    from fusion_api import _config, forced_rows, served_generate, teacher_forced  # puts tests/providers on the path
    from fusion_assets import assemble

    import llama_server

    torch.set_num_threads(args.threads)
    res = json.loads(results_path(STEM).read_text())
    rows_all = prompt_sets()["eval"]
    idx = api_rows(rows_all)
    rows = [rows_all[i] for i in idx]
    prompts = [r["prompt"] for r in rows]
    api = {"index": idx, "ks": args.ks, "date": stamp()["date"], "load_at_start": loadavg(), "mode": "proxy, both experts, alpha=1", "per_k": {}}
    m: dict[str, Any] = {}
    for name in ("large", "small", *SKILLS):
        load(name, m)
    experts = [m[s] for s in SKILLS]
    t0 = time.perf_counter()
    exact = LogitFusion(m["large"], m["small"], experts, _config()).generate(prompts)
    ok_exact = [correct(r, t) for r, t in zip(rows, exact.texts)]
    api["exact"] = {"correct": ok_exact, "outputs": exact.texts, "tokens": exact.n_tokens, "seconds": round(time.perf_counter() - t0, 2)}
    res["api"] = api
    checkpoint(res, api=True)
    forced = forced_rows(LogitFusion(m["large"], m["small"], experts, _config(large_top_k=20)), prompts, exact.tokens)
    # the truncation alone: the local 1.5B's own top-k with the same tail (no server, no quantisation)
    for k in args.ks:
        local = LogitFusion(m["large"], m["small"], experts, _config(large_top_k=k))
        got = local.generate(prompts)
        ok = [correct(r, t) for r, t in zip(rows, got.texts)]
        api.setdefault("local_top_k", {})[str(k)] = {"correct": ok, "outputs": got.texts, "paired_vs_exact": paired(ok, ok_exact),
                                                     "same_output": sum(a == b for a, b in zip(got.texts, exact.texts)),
                                                     "token_agreement": list(teacher_forced(local, prompts, exact.tokens, forced, None))}
        print(json.dumps({"local k": k, "accuracy": sum(ok), "agree": api["local_top_k"][str(k)]["token_agreement"]}), flush=True)
    checkpoint(res, api=True)
    del m["large"], experts, local
    gc.collect()  # the 1.5B in fp32 leaves before the server's copy comes in
    experts = [m[s] for s in SKILLS]
    gguf = assemble("large")
    with llama_server.serve(n_threads=args.threads, extra=("--model", str(gguf), "--model_alias", API_ALIAS, "--verbose", "false")) as srv:
        flags = dict(zip(srv.argv[3::2], srv.argv[4::2]))  # a repeated flag: the server's argparse keeps the last value
        api["server"] = "-m llama_cpp.server " + " ".join(f"{f} {Path(v).name if v.endswith('.gguf') else v}" for f, v in flags.items())
        prov = Client(load_provider(f"openai:{API_ALIAS}?base_url={srv.base_url}&completions=1&timeout=600"))
        for k in args.ks:
            fusion = LogitFusion(prov, m["small"], experts, _config(large_top_k=k))
            got, secs, requests = served_generate(fusion, prompts, srv)
            ok = [correct(r, t) for r, t in zip(rows, got.texts)]
            agree = teacher_forced(fusion, prompts, exact.tokens, forced, prov)
            api["per_k"][str(k)] = {"correct": ok, "outputs": got.texts, "same_output": sum(a == b for a, b in zip(got.texts, exact.texts)),
                                    "token_agreement": list(agree), "seconds": round(secs, 2), "requests": requests, "tokens": got.n_tokens,
                                    "paired_vs_exact": paired(ok, ok_exact), "load": loadavg()}
            print(json.dumps({"k": k, "accuracy": sum(ok), "exact": sum(ok_exact), "agree": agree, "s": round(secs, 1), "requests": requests}), flush=True)
            checkpoint(res, api=True)


# --- the tail check on the development set (rule in the module doc, fixed before the run) ---
TAIL_STEM = "fusion_qwen_tail_dev"
TAILS = ("small", "uniform", "floor")


def choose_tail_dev(per_tail: dict[str, dict[str, Any]], ks: list[int]) -> str | None:
    """The module doc's rule: most token agreement summed over k, then most equal outputs, then ``small``."""
    if set(per_tail) != set(TAILS) or any(set(v) != {str(k) for k in ks} for v in per_tail.values()):
        return None  # an unfinished run chooses nothing
    key = {t: (sum(x["token_agreement"][0] for x in v.values()), sum(x["same_output"] for x in v.values()), t == "small") for t, v in per_tail.items()}
    return max(TAILS, key=lambda t: key[t])


def tail_runs(m: dict[str, Any], rows: list[dict[str, Any]], tails: list[str], ks: list[int], rec: dict[str, Any], save: Any) -> None:
    """Exact fusion and the local top-k fusion for each tail and k on ``rows``, into ``rec``."""
    from blackbox.methods.fusion.decode import LogitFusion
    from fusion_api import _config, forced_rows, teacher_forced

    prompts = [r["prompt"] for r in rows]
    experts = [m[s] for s in SKILLS]
    t0 = time.perf_counter()
    exact = LogitFusion(m["large"], m["small"], experts, _config()).generate(prompts)
    ok_exact = [correct(r, t) for r, t in zip(rows, exact.texts)]
    rec["exact"] = {"correct": ok_exact, "outputs": exact.texts, "tokens": exact.n_tokens, "seconds": round(time.perf_counter() - t0, 2), "load": loadavg()}
    save()
    forced = forced_rows(LogitFusion(m["large"], m["small"], experts, _config(large_top_k=20)), prompts, exact.tokens)
    for tail in tails:
        for k in ks:
            fusion = LogitFusion(m["large"], m["small"], experts, _config(large_top_k=k, large_tail=tail))
            t0 = time.perf_counter()
            got = fusion.generate(prompts)
            secs = time.perf_counter() - t0
            ok = [correct(r, t) for r, t in zip(rows, got.texts)]
            x = {"correct": ok, "outputs": got.texts, "paired_vs_exact": paired(ok, ok_exact), "same_output": sum(a == b for a, b in zip(got.texts, exact.texts)),
                 "token_agreement": list(teacher_forced(fusion, prompts, exact.tokens, forced, None)), "seconds": round(secs, 2), "load": loadavg()}
            rec.setdefault("tails", {}).setdefault(tail, {})[str(k)] = x
            print(json.dumps({"tail": tail, "k": k, "accuracy": sum(ok), "exact": sum(ok_exact), "same": x["same_output"], "agree": x["token_agreement"],
                              "s": x["seconds"], "load": loadavg()}), flush=True)
            save()


def measure_tail_dev(args: argparse.Namespace) -> None:
    """The development tail check, then (only for a chosen tail other than ``small``) the reported API subset."""
    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    res: dict[str, Any] = {**stamp(info), "threads": args.threads, "models": MODELS, "ks": args.ks, "mode": "proxy, both experts, alpha=1",
                           "max_tokens": MAX_TOKENS, "rule": "most token agreement summed over k, then most equal outputs, then small", "chosen": None}

    def save() -> None:
        info["loadavg_at_end"] = loadavg()
        save_results(TAIL_STEM, res, {TAIL_STEM: "docs/benchmarks.md"})

    m: dict[str, Any] = {}
    for name in ("large", "small", *SKILLS):
        load(name, m)
    sets = prompt_sets()
    for which in ("dev", "eval"):
        if which == "eval" and res["chosen"] in (None, "small"):
            break
        idx = api_rows(sets[which])
        rows = [sets[which][i] for i in idx]
        res[which] = {"index": idx, "prompts": [r["prompt"] for r in rows], "skills": [r["skill"] for r in rows]}
        tails = list(TAILS) if which == "dev" else ["small", res["chosen"]]
        tail_runs(m, rows, tails, args.ks, res[which], save)
        if which == "dev":
            res["chosen"] = choose_tail_dev(res["dev"]["tails"], args.ks)
            print(json.dumps({"chosen": res["chosen"]}), flush=True)
        if which == "eval":
            res["eval"]["paired_vs_small"] = {str(k): paired(res["eval"]["tails"][res["chosen"]][str(k)]["correct"], res["eval"]["tails"]["small"][str(k)]["correct"])
                                              for k in args.ks}
        save()


def render_tail_dev(r: dict[str, Any]) -> str:
    """The ``fusion_qwen_tail_dev`` section (pure: everything from its results file)."""
    lines = ["## Top-k tail of the large model on the Qwen pair (1.5B large, 0.5B small base): development check",
             "",
             f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}; {r['threads']} torch thread(s), `nice -n 5`. "
             f"Large {r['models']['large']} and small base {r['models']['small']} (fp32), both experts of the `fusion_qwen_multi` section; "
             f"{r['mode']}; greedy, at most {r['max_tokens']} tokens. The large model's top-k is the local fp32 1.5B's own (the `--api` run showed the "
             "server's outputs identical to it); its other tokens are filled by `large_tail`. Reference: exact fusion (whole vocabulary). "
             "Token agreement is teacher-forced on the exact output; *same output*: prompts whose text equals exact's. "
             f"Rule fixed before the run (bench/fusion_qwen_multi.py's docstring): {r['rule']}."]
    for which, title in (("dev", "Development set"), ("eval", "Reported set, `--api` prompts (run only because the development rule picked a tail other than `small`)")):
        d = r.get(which)
        if not d or "exact" not in d:
            continue
        n = len(d["index"])
        counts = {s: d["skills"].count(s) for s in SKILL_ORDER}
        ex = d["exact"]
        lines += ["", f"**{title}**: the first {counts['capital']} capital, {counts['region']} region and {counts['general']} general prompts ({n}). "
                  f"Exact fusion: {sum(ex['correct'])}/{n} correct, {ex['tokens']} tokens, {ex['seconds']:.0f} s.", "",
                  "| tail | k | accuracy | vs exact: points (better / worse) | same output as exact | token agreement | seconds |", "|---|---|---|---|---|---|---|"]
        for tail, per_k in d.get("tails", {}).items():
            for k, x in per_k.items():
                pv, (ag, tot) = x["paired_vs_exact"], x["token_agreement"]
                lines.append(f"| `{tail}` | {k} | {sum(x['correct'])}/{n} | {100 * pv['diff']:+.1f} ({pv['better']} / {pv['worse']}) | {x['same_output']}/{n} | "
                             f"{ag}/{tot} ({100 * ag / max(tot, 1):.1f}%) | {x['seconds']:.0f} |")
        if which == "dev":
            sums = [f"`{t}` {sum(x['token_agreement'][0] for x in v.values())} agreeing tokens, {sum(x['same_output'] for x in v.values())} equal outputs"
                    for t, v in d.get("tails", {}).items()]
            lines += ["", "Summed over k: " + "; ".join(sums) + ". "
                      + (f"Recommended tail for a small base unlike the served model: **`{r['chosen']}`**." if r.get("chosen") else "*Run unfinished: nothing chosen.*")]
        pvs = d.get("paired_vs_small")
        if pvs:
            lines += ["", f"`{r['chosen']}` vs `small`, paired per prompt: " + "; ".join(
                f"k = {k}: {100 * p['diff']:+.1f} points ({p['better']} / {p['worse']}, p = {fmt(p['p'])})" for k, p in pvs.items()) + "."]
    if r.get("chosen") == "small":
        lines += ["", "The rule kept `small`, so the reported prompts were not re-run (their figures are the `fusion_qwen_multi` section's)."]
    return "\n".join(lines)


# --- why the small tail disagrees with exact (analysis of the dev check; no choice made) ---
WHY_STEM = "fusion_qwen_tail_why"


def _rank(lp: Any, tok: int) -> int:
    """1-based rank of ``tok`` in the log-probabilities ``lp`` (ties count in its favour)."""
    return 1 + int((lp > lp[tok]).sum())


def tail_why_steps(fusion: Any, toks: list[int], rr: dict[str, list[Any]], k: int) -> list[dict[str, Any]]:
    """Every step of one exact output where the ``small``-tail top-k pick differs from the exact token."""
    import torch

    from blackbox.methods.fusion import arith

    out = []
    for s, tok in enumerate(toks):
        lpl = torch.log_softmax(rr["large"][s].double(), -1)
        top = torch.topk(lpl, k)
        zs, ze = rr["small"][s].double(), torch.stack([rr["e1"][s], rr["e2"][s]]).double()
        zl = arith.topk_fill(top.indices, top.values, zs, "small")
        pick = int(torch.argmax(fusion.fuse_row(zl, zs, ze)[0]))
        if pick == tok:
            continue
        # the same fill without the cap (arith.topk_fill's formula): does the cap decide the step?
        seen = torch.zeros_like(zs, dtype=torch.bool)
        seen[top.indices] = True
        lq = torch.log_softmax(zs, -1)
        missing = torch.log1p(-torch.logsumexp(top.values, 0).exp().clamp_max(1 - 1e-12))
        raw = missing + lq - torch.logsumexp(lq[~seen], 0)
        raw[top.indices] = top.values
        uncapped = int(torch.argmax(fusion.fuse_row(raw, zs, ze)[0]))
        # proxy, alpha = 1: fused = log p_L + sum of expert shifts, so compare each token's shift
        shift = (torch.log_softmax(ze, -1) - lq).sum(0)
        lowest = float(top.values.min())

        def side(t: int) -> dict[str, Any]:
            ins = bool(seen[t])
            return {"id": t, "text": fusion.tokenizer.decode([t]), "large_rank": _rank(lpl, t), "in_top_k": ins, "large_lp": round(float(lpl[t]), 3),
                    "filled_lp": None if ins else round(float(zl[t]), 3), "uncapped_fill": None if ins else round(float(raw[t]), 3),
                    "capped": (not ins) and float(raw[t]) > lowest, "expert_shift": round(float(shift[t]), 3)}

        out.append({"step": s, "exact": side(tok), "top_k": side(pick), "lowest_returned_lp": round(lowest, 3),
                    "uncapped_pick_is_exact": uncapped == tok})
    return out


def why_summary(steps: list[dict[str, Any]]) -> dict[str, int]:
    """Counts over the disagreeing steps of one k."""
    ex = [d["exact"] for d in steps]
    tk = [d["top_k"] for d in steps]
    return {"disagreements": len(steps), "exact_outside": sum(not e["in_top_k"] for e in ex),
            "exact_outside_capped": sum(e["capped"] for e in ex),
            "exact_outside_underfilled": sum((not e["in_top_k"]) and e["filled_lp"] < e["large_lp"] for e in ex),
            "exact_inside_pick_filled": sum(e["in_top_k"] and not t["in_top_k"] for e, t in zip(ex, tk)),
            "pick_inside": sum(t["in_top_k"] for t in tk), "pick_filled_capped": sum(t["capped"] for t in tk),
            "uncapped_fixes": sum(d["uncapped_pick_is_exact"] for d in steps)}


def measure_tail_why(args: argparse.Namespace) -> None:
    """The disagreeing steps of the ``small`` tail on the dev check's prompts (module doc)."""
    import torch

    from blackbox.methods.fusion.decode import LogitFusion
    from fusion_api import _config, forced_rows

    torch.set_num_threads(args.threads)
    info = machine()
    m: dict[str, Any] = {}
    for name in ("large", "small", *SKILLS):
        load(name, m)
    dev = prompt_sets()["dev"]
    idx = api_rows(dev)
    rows = [dev[i] for i in idx]
    prompts = [r["prompt"] for r in rows]
    experts = [m[s] for s in SKILLS]
    exact = LogitFusion(m["large"], m["small"], experts, _config()).generate(prompts)
    forced = forced_rows(LogitFusion(m["large"], m["small"], experts, _config(large_top_k=20)), prompts, exact.tokens)
    res: dict[str, Any] = {**stamp(info), "threads": args.threads, "models": MODELS, "ks": args.ks, "mode": "proxy, both experts, alpha=1, large_tail=small",
                           "index": idx, "skills": [r["skill"] for r in rows], "exact_outputs": exact.texts, "steps": sum(len(t) for t in exact.tokens), "per_k": {}}
    for k in args.ks:
        fusion = LogitFusion(m["large"], m["small"], experts, _config(large_top_k=k, large_tail="small"))
        steps = []
        for p, (toks, rr) in enumerate(zip(exact.tokens, forced)):
            steps += [{"prompt": p, **d} for d in tail_why_steps(fusion, toks, rr, k)]
        res["per_k"][str(k)] = {"summary": why_summary(steps), "steps": steps}
        print(json.dumps({"k": k, **why_summary(steps)}), flush=True)
    info["loadavg_at_end"] = loadavg()
    save_results(WHY_STEM, res, {WHY_STEM: "docs/benchmarks.md"})


def render_tail_why(r: dict[str, Any]) -> str:
    """The ``fusion_qwen_tail_why`` section (pure: everything from its results file)."""
    n = len(r["index"])
    lines = ["## Why the `small` top-k tail disagrees with exact fusion on the Qwen pair: development prompts",
             "",
             f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}; {r['threads']} torch thread(s), `nice -n 5`. "
             f"The {n} development prompts of the `fusion_qwen_tail_dev` section, {r['mode']}, the large model's top-k from its local fp32 copy; "
             f"teacher-forced on exact fusion's output ({r['steps']} steps). For every step where the top-k pick differs from exact's token: "
             "exact's token, its rank in the large model's full distribution, whether it was returned (in the top-k), whether the cap "
             "(just below the lowest returned log-probability) was binding for it (its small-shaped fill was above the cap), and the token top-k chose. "
             "Analysis only: nothing is chosen from it.", "",
             "| k | disagreements | exact's token outside top-k | … of which capped | … filled below its true log-prob | exact's token returned, a filled token chosen | "
             "top-k's pick returned | top-k's pick filled and capped | pick = exact without the cap |", "|---|---|---|---|---|---|---|---|---|"]
    for k, x in r["per_k"].items():
        s = x["summary"]
        lines.append(f"| {k} | {s['disagreements']} | {s['exact_outside']} | {s['exact_outside_capped']} | {s['exact_outside_underfilled']} | "
                     f"{s['exact_inside_pick_filled']} | {s['pick_inside']} | {s['pick_filled_capped']} | {s['uncapped_fixes']} |")
    keys = [{(d["prompt"], d["step"]) for d in x["steps"]} for x in r["per_k"].values()]
    every = [d for d in next(iter(r["per_k"].values()))["steps"] if all((d["prompt"], d["step"]) in ks for ks in keys)]
    allx = [d["exact"] for x in r["per_k"].values() for d in x["steps"]]
    under = [e["large_lp"] - e["filled_lp"] for e in allx if not e["in_top_k"]]
    if allx:
        lines += ["", f"Disagreeing steps shared by every k: {len(every)}. Exact's token at the disagreeing steps (all k): rank "
                  f"{min(e['large_rank'] for e in allx)}–{max(e['large_rank'] for e in allx)} in the large model's distribution"
                  + (f"; where unreturned, filled {min(under):.2f}–{max(under):.2f} nats below its true log-probability" if under else "") + "."]
    for k, x in r["per_k"].items():
        lines += ["", f"Steps at k = {k} (log-probs of the large model: true / filled; *shift*: the experts' summed log-ratio to the small base):", "",
                  "| prompt | step | exact's token | its large rank | true / filled | capped | shift | top-k's token | its large rank | true / filled | shift |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for d in x["steps"]:
            e, t = d["exact"], d["top_k"]

            def lp(v: dict[str, Any]) -> str:
                return f"{v['large_lp']:.2f} / " + ("returned" if v["in_top_k"] else f"{v['filled_lp']:.2f}")

            lines.append(f"| {d['prompt']} ({r['skills'][d['prompt']]}) | {d['step']} | `{e['text']!r}` | {e['large_rank']} | {lp(e)} | "
                         f"{'yes' if e['capped'] else 'no'} | {e['expert_shift']:+.2f} | `{t['text']!r}` | {t['large_rank']} | {lp(t)} | {t['expert_shift']:+.2f} |")
    return "\n".join(lines)


# --- rendering (pure: everything from the results file) ---------------------------------
def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section; a run still in progress renders the arms it has finished."""
    if name == TAIL_STEM:
        return render_tail_dev(r)
    if name == WHY_STEM:
        return render_tail_why(r)
    n = r["n"]
    counts = {s: r["skills"].count(s) for s in SKILL_ORDER}
    ex = r["experts"]
    lines = [
        f"## Logit fusion with two experts (T = 2) on the Qwen2.5-Coder pair (1.5B large, 0.5B small), {r['set']} set of {n} prompts",
        "",
        f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}; {r['threads']} torch thread(s), `nice -n 5`. "
        f"Large {r['models']['large']}, small base {r['models']['small']} (GGUF of bench/fusion_assets.py in fp32). "
        "Experts: the 0.5B LoRA-tuned by bench/fusion_smol.py's trainer on `capital` → ` [[X]]` and `region` → ` {{X}}` "
        "(80 training countries each, never the other skill; merged). "
        f"Prompts fixed in bench/fusion_smol.py before any result: {counts['capital']} capital, {counts['region']} region "
        f"(held-out countries), {counts['general']} general questions. Greedy, at most {r['max_tokens']} tokens, stops `]]`, `}}}}`, newline. "
        "Dynamic fusion runs the shipped defaults (nothing chosen on this set).",
    ]
    sw = r.get("expert_sweep")
    if sw:
        lines += ["", f"Training recipe (bench/fusion_smol.py's trainer, {sw['batch']} rows per step, LoRA on the top 4 blocks) chosen on the "
                  f"development set by a rule fixed before the sweep: {sw['rule']}. Development answers of each expert (10 prompts per skill):", "",
                  "| steps | lr | `capital` expert: capital | `region` expert: region | general kept (both experts, of 20) | chosen |", "|---|---|---|---|---|---|"]
        for run in sw["runs"]:
            e = run["experts"]
            pick = "**yes**" if sw.get("chosen") == {"steps": run["steps"], "lr": run["lr"]} else ""
            lines.append(f"| {run['steps']} | {run['lr']:g} | {e['capital']['by_skill']['capital'][0]}/10 | {e['region']['by_skill']['region'][0]}/10 | "
                         f"{run['general']} | {pick} |")
    if ex:
        lines += ["", "| expert | steps × rows | lr | LoRA blocks | training (s) | development set: own skill | other skill | general |", "|---|---|---|---|---|---|---|---|"]
        for skill, e in ex.items():
            t, d = e["train"], e["dev"]["by_skill"]
            other = "region" if skill == "capital" else "capital"
            lines.append(f"| `{skill}` | {t['steps']} × {t['batch']} | {t['lr']:g} | top {t['lora_layers']} | {t['seconds']:.0f} | "
                         f"{d[skill][0]}/{d[skill][1]} | {d[other][0]}/{d[other][1]} | {d['general'][0]}/{d['general'][1]} |")
    lines += ["", "| arm | accuracy | capital | region | general | seconds | load (1 min) at end |", "|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        a = r["arms"].get(arm)
        if a is None:
            lines.append(f"| {TITLES[arm]} | *not finished* | | | | | |")
            continue
        cells = " | ".join(f"{a['by_skill'][s][0]}/{a['by_skill'][s][1]}" for s in SKILL_ORDER)
        lines.append(f"| {TITLES[arm]} | {sum(a['correct'])}/{n} ({100 * a['accuracy']:.1f}%) | {cells} | {a['seconds']:.0f} | {a['load'][0]} |")
    if r["paired"]:
        lines += ["", "Paired, per prompt (better / worse; two-sided sign test):", "", "| comparison | accuracy difference | better | worse | p |", "|---|---|---|---|---|"]
        for k, v in r["paired"].items():
            lines.append(f"| {k} | {100 * v['diff']:+.1f} points | {v['better']} | {v['worse']} | {'< 0.001' if v['p'] < 0.001 else fmt(v['p'])} |")
        p = r["paired"]
        met = [p[f"dynamic both vs {b}"]["diff"] >= 0 for b in ("proxy both", "proxy capital", "proxy region")]
        lines += ["", "Target (dynamic ≥ proxy-tuning with both and ≥ each single-expert proxy, paired, all prompts): "
                  + ("**met**." if all(met) else "**missed** (" + ", ".join(b for b, ok in zip(("proxy both", "proxy capital", "proxy region"), met) if not ok) + ").")]
    cap = [i for i, sk in enumerate(r["skills"]) if sk == "capital"]
    if cap and r["arms"]:
        # the skill's knowledge apart from its format: the first line without brackets equals the capital
        loose = {arm: sum(fold(a["outputs"][i].strip().lstrip("[").strip()) == fold(r["answers"][i]) for i in cap) for arm, a in r["arms"].items()}
        lines += ["", f"Capital prompts whose answer names the right capital in any format (opening brackets ignored), of {len(cap)}: "
                  + ", ".join(f"{TITLES[a]} {v}" for a, v in loose.items()) + "."]
    act = r["arms"].get("dynamic both", {}).get("active_steps")
    if act:
        lines.append(f"Dynamic fusion's active expert over all its steps: `capital` {act['capital']}, `region` {act['region']}, none (α = 0) {act['none']}.")
    t = r.get("timing")
    if t:
        b = t["best_s_per_token"]
        ratio = t["ratio_dynamic_to_proxy"]
        lines += ["", f"Speed ({t['prompts']} prompts, {t['tokens']} tokens, no stop, best of {t['repeats']} in rotating order, load {t['load'][0]} at end): "
                  f"proxy (both) {b['proxy both']:.3f} s per token, dynamic (both) {b['dynamic both']:.3f} s per token: **{ratio:.2f}×** proxy's time "
                  f"(target ≤ 1.10×: {'met' if ratio <= 1.10 else 'missed'} on best times). Every repeat, s per token: proxy "
                  + ", ".join(f"{x:.3f}" for x in t["s_per_token"]["proxy both"]) + "; dynamic " + ", ".join(f"{x:.3f}" for x in t["s_per_token"]["dynamic both"])
                  + f"; ratio of medians {statistics.median(t['s_per_token']['dynamic both']) / statistics.median(t['s_per_token']['proxy both']):.2f}× "
                  "(the machine was shared with other jobs, so single repeats vary by more than the difference between the arms)."]
    a = r.get("api")
    if a and a.get("per_k"):
        n_api = len(a["index"])
        ex = a["exact"]
        when = f"Run {a['date']}, 1-min load average {a['load_at_start'][0]} at start, {a.get('load_at_end', [None])[0]} at end. "
        lines += ["", f"**Large model behind an API.** {when}The 1.5B GGUF served by `{a['server']}` (llama.cpp; its own quantised weights) and reached "
                  f"as `openai:{API_ALIAS}?base_url=...&completions=1` through top-k log-probabilities (default tail); the 0.5B small base and both "
                  f"experts local. {a['mode']}; prompts fixed before the run: the first {API_SUBSET['capital']} capital, {API_SUBSET['region']} region and "
                  f"{API_SUBSET['general']} general prompts of the reported set ({n_api}). Exact: the same fusion with the 1.5B local in fp32 "
                  f"(`hf-causal`): {sum(ex['correct'])}/{n_api} correct, {ex['seconds']:.0f} s for {ex['tokens']} tokens. Token agreement is "
                  "teacher-forced on the exact output. *local top-k*: the local fp32 1.5B's own top-k with the same tail (the truncation alone, "
                  "without the server's quantised arithmetic).", "",
                  "| k (large model) | accuracy | vs exact: points (better / worse) | same output as exact | token agreement | requests | seconds |", "|---|---|---|---|---|---|---|"]
        for where, per_k in (("server", a["per_k"]), ("local top-k", a.get("local_top_k", {}))):
            for k, x in per_k.items():
                pv, (ag, tot) = x["paired_vs_exact"], x["token_agreement"]
                cost = f"{x['requests']} | {x['seconds']:.0f}" if where == "server" else "— | —"
                lines.append(f"| {k} ({where}) | {sum(x['correct'])}/{n_api} | {100 * pv['diff']:+.1f} ({pv['better']} / {pv['worse']}) | {x['same_output']}/{n_api} | "
                             f"{ag}/{tot} ({100 * ag / max(tot, 1):.1f}%) | {cost} |")
        loc = a.get("local_top_k", {})
        if loc:
            same = ", ".join(f"k = {k}: {sum(x == y for x, y in zip(a['per_k'][k]['outputs'], loc[k]['outputs']))}/{n_api}" for k in a["per_k"] if k in loc)
            lines += ["", f"Server outputs identical to the local top-k's: {same} (so what is lost is the truncation and its tail, not the server)."]
        k20 = a["per_k"].get("20")
        if k20:
            gap = 100 * k20["paired_vs_exact"]["diff"]
            lines += ["", f"Target: API fusion at k = 20 within 2 points of exact: {gap:+.1f} points — **{'met' if abs(gap) <= 2 else 'missed'}**."]
    if not r.get("complete"):
        lines += ["", f"*Run in progress when rendered: {len(r['arms'])} of {len(ARMS)} arms finished"
                  + ("" if r.get("timing") else ", speed not yet measured") + ".*"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-threads", type=int, default=1, help="torch threads while training the experts")
    ap.add_argument("--steps", type=int, default=12, help="training steps per expert (fusion_smol's recipe)")
    ap.add_argument("--batch", type=int, default=8, help="training rows per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--repeats", type=int, default=3, help="speed repeats per arm (0: skip the speed comparison)")
    ap.add_argument("--restart", action="store_true", help="ignore finished arms in the results file")
    ap.add_argument("--sweep", action="store_true", help="only choose the training recipe on the development set (SWEEP_GRID)")
    ap.add_argument("--api", action="store_true", help="after the arms: top-k fusion with the 1.5B behind llama.cpp's server vs exact (API_SUBSET)")
    ap.add_argument("--tail-dev", action="store_true", help="the large_tail check on the development set (module doc), local top-k only")
    ap.add_argument("--tail-why", action="store_true", help="the small tail's disagreeing steps on the dev check's prompts (module doc)")
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if args.sweep:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(sweep(args.train_threads, args.batch)["chosen"]))
        return 0
    if args.tail_dev:
        measure_tail_dev(args)
        publish_results(TAIL_STEM, render_section, args.write_docs)
        return 0
    if args.tail_why:
        measure_tail_why(args)
        publish_results(WHY_STEM, render_section, args.write_docs)
        return 0
    if args.api:
        measure_api(args)
    elif not args.render:
        measure(args)
    publish_results(STEM, render_section, args.write_docs)
    for stem in (TAIL_STEM, WHY_STEM):
        if args.render and results_path(stem).is_file():
            publish_results(stem, render_section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
