"""Fine-tune the small expert for bench/fusion.py: Qwen2.5-Coder-0.5B-Instruct + LoRA.

The task is a strict answer format the base models do not produce: after
``Country: <name>\\nCapital:`` the answer must be `` [[<capital>]]``. The expert learns the
format from training countries; bench/fusion.py evaluates on held-out countries, where
the format comes from the expert and the capital (knowledge) is better known to the 1.5B
model. Data: capitals from the ``countryinfo`` package, split by a fixed seed.

LoRA (rank 16 on the attention and MLP projections of the top 6 blocks, peft) on CPU for a few minutes; the
adapter is merged and the model saved as safetensors with its tokenizer in the cache
directory (outside the repository), for ``hf-causal:<dir>``.

    python bench/fusion_expert.py [--steps 40] [--threads 2]
"""

from __future__ import annotations

import _common  # noqa: F401  (first: pins BLAS threads)

import argparse
import json
import random
import sys
import time
from pathlib import Path

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


def train(steps: int, threads: int, cache: Path, lr: float = 1.5e-3, batch: int = 6, top_layers: int = 6) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    base = hf_dir("small", cache)  # the 0.5B GGUF converted once to safetensors
    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
    n_layers = model.config.num_hidden_layers
    # LoRA on the top `top_layers` blocks only: the backward pass stops there (CPU budget)
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
                     layers_to_transform=list(range(n_layers - top_layers, n_layers)))
    model = get_peft_model(model, cfg)
    model.train()
    body, head = model.base_model.model.model, model.base_model.model.lm_head
    train_pairs, _ = split()
    rows = []
    for c, cap in train_pairs:
        p = tok(TASK_TEMPLATE.format(c=c), add_special_tokens=False)["input_ids"]
        a = tok(task_answer(cap) + "\n", add_special_tokens=False)["input_ids"]
        rows.append((p + a, [-100] * len(p) + a))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(SEED)
    t0 = time.time()
    for step in range(steps):
        chunk = rng.sample(rows, batch)
        width = max(len(ids) for ids, _ in chunk)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in chunk])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk])
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        # logits only where a label follows (the answer): the 151k-row head is the costly part
        target = labels[:, 1:]
        keep = target != -100
        logits = head(hidden[:, :-1][keep])
        loss = torch.nn.functional.cross_entropy(logits.float(), target[keep])
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(json.dumps({"step": step + 1, "loss": round(float(loss.detach()), 4), "s": round(time.time() - t0, 1)}), flush=True)
    merged = model.merge_and_unload().eval()
    out = expert_dir(cache)
    out.mkdir(parents=True, exist_ok=True)
    save_plain(merged, tok, out)
    (out / "train_info.json").write_text(json.dumps({"steps": steps, "lr": lr, "batch": batch, "lora_layers": top_layers, "n_train": len(rows), "seconds": round(time.time() - t0, 1)}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args(argv)
    print("saved", train(args.steps, args.threads, args.cache.expanduser()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
