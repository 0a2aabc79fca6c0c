"""The paper's gradient-free baseline beside CrossTune: BBT-style black-box prompt tuning.

A soft prompt of ``--prompt-tokens`` vectors is written into a local causal LM's input
embeddings (SmolLM2-135M-Instruct through the ``hf-causal`` provider's ``inputs_embeds``
path: ``next_token_with_embeds``) in front of a task template. The prompt is parametrised
in a low-dimensional random projection, ``p = p0 + A z`` with ``z`` of ``--dim`` numbers
(``A`` Gaussian, fixed by the seed, scaled to the embeddings' spread), and ``z`` is optimised
by the project's ``cma-es`` recipe to lower the cross-entropy of a verbalizer (the first
token of `` label`` for every class) over the next-token logits on the few-shot set: each
generation scores all its candidates on one mini-batch of ``--batch`` shots (all the shots
when there are fewer), until ``--budget`` training queries are spent; the CMA-ES mean is the
tuned prompt. One query is one forward pass of one text, as the provider bills it.

Same tasks, test split, seeds and shots as bench/crosstune_suite.py; the test texts are a
seeded random sample of ``--n-test`` texts of the suite's test split (the same sample for
every seed and arm). CrossTune (default, MiniLM features) and the linear probe are fitted on
the same shots and evaluated on the same sample, so every comparison is paired.

    python bench/crosstune_bbt.py [--tasks a,b] [--seeds 1] [--budget 288] [--n-test 80] [--log F] [--write-docs]
    python bench/crosstune_bbt.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS/OpenMP threads before numpy and torch load)

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _common import command_line, loadavg, machine, machine_line, publish_results, save_results, today
from crosstune_suite import footer, keep, output_args, task_args
from text_tasks import TASKS  # static task facts (which are sentence pairs); loads no data

FILLER = " *"  # the placeholder token whose embeddings the soft prompt replaces


def template(text: str, classes: list[str], prompt_tokens: int) -> str:
    """The LM's input: soft-prompt placeholders, the text (or both segments of a pair), the answer cue."""
    from blackbox.methods.crosstune.data import PAIR_SEP

    body = "Text: " + text if PAIR_SEP not in text else "Text A: {}\nText B: {}".format(*text.split(PAIR_SEP, 1))
    return FILLER * prompt_tokens + "\n" + body + f"\nAnswer ({', '.join(classes)}):"


def test_sample(n_total: int, n: int) -> list[int]:
    """A seeded random sample of ``n`` positions of the suite's test split (fixed across seeds)."""
    import numpy as np

    return sorted(np.random.default_rng([0, 2024]).choice(n_total, size=min(n, n_total), replace=False).tolist())


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from text_tasks import load_task

    from blackbox.client import Client, DiskCache, Ledger
    from blackbox.methods.crosstune.config import CrossTuneConfig
    from blackbox.methods.crosstune.data import k_shot, split_test
    from blackbox.methods.crosstune.estimator import CrossTuneClassifier
    from blackbox.methods.crosstune.features import Featurizer
    from blackbox.optim.recipes import make_optimizer
    from blackbox.provider import load_provider
    from blackbox.types import NextTokenRequest

    lm = load_provider("hf-causal:smollm2")
    tok = lm.tokenizer
    filler_id = tok(FILLER, add_special_tokens=False)["input_ids"]
    if len(filler_id) != 1 or tok(FILLER * 3, add_special_tokens=False)["input_ids"] != filler_id * 3:
        raise SystemExit(f"the filler {FILLER!r} is not one token that repeats")
    filler_id = filler_id[0]
    emb = lm._embedding.weight.detach().float()
    emb_std = float(emb.std())
    p0 = emb[filler_id].numpy()
    d = p0.shape[0]
    featurizer = Featurizer(Client(load_provider("sentence-encoder:minilm"), cache=DiskCache(args.cache), ledger=Ledger()))
    done = set()
    if args.log and Path(args.log).exists():
        done = {(r["task"], r["seed"]) for r in map(json.loads, Path(args.log).read_text().splitlines()) if r}
    log = Path(args.log).open("a") if args.log else None
    out = []
    for task in args.tasks.split(","):
        ds = load_task(task)
        pool, test = split_test(ds, args.n_test_split, 0)
        test = test.subset(test_sample(len(test), args.n_test))
        for seed in range(args.seed0, args.seed0 + args.seeds):
            if (task, seed) in done:
                continue
            s = k_shot(pool, args.shots, seed)
            classes = s.classes
            verbal = [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in classes]
            if len(set(verbal)) != len(verbal):
                raise SystemExit(f"{task}: the classes' first tokens collide: {classes}")
            rng = np.random.default_rng([seed, 1729])
            a = rng.standard_normal((args.prompt_tokens * d, args.dim)).astype(np.float32) * (emb_std / np.sqrt(args.dim))
            queries = {"n": 0}

            def logits(texts: list[str], z: np.ndarray) -> np.ndarray:
                prompt = (p0[None] + (a @ z.astype(np.float32)).reshape(args.prompt_tokens, d)).astype(np.float32)

                def edit(ids: np.ndarray, embeds: np.ndarray, offsets: list) -> np.ndarray:
                    pos = np.flatnonzero(ids == filler_id)[: args.prompt_tokens]
                    e = embeds.copy()
                    e[pos] = prompt[: len(pos)]
                    return e

                res = lm.next_token_with_embeds(NextTokenRequest(prompts=tuple(template(t, classes, args.prompt_tokens) for t in texts)), edit)
                queries["n"] += res.usage.queries
                return np.asarray(res.logits)[:, verbal]

            y_all = np.array([classes.index(v) for v in s.labels])

            def loss(idx: np.ndarray, z: np.ndarray) -> float:
                lg = logits([s.texts[i] for i in idx], z)
                lg = lg - lg.max(1, keepdims=True)
                lp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
                return float(-lp[np.arange(len(idx)), y_all[idx]].mean())

            t0 = time.perf_counter()
            over = {"popsize": args.popsize} if args.popsize else {}
            batch = min(args.batch, len(s))
            opt = make_optimizer("cma-es", np.zeros(args.dim), seed=seed, sigma=args.sigma, **over)
            brng = np.random.default_rng([seed, 31])
            trace = []
            while queries["n"] + opt.next_cost() * batch <= args.budget:
                idx = np.sort(brng.choice(len(s), size=batch, replace=False))  # one mini-batch per generation
                xs = opt.ask()
                vals = np.array([loss(idx, x) for x in xs])
                opt.tell(vals)
                trace.append(round(float(vals.mean()), 4))
            train_q = queries["n"]
            train_s = time.perf_counter() - t0
            test_acc = {}
            for name, z in (("prompt-zero", np.zeros(args.dim)), ("bbt", opt.recommend())):
                pred = logits(test.texts, z).argmax(1)
                test_acc[name] = float(np.mean([classes[i] == t for i, t in zip(pred, test.labels)]))
            # CrossTune and the probe: same shots, same test sample; queries = texts sent to the encoder
            for arm, over_ct in (("crosstune", {}), ("linear-probe", {"method": "linear-probe"})):
                clf = CrossTuneClassifier(featurizer, CrossTuneConfig(seed=seed, **over_ct), s.descriptions)
                clf.fit(s.texts, s.labels)
                test_acc[arm] = clf.evaluate(test.texts, test.labels)["accuracy"]
            rec = {"task": task, "seed": seed, "classes": len(classes), "shots_total": len(s), "n_test": len(test),
                   "bbt": test_acc["bbt"], "prompt_zero": test_acc["prompt-zero"], "crosstune": test_acc["crosstune"],
                   "linear_probe": test_acc["linear-probe"], "bbt_train_queries": train_q, "generations": len(trace),
                   "batch": batch, "loss_trace": trace, "crosstune_fit_queries": len(s) + len(classes),
                   # which CrossTune default this row's CrossTune and probe are (0: the first version's, no pair cosine)
                   "pair_similarity": CrossTuneConfig().pair_similarity,
                   "bbt_train_seconds": round(train_s, 1)}
            keep(rec, out, log)
    return out


def render_section(name: str, results: dict[str, Any]) -> str:
    """The docs section, from bench/results/crosstune_bbt.json only (pure)."""
    rows, info = results["rows"], results["info"]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["task"], []).append(r)
    lines = ["| task (classes) | seeds | LM prompt, untuned (0 training queries) | **BBT-style** | BBT training queries | "
             "CrossTune | CrossTune fit queries | linear probe | CrossTune − BBT |", "|" + "---|" * 9]
    m = statistics.mean
    for task, recs in by.items():
        lines.append(f"| {task} ({recs[0]['classes']}) | {len(recs)} | {100 * m(r['prompt_zero'] for r in recs):.1f} | "
                     f"**{100 * m(r['bbt'] for r in recs):.1f}** | {m(r['bbt_train_queries'] for r in recs):.0f} | "
                     f"{100 * m(r['crosstune'] for r in recs):.1f} | {m(r['crosstune_fit_queries'] for r in recs):.0f} | "
                     f"{100 * m(r['linear_probe'] for r in recs):.1f} | {100 * m(r['crosstune'] - r['bbt'] for r in recs):+.1f} |")
    avg = {k: 100 * m(r[k] for r in rows) for k in ("prompt_zero", "bbt", "crosstune", "linear_probe")}
    diff = [100 * (r["crosstune"] - r["bbt"]) for r in rows]
    diff0 = [100 * (r["crosstune"] - r["prompt_zero"]) for r in rows]
    wins, ties = sum(x > 0 for x in diff), sum(x == 0 for x in diff)
    ratios = [r["bbt_train_queries"] / r["crosstune_fit_queries"] for r in rows]
    more, min_ratio, max_ratio = sum(x >= 1 for x in ratios), min(ratios), max(ratios)
    same = sum(r["bbt"] == r["prompt_zero"] for r in rows)
    q_bbt, q_ct = m(r["bbt_train_queries"] for r in rows), m(r["crosstune_fit_queries"] for r in rows)
    a = info["args"]
    return "\n".join([
        "### The BBT-style gradient-free baseline (SmolLM2-135M-Instruct, soft prompt through inputs_embeds)",
        "",
        f"Accuracy (%) on a seeded random sample of {a['n_test']} texts of each task's test split (the same sample for every "
        f"arm and seed), {a['shots']} shots per class, the suite's shots for each seed. BBT-style: a soft prompt of "
        f"{a['prompt_tokens']} vectors in front of the template, `p = p0 + A z` with `z` in {a['dim']} dimensions (`A` Gaussian), "
        f"tuned by `cma-es` (sigma {a['sigma']}, population {a['popsize'] or 'default'}) on the verbalizer cross-entropy, "
        f"each generation on a mini-batch of {a['batch']} shots, until {a['budget']} training queries are spent; the CMA-ES "
        "mean is evaluated. The untuned column is the same template with the placeholder prompt: BBT before any training "
        "query. CrossTune (default) and the linear probe use MiniLM features of the same shots; their fit queries are the "
        "shots and the label descriptions, one forward pass each (the encoder is another model, so the counts are of "
        "forward passes, not of cost). Prediction costs one query per test text for every arm.",
        "", *lines, "",
        f"Averages over tasks: untuned prompt {avg['prompt_zero']:.1f}, BBT-style {avg['bbt']:.1f} "
        f"({q_bbt:.0f} training queries per task), CrossTune {avg['crosstune']:.1f} ({q_ct:.0f} fit queries on average), "
        f"linear probe {avg['linear_probe']:.1f}. CrossTune − BBT-style: **{m(diff):+.1f} points** on average "
        f"({wins} of {len(diff)} task-seeds won, {ties} tied). BBT had at least CrossTune's training queries on "
        f"{more} of {len(rows)} task-seeds ({min_ratio:.1f}x to {max_ratio:.1f}x), so the comparison never gives BBT fewer queries; "
        f"at CrossTune's budget BBT finishes at most one generation from its untuned prompt (CrossTune − untuned prompt: "
        f"{m(diff0):+.1f} points). BBT-style predicted exactly as accurately as its untuned prompt on {same} of {len(rows)} task-seeds.",
        "",
        *_versions(rows),
        *footer(results),
    ])


def _versions(rows: list[dict[str, Any]]) -> list[str]:
    """A line naming the rows whose CrossTune and probe are the first version's (before the
    pair cosine), when the table mixes versions; rows without the field predate it."""
    old = sorted({(r["task"], r["seed"]) for r in rows if r.get("pair_similarity", 0.0) == 0.0})
    if not old or len(old) == len(rows):
        return []
    pairs = sorted({f"{t} seed {s}" for t, s in old if t in TASKS and TASKS[t][2].startswith("pair")})
    return ["", f"{len(old)} of {len(rows)} task-seeds (seed {', '.join(str(s) for s in sorted({s for _, s in old}))}) were measured before "
            "the pair cosine (`pair_similarity`) became the default: their CrossTune and probe columns are the first version's, "
            "identical on single texts; it matters only for " + (", ".join(pairs) if pairs else "none") + ".", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    task_args(ap, 80, "test texts, a seeded random sample of the suite's test split")
    ap.add_argument("--n-test-split", type=int, default=500, help="the suite's test split size (to draw the same split)")
    ap.add_argument("--prompt-tokens", type=int, default=5)
    ap.add_argument("--dim", type=int, default=20)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--popsize", type=int, default=6, help="CMA-ES population per generation (0: 4 + 3 ln dim)")
    ap.add_argument("--batch", type=int, default=16, help="shots per generation's mini-batch")
    ap.add_argument("--budget", type=int, default=288, help="training queries (forward passes) per task and seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "blackbox" / "bench-crosstune-suite.sqlite"))
    output_args(ap)  # --log (a rerun skips the task-seeds already there), --from-log, --note, --render, --write-docs
    args = ap.parse_args()
    if args.render:
        publish_results("crosstune_bbt", render_section, args.write_docs)
        return
    m = machine()
    rows = [json.loads(x) for x in Path(args.from_log).read_text().splitlines() if x.strip()] if args.from_log else run(args)
    m["loadavg_at_end"] = loadavg()
    keep = ("shots", "n_test", "prompt_tokens", "dim", "sigma", "popsize", "batch", "budget")
    info = {"command": command_line().split(" --note ")[0], "date": today(), "machine": machine_line(m), "args": {k: getattr(args, k) for k in keep}}
    save_results("crosstune_bbt", {"info": info, "note": args.note, "rows": rows}, {"crosstune_bbt": "docs/crosstune.md"})
    publish_results("crosstune_bbt", render_section, args.write_docs)


if __name__ == "__main__":
    main()
