"""Fixtures shared by the scale tests: a tiny chat Llama saved on disk (replicas and sweep runs
load it from its spec in their own processes) and ECO inputs the model 'knows'."""

from __future__ import annotations

import pytest
from needs import need

from scale_helpers import COUNTRIES, GENERAL, TEMPLATES, write_jsonl


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama with a chat template, saved so that other processes load it by spec."""
    need("torch")
    need("transformers", "sklearn")
    from tiny_lm import tiny_llama, tiny_tokenizer

    corpus = [t.format(c=c) for t in TEMPLATES for c in COUNTRIES] * 2 + GENERAL * 3 + ["user assistant"] * 5
    tok = tiny_tokenizer(corpus, chat=True)
    d = tmp_path_factory.mktemp("tiny_chat_llama")
    tiny_llama(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def eco_files(tiny_lm_dir, tmp_path_factory):
    """forget (France, Peru) / retain / general JSONL files; answers = the model's own greedy first
    word through its chat template, so it knows every forget answer before unlearning."""
    from blackbox.provider import load_provider
    from blackbox.types import GenerateRequest

    lm = load_provider(f"hf-causal:{tiny_lm_dir}")
    prompts = [(t.format(c=c), c) for c in COUNTRIES for t in TEMPLATES]
    outs = lm.generate(GenerateRequest(tuple(p for p, _ in prompts), max_tokens=3, stop=("\n",), chat=True)).texts
    rows = [{"prompt": p, "target": c, **({"answer": o.split()[0]} if o.split() else {})} for (p, c), o in zip(prompts, outs)]
    d = tmp_path_factory.mktemp("eco_data")
    return {"forget": write_jsonl(d / "f.jsonl", [r for r in rows if r["target"] in ("France", "Peru")]),
            "retain": write_jsonl(d / "r.jsonl", [r for r in rows if r["target"] not in ("France", "Peru")]),
            "general": write_jsonl(d / "g.jsonl", [{"prompt": g} for g in GENERAL])}


@pytest.fixture(scope="session")
def fusion_specs(tiny_lm_dir, tmp_path_factory):
    """large (the tiny chat Llama, wider), small and expert Llamas sharing its tokenizer, as specs."""
    from tiny_lm import tiny_llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    out = {}
    for name, seed, hidden in (("large", 1, 48), ("small", 2, 32), ("expert", 3, 32)):
        d = tmp_path_factory.mktemp(f"fusion_{name}")
        tiny_llama(tok, seed=seed, hidden=hidden).save_pretrained(d)
        tok.save_pretrained(d)
        out[name] = f"hf-causal:{d}"
    return out
