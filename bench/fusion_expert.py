"""Fine-tune the small expert for bench/fusion.py: Qwen2.5-Coder-0.5B-Instruct + LoRA.

The task is a strict answer format the base models do not produce: after
``Country: <name>\\nCapital:`` the answer must be `` [[<capital>]]``. The expert learns the
format from training countries; bench/fusion.py evaluates on held-out countries, where
the format comes from the expert and the capital (knowledge) is better known to the 1.5B
model. Data: capitals from the ``countryinfo`` package, split by a fixed seed.

LoRA (rank 16 on the attention and MLP projections of the top 6 blocks, peft) on CPU for a few minutes; the
adapter is merged and the model saved as safetensors with its tokenizer in the cache
directory (outside the repository), for ``hf-causal:<dir>``.

Behaviour preservation (``--preserve K``, default 6; ``--kl-weight``, default 1): each step
also takes K off-task prompts and adds KL(base ‖ expert) of the full next-token
distributions at every position of the *small base's own* greedy answer (the base is the
same network with the adapter switched off), so the expert learns the format without
drifting where it has no task. The prompts are built from the training countries only
(``Q: What is the capital of X?``, continent, language, currency), so they never overlap the
evaluation sets, and the base's answers are kept right or wrong, so no knowledge is added.
Measured on the bench's selected general prompts (mean per-token KL(small base ‖ expert)
along the small base's answers; general: capitals / general: other): no preservation
5.39 / 1.24; cross-entropy on the base's greedy answers 0.72 / 0.22; the KL term 0.22 /
0.12, with the bracket format on 24 of 24 held-out task prompts in every case. Without it
the LoRA put its bracket format and its guesses on general prompts too, and fusion pulled
the 1.5B model away from answers it knew.

    python bench/fusion_expert.py [--steps 8] [--preserve 6] [--kl-weight 1] [--threads 2]
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from fusion_assets import DEFAULT_CACHE, hf_dir, save_plain

SEED = 7
N_TRAIN = 80
TASK_TEMPLATE = "Country: {c}\nCapital:"
GENERAL_TEMPLATE = "Q: What is the capital of {c}?\nA:"


def countries() -> list[tuple[str, str]]:
    """(country, capital) pairs with a single-line ASCII-ish capital, in a fixed shuffled order."""
    import countryinfo

    pairs = []
    for c in countryinfo.all_countries():
        name, cap = c.name(), c.capital()
        if isinstance(cap, (list, tuple)):  # countryinfo gives a few capitals as a list
            cap = cap[0] if cap else None
        if name and cap and "\n" not in cap and "[" not in cap:
            pairs.append((str(name), str(cap)))
    pairs = sorted(set(pairs))
    random.Random(SEED).shuffle(pairs)
    return pairs


def split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, held_out)`` countries; disjoint."""
    pairs = countries()
    return pairs[:N_TRAIN], pairs[N_TRAIN:]


def task_answer(capital: str) -> str:
    return f" [[{capital}]]"


def expert_dir(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / "expert-capital-brackets"


OFF_TASK = ("Q: What is the capital of {c}?\nA:", "Q: On which continent is {c}?\nA:", "Q: What language is spoken in {c}?\nA:",
            "Q: What is the currency of {c}?\nA:")


def self_targets(model: Any, tok: Any, prompts: list[str], n_new: int = 12, batch: int = 16) -> list[list[int]]:
    """The model's own greedy continuation of each prompt, up to the first newline (token ids)."""
    import torch

    out: list[list[int]] = []
    tok.padding_side = "left"
    nl = set(tok("\n", add_special_tokens=False)["input_ids"])
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            ids = []
            for t in row:
                ids.append(t)
                if t in nl or t == tok.eos_token_id or t == tok.pad_token_id:
                    break
            out.append(ids)
    return out


def train(steps: int, threads: int, cache: Path, lr: float = 1.5e-3, batch: int = 6, top_layers: int = 6, preserve: int = 6,
          kl_weight: float = 1.0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    t_start = time.time()
    base = hf_dir("small", cache)  # the 0.5B GGUF converted once to safetensors
    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
    n_layers = model.config.num_hidden_layers
    # LoRA on the top `top_layers` blocks only: the backward pass stops there (CPU budget)
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
                     layers_to_transform=list(range(n_layers - top_layers, n_layers)))
    train_pairs, _ = split()
    off: list[tuple[list[int], list[int]]] = []
    if preserve:
        # Targets from the un-tuned base, computed before LoRA touches it.
        prompts = [t.format(c=c) for c, _ in train_pairs for t in OFF_TASK]
        for text, ans in zip(prompts, self_targets(model, tok, prompts)):
            p = tok(text, add_special_tokens=False)["input_ids"]
            off.append((p + ans, [-100] * len(p) + ans))
        print(json.dumps({"event": "self_targets", "n": len(off), "s": round(time.time() - t_start, 1)}), flush=True)
    model = get_peft_model(model, cfg)
    model.train()
    body, head = model.base_model.model.model, model.base_model.model.lm_head
    rows = []
    for c, cap in train_pairs:
        p = tok(TASK_TEMPLATE.format(c=c), add_special_tokens=False)["input_ids"]
        a = tok(task_answer(cap) + "\n", add_special_tokens=False)["input_ids"]
        rows.append((p + a, [-100] * len(p) + a))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(SEED)
    t0 = time.time()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def padded(chunk: list[tuple[list[int], list[int]]]) -> tuple[Any, Any, Any, Any]:
        """``(ids, attention mask, next-token targets, where a target is labelled)`` for a batch of rows."""
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in chunk])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk])
        target = labels[:, 1:]
        return ids, mask, target, target != -100

    for step in range(steps):
        ids, mask, target, keep = padded(rng.sample(rows, batch))
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        # logits only where a label follows (the answer): the 151k-row head is the costly part
        task_loss = torch.nn.functional.cross_entropy(head(hidden[:, :-1][keep]).float(), target[keep])
        kl = torch.zeros(())
        if preserve:
            # Off-task rows: KL(base ‖ expert) over the whole next-token distribution at every
            # position of the base's own answer, so the shift expert − base stays near 0 there.
            ids, mask, _, keep = padded(rng.sample(off, preserve))
            with torch.no_grad(), model.disable_adapter():
                ref = torch.log_softmax(head(body(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][keep]).float(), -1)
            cur = torch.log_softmax(head(body(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][keep]).float(), -1)
            kl = (ref.exp() * (ref - cur)).sum(-1).mean()
        loss = task_loss + kl_weight * kl
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(json.dumps({"step": step + 1, "task_loss": round(float(task_loss.detach()), 4), "kl": round(float(kl.detach()), 4),
                          "s": round(time.time() - t0, 1)}), flush=True)
    merged = model.merge_and_unload().eval()
    out = expert_dir(cache)
    out.mkdir(parents=True, exist_ok=True)
    save_plain(merged, tok, out)
    (out / "train_info.json").write_text(json.dumps({"steps": steps, "lr": lr, "batch": batch, "lora_layers": top_layers, "n_train": len(rows),
                                                       "preserve": preserve, "kl_weight": kl_weight, "n_off_task": len(off), "seconds": round(time.time() - t0, 1)}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preserve", type=int, default=6, help="off-task rows per step held to the small base by the KL term (0: task rows only)")
    ap.add_argument("--kl-weight", type=float, default=1.0, help="weight of the off-task KL term")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args(argv)
    print("saved", train(args.steps, args.threads, args.cache.expanduser(), lr=args.lr, preserve=args.preserve, kl_weight=args.kl_weight), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
