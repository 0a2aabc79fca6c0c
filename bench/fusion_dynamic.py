"""Dynamic fusion with two experts: variants of the weight search on the development set, and its cost.

Models and prompt sets of bench/fusion_smol.py (SmolLM2-135M-Instruct as large and small
base, LoRA experts ``capital`` and ``region``); greedy, stops ``]]``, ``}}``, newline, at most
10 tokens, as bench/fusion_multi.py. Arms (all with both experts):

* ``proxy``: proxy-tuning, α = 1 each;
* ``dynamic``: the shipped search (one expert active per step, the objective summed over
  every expert's KL targets: ``Σ_t' (KL(P̃‖P) − KL(Q_t'‖Q))² + (KL(P‖P̃) − KL(Q‖Q_t'))²``);
* ``own``: one expert active, matched to its *own* targets only
  (``(KL(P̃‖P) − KL(Q_t‖Q))² + (KL(P‖P̃) − KL(Q‖Q_t))²``);
* ``each``: every expert searched on its own targets and all of them active at once with
  their weights (the weighted shifts summed over experts);
* ``smooth``: ``dynamic``'s weights averaged with the previous step's (per prompt, 0.5/0.5).

Variants are this script's subclasses of ``LogitFusion``; one would move into
``blackbox.methods.fusion`` only if it holds on the development set. Rule fixed before the
development run: a variant becomes the default only if its accuracy on the development set is
strictly above ``dynamic``'s and not below ``proxy``'s.

**Second pass (issue 21 item 2), written down before any of its runs.** On the Qwen pair
(bench/fusion_qwen_multi.py's reported run) dynamic fusion scored 10/50 against proxy-tuning
with both experts' 18/50; the stored traces show the one-expert-per-step search switching
experts *inside an answer* (` {{` written under the ``region`` expert, then the ``capital``
expert at α = 2 for the next token, and the answer breaks). Two candidates aim at that
failure, both the library option ``FusionConfig.expert_choice`` (``step`` is the shipped
per-step search):

* ``first`` (persistence): as ``step`` until some expert is given α > 0; from then on that
  expert stays active for the rest of the answer, only its α searched at each step;
* ``cumulative`` (smoothing of the choice across steps): the active expert is the one whose
  best objective, summed over the answer's steps so far, is lowest; its α is searched per step.
  A switch needs the other expert to be better on the whole answer so far, not on one step.

Decision rule, fixed before the runs: a candidate ships (becomes the default, ``step`` kept as
an option) only if on the development set (30 prompts, paired, all prompts) its accuracy is
≥ proxy-tuning with both experts **and** ≥ the shipped ``step`` search on **both** the Qwen
pair (``--pair qwen``: 1.5B large, 0.5B small base and bench/fusion_qwen_multi.py's experts)
**and** the SmolLM2 substitute (``--pair smol``), and its time per token is ≤ 1.10× proxy's
(``--cost``: SmolLM2, 16 dev prompts × 12 tokens, no stop, best of 3 in rotating order). If
both pass, the one with the higher development accuracy summed over the two pairs ships; a
tie goes to ``first``. Only then are the dynamic arms of the reported runs re-run.

    python bench/fusion_dynamic.py --pair qwen --arms proxy dynamic first cumulative
    python bench/fusion_dynamic.py --arms first cumulative --cost        # SmolLM2; earlier rows kept

``--profile`` (with the set's run) also times where dynamic fusion's extra time per token goes
(proxy vs dynamic on 16 prompts × 12 tokens, no stop, rotating order, best of the repeats;
the share spent in the weight search) and what two ways of shrinking the search's vocabulary
would keep: a sound bound (tokens whose large-model probability is below ``δ·L/V`` with ``L``
a lower bound of every candidate's normaliser, δ = 1e-6, can be dropped with relative error
below δ) and a top-K truncation (the large model's and each shift's top-K tokens, the rest
lumped into one), as the share of steps whose weights stay those of the full search.

    python bench/fusion_dynamic.py --set dev [--profile]   # bench/results/fusion_dynamic_dev.json
    python bench/fusion_dynamic.py --set eval              # bench/results/fusion_dynamic.json
    python bench/fusion_dynamic.py --render [--write-docs]
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import json
import math
import sys
import time
from typing import Any

from _common import loadavg, machine, machine_line, save_results, stamp
from fusion_multi import load_models, paired
from fusion_smol import STOPS, correct, prompt_sets, publish_sets

STEMS = {"eval": "fusion_dynamic", "dev": "fusion_dynamic_dev"}
MAX_TOKENS = 10
OLD_ARMS = ("proxy", "dynamic", "own", "each", "smooth")  # the first pass (its own rule)
CANDIDATES = ("first", "cumulative")  # the second pass: FusionConfig.expert_choice
ARMS = OLD_ARMS + CANDIDATES
QWEN_ARMS = ("proxy", "dynamic") + CANDIDATES
TITLES = {
    "first": "dynamic, `expert_choice=first` (the first expert given α > 0 kept for the answer)",
    "cumulative": "dynamic, `expert_choice=cumulative` (the expert with the lowest summed objective so far)",
    "proxy": "proxy-tuning (α = 1 each)", "dynamic": "dynamic, shipped (one expert, targets summed over experts)",
    "own": "dynamic, one expert matched to its own targets", "each": "dynamic, every expert on its own targets, all active",
    "smooth": "dynamic, weights averaged with the previous step's",
}


def fusion_class(arm: str) -> Any:
    """``LogitFusion`` or this script's subclass for a variant arm."""
    import torch

    from blackbox.methods.fusion import arith
    from blackbox.methods.fusion.decode import LogitFusion

    class Variant(LogitFusion):
        def fuse_batch(self, zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            grid = self._grid
            a, b = arith.kl_targets_batch(zs, ze)  # (B, T)
            kf, kr = arith.kl_pair_batch(zl, ze.float() - zs.float()[:, None], grid)  # (B, T, C)
            own = (kf - a[..., None]) ** 2 + (kr - b[..., None]) ** 2  # (B, T, C)
            B, T, C = own.shape
            w = torch.zeros(B, T, dtype=torch.float64)
            if arm == "own":
                flat = torch.argmin(own.reshape(B, T * C), dim=1)
                w[torch.arange(B), flat // C] = grid[flat % C]
            else:  # each
                w = grid[torch.argmin(own, dim=2)]
            return arith.proxy_logits_batch(zl, zs, ze, w), w

    class Smooth(LogitFusion):
        # The decoder fuses the active rows in index order and then advances them in the same
        # order, so the rows a step fuses are those the previous step advanced and left open.
        def _decode(self, *args: Any, **kw: Any) -> list[dict[str, Any]]:
            self._order: list[int] | None = None  # id() of the row dicts fused this step, in order
            self._last: dict[int, torch.Tensor] = {}
            return super()._decode(*args, **kw)

        def fuse_batch(self, zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            w, _ = arith.dynamic_weights_batch(zl, zs, ze, self._grid)
            if self._order is not None:
                for j, key in enumerate(self._order):
                    w[j] = 0.5 * (w[j] + self._last[key])
            self._pending, self._j, self._open = w, 0, []
            return arith.proxy_logits_batch(zl, zs, ze, w), w

        def _advance(self, row: dict[str, Any], tok: int, last: bool) -> None:
            super()._advance(row, tok, last)
            self._last[id(row)] = self._pending[self._j]
            self._j += 1
            if row["finish"] is None:
                self._open.append(id(row))
            if self._j == len(self._pending):
                self._order = self._open

    return {"proxy": LogitFusion, "dynamic": LogitFusion, "own": Variant, "each": Variant, "smooth": Smooth}[arm]


def run(arm: str, m: dict[str, Any], prompts: list[str], max_tokens: int = MAX_TOKENS, stop: tuple[str, ...] = STOPS, on_step: Any = None) -> Any:
    from blackbox.methods.fusion.decode import FusionConfig

    mode = "proxy" if arm == "proxy" else "dynamic"
    cls = fusion_class(arm) if arm in OLD_ARMS else fusion_class("dynamic")
    choice = {"dynamic": "step", **{c: c for c in CANDIDATES}}.get(arm, "step")
    # m holds "base" (SmolLM2: large = small) or "large" and "small" (the Qwen pair)
    large, small = (m["large"], m["small"]) if "large" in m else (m["base"], m["base"])
    cfg = FusionConfig(mode=mode, max_tokens=max_tokens, stop=stop, batch_size=16, expert_choice=choice)
    return cls(large, small, [m["capital"], m["region"]], cfg).generate(prompts, on_step=on_step)


def load_pair(pair: str, threads: int) -> dict[str, Any]:
    """The models of ``pair``: smol (bench/fusion_smol.py's) or qwen (bench/fusion_qwen_multi.py's)."""
    if pair == "smol":
        return load_models(threads)
    import torch

    from fusion_qwen_multi import load

    torch.set_num_threads(threads)
    m: dict[str, Any] = {}
    for name in ("large", "small", "capital", "region"):
        load(name, m)
    return m


def cost(m: dict[str, Any], prompts: list[str], arms: tuple[str, ...], repeats: int, tokens: int = 12) -> dict[str, Any]:
    """Seconds per token of ``arms`` (16 prompts × ``tokens``, no stop), rotating order, best of ``repeats``; ratios to proxy."""
    secs: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(repeats):
        k = r % len(arms)
        for arm in arms[k:] + arms[:k]:
            out = run(arm, m, prompts, max_tokens=tokens, stop=())
            secs[arm].append(out.seconds / max(out.n_tokens, 1))
    best = {a: min(v) for a, v in secs.items()}
    return {"prompts": len(prompts), "tokens": tokens, "repeats": repeats, "s_per_token": {a: [round(x, 5) for x in v] for a, v in secs.items()},
            "best_s_per_token": {a: round(v, 5) for a, v in best.items()}, "ratio_to_proxy": {a: round(best[a] / best["proxy"], 3) for a in arms},
            "load": loadavg()}


def decision(res: dict[str, Any]) -> dict[str, Any] | None:
    """The second pass's rule (module doc) on the recorded development results; None until every input is there."""
    pairs = {"smol": res.get("arms", {}), "qwen": res.get("qwen", {}).get("arms", {})}
    c = res.get("choice_cost")
    if c is None or any(a not in arms for arms in pairs.values() for a in ("proxy", "dynamic") + CANDIDATES):
        return None
    out: dict[str, Any] = {"per_candidate": {}}
    for cand in CANDIDATES:
        checks = {}
        for pair, arms in pairs.items():
            for ref in ("proxy", "dynamic"):
                checks[f"{pair}: ≥ {ref}"] = sum(arms[cand]["correct"]) >= sum(arms[ref]["correct"])
        checks["cost ≤ 1.10× proxy"] = c["ratio_to_proxy"][cand] <= 1.10
        out["per_candidate"][cand] = {"checks": checks, "passes": all(checks.values()), "dev_total": sum(sum(arms[cand]["correct"]) for arms in pairs.values())}
    ok = [cand for cand in CANDIDATES if out["per_candidate"][cand]["passes"]]
    out["ships"] = max(ok, key=lambda cand: (out["per_candidate"][cand]["dev_total"], cand == "first")) if ok else None
    return out


def profile(m: dict[str, Any], prompts: list[str], repeats: int, tokens: int = 12) -> dict[str, Any]:
    """Proxy vs dynamic seconds per token (rotating, best of ``repeats``) and the weight search's share."""
    from blackbox.methods.fusion import arith

    real = arith.dynamic_weights_batch
    spent = [0.0]

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    secs: dict[str, list[float]] = {"proxy": [], "dynamic": []}
    search: list[float] = []
    for r in range(repeats):
        for arm in (("proxy", "dynamic") if r % 2 == 0 else ("dynamic", "proxy")):
            spent[0] = 0.0
            arith.dynamic_weights_batch = timed
            try:
                out = run(arm, m, prompts, max_tokens=tokens, stop=())
            finally:
                arith.dynamic_weights_batch = real
            secs[arm].append(out.seconds / max(out.n_tokens, 1))
            if arm == "dynamic":
                search.append(spent[0] / max(out.n_tokens, 1))
    best = {a: min(v) for a, v in secs.items()}
    i = secs["dynamic"].index(best["dynamic"])
    return {"prompts": len(prompts), "tokens": tokens, "repeats": repeats, "s_per_token": {a: [round(x, 5) for x in v] for a, v in secs.items()},
            "best_s_per_token": {a: round(v, 5) for a, v in best.items()}, "search_s_per_token": round(search[i], 5),
            "ratio_dynamic_to_proxy": round(best["dynamic"] / best["proxy"], 3), "load": loadavg()}


def shrink_checks(rows: list[tuple[Any, Any, Any]], delta: float = 1e-6, ks: tuple[int, ...] = (256, 1024)) -> dict[str, Any]:
    """On recorded steps ``(zl (V,), zs (V,), ze (T, V))``: tokens the sound bound keeps, and how
    often a top-K search picks the full search's weights."""
    import torch

    from blackbox.methods.fusion import arith

    grid = torch.arange(21, dtype=torch.float64) * 0.1
    h, C = 0.1, grid.numel()
    kept = []
    same = {k: 0 for k in ks}
    for zl, zs, ze in rows:
        lp = torch.log_softmax(zl.double(), -1)
        p = lp.exp()
        d = ze.double() - zs.double()[None]
        dc = d - (p[None] * d).sum(-1, keepdim=True)
        m = dc.amax(-1, keepdim=True)
        log_l = (lp[None] + (C - 1) * h * (dc - m)).amax(-1)  # log of a lower bound of every S0_c, per expert
        kept.append(int((lp >= log_l.min() + math.log(delta / lp.numel())).sum()))
        w_full, _ = arith.dynamic_weights_batch(zl[None], zs[None], ze[None], grid)
        a, b = arith.kl_targets_batch(zs[None], ze[None])
        lpf, df = lp.float(), d.float()
        for k in ks:
            idx = torch.unique(torch.cat([torch.topk(lpf, k).indices] + [torch.topk(df[t], k).indices for t in range(df.shape[0])]))
            rest = torch.ones_like(lpf, dtype=torch.bool)
            rest[idx] = False
            pt = lpf.exp()[rest].sum()
            dt = (lpf.exp()[rest][None] * df[:, rest]).sum(-1) / pt.clamp_min(1e-30)  # the rest lumped into one token
            kf, kr = arith.kl_pair_batch(torch.cat([lpf[idx], pt.log()[None]])[None], torch.cat([df[:, idx], dt[:, None]], 1)[None], grid)
            obj = ((kf[..., None] - a[:, None, None]) ** 2 + (kr[..., None] - b[:, None, None]) ** 2).sum(-1)[0]
            flat = int(torch.argmin(obj.reshape(-1)))
            w = torch.zeros_like(w_full[0])
            w[flat // C] = grid[flat % C]
            same[k] += int(torch.equal(w, w_full[0]))
    return {"steps": len(rows), "vocab": int(rows[0][0].numel()), "delta": delta, "bound_kept_mean": round(sum(kept) / len(kept), 1),
            "bound_kept_min": min(kept), "topk_same_weights": {str(k): v for k, v in same.items()}}


def measure(which: str, threads: int, repeats: int, with_profile: bool, pair: str = "smol", only: tuple[str, ...] | None = None, with_cost: bool = False,
            redo: bool = False) -> None:
    """Run the arms ``only`` (default: every arm of the pair) missing from the set's results file (``redo``: every one of
    them); rows already there are kept, a re-run row records whether it reproduced the earlier outputs."""
    from _common import results_path

    info = machine()
    rows = prompt_sets()[which]
    prompts = [r["prompt"] for r in rows]
    path = results_path(STEMS[which])
    old = json.loads(path.read_text()) if path.is_file() else None
    res: dict[str, Any] = {"set": which, "n": len(rows), "skills": [r["skill"] for r in rows], "max_tokens": MAX_TOKENS, "arms": {}}
    if old and old.get("set") == which and old.get("n") == len(rows) and old.get("max_tokens") == MAX_TOKENS:
        res = {k: v for k, v in old.items() if k not in ("script", "sections")}
        # each run's stamp, so rows kept from an earlier run keep theirs
        res.setdefault("runs", [{"command": old["command"], "date": old["date"], "machine": old["machine"], "did": sorted(old["arms"])
                                 + [k for k in ("profile", "shrink") if k in old]}])
    this_run = {**stamp(info), "did": []}
    res.setdefault("runs", []).append(this_run)
    if pair == "qwen":
        res.setdefault("qwen", {"models": {"large": "Qwen2.5-Coder-1.5B-Instruct", "small": "Qwen2.5-Coder-0.5B-Instruct"},
                                "experts": "bench/fusion_qwen_multi.py's (multi-expert-capital, multi-expert-region)", "threads": threads, "arms": {}})
    arms: dict[str, Any] = res["qwen"]["arms"] if pair == "qwen" else res["arms"]
    todo = [a for a in (only or (QWEN_ARMS if pair == "qwen" else ARMS)) if a not in arms or redo]
    earlier = {a: arms[a]["outputs"] for a in todo if a in arms}  # --redo: the outputs the re-run must reproduce
    if pair == "qwen" and any(a not in QWEN_ARMS for a in todo):
        raise SystemExit(f"--arms: expected some of {', '.join(QWEN_ARMS)} with --pair qwen, received {' '.join(todo)}")

    def save() -> None:
        info["loadavg_at_end"] = loadavg()
        res.update({k: v for k, v in stamp(info).items()})  # the latest run's stamp at the top (the renderer lists every run)
        for block in (res, res.get("qwen")):
            if block and "dynamic" in block["arms"]:
                a = block["arms"]
                block["paired"] = {f"{x} vs {y}": paired(a[x]["correct"], a[y]["correct"]) for x in ARMS[2:] + ("dynamic",) for y in ("dynamic", "proxy")
                                   if x in a and y in a and x != y}
        if which == "dev" and all(a in res["arms"] for a in OLD_ARMS):
            ok = [a for a in OLD_ARMS[2:] if res["arms"][a]["accuracy"] > res["arms"]["dynamic"]["accuracy"]
                  and res["arms"][a]["accuracy"] >= res["arms"]["proxy"]["accuracy"]]
            res["holds_on_dev"] = ok
        if which == "dev":
            res["decision"] = decision(res)
        save_results(STEMS[which], res, {STEMS[which]: "docs/benchmarks.md"})

    recorded: list[tuple[Any, Any, Any]] = []

    def record(i: dict[str, Any]) -> None:
        if len(recorded) < 64:  # the dynamic arm's first steps, for shrink_checks
            recorded.append((i["large"].float().clone(), i["small"].float().clone(), i["experts"].float().clone()))

    m = load_pair(pair, threads) if todo or with_profile or with_cost else {}
    for arm in todo:
        out = run(arm, m, prompts, on_step=record if arm == "dynamic" and with_profile else None)
        ok = [correct(r, t) for r, t in zip(rows, out.texts)]
        arms[arm] = {"correct": ok, "accuracy": sum(ok) / len(ok), "seconds": round(out.seconds, 2), "tokens": out.n_tokens,
                     "by_skill": {s: sum(o for o, r in zip(ok, rows) if r["skill"] == s) for s in ("capital", "region", "general")},
                     "outputs": out.texts, "load": loadavg()}
        if arm in earlier:
            arms[arm]["same_outputs_as_earlier_run"] = sum(x == y for x, y in zip(out.texts, earlier[arm]))
        if arm != "proxy":  # which expert was active at each step (0 capital, 1 region, None: α = 0 for both)
            arms[arm]["active"] = [[next((t for t, x in enumerate(w) if x > 0), None) for w in ws] for ws in out.weights]
        this_run["did"].append(f"{pair}:{arm}")
        print(json.dumps({"pair": pair, "arm": arm, "accuracy": round(arms[arm]["accuracy"], 4), "by_skill": arms[arm]["by_skill"], "s": arms[arm]["seconds"],
                          "load": loadavg()}), flush=True)
        save()
    if with_profile:
        res["profile"] = profile(m, prompts[:16], repeats)
        print(json.dumps(res["profile"]), flush=True)
        save()
        res["shrink"] = shrink_checks(recorded)
        print(json.dumps(res["shrink"]), flush=True)
        save()
    if with_cost:
        if pair != "smol":
            raise SystemExit("--cost: expected --pair smol (the rule measures the cost on the SmolLM2 substitute), received --pair qwen")
        res["choice_cost"] = cost(m, prompts[:16], ("proxy", "dynamic") + CANDIDATES, repeats)
        this_run["did"].append("cost")
        print(json.dumps(res["choice_cost"]), flush=True)
    save()


def switches(active: list[list[int | None]]) -> int:
    """Answers whose active expert (ignoring steps with no expert) changes between steps."""
    return sum(len({t for t in steps if t is not None}) > 1 for steps in active)


def table(arms: dict[str, Any], n: int, counts: dict[str, int]) -> list[str]:
    """The accuracy table of one pair's arms."""
    lines = ["| arm | accuracy | capital | region | general | seconds |", "|---|---|---|---|---|---|"]
    for arm in ARMS:
        if arm in arms:
            a = arms[arm]
            b = a["by_skill"]
            lines.append(f"| {TITLES[arm]} | {sum(a['correct'])}/{n} ({100 * a['accuracy']:.1f}%) | {b['capital']}/{counts['capital']} | "
                         f"{b['region']}/{counts['region']} | {b['general']}/{counts['general']} | {a['seconds']:.1f} |")
    same = {a: x["same_outputs_as_earlier_run"] for a, x in arms.items() if "same_outputs_as_earlier_run" in x}
    if same:
        lines += ["", "Re-run here, outputs identical to the earlier run's on " + ", ".join(f"{a} {v}/{n}" for a, v in same.items()) + " prompts."]
    return lines


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section (pure)."""
    n = r["n"]
    counts = {s: r["skills"].count(s) for s in ("capital", "region", "general")}
    dev = r["set"] == "dev"
    what = (f"Models and prompts of bench/fusion_smol.py ({counts['capital']} capital, {counts['region']} region, {counts['general']} general); "
            f"both experts in every arm; greedy, at most {r['max_tokens']} tokens. Variants are defined in bench/fusion_dynamic.py.")
    lines = [f"## Dynamic fusion, two experts: variants of the weight search, {'development' if dev else 'reported'} set", ""]
    runs = r.get("runs")
    if runs:  # several runs added rows, each kept with its own stamp
        lines += [what + " Each run added rows and kept the earlier ones:", ""]
        lines += [f"* `{u['command']}`, {u['date']}; {machine_line(u['machine'])}: {', '.join(u['did']) or 'nothing new'}." for u in runs]
        lines += ["", "SmolLM2-135M substitute (large = small base):", ""]
    else:
        lines += [f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}. " + what, ""]
    lines += table(r["arms"], n, counts)
    if r.get("paired"):
        lines += ["", "Paired, per prompt: " + "; ".join(f"{k} {100 * v['diff']:+.1f} points ({v['better']} better / {v['worse']} worse, p = {v['p']:g})"
                                                        for k, v in r["paired"].items()) + "."]
    q = r.get("qwen")
    if q and q["arms"]:
        lines += ["", f"Qwen pair ({q['models']['large']} large, {q['models']['small']} small base, experts {q['experts']}; {q['threads']} torch thread):", ""]
        lines += table(q["arms"], n, counts)
        if q.get("paired"):
            lines += ["", "Paired, per prompt: " + "; ".join(f"{k} {100 * v['diff']:+.1f} points ({v['better']} better / {v['worse']} worse, p = {v['p']:g})"
                                                            for k, v in q["paired"].items()) + "."]
        sw = {a: switches(x["active"]) for a, x in q["arms"].items() if "active" in x}
        if sw:
            lines += ["", "Answers in which the active expert changes between steps (of " + str(n) + "): "
                      + ", ".join(f"{a} {v}" for a, v in sw.items()) + "."]
    c = r.get("choice_cost")
    if c:
        b = c["best_s_per_token"]
        lines += ["", f"Cost of the candidates (SmolLM2, {c['prompts']} prompts × {c['tokens']} tokens, no stop, best of {c['repeats']} in rotating order, "
                  f"load {c['load'][0]} at end): " + ", ".join(f"{a} {1000 * b[a]:.1f} ms per token ({c['ratio_to_proxy'][a]:.2f}× proxy)" for a in b) + "."]
    d = r.get("decision")
    if d:
        lines += ["", "Second-pass rule (bench/fusion_dynamic.py, fixed before these runs): a candidate ships only if its accuracy is ≥ proxy-tuning "
                  "(both experts) and ≥ the shipped per-step search on both pairs, at ≤ 1.10× proxy's time per token."]
        for cand, x in d["per_candidate"].items():
            failed = [k for k, ok in x["checks"].items() if not ok]
            lines.append(f"`{cand}`: {'passes' if x['passes'] else 'fails (' + '; '.join(failed) + ')'}.")
        lines.append(f"Ships: {'`' + d['ships'] + '`' if d['ships'] else 'none (the default stays `step`)'}.")
    if dev and "holds_on_dev" in r:
        held = r["holds_on_dev"]
        lines += ["", ("First pass's rule" if r.get("runs") else "Rule") + " fixed before " + ("its run" if r.get("runs") else "this run") + ": a variant replaces the shipped search only if it scores strictly above it here and not "
                  f"below proxy-tuning. Variants that pass: {', '.join(held) if held else 'none'}."]
        if "each" in held and r["arms"]["each"]["outputs"] == r["arms"]["proxy"]["outputs"]:
            lines.append("`each` gave proxy-tuning's output on every prompt: with the large model equal to the small base, each expert alone at "
                         "α = 1 reproduces itself exactly (objective 0), so this search returns α = 1 for every expert, i.e. proxy-tuning. "
                         "Not made the default: this set cannot tell the variant from proxy-tuning.")
    p = r.get("profile")
    if p:
        b = p["best_s_per_token"]
        extra = b["dynamic"] - b["proxy"]
        lines += ["", ("First pass's profile, on the first run's machine: " if r.get("runs") else "") + f"Cost ({p['prompts']} prompts × {p['tokens']} tokens, no stop, best of {p['repeats']} in rotating order; load at the end "
                  f"{p['load'][0] if p['load'] else 'n/a'}): proxy {1000 * b['proxy']:.1f} ms per token, dynamic {1000 * b['dynamic']:.1f} ms: "
                  f"**{p['ratio_dynamic_to_proxy']:.2f}×** (target ≤ 1.10×). The weight search took {1000 * p['search_s_per_token']:.1f} ms per token "
                  f"of dynamic's run, against {1000 * extra:.1f} ms of difference between the two arms' best times: the search is all of the extra time "
                  "(the rest of a step is the same forward passes and fusion; the two numbers differ by the run-to-run noise of a shared machine)."]
    s = r.get("shrink")
    if s:
        tk = ", ".join(f"K = {k}: {v}/{s['steps']}" for k, v in s["topk_same_weights"].items())
        lines += ["", f"Shrinking the search's vocabulary, on {s['steps']} recorded steps of the dynamic arm: the sound bound (δ = {s['delta']:g}) keeps "
                  f"{s['bound_kept_mean']:.0f} of {s['vocab']} tokens on average (at least {s['bound_kept_min']}), so it saves nothing; a top-K truncation "
                  f"(rest lumped into one token) picks the full search's weights on {tk} steps, so it changes the method. Neither is used."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(STEMS), default="dev", dest="which")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--pair", choices=("smol", "qwen"), default="smol", help="SmolLM2 substitute or the Qwen2.5-Coder pair")
    ap.add_argument("--arms", nargs="+", choices=ARMS, help="arms to run (those already in the results file are kept, not re-run)")
    ap.add_argument("--redo", action="store_true", help="re-run the --arms already in the results file (records whether the outputs reproduce)")
    ap.add_argument("--cost", action="store_true", help="time per token of proxy, dynamic and the expert_choice candidates (SmolLM2)")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if not args.render:
        measure(args.which, args.threads, args.repeats, args.profile, args.pair, tuple(args.arms) if args.arms else None, args.cost, args.redo)
    publish_sets(STEMS, args.which, args.render, render_section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
