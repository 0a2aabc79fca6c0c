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
ARMS = ("proxy", "dynamic", "own", "each", "smooth")
TITLES = {
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
    cls = fusion_class(arm)
    return cls(m["base"], m["base"], [m["capital"], m["region"]], FusionConfig(mode=mode, max_tokens=max_tokens, stop=stop, batch_size=16)).generate(prompts, on_step=on_step)


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


def measure(which: str, threads: int, repeats: int, with_profile: bool) -> None:
    info = machine()
    rows = prompt_sets()[which]
    prompts = [r["prompt"] for r in rows]
    m = load_models(threads)
    arms: dict[str, Any] = {}
    res: dict[str, Any] = {"set": which, "n": len(rows), "skills": [r["skill"] for r in rows], "max_tokens": MAX_TOKENS, "arms": arms}

    def save() -> None:
        info["loadavg_at_end"] = loadavg()
        if "dynamic" in arms:
            res["paired"] = {f"{a} vs {b}": paired(arms[a]["correct"], arms[b]["correct"]) for a in ARMS[2:] + ("dynamic",) for b in ("dynamic", "proxy")
                             if a in arms and a != b}
        if which == "dev" and all(a in arms for a in ARMS):
            ok = [a for a in ARMS[2:] if arms[a]["accuracy"] > arms["dynamic"]["accuracy"] and arms[a]["accuracy"] >= arms["proxy"]["accuracy"]]
            res["holds_on_dev"] = ok
        save_results(STEMS[which], {**stamp(info), **res}, {STEMS[which]: "docs/benchmarks.md"})

    recorded: list[tuple[Any, Any, Any]] = []

    def record(i: dict[str, Any]) -> None:
        if len(recorded) < 64:  # the dynamic arm's first steps, for shrink_checks
            recorded.append((i["large"].float().clone(), i["small"].float().clone(), i["experts"].float().clone()))

    for arm in ARMS:
        out = run(arm, m, prompts, on_step=record if arm == "dynamic" and with_profile else None)
        ok = [correct(r, t) for r, t in zip(rows, out.texts)]
        arms[arm] = {"correct": ok, "accuracy": sum(ok) / len(ok), "seconds": round(out.seconds, 2), "tokens": out.n_tokens,
                     "by_skill": {s: sum(o for o, r in zip(ok, rows) if r["skill"] == s) for s in ("capital", "region", "general")},
                     "outputs": out.texts}
        print(json.dumps({"arm": arm, "accuracy": round(arms[arm]["accuracy"], 4), "by_skill": arms[arm]["by_skill"], "s": arms[arm]["seconds"], "load": loadavg()}), flush=True)
        save()
    if with_profile:
        res["profile"] = profile(m, prompts[:16], repeats)
        print(json.dumps(res["profile"]), flush=True)
        save()
        res["shrink"] = shrink_checks(recorded)
        print(json.dumps(res["shrink"]), flush=True)
        save()


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section (pure)."""
    n = r["n"]
    counts = {s: r["skills"].count(s) for s in ("capital", "region", "general")}
    dev = r["set"] == "dev"
    lines = [
        f"## Dynamic fusion, two experts: variants of the weight search, {'development' if dev else 'reported'} set",
        "",
        f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}. Models and prompts of bench/fusion_smol.py "
        f"({counts['capital']} capital, {counts['region']} region, {counts['general']} general); both experts in every arm; greedy, at most "
        f"{r['max_tokens']} tokens. Variants are defined in bench/fusion_dynamic.py.",
        "",
        "| arm | accuracy | capital | region | general | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        if arm in r["arms"]:
            a = r["arms"][arm]
            b = a["by_skill"]
            lines.append(f"| {TITLES[arm]} | {sum(a['correct'])}/{n} ({100 * a['accuracy']:.1f}%) | {b['capital']}/{counts['capital']} | "
                         f"{b['region']}/{counts['region']} | {b['general']}/{counts['general']} | {a['seconds']:.1f} |")
    if r.get("paired"):
        lines += ["", "Paired, per prompt: " + "; ".join(f"{k} {100 * v['diff']:+.1f} points ({v['better']} better / {v['worse']} worse, p = {v['p']:g})"
                                                        for k, v in r["paired"].items()) + "."]
    if dev and "holds_on_dev" in r:
        held = r["holds_on_dev"]
        lines += ["", "Rule fixed before this run: a variant replaces the shipped search only if it scores strictly above it here and not "
                  f"below proxy-tuning. Variants that pass: {', '.join(held) if held else 'none'}."]
        if "each" in held and r["arms"]["each"]["outputs"] == r["arms"]["proxy"]["outputs"]:
            lines.append("`each` gave proxy-tuning's output on every prompt: with the large model equal to the small base, each expert alone at "
                         "α = 1 reproduces itself exactly (objective 0), so this search returns α = 1 for every expert, i.e. proxy-tuning. "
                         "Not made the default: this set cannot tell the variant from proxy-tuning.")
    p = r.get("profile")
    if p:
        b = p["best_s_per_token"]
        extra = b["dynamic"] - b["proxy"]
        lines += ["", f"Cost ({p['prompts']} prompts × {p['tokens']} tokens, no stop, best of {p['repeats']} in rotating order; load at the end "
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
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if not args.render:
        measure(args.which, args.threads, args.repeats, args.profile)
    publish_sets(STEMS, args.which, args.render, render_section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
