"""Logit fusion with the large model behind an OpenAI-compatible server: top-k vs exact fusion.

The large model is SmolLM2-135M-Instruct (Q4_1 GGUF) served by llama.cpp
(llama-cpp-python's server, one thread, as tests/providers/llama_server.py starts it) and
reached through the ``openai:`` provider's completions top-k log-probabilities; the small
base and the two experts of bench/fusion_smol.py are local ``hf-causal`` models. The
reference is *exact* full-logit fusion with the large model local (``hf-causal`` on the
same GGUF, de-quantised to fp32). Proxy-tuning with both experts (α = 1), greedy, on the
development set (30 prompts, ``--set dev``: bench/results/fusion_api_dev.json) or the
reported set (50 prompts, ``--set eval``: bench/results/fusion_api.json) of
bench/fusion_smol.py, for k = 5, 10, 20 and each way of filling the large model's
unreturned log-probabilities (``large_tail``: small, uniform, floor; see docs/fusion.md):

* **final-answer accuracy** of the free-running API fusion vs exact fusion (paired);
* **same output**: prompts whose API-fused text equals the exact one;
* **token agreement (teacher-forced)**: at every step of the exact output, the API fusion's
  greedy token given the exact text so far equals the exact token;
* the same with the large model's top-k taken from the local copy (only the truncation, no server);
* cost: HTTP requests the server logged and wall time.

The default ``large_tail`` is chosen on the development set by a rule fixed before its run:
the highest teacher-forced token agreement through the server, summed over k; a tie goes to
``uniform`` (which, unlike ``small``, does not lean on the small base resembling the large
model, as it does exactly in this substitute). Results are written after every arm.

    python bench/fusion_api.py --set dev [--ks 5 10 20] [--tails small uniform floor]
    python bench/fusion_api.py --set eval
    python bench/fusion_api.py --render [--write-docs]
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import loadavg, machine, machine_line, save_results, stamp
from fusion_multi import load_models, paired
from fusion_smol import STOPS, correct, prompt_sets, publish_sets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "providers"))

STEMS = {"eval": "fusion_api", "dev": "fusion_api_dev"}
MAX_TOKENS = 10
TAILS = ("small", "uniform", "floor")


def _config(**kw: Any) -> Any:
    from blackbox.methods.fusion.decode import FusionConfig

    return FusionConfig(mode="proxy", max_tokens=MAX_TOKENS, stop=STOPS, batch_size=16, **kw)


def forced_rows(fusion: Any, prompts: list[str], exact_tokens: list[list[int]], batch: int = 16) -> list[dict[str, list[Any]]]:
    """Per prompt and role, the logits rows (float32) at every step of the exact output, the
    models fed the exact tokens (teacher forcing; batched like decoding)."""
    import torch

    roles = {"large": fusion.large, "small": fusion.small, "e1": fusion.experts[0], "e2": fusion.experts[1]}
    uniq = {id(p): p for p in roles.values()}
    n = fusion.n_vocab
    out: list[dict[str, list[Any]]] = [{r: [] for r in roles} for _ in prompts]
    seqs = fusion.encode(prompts)
    with torch.inference_mode():
        for b0 in range(0, len(prompts), batch):
            idx = list(range(b0, min(b0 + batch, len(prompts))))
            states, z = {}, {}
            for k, p in uniq.items():
                states[k], z[k] = p.decode_start([seqs[i] for i in idx])
            for s in range(max(len(exact_tokens[i]) for i in idx)):
                for j, i in enumerate(idx):
                    if s < len(exact_tokens[i]):
                        for r, p in roles.items():
                            out[i][r].append(z[id(p)][j, :n].float())
                if s + 1 < max(len(exact_tokens[i]) for i in idx):
                    feed = [exact_tokens[i][s] if s < len(exact_tokens[i]) else exact_tokens[i][-1] for i in idx]
                    z = {k: p.decode_step(states[k], feed) for k, p in uniq.items()}
    return out


def teacher_forced(fusion: Any, prompts: list[str], exact_tokens: list[list[int]], rows: list[dict[str, list[Any]]], api: Any | None,
                   shape: str | None = None) -> tuple[int, int]:
    """``(agreeing steps, steps)``: the top-k fusion's greedy token, given the exact output so
    far, equals the exact token (large model's top-k from ``api``, else from its local rows).
    ``shape``: fill the large model's tail from that role's logits instead of the small base's
    (``large_tail="small"`` only; a stand-in for a small base unlike the large model)."""
    import torch

    from blackbox.methods.fusion import arith
    from blackbox.methods.fusion.decode import _ApiTopK

    k = int(fusion.config.large_top_k)
    mapper = _ApiTopK(api, fusion.tokenizer, fusion.n_vocab, k) if api is not None else None
    agree = total = 0
    for prompt, toks, rr in zip(prompts, exact_tokens, rows):
        if not toks:
            continue
        if mapper is not None:
            large = mapper.query([prompt + fusion.tokenizer.decode(toks[:s]) for s in range(len(toks))])
        else:
            large = []
            for z in rr["large"]:
                top = torch.topk(torch.log_softmax(z.double(), -1), k)
                large.append((top.indices, top.values))
        for s, tok in enumerate(toks):
            ze = torch.stack([rr["e1"][s], rr["e2"][s]]).double()
            if shape is None:
                ids_u, fused, _ = fusion.fuse_topk_row(large[s][0], large[s][1], rr["small"][s].double(), ze)
                agree += int(ids_u[int(torch.argmax(fused))]) == tok
            else:
                zl = arith.topk_fill(large[s][0], large[s][1], rr[shape][s].double(), "small")
                fused, _ = fusion.fuse_row(zl, rr["small"][s].double(), ze)
                agree += int(torch.argmax(fused)) == tok
            total += 1
    return agree, total


def served_generate(fusion: Any, prompts: list[str], srv: Any) -> tuple[Any, float, int]:
    """Generate through the served large model: (result, seconds, requests the server logged)."""
    before = srv.count("POST /v1/")
    t0 = time.perf_counter()
    got = fusion.generate(prompts)
    secs = time.perf_counter() - t0
    return got, secs, srv.count("POST /v1/") - before


def choose_tail(dev: dict[str, Any]) -> str | None:
    """The development set's pick (module doc): most teacher-forced API agreement summed over k; ties to uniform."""
    score: dict[str, int] = {}
    for tail, per_k in dev.get("tails", {}).items():
        if set(per_k) != {str(k) for k in dev["ks"]}:
            return None  # an unfinished run chooses nothing
        score[tail] = sum(v["api"]["token_agreement"][0] for v in per_k.values())
    if not score:
        return None
    best = max(score.values())
    winners = [t for t in TAILS if score.get(t) == best]
    return "uniform" if "uniform" in winners else winners[0]


def measure(ks: list[int], tails: list[str], threads: int, which: str) -> None:
    import llama_server

    from blackbox.client import Client
    from blackbox.methods.fusion.decode import LogitFusion
    from blackbox.provider import load_provider

    info = machine()
    rows = prompt_sets()[which]
    prompts = [r["prompt"] for r in rows]
    m = load_models(threads)
    experts = [m["capital"], m["region"]]
    t0 = time.perf_counter()
    exact = LogitFusion(m["base"], m["base"], experts, _config()).generate(prompts)
    exact_s = time.perf_counter() - t0
    exact_ok = [correct(r, t) for r, t in zip(rows, exact.texts)]
    print(json.dumps({"exact": sum(exact_ok), "s": round(exact_s, 1), "load": loadavg()}), flush=True)

    def exact_fusion_k(k: int, tail: str) -> Any:
        return LogitFusion(m["base"], m["base"], experts, _config(large_top_k=k, large_tail=tail))

    forced = forced_rows(exact_fusion_k(20, "small"), prompts, exact.tokens)
    out: dict[str, Any] = {"exact": {"correct": exact_ok, "accuracy": sum(exact_ok) / len(rows), "seconds": round(exact_s, 2), "outputs": exact.texts,
                                     "tokens": exact.n_tokens}}
    per_tail: dict[str, dict[str, Any]] = {}
    from blackbox.methods.fusion.config import FusionConfig

    head = {"default_tail": FusionConfig().large_tail, "set": which, "n": len(rows), "prompts": prompts, "max_tokens": MAX_TOKENS, "mode": "proxy, both experts, alpha=1", "ks": ks}

    def save(server_cmd: str) -> None:
        info["loadavg_at_end"] = loadavg()
        res = {**stamp(info), **head, "server": server_cmd, **out, "tails": per_tail}
        if which == "dev":
            res["chosen_tail"] = choose_tail(res)
        save_results(STEMS[which], res, {STEMS[which]: "docs/benchmarks.md"})

    with llama_server.serve(n_threads=1) as srv:
        server_cmd = " ".join(Path(a).name if a.endswith(".gguf") else a for a in srv.argv[1:])
        # One server thread answers one request at a time while a step's requests queue up on a
        # busy machine: a long timeout, and the Client retries what still times out (counted
        # in the server's log like any other request).
        api = Client(load_provider(f"openai:{llama_server.MODEL_ALIAS}?base_url={srv.base_url}&completions=1&timeout=600"))
        for tail, k in [(t, k) for t in tails for k in ks]:
            res: dict[str, Any] = {}
            fusion = LogitFusion(api, m["base"], experts, _config(large_top_k=k, large_tail=tail))
            got, secs, requests = served_generate(fusion, prompts, srv)
            ok = [correct(r, t) for r, t in zip(rows, got.texts)]
            agree, total = teacher_forced(fusion, prompts, exact.tokens, forced, api)
            res["api"] = {"correct": ok, "accuracy": sum(ok) / len(rows), "same_output": sum(a == b for a, b in zip(got.texts, exact.texts)),
                          "token_agreement": [agree, total], "seconds": round(secs, 2), "requests": requests, "tokens": got.n_tokens,
                          "paired_vs_exact": paired(ok, exact_ok), "outputs": got.texts}
            # the truncation alone: the local large model's top-k, teacher-forced (no free run)
            res["emulated"] = {"token_agreement": list(teacher_forced(exact_fusion_k(k, tail), prompts, exact.tokens, forced, None))}
            if tail == "small":
                res["emulated"]["token_agreement_other_shape"] = list(teacher_forced(exact_fusion_k(k, tail), prompts, exact.tokens, forced, None, shape="e1"))
            print(json.dumps({"tail": tail, "k": k, **{x: res["api"][x] for x in ("accuracy", "same_output", "token_agreement", "seconds", "requests")},
                              "emulated": res["emulated"], "load": loadavg()}), flush=True)
            per_tail.setdefault(tail, {})[str(k)] = res
            save(server_cmd)


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section (pure)."""
    n = r["n"]
    e = r["exact"]
    dev = r["set"] == "dev"
    title = ("development set: choosing how to fill the unreturned tokens" if dev else "top-k vs exact")
    lines = [
        f"## Logit fusion with the large model behind llama.cpp's server, {title}",
        "",
        f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}. Large: SmolLM2-135M-Instruct Q4_1 served by "
        f"`{r['server']}` and reached as `openai:smollm?base_url=...&completions=1` (top-k log-probabilities of the completions "
        "endpoint, one request per prompt and step); small base and the two experts of bench/fusion_smol.py local (`hf-causal`). "
        f"Exact: full-logit fusion with the large model local (the same GGUF in fp32). {r['mode']}; greedy, at most {r['max_tokens']} tokens, "
        f"on the {n} {'development' if dev else 'reported'} prompts of bench/fusion_smol.py. *Tail*: the large model's log-probabilities "
        "of the tokens the server did not return — `small`: the missing mass spread like the small base's distribution, `uniform`: "
        "spread evenly (both capped below the lowest returned value, fused over the whole vocabulary), `floor`: the lowest returned "
        "value, fused over the returned tokens and the experts' top-k only (the mapping before this change). Token agreement is "
        "teacher-forced on the exact output; *local top-k* takes the large model's top-k from the local copy (the truncation alone, "
        "no server). In this substitute the small base *is* the large model (up to the server's 4-bit arithmetic), so the "
        "`small` tail is close to the true one here. Two controls show what it gives without that: `uniform` (no shape at all), and the "
        "`small` rule with the tail shaped by another model, the `capital` expert (related to the large model but not it, as a real "
        "small base would be; teacher-forced, local top-k).",
        "",
        f"Exact fusion: {sum(e['correct'])}/{n} ({100 * e['accuracy']:.1f}%) correct, {e['seconds']:.1f} s for {e['tokens']} tokens.",
        "",
        "| tail | k | accuracy (API) | vs exact: points (better / worse) | same output as exact | token agreement, API | token agreement, local top-k | local top-k, tail shaped by the `capital` expert | requests | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tail, per_k in r["tails"].items():
        for k, res in per_k.items():
            x = res["api"]
            a, t = x["token_agreement"]
            ea, et = res["emulated"]["token_agreement"]
            pv = x["paired_vs_exact"]
            other = res["emulated"].get("token_agreement_other_shape")
            oc = f"{other[0]}/{other[1]} ({100 * other[0] / max(other[1], 1):.1f}%)" if other else "—"
            lines.append(
                f"| {tail} | {k} | {sum(x['correct'])}/{n} ({100 * x['accuracy']:.1f}%) | {100 * pv['diff']:+.1f} ({pv['better']} / {pv['worse']}) | "
                f"{x['same_output']}/{n} | {a}/{t} ({100 * a / max(t, 1):.1f}%) | {ea}/{et} ({100 * ea / max(et, 1):.1f}%) | {oc} | {x['requests']} | {x['seconds']:.1f} |")
    lines.append("")
    if dev:
        chosen = r.get("chosen_tail")
        lines.append("Rule fixed before this run: the tail with the most teacher-forced API token agreement summed over k, a tie going "
                     f"to `uniform`. Chosen: {'`' + chosen + '` (the default `large_tail`)' if chosen else 'none (the run did not finish)'}.")
        return "\n".join(lines)
    d = r.get("default_tail")
    k20 = r["tails"].get(d, {}).get("20", {}).get("api") if d else None
    floor = r["tails"].get("floor", {})
    if d and d != "floor" and floor:
        pairs = []
        for k in r["ks"]:
            if str(k) in floor and str(k) in r["tails"][d]:
                pv = paired(r["tails"][d][str(k)]["api"]["correct"], floor[str(k)]["api"]["correct"])
                pairs.append(f"k = {k}: {100 * pv['diff']:+.1f} points ({pv['better']} better / {pv['worse']} worse)")
        if pairs:
            lines.append(f"Default tail `{d}` (chosen on the development set) minus `floor`, paired: " + "; ".join(pairs) + ".")
            lines.append("")
    if k20:
        gap = 100 * (k20["accuracy"] - e["accuracy"])
        lines.append(f"Target: API fusion at k = 20 (default tail `{d}`) within 2 points of exact: {gap:+.1f} points — **{'met' if abs(gap) <= 2 else 'missed'}**.")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(STEMS), default="eval", dest="which")
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--tails", nargs="+", choices=TAILS, default=list(TAILS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if not args.render:
        measure(args.ks, args.tails, args.threads, args.which)
    publish_sets(STEMS, args.which, args.render, render_section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
