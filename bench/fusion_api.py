"""Logit fusion with the large model behind an OpenAI-compatible server: top-k vs exact fusion.

The large model is SmolLM2-135M-Instruct (Q4_1 GGUF) served by llama.cpp
(llama-cpp-python's server, one thread, as tests/providers/llama_server.py starts it) and
reached through the ``openai:`` provider's completions top-k log-probabilities; the small
base and the two experts of bench/fusion_smol.py are local ``hf-causal`` models. The
reference is *exact* full-logit fusion with the large model local (``hf-causal`` on the
same GGUF, de-quantised to fp32). Proxy-tuning with both experts (α = 1), greedy, on the
reported set of bench/fusion_smol.py (80 prompts), for k = 5, 10, 20:

* **final-answer accuracy** of the free-running API fusion vs exact fusion (paired);
* **same output**: prompts whose API-fused text equals the exact one;
* **token agreement (teacher-forced)**: at every step of the exact output, the API fusion's
  greedy token given the exact text so far equals the exact token;
* the same with the large model's top-k taken from the local copy (only the truncation, no server);
* cost: HTTP requests the server logged and wall time.

    python bench/fusion_api.py [--ks 5 10 20]      # runs, writes bench/results/fusion_api.json
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

from _common import loadavg, machine, machine_line, publish_results, save_results, stamp
from fusion_multi import load_models, paired
from fusion_smol import STOPS, correct, prompt_sets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "providers"))

STEM = "fusion_api"
MAX_TOKENS = 10


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


def teacher_forced(fusion: Any, prompts: list[str], exact_tokens: list[list[int]], rows: list[dict[str, list[Any]]], api: Any | None) -> tuple[int, int]:
    """``(agreeing steps, steps)``: the top-k fusion's greedy token, given the exact output so
    far, equals the exact token (large model's top-k from ``api``, else from its local rows)."""
    import torch

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
            ids_u, fused, _ = fusion.fuse_topk_row(large[s][0], large[s][1], rr["small"][s].double(), ze)
            agree += int(ids_u[int(torch.argmax(fused))]) == tok
            total += 1
    return agree, total


def measure(ks: list[int], threads: int) -> dict[str, Any]:
    import llama_server

    from blackbox.client import Client
    from blackbox.methods.fusion.decode import LogitFusion
    from blackbox.provider import load_provider

    info = machine()
    rows = prompt_sets()["eval"]
    prompts = [r["prompt"] for r in rows]
    m = load_models(threads)
    experts = [m["capital"], m["region"]]
    t0 = time.perf_counter()
    exact = LogitFusion(m["base"], m["base"], experts, _config()).generate(prompts)
    exact_s = time.perf_counter() - t0
    exact_ok = [correct(r, t) for r, t in zip(rows, exact.texts)]
    print(json.dumps({"exact": sum(exact_ok), "s": round(exact_s, 1), "load": loadavg()}), flush=True)

    def exact_fusion_k(k: int) -> Any:
        return LogitFusion(m["base"], m["base"], experts, _config(large_top_k=k))

    forced = forced_rows(exact_fusion_k(20), prompts, exact.tokens)
    out: dict[str, Any] = {"exact": {"correct": exact_ok, "accuracy": sum(exact_ok) / len(rows), "seconds": round(exact_s, 2), "outputs": exact.texts}}
    per_k: dict[str, Any] = {}
    with llama_server.serve(n_threads=1) as srv:
        # One server thread answers one request at a time while a step's requests queue up on a
        # busy machine: a long timeout, and the Client retries what still times out (counted
        # in the server's log like any other request).
        api = Client(load_provider(f"openai:{llama_server.MODEL_ALIAS}?base_url={srv.base_url}&completions=1&timeout=600"))
        for k in ks:
            res: dict[str, Any] = {}
            fusion = LogitFusion(api, m["base"], experts, _config(large_top_k=k))
            before = srv.count("POST /v1/")
            t0 = time.perf_counter()
            got = fusion.generate(prompts)
            secs = time.perf_counter() - t0
            requests = srv.count("POST /v1/") - before
            ok = [correct(r, t) for r, t in zip(rows, got.texts)]
            agree, total = teacher_forced(fusion, prompts, exact.tokens, forced, api)
            res["api"] = {"correct": ok, "accuracy": sum(ok) / len(rows), "same_output": sum(a == b for a, b in zip(got.texts, exact.texts)),
                          "token_agreement": [agree, total], "seconds": round(secs, 2), "requests": requests, "tokens": got.n_tokens,
                          "paired_vs_exact": paired(ok, exact_ok), "outputs": got.texts}
            # the truncation alone: the local large model's top-k, teacher-forced (no free run)
            res["emulated"] = {"token_agreement": list(teacher_forced(exact_fusion_k(k), prompts, exact.tokens, forced, None))}
            print(json.dumps({"k": k, **{x: res["api"][x] for x in ("accuracy", "same_output", "token_agreement", "seconds", "requests")},
                              "emulated": res["emulated"], "load": loadavg()}), flush=True)
            per_k[str(k)] = res
        server_cmd = " ".join(Path(a).name if a.endswith(".gguf") else a for a in srv.argv[1:])
    info["loadavg_at_end"] = loadavg()
    return {**stamp(info), "n": len(rows), "prompts": prompts, "max_tokens": MAX_TOKENS, "mode": "proxy, both experts, alpha=1",
            "server": server_cmd, **out, "top_k": per_k}


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section (pure)."""
    n = r["n"]
    e = r["exact"]
    lines = [
        "## Logit fusion with the large model behind llama.cpp's server: top-k vs exact",
        "",
        f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}. Large: SmolLM2-135M-Instruct Q4_1 served by "
        f"`{r['server']}` and reached as `openai:smollm?base_url=...&completions=1` (top-k log-probabilities of the completions "
        "endpoint, one request per prompt and step); small base and the two experts of bench/fusion_smol.py local (`hf-causal`). "
        f"Exact: full-logit fusion with the large model local (the same GGUF in fp32). {r['mode']}; greedy, at most {r['max_tokens']} tokens, "
        f"on the {n} reported prompts of bench/fusion_smol.py. Token agreement is teacher-forced on the exact output; "
        "*local top-k* takes the large model's top-k from the local copy (the truncation alone, no server).",
        "",
        f"Exact fusion: {sum(e['correct'])}/{n} ({100 * e['accuracy']:.1f}%) correct, {e['seconds']:.1f} s.",
        "",
        "| k | accuracy (API) | vs exact: points (better / worse) | same output as exact | token agreement, API | token agreement, local top-k | requests | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, res in r["top_k"].items():
        x = res["api"]
        a, t = x["token_agreement"]
        ea, et = res["emulated"]["token_agreement"]
        pv = x["paired_vs_exact"]
        lines.append(
            f"| {k} | {sum(x['correct'])}/{n} ({100 * x['accuracy']:.1f}%) | {100 * pv['diff']:+.1f} ({pv['better']} / {pv['worse']}) | "
            f"{x['same_output']}/{n} | {a}/{t} ({100 * a / max(t, 1):.1f}%) | {ea}/{et} ({100 * ea / max(et, 1):.1f}%) | {x['requests']} | {x['seconds']:.1f} |")
    k20 = r["top_k"].get("20", {}).get("api")
    if k20:
        gap = 100 * (k20["accuracy"] - e["accuracy"])
        lines += ["", f"Target: API fusion at k = 20 within 2 points of exact: {gap:+.1f} points — **{'met' if abs(gap) <= 2 else 'missed'}**."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if not args.render:
        save_results(STEM, measure(args.ks, args.threads), {STEM: "docs/benchmarks.md"})
    publish_results(STEM, render_section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
