"""ECO topic gate on the dev split: which features keep other questions about the same things unflagged.

The topic benchmark of bench/eco.py (continent questions forgotten; capital and demonym
questions and general prompts kept) builds its gate from the fit pool only. This script fits
that gate with feature variants on several seeded splits and scores the *dev* half of the
unseen countries (never the test half that bench/eco.py reports): recall on held-out topic
templates, and the false-positive rate on every other-topic question about the dev countries
and on held-out general prompts. `known` (which fit-pool capitals the model answers, used to
split retain from general prompts) comes from SmolLM2-135M-Instruct in chat mode, as in the
benchmark. Gate fitting queries no language model; the MiniLM encoder runs locally.

    python bench/eco_topic_gate.py [--seeds 0,1,2] [--write-docs]
    python bench/eco_topic_gate.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import time
from typing import Any

import numpy as np

import eco_data as D
from _common import command_line, emit, loadavg, machine, machine_line, publish_results, save_results, today

SECTIONS = {"eco_topic_gate": "docs/eco.md"}
VARIANTS = {
    "word + character n-grams + MiniLM (before)": {"char_ngrams": True, "stop_words": False},
    "word n-grams + MiniLM": {"stop_words": False},
    "MiniLM only": {"hash_features": 0},
    "content-word n-grams + MiniLM (default)": {},
}
"""Gate feature variants: ``GateConfig`` overrides on top of the topic scope's defaults."""


def run(args: argparse.Namespace) -> dict[str, Any]:
    from blackbox.methods.eco.job import EcoConfig, build_gate, generate_all, is_correct
    from blackbox.provider import load_provider

    lm = load_provider("hf-causal:smollm2?max_batch=16")
    enc = load_provider("sentence-encoder:minilm")
    probe_cfg = EcoConfig(chat=True, max_new_tokens=args.max_new_tokens, verify_unflagged=False)
    out: dict[str, Any] = {"command": command_line(), "date": today(), "machine": machine(), "settings": vars(args).copy(), "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        pool, dev, _test = D.split_countries(D.countries(), args.pool, seed)
        outs, _ = generate_all(lm, [D.TRAIN_TEMPLATES[0].format(c=c.name) for c in pool], probe_cfg)
        known = [c for c, o in zip(pool, outs) if is_correct(o, c.capital)]
        gen = D.general_prompts(seed)
        order = np.random.default_rng([seed, 2]).permutation(len(gen))
        general_test = [gen[i] for i in sorted(order[: args.general_test])]
        sets = D.topic_sets(pool, known, dev, [gen[i] for i in sorted(order[args.general_test:])], args.topic_n)
        heldout = [i.prompt for i in sets["heldout_topic"]]
        row: dict[str, Any] = {"known": len(known), "n_heldout_topic": len(heldout), "n_other_topics": len(sets["other_topics"]),
                               "n_general": len(general_test), "variants": {}}
        for label, overrides in VARIANTS.items():
            t0 = time.perf_counter()
            gate, _ = build_gate(sets["forget"], sets["retain"], sets["general"], EcoConfig(scope="topic", seed=seed), enc, overrides)
            other, general = gate.flags(sets["other_topics"]), gate.flags(general_test)
            row["variants"][label] = {"recall": float(gate.flags(heldout).mean()), "fpr_other_topics": float(other.mean()),
                                      "fpr_general": float(general.mean()), "fpr_all": float(np.r_[other, general].mean()),
                                      "seconds": round(time.perf_counter() - t0, 1)}
            emit({"seed": seed, "variant": label, **row["variants"][label]})
        out["seeds"][str(seed)] = row
    out["machine"]["loadavg_at_end"] = loadavg()
    return out


def render_section(name: str, results: dict[str, Any]) -> str:
    """``eco_topic_gate`` (docs/eco.md), from bench/results/eco_topic_gate.json only."""
    if name != "eco_topic_gate":
        raise KeyError(name)
    seeds = list(results["seeds"])
    per_seed = ", ".join(f"seed {s}: {r['known']} known capitals, {r['n_heldout_topic']} held-out topic questions, "
                         f"{r['n_other_topics']} other-topic questions, {r['n_general']} general prompts" for s, r in results["seeds"].items())
    lines = [f"Dev split only, by `{results['command']}` ({results['date']}; {machine_line(results['machine'])}). Per seed: {per_seed}.",
             "", "| gate features | " + " | ".join(f"seed {s}: recall / FPR" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for label in results["seeds"][seeds[0]]["variants"]:
        cells = [results["seeds"][s]["variants"][label] for s in seeds]
        lines.append(f"| {label} | " + " | ".join(f"{100 * c['recall']:.1f}% / {100 * c['fpr_all']:.2f}%" for c in cells) + " |")
    lines += ["", "Recall: held-out topic questions (unseen templates) about the dev countries. FPR: flags on the other-topic "
              "questions about the dev countries (every capital template and the demonym question) and the held-out general "
              "prompts together; the threshold is calibrated at 1% on the fit's retain/general pool."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="country splits (default 0,1,2)")
    # the benchmark's SmolLM2 sizes (bench/eco.py)
    for flag, default, what in (("--pool", 30, "fit-pool countries"), ("--topic-n", 8, "countries of the topic forget set"),
                                ("--general-test", 24, "held-out general prompts"), ("--max-new-tokens", 14, "tokens of the knowledge probe")):
        ap.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the eco_topic_gate section of docs/eco.md")
    ap.add_argument("--render", action="store_true", help="only render from bench/results/eco_topic_gate.json")
    args = ap.parse_args(argv)
    if not args.render:
        save_results("eco_topic_gate", run(args), SECTIONS)
    publish_results("eco_topic_gate", render_section, args.write_docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
