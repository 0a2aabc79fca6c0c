"""ECO with instruct models: chat format everywhere, corruption only on the prompt's own tokens,
and no silent no-op when the model knows nothing to forget (issue 19, items 1-2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from needs import need  # noqa: E402

torch = need("torch", hint="pip install torch==2.13.0")
need("transformers", "sklearn", hint="the llm extra: pip install -e '.[llm]'")
torch.set_num_threads(1)

from tiny_lm import tiny_llama, tiny_tokenizer  # noqa: E402

from blackbox.errors import RunError  # noqa: E402
from blackbox.methods.eco.config import EcoConfig  # noqa: E402
from blackbox.methods.eco.corruption import Corruption, select_tokens  # noqa: E402

COUNTRIES = ["France", "Germany", "Spain", "Italy", "Norway", "Sweden", "Poland", "Greece", "Egypt", "Kenya",
             "Peru", "Chile", "Brazil", "Canada", "Mexico", "Japan", "China", "India", "Nepal", "Ghana"]
FORGET = ["France", "Peru"]
TEMPLATES = ["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"]
GENERAL = ["how do I bake bread", "what is two plus two", "write a haiku about rain", "tell me a joke",
           "how far is the moon", "what colour is the sky", "the cat sat on the mat", "one two three four"]


@pytest.fixture(scope="module")
def lm():
    from blackbox.providers.hf_causal import HFCausalProvider

    corpus = [t.format(c=c) for t in TEMPLATES for c in COUNTRIES] * 2 + GENERAL * 3 + ["user assistant"] * 5
    tok = tiny_tokenizer(corpus, chat=True)
    return HFCausalProvider.from_model(tiny_llama(tok), tok, max_batch=4)


def _rows(lm, countries, chat: bool):
    """Answers = the tiny model's own greedy first word in the given format (so it 'knows' them)."""
    from blackbox.types import GenerateRequest

    prompts = [(t.format(c=c), c) for c in countries for t in TEMPLATES]
    outs = lm.generate(GenerateRequest(tuple(p for p, _ in prompts), max_tokens=3, stop=("\n",), chat=chat)).texts
    rows = []
    for (p, c), o in zip(prompts, outs):
        words = o.strip().split()
        rows.append({"prompt": p, "target": c, **({"answer": words[0]} if words else {})})
    return rows


def test_region_keeps_template_tokens_out():
    offsets = [(0, 3), (3, 8), (8, 12), (12, 20), (20, 26), (26, 30)]
    assert select_tokens(offsets, [], "all_but_last").tolist() == [0, 1, 2, 3, 4]
    assert select_tokens(offsets, [], "all_but_last", region=(8, 26)).tolist() == [2, 3]  # the prompt's own tokens but its last
    assert select_tokens(offsets, [(13, 15)], "entity", region=(8, 26)).tolist() == [3]


@pytest.mark.parametrize("tokens", ["all_but_last", "entity"])
def test_chat_corruption_touches_only_the_prompts_own_tokens(lm, tokens):
    from blackbox.methods.eco.guarded import GuardedProvider
    from blackbox.methods.eco.gate import EntityMatcher

    prompt = "What is the capital of France?"
    matcher = EntityMatcher({"France": ()})
    guarded = GuardedProvider(lm, None, Corruption("gaussian_first_n", 5.0, tokens=tokens), spans=matcher.forget_spans)
    te = lm.token_embeddings(prompt, chat=True)
    full = lm.prompt_text(prompt, chat=True)
    start = full.rfind(prompt)
    edited = guarded._edit([prompt], True)(np.asarray(te.ids), np.asarray(te.embeds), te.offsets)
    changed = [i for i in range(len(te.ids)) if not np.array_equal(edited[i], np.asarray(te.embeds)[i])]
    assert changed, "something must be corrupted"
    for i in changed:
        a, b = te.offsets[i]
        assert start <= a and b <= start + len(prompt), (i, full[a:b])  # never a template token
    if tokens == "entity":
        fr = full.index("France")
        assert all(te.offsets[i][0] < fr + 6 and fr < te.offsets[i][1] for i in changed)


def test_fit_uses_the_chat_template_by_default_and_eval_follows(lm, tmp_path):
    from blackbox.methods.eco.job import evaluate, fit, load_guarded

    others = [c for c in COUNTRIES if c not in FORGET]
    forget, retain = _rows(lm, FORGET, chat=True), _rows(lm, others, chat=True)
    cfg = EcoConfig(fpr=0.2, calibration_fraction=0.5, max_new_tokens=3, corruption="gaussian_first_n", tokens="all_but_last")
    art = fit(lm, forget, retain, tmp_path / "run", general=[{"prompt": g} for g in GENERAL], config=cfg).artifact
    assert art["config"]["chat"] is True  # resolved from the tokenizer and stored
    m = art["metrics"]
    assert m["n_known_forget"] > 0 and m["forget_accuracy_before"] > 0  # knowledge scored in chat format
    guarded = load_guarded(tmp_path / "run", provider=lm)
    report = evaluate(guarded, forget, retain)
    assert report["forget_accuracy_before"] == m["forget_accuracy_before"]  # eval asks in the same format
    # Same-entity collateral: other facts about the forgotten entities (entity scope flags them all).
    same = [{"prompt": f"What currency does {c} use?", "target": c, "answer": r["answer"]}
            for c, r in zip(FORGET, _rows(lm, FORGET, chat=True)[::len(TEMPLATES)]) if "answer" in r]
    report = evaluate(guarded, forget, retain, same_entity=same)
    assert report["n_same_entity"] == len(same) and report["same_entity_flag_rate"] == 1.0
    assert report["same_entity_collateral"] == pytest.approx(report["same_entity_accuracy_before"] - report["same_entity_accuracy_after"])


def test_nothing_known_is_refused_with_the_fix_and_leaves_nothing(lm, tmp_path):
    from blackbox.methods.eco.job import fit

    others = [c for c in COUNTRIES if c not in FORGET]
    forget = [{**r, "answer": "Zanzibar"} for r in _rows(lm, FORGET, chat=True)]  # never the model's answer
    retain = _rows(lm, others, chat=True)
    cfg = EcoConfig(fpr=0.2, max_new_tokens=3)
    run = tmp_path / "run"
    with pytest.raises(RunError) as exc:
        fit(lm, forget, retain, run, general=[{"prompt": g} for g in GENERAL], config=cfg)
    msg = str(exc.value)
    assert msg.startswith(f"forget: the model knows none of the {len(forget)} forget answers when asked through its chat template")
    assert "--chat/--no-chat" in msg and "allow_nothing_known" in msg and "\n" not in msg
    assert not run.exists()
    art = fit(lm, forget, retain, run, general=[{"prompt": g} for g in GENERAL], config=cfg.replace(allow_nothing_known=True)).artifact
    assert art["search"]["stopped"] == "nothing to forget" and art["metrics"]["n_known_forget"] == 0
    assert json.loads((run / "artifact.json").read_text())["notes"]


def test_builtin_general_prompts_let_a_small_retain_set_calibrate_fpr_001(lm):
    from blackbox.errors import ConfigError
    from blackbox.methods.eco.job import as_items, build_gate, builtin_general_prompts, split_calibration

    others = [c for c in COUNTRIES if c not in FORGET]
    forget = as_items(_rows(lm, FORGET, chat=False), "forget")
    retain = as_items(_rows(lm, others[:8], chat=False), "retain")  # 24 prompts: far below the 198 that fpr 0.01 needs
    cfg = EcoConfig(fpr=0.01)
    with pytest.raises(ConfigError, match="needs at least 99 held-out"):
        split_calibration([i.prompt for i in retain], cfg)
    builtin = builtin_general_prompts()
    assert len(builtin) >= 200 and len(set(builtin)) == len(builtin)
    gate, report = build_gate(forget, retain, [], cfg)
    pool = report["calibration_pool"]
    assert pool["retain"] == len(retain) and pool["builtin_general"] == len(builtin)  # none names France or Peru
    assert report["n_calibration"] >= 99 and "built-in general prompts" in report["bound"]
    assert gate.flags([i.prompt for i in forget]).mean() == 1.0  # exact-match gate still catches the forget targets
    # A built-in prompt that names a forget target is dropped from the negatives.
    _, report = build_gate(as_items([{"prompt": "Who painted a famous picture of sunflowers?", "target": "sunflowers", "answer": "x"}], "forget"),
                            retain, [], cfg)
    assert report["calibration_pool"]["builtin_general"] == len(builtin) - sum("sunflowers" in p for p in builtin) == len(builtin) - 2
