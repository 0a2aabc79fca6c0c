"""ECO unlearning on SmolLM2-135M, completion style: forget the capitals of some countries, keep the rest.

The first benchmark of ECO (3-shot ``Capital of X:`` completions, no chat template) and its
ablations (no gate, gate variants, corruption families, search rules). The plain-question,
chat-mode benchmark on three models and three scopes is bench/eco.py.

1. Knowledge probe: a 3-shot completion prompt ("Q: What is the capital of X?\\nA:") for every
   country in ``countryinfo``; a country is *known* when the greedy answer contains its capital.
2. Sets: ``--forget-n`` known countries to forget; the other known countries to retain;
   countries the model does not know are kept out of the fit entirely and serve as unseen
   near neighbours for the gate. General prompts: everyday questions, arithmetic, other
   questions about countries (currency, language, continent), and short fortunes.
3. ``blackbox.methods.eco.job.fit`` (gate trained on 3 question templates, calibrated at
   1% false positives; bracket + bisect strength search; Gaussian noise on the entity's tokens).
4. Held-out evaluation: 5 unseen paraphrase templates + a misspelled name for the forget
   set (gate recall, accuracy); unseen templates, unseen countries and held-out general
   prompts for the false-positive rate; general outputs compared byte for byte.
5. Ablations: no gate (corrupt every prompt), gate variants (plain n-gram classifier
   without entity features or hard negatives; with MiniLM embeddings), token selection,
   every corruption family, and the search rules (bracket, reference central difference,
   clipped central difference, vector version) on the same cliff.

Prints JSON lines and writes the summary to ``bench/results/eco_completion.json``; ``--write-docs``
renders from that file the ``eco_completion`` section of docs/benchmarks.md (``--render``
re-renders without measuring).

    python bench/eco_completion.py [--forget-n 15] [--threads 2] [--quick] [--write-docs]
    python bench/eco_completion.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from eco_data import EVERYDAY_COMPLETION as EVERYDAY, fortunes
from _common import command_line, emit, fmt, loadavg, machine, machine_line, publish_results, save_results, today

SHOTS = (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"))
FEWSHOT = "".join(f"Capital of {c}: {k}\n" for c, k in SHOTS) + "{q}"
TRAIN_TEMPLATES = ("Capital of {c}:", "The capital of {c} is")
HELDOUT_TEMPLATES = (
    "Capital city of {c}:",
    "{c}'s capital:",
    "Which city is the capital of {c}? Answer:",
)
ATTRIBUTE_TEMPLATES = ("Currency of {c}:", "Continent of {c}:", "Language of {c}:")


def countries() -> list[tuple[str, str]]:
    """(name, capital) pairs from countryinfo with a one-word-or-simple name and a capital."""
    import countryinfo

    out = []
    for c in countryinfo.all_countries():
        try:
            name, cap = c.name(), c.capital()
        except Exception:  # noqa: BLE001 - a few entries lack fields
            continue
        if isinstance(cap, list):
            cap = cap[0] if cap else None
        if not name or not cap or not isinstance(cap, str) or "(" in name or "," in name:
            continue
        name = name.strip()
        if name.islower():
            name = name.title()
        out.append((name, cap.strip()))
    shots = {c for c, _ in SHOTS}
    return sorted({(n, k) for n, k in out if n not in shots})


def q(template: str, country: str) -> str:
    return FEWSHOT.format(q=template.format(c=country))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget-n", type=int, default=6, help="countries to forget (default 6)")
    ap.add_argument("--probe-n", type=int, default=40, help="countries probed for knowledge (default 40 of ~240)")
    ap.add_argument("--retain-sub", type=int, default=12, help="retain prompts used by the ablations (default 12)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--general-test", type=int, default=20, help="held-out general prompts generated with and without the guard (default 20)")
    ap.add_argument("--families", default="gaussian_first_n,zero_top_k,flip_top_k,shuffle", help="corruption families in the ablation (comma-separated, or all)")
    ap.add_argument("--minilm", action="store_true", help="also measure a gate with MiniLM embeddings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="fewer ablations (for a smoke run)")
    ap.add_argument("--run-dir", default=None, help="fit run directory (default: a fresh temporary one)")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the eco_completion section of docs/benchmarks.md")
    ap.add_argument("--render", action="store_true", help="only render the docs from bench/results/eco_completion.json")
    args = ap.parse_args(argv)
    if args.render:
        publish_results("eco_completion", render_section, args.write_docs)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    from blackbox.methods.eco.corruption import CORRUPTIONS, Corruption, max_strength
    from blackbox.methods.eco.gate import EntityMatcher, Gate, GateConfig, misspell, normalize
    from blackbox.methods.eco.guarded import GuardedProvider
    from blackbox.methods.eco.job import EcoConfig, Item, accuracy, build_gate, fit, generate_all, is_correct, load_guarded
    from blackbox.methods.eco.search import Measurement, bracket_bisect, central_difference, vector_central_difference
    from blackbox.provider import load_provider
    from blackbox.types import GenerateRequest, NextTokenRequest

    info = machine()
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()
    lm = load_provider("hf-causal:smollm2?max_batch=16")
    # chat=False: the knowledge probe and every prompt here are plain 3-shot completions, not chat turns
    cfg = EcoConfig(seed=args.seed, max_new_tokens=4, verify_unflagged=False, chat=False)

    # 1. knowledge probe --------------------------------------------------------------------
    all_pairs = countries()
    probe_idx = sorted(rng.choice(len(all_pairs), size=min(args.probe_n, len(all_pairs)), replace=False))
    pairs = [all_pairs[i] for i in probe_idx]
    t0 = time.perf_counter()
    probe, _ = generate_all(lm, [q(TRAIN_TEMPLATES[0], c) for c, _ in pairs], cfg)
    known = [(c, k) for (c, k), o in zip(pairs, probe) if is_correct(o, k)]
    known_set = {c for c, _ in known}
    unseen = [(c, k) for c, k in all_pairs if c not in known_set]  # unknown or not probed: never in the fit
    probe_s = time.perf_counter() - t0
    emit({"stage": "probe", "countries": len(pairs), "known": len(known), "known_rate": len(known) / len(pairs), "seconds": round(probe_s, 1)})

    order = rng.permutation(len(known))
    forget_c = [known[i] for i in sorted(order[: args.forget_n])]
    retain_c = [known[i] for i in sorted(order[args.forget_n:])]

    def items(cs, templates, answers=True):
        return [Item(q(t, c), k if answers else None, c) for c, k in cs for t in templates]

    forget = items(forget_c, TRAIN_TEMPLATES)
    retain = items(retain_c, TRAIN_TEMPLATES[:1])
    general_all = [Item(FEWSHOT.format(q=e + " Answer:")) for e in EVERYDAY]
    general_all += [Item(FEWSHOT.format(q=f"{a} plus {b}:")) for a, b in rng.integers(2, 60, size=(30, 2))]
    general_all += [Item(f) for f in fortunes(150, rng)]
    gorder = rng.permutation(len(general_all))
    general_test = [general_all[i] for i in sorted(gorder[: args.general_test])]
    general_fit = [general_all[i] for i in sorted(gorder[args.general_test:])]
    # more negatives for the gate (no answers: never generated): other templates and attributes of retain countries
    general_fit += items(retain_c, TRAIN_TEMPLATES[1:], answers=False) + items(retain_c, ATTRIBUTE_TEMPLATES, answers=False)

    # 2. fit -----------------------------------------------------------------------------------
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="eco-bench-")) / "run"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit(lm, forget, retain, run_dir, general=general_fit, config=cfg, model_spec="hf-causal:smollm2?max_batch=16")
    fit_s = time.perf_counter() - t0
    art = res.artifact
    m = art["metrics"]
    emit({"stage": "fit", "seconds": round(fit_s, 1), "strength": art["strength"], **m})
    guarded = load_guarded(run_dir, provider=lm)
    gate = guarded.gate

    # 3. held-out evaluation -------------------------------------------------------------------------
    para = items(forget_c, HELDOUT_TEMPLATES)
    typo_rng = np.random.default_rng([args.seed, 3])
    para += [Item(q(TRAIN_TEMPLATES[0], misspell(c, typo_rng)), k, c) for c, k in forget_c if len(c) >= 5]
    para_base, _ = generate_all(lm, [i.prompt for i in para], cfg)
    para_after, _ = generate_all(guarded, [i.prompt for i in para], cfg)
    para_flags = gate.flags([i.prompt for i in para])
    neg_sets = {
        "unseen countries' capital questions": [q(t, c) for c, _ in unseen for t in (TRAIN_TEMPLATES[0], HELDOUT_TEMPLATES[0], HELDOUT_TEMPLATES[2])],
        "other questions about unseen countries": [q(t, c) for c, _ in unseen for t in ATTRIBUTE_TEMPLATES[1:]],
        "retain countries, unseen templates": [q(t, c) for c, _ in retain_c for t in HELDOUT_TEMPLATES],
        "held-out general prompts": [i.prompt for i in general_test],
    }
    fpr = {k: float(gate.flags(v).mean()) for k, v in neg_sets.items()}
    all_neg = [p for v in neg_sets.values() for p in v]
    fpr_all = float(gate.flags(all_neg).mean())
    sample = all_neg[:: max(1, len(all_neg) // 150)] + [i.prompt for i in para[:50]]

    def latency(g: Any) -> float:
        g.flags(sample[:5])
        t0 = time.perf_counter()
        for p in sample:
            g.flags([p])
        return (time.perf_counter() - t0) * 1e3 / len(sample)

    gate_ms = latency(gate)
    # general outputs, byte for byte (base vs guarded, real generation); queries with and without the guard
    gt_prompts = tuple(i.prompt for i in general_test)
    gb = lm.generate(GenerateRequest(gt_prompts, max_tokens=cfg.max_new_tokens, stop=cfg.stop))
    ga = guarded.generate(GenerateRequest(gt_prompts, max_tokens=cfg.max_new_tokens, stop=cfg.stop))
    general_same = float(np.mean([a == b for a, b in zip(gb.texts, ga.texts)]))
    heldout = {
        "paraphrase_n": len(para), "paraphrase_accuracy_before": accuracy(para_base, para), "paraphrase_accuracy_after": accuracy(para_after, para),
        "gate_recall_heldout": float(para_flags.mean()), "fpr": fpr, "fpr_all": fpr_all, "n_negative_test": len(all_neg),
        "gate_ms_per_prompt": gate_ms, "general_test_n": len(gt_prompts), "general_unchanged_test": general_same,
        "extra_model_calls": int(ga.usage.queries - gb.usage.queries),
    }
    emit({"stage": "heldout", **heldout})

    # 4. ablations (first-token top-1 accuracy: one prefill per prompt) -----------------------------------
    def first_token_acc(provider: Any, its: list[Any]) -> float:
        res = provider.next_token(NextTokenRequest(tuple(i.prompt for i in its), top_k=1))
        hits = []
        for top, i in zip(res.top_logprobs, its):
            tok = normalize(next(iter(top)).strip())
            hits.append(bool(tok) and normalize(i.answer).startswith(tok))
        return float(np.mean(hits))

    fsub = items(forget_c, TRAIN_TEMPLATES[:1])
    fsub = [i for i in fsub if first_token_acc(lm, [i]) == 1.0]  # known by the first-token measure
    rsub = [retain[i] for i in sorted(np.random.default_rng([args.seed, 5]).choice(len(retain), size=min(args.retain_sub, len(retain)), replace=False))]
    r_first = first_token_acc(lm, rsub)

    def forced(corr: Corruption) -> Any:
        return GuardedProvider(lm, None, corr, spans=gate.spans)

    corr = guarded.corruption
    gn = forced(corr).generate(GenerateRequest(gt_prompts, max_tokens=cfg.max_new_tokens, stop=cfg.stop))
    nogate = {"retain_first_token_before": r_first, "retain_first_token_after": first_token_acc(forced(corr), rsub),
              "retain_first_token_after_gated": first_token_acc(guarded, rsub), "n_retain": len(rsub),
              "general_unchanged": float(np.mean([a == b for a, b in zip(gb.texts, gn.texts)]))}
    emit({"stage": "ablation_no_gate", **nogate})

    gate_rows = []
    from blackbox.methods.eco.job import split_calibration

    matcher = EntityMatcher({c: [] for c, _ in forget_c}, [c for c, _ in retain_c])
    train_neg, cal = split_calibration([i.prompt for i in retain + general_fit], cfg)
    plain = Gate(GateConfig(exact_match=False, entity_weight=0.0), matcher).fit([i.prompt for i in forget], train_neg, cal)
    gate_rows.append({"gate": "n-gram classifier only (no entity features, no hard negatives)", "recall": float(plain.flags([i.prompt for i in para]).mean()),
                      **{k: float(plain.flags(v).mean()) for k, v in neg_sets.items()}, "ms": latency(plain)})
    gate_rows.append({"gate": "entity-aware + hard negatives, lexical (fitted)", "recall": heldout["gate_recall_heldout"], **fpr, "ms": gate_ms})
    if args.minilm:
        enc = load_provider("sentence-encoder:minilm")
        g2, _ = build_gate(forget, retain, general_fit, cfg, encoder=enc)
        gate_rows.append({"gate": "entity-aware + hard negatives + MiniLM embeddings", "recall": float(g2.flags([i.prompt for i in para]).mean()),
                          **{k: float(g2.flags(v).mean()) for k, v in neg_sets.items()}, "ms": latency(g2)})
    for r in gate_rows:
        emit({"stage": "ablation_gate", **r})

    def objective_for(base: Corruption):
        def f(s: Any) -> Measurement:
            s = float(s[0]) if isinstance(s, (list, tuple)) else float(s)
            acc = first_token_acc(forced(base.with_strength(s)), fsub)
            return Measurement(acc, acc <= 0.0, len(fsub), {"accuracy": acc})
        return f

    family_rows = []
    families = list(CORRUPTIONS) if args.families == "all" else [f for f in args.families.split(",") if f]
    if args.quick:
        families = families[:1]
    for fam, tokens in [(f, "entity") for f in families] + [("gaussian_first_n", "all_but_last")]:
        base = Corruption(fam, 0.0, None, tokens, args.seed)
        f = objective_for(base)
        t0 = time.perf_counter()
        cap = max_strength(fam)
        if fam in ("reverse", "shuffle"):
            mm = f(1.0)
            s_, met, q_, fa = 1.0, mm.met, mm.queries, mm.info["accuracy"]
        else:
            r = bracket_bisect(f, start=min(0.05, cap) if cap else 0.05, max_strength=cap or 64.0, bisect_steps=1, rtol=0.3, max_evals=6)
            s_, met, q_ = float(r.strength), r.met, r.queries
            fa = [e for e in r.evaluations if e["strength"] == r.strength][-1]["accuracy"]
        row = {"family": fam, "tokens": tokens, "strength": s_, "met": met, "forget_first_token": fa,
               "retain_first_token_forced": first_token_acc(forced(base.with_strength(s_)), rsub), "retain_first_token_before": r_first,
               "search_queries": q_, "seconds": round(time.perf_counter() - t0, 1)}
        family_rows.append(row)
        emit({"stage": "ablation_family", **row})

    search_rows = [{"rule": "bracket + bisect (fit default; exact-answer objective)", "strength": art["strength"], "met": art["search"]["met"],
                    "queries": art["search"]["queries"], "evaluations": art["search"]["n_evaluations"]}]
    if not args.quick:
        f = objective_for(Corruption(cfg.corruption, 0.0, cfg.dims, cfg.tokens, args.seed))
        for name, fn in (
            ("bracket + bisect (first-token objective)", lambda: bracket_bisect(f, start=0.05, bisect_steps=4, rtol=0.05)),
            ("central difference, reference (σ0 0.1, ε 0.1, η 100, unclipped)", lambda: central_difference(f, start=0.1, eps=0.1, lr=100, floor=1e-3, max_step=None, max_steps=2)),
            ("central difference, σ0 0.02, ε 0.01, step clipped at 0.05", lambda: central_difference(f, start=0.02, eps=0.01, lr=100, floor=1e-3, max_step=0.05, max_steps=3)),
        ):
            r = fn()
            st = r.strength[0] if isinstance(r.strength, list) else r.strength
            search_rows.append({"rule": name, "strength": float(st), "met": r.met, "queries": r.queries, "evaluations": len(r.evaluations)})
            emit({"stage": "ablation_search", **search_rows[-1]})

    summary = {
        "stage": "summary", "probe": {"countries": len(pairs), "known": len(known)}, "n_countries": len(all_pairs), "n_fsub": len(fsub), "forget_countries": [c for c, _ in forget_c],
        "n_retain_countries": len(retain_c), "fit": m, "fit_seconds": fit_s, "strength": art["strength"], "threshold": art["gate"]["threshold"],
        "gate_report": art["gate_report"], "heldout": heldout, "no_gate": nogate, "gates": gate_rows, "families": family_rows,
        "searches": search_rows, "total_seconds": time.perf_counter() - t_start, "machine": info, "torch_threads": args.threads,
        "quick": args.quick, "command": command_line(), "date": today(),
    }
    info["loadavg_at_end"] = loadavg()
    emit(summary)
    save_results("eco_completion", summary, {"eco_completion": "docs/benchmarks.md"})
    publish_results("eco_completion", render_section, args.write_docs)
    return 0


def render_section(name: str, results: dict[str, Any]) -> str:
    """``eco_completion`` (docs/benchmarks.md), from bench/results/eco_completion.json only."""
    if name == "eco_completion":
        return render(results)
    raise KeyError(name)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render(s: dict[str, Any]) -> str:
    m, h, ng = s["fit"], s["heldout"], s["no_gate"]

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    retain_delta = abs((m["retain_accuracy_after"] or 0) - (m["retain_accuracy_before"] or 0))
    lines = [
        "## ECO unlearning, completion style (SmolLM2-135M, country capitals, 3-shot)",
        "",
        f"- Command: `{s['command']}`" + (" (quick: fewer ablations)" if s["quick"] else "") + "; raw results in `bench/results/eco_completion.json`",
        "- Measured with the first-pass gate (one pooled calibration set; before group-wise, entity-disjoint calibration and "
        "balanced hard negatives); the current gate's numbers are in the chat-mode section (bench/eco.py).",
        f"- Date: {s['date']}",
        f"- Machine: {machine_line(s['machine'])}; torch threads {s['torch_threads']}",
        f"- Knowledge probe (3-shot `Capital of X: Y` lines, greedy, 4 tokens): the model answers {s['probe']['known']} of "
        f"{s['probe']['countries']} probed countries (a seeded sample of the {s['n_countries']} in countryinfo). "
        f"Forget set: {len(s['forget_countries'])} known countries ({', '.join(s['forget_countries'])}) × 2 templates; "
        f"retain set: the other {s['n_retain_countries']} known countries. Countries the model does not know, or that were not "
        "probed, never enter the fit: they are the unseen near neighbours of the gate test.",
        f"- Fit: Gaussian noise on the forget entity's tokens, strength {s['strength']:.4g} from bracket + bisect; the gate is calibrated at "
        f"1% on {s['gate_report']['n_calibration']} held-out retain/general prompts (threshold {s['threshold']:.3g}); fit wall time "
        f"{s['fit_seconds']:.0f} s. Within the fit, only flagged prompts are regenerated (`verify_unflagged=false`); "
        "byte-identity of unflagged outputs is checked on the held-out general prompts below by real generation.",
        "",
        "- Scale: sample sizes are small (set by the flags in the command) to fit a shared 2-core machine (other jobs ran beside it; "
        "see the load average); every number below is from one seeded run, so with N prompts one prompt is 1/N.",
        "",
        "| metric | before | after | target | met |",
        "|---|---|---|---|---|",
        f"| forget accuracy, exact answer, training templates ({m['n_forget']} prompts) | {pct(m['forget_accuracy_before'])} | {pct(m['forget_accuracy_after'])} | 0% | {ok(m['forget_accuracy_after'] == 0)} |",
        f"| forget accuracy, held-out paraphrases + misspellings ({h['paraphrase_n']}) | {pct(h['paraphrase_accuracy_before'])} | {pct(h['paraphrase_accuracy_after'])} | 0% | {ok(h['paraphrase_accuracy_after'] == 0)} |",
        f"| retain accuracy, exact answer ({m['n_retain']} prompts) | {pct(m['retain_accuracy_before'])} | {pct(m['retain_accuracy_after'])} | within 1 point | {ok(retain_delta <= 0.01)} |",
        f"| held-out general prompts: greedy output identical ({h['general_test_n']}) | | {pct(h['general_unchanged_test'])} | ≥ 99% | {ok(h['general_unchanged_test'] >= 0.99)} |",
        f"| gate recall, held-out paraphrases + misspellings ({h['paraphrase_n']}) | | {pct(h['gate_recall_heldout'])} | ≥ 95% | {ok(h['gate_recall_heldout'] >= 0.95)} |",
        f"| gate false-positive rate, all held-out negatives ({h['n_negative_test']}) | | {pct(h['fpr_all'])} | ≤ 1% | {ok(h['fpr_all'] <= 0.01)} |",
    ]
    for k, v in h["fpr"].items():
        lines.append(f"| — {k} | | {pct(v)} | ≤ 1% | {ok(v <= 0.01)} |")
    lines += [
        f"| gate latency per prompt (one at a time) | | {h['gate_ms_per_prompt']:.2f} ms | ≤ 5 ms | {ok(h['gate_ms_per_prompt'] <= 5)} |",
        f"| extra model calls at inference ({h['general_test_n']} prompts) | | {h['extra_model_calls']} | 0 | {ok(h['extra_model_calls'] == 0)} |",
        f"| strength search: model queries / evaluations / wall time of the whole fit | | {m['search_queries']} / {m['search_evaluations']} / {s['fit_seconds']:.0f} s | | |",
        "",
        "Ablations below measure accuracy by the first generated token (top-1 is the start of the capital; one prefill per prompt) "
        f"on the {s['n_fsub']} forget countries known by that measure and a {ng['n_retain']}-prompt retain sample.",
        "",
        f"**Without the gate** (every prompt corrupted at the fitted strength): retain first-token accuracy {pct(ng['retain_first_token_before'])} → "
        f"{pct(ng['retain_first_token_after'])} (with the gate: {pct(ng['retain_first_token_after_gated'])}); held-out general outputs identical "
        f"{pct(ng['general_unchanged'])} (with the gate: {pct(h['general_unchanged_test'])}).",
        "",
        "**Gate variants** (no model queries; recall on held-out paraphrases, false-positive rate per held-out negative set):",
        "",
        "| gate | recall | " + " | ".join(h["fpr"].keys()) + " | ms/prompt |",
        "|---|---|" + "---|" * len(h["fpr"]) + "---|",
    ]
    for g in s["gates"]:
        lines.append(f"| {g['gate']} | {pct(g['recall'])} | " + " | ".join(pct(g[k]) for k in h["fpr"]) + f" | {g['ms']:.2f} |")
    lines += [
        "",
        "**Corruption families** (forced on every prompt; strength from bracket + bisect, at most 6 evaluations, to 0% first-token "
        "forget accuracy; retain prompts name no forget target, so there the entity selection falls back to all tokens but the last: "
        "the retain column is what a gate false positive would cost):",
        "",
        "| family | tokens | strength | target met | forget | retain (forced) | search queries |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["families"]:
        lines.append(f"| {r['family']} | {r['tokens']} | {fmt(r['strength'])} | {'yes' if r['met'] else 'no'} | {pct(r['forget_first_token'])} | "
                     f"{pct(r['retain_first_token_forced'])} (from {pct(r['retain_first_token_before'])}) | {r['search_queries']} |")
    lines += ["", "**Strength search rules** (Gaussian noise on entity tokens; target 0% first-token forget accuracy unless noted):", "",
              "| rule | strength | target met | model queries | evaluations |", "|---|---|---|---|---|"]
    for r in s["searches"]:
        lines.append(f"| {r['rule']} | {fmt(r['strength'])} | {'yes' if r['met'] else 'no'} | {r['queries']} | {r['evaluations']} |")
    lines += ["", f"Total benchmark wall time {s['total_seconds'] / 60:.1f} min (see the load average for other jobs on the machine)."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
