"""ECO's scope of forgetting (issue 19, items 4-5) and the gate's group-wise calibration.

Model-free: the gate needs no language model, so these run in a second or two. ``fact`` keeps
other facts about a forgotten entity; ``topic`` names no entity and leans on sentence
embeddings (a small deterministic bag-of-words encoder stands in for MiniLM here).
"""

from __future__ import annotations

import numpy as np
import pytest

from needs import need

need("sklearn", hint="the llm extra: pip install -e '.[llm]'")

from blackbox.errors import ConfigError  # noqa: E402
from blackbox.methods.eco.config import EcoConfig  # noqa: E402
from blackbox.methods.eco.gate import calibration_groups  # noqa: E402
from blackbox.methods.eco.job import as_items, build_gate  # noqa: E402

COUNTRIES = ["France", "Germany", "Spain", "Italy", "Norway", "Sweden", "Poland", "Greece", "Egypt", "Kenya",
             "Peru", "Chile", "Brazil", "Canada", "Mexico", "Japan", "China", "India", "Nepal", "Ghana",
             "Austria", "Portugal", "Finland", "Denmark", "Hungary", "Romania", "Morocco", "Tunisia", "Vietnam", "Bolivia"]
FORGET = ["France", "Peru"]
CAPITAL = ["What is the capital of {c}?", "Which city is the capital of {c}?"]
CAPITAL_HELDOUT = ["Tell me the capital city of {c}.", "{c}'s capital is which city?"]
OTHER_FACTS = ["On which continent is {c}?", "What do you call a person from {c}?", "What language is spoken in {c}?"]


def rows(countries, templates, answer=True):
    return [{"prompt": t.format(c=c), "target": c, **({"answer": "x"} if answer else {})} for c in countries for t in templates]


def test_scope_is_validated_and_topic_defaults_to_a_sentence_encoder():
    with pytest.raises(ConfigError, match="scope: expected one of entity, topic, fact, received 'topics'"):
        EcoConfig(scope="topics")
    assert EcoConfig(scope="topic").encoder == "sentence-encoder:minilm"
    assert EcoConfig(scope="topic", encoder="other").encoder == "other"
    assert EcoConfig().scope == "entity" and EcoConfig().encoder is None


def test_small_calibration_groups_join_the_first():
    groups = calibration_groups({"pool": ["a"] * 120, "near": ["b"] * 150, "tiny": ["c"] * 10}, 0.01)
    assert list(groups) == ["pool", "near"] and len(groups["pool"]) == 130
    assert calibration_groups(["a", "b"], 0.01) == {"all": ["a", "b"]}


def test_entity_scope_bounds_each_group_and_flags_every_fact_of_the_target():
    others = [c for c in COUNTRIES if c not in FORGET]
    forget = as_items(rows(FORGET, CAPITAL), "forget")
    retain = as_items(rows(others, CAPITAL), "retain")
    gate, report = build_gate(forget, retain, [], EcoConfig(fpr=0.05))
    assert report["scope"] == "entity" and set(report["group_thresholds"]) == {"retain/general", "other entities"}
    assert gate.threshold_ == max(report["group_thresholds"].values())
    assert all(r <= 0.05 for r in report["group_false_positive_rate"].values())
    assert gate.flags([t.format(c=c) for c in FORGET for t in CAPITAL_HELDOUT + OTHER_FACTS]).all()  # everything about France
    # the stored gate round-trips with its group thresholds
    from blackbox.methods.eco.gate import Gate

    again = Gate.from_json(gate.to_json(), gate.arrays())
    assert again.group_thresholds_ == gate.group_thresholds_ and again.config.other_features is False


def test_fact_scope_forgets_the_fact_and_keeps_other_facts_of_the_entity():
    others = [c for c in COUNTRIES if c not in FORGET]
    forget = as_items(rows(FORGET, CAPITAL), "forget")
    retain = as_items(rows(others, CAPITAL), "retain")
    gate, report = build_gate(forget, retain, [], EcoConfig(scope="fact", fpr=0.05))
    assert "same entity, other facts" in report["group_thresholds"]
    assert gate.flags([t.format(c=c) for c in FORGET for t in CAPITAL + CAPITAL_HELDOUT]).all()
    same = gate.flags([t.format(c=c) for c in FORGET for t in OTHER_FACTS])
    assert same.mean() <= 1 / 6, "other facts about France/Peru must mostly pass"
    assert not gate.flags([t.format(c=c) for c in others for t in CAPITAL_HELDOUT]).any()  # another entity: never


class BagEncoder:
    """A deterministic stand-in for a sentence encoder: hashed bag of lower-cased words."""

    name = "bag"

    def embed(self, request):
        from blackbox.types import EmbedResult

        out = np.zeros((len(request.texts), 64))
        for k, t in enumerate(request.texts):
            for w in t.lower().replace("?", " ").replace(".", " ").split():
                out[k, sum(map(ord, w)) % 64] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return EmbedResult(out)


def test_topic_scope_needs_an_encoder_and_flags_the_subject_without_names():
    topic = ["Which continent is {c} in?", "On what continent is {c} located?"]
    forget = as_items([{"prompt": t.format(c=c), "answer": "x"} for c in COUNTRIES[:10] for t in topic], "forget")
    retain = as_items(rows(COUNTRIES, CAPITAL), "retain")
    cfg = EcoConfig(scope="topic", fpr=0.05)
    with pytest.raises(ConfigError, match="encoder: expected a sentence-encoder provider for scope=topic"):
        build_gate(forget, retain, [], cfg)
    gate, report = build_gate(forget, retain, [], cfg, encoder=BagEncoder())
    assert report["scope"] == "topic" and report["n_hard_negative"] == 0
    assert gate.matcher.forget == {}  # no entity: the classifier alone decides
    assert gate.flags([f"Tell me the continent of {c}." for c in COUNTRIES[10:]]).mean() >= 0.9  # unseen countries, unseen wording
    # (the bag-of-words stand-in has no meaning: "X's capital is which city?" shares "which ... is"
    # with the topic's wording and is not a fair check of it; MiniLM's is in bench/eco.py)
    assert gate.flags([f"Tell me the capital city of {c}." for c in COUNTRIES[10:]]).mean() <= 0.1
    assert report["group_false_positive_rate"]["retain/general"] <= 0.05


@pytest.mark.parametrize("scope", ["topic", "fact"])
def test_a_scoped_fit_runs_end_to_end_and_reloads(tmp_path, scope):
    # The whole job on a tiny chat model: topic (no targets; the encoder comes in) and fact.
    need("torch", "transformers", hint="the llm extra")
    from tiny_lm import tiny_llama, tiny_tokenizer

    from blackbox.methods.eco.job import fit, load_guarded
    from blackbox.providers.hf_causal import HFCausalProvider
    from blackbox.types import GenerateRequest

    topic = ["Which continent is {c} in?", "On what continent is {c} located?"]
    corpus = [t.format(c=c) for t in topic + CAPITAL + OTHER_FACTS for c in COUNTRIES] + ["user assistant"] * 5
    tok = tiny_tokenizer(corpus, chat=True)
    lm = HFCausalProvider.from_model(tiny_llama(tok), tok, max_batch=8)
    asked = [t.format(c=c) for c in COUNTRIES[:4] for t in (topic if scope == "topic" else CAPITAL)]
    outs = lm.generate(GenerateRequest(tuple(asked), max_tokens=3, stop=("\n",), chat=True)).texts
    targets = [c for c in COUNTRIES[:4] for _ in CAPITAL]
    forget = [{"prompt": p, **({"target": c} if scope == "fact" else {}), **({"answer": o.split()[0]} if o.split() else {})}
              for p, o, c in zip(asked, outs, targets)]
    retain = rows(COUNTRIES[10:20], CAPITAL[:1], answer=False)
    # a short search: this checks the plumbing of a scope, not the strength
    cfg = EcoConfig(scope=scope, fpr=0.05, max_new_tokens=3, allow_nothing_known=True, bisect_steps=1, max_strength=0.4,
                    verify_unflagged=False)
    enc = BagEncoder() if scope == "topic" else None
    art = fit(lm, forget, retain, tmp_path / "run", config=cfg, encoder=enc).artifact
    assert art["config"]["scope"] == scope and art["gate"]["config"]["scope"] == scope
    assert art["metrics"]["gate_recall_forget"] == 1.0
    guarded = load_guarded(tmp_path / "run", provider=lm, encoder=enc)
    assert guarded.gate.threshold_ == art["gate"]["threshold"]
    if scope == "fact":  # another fact about a forgotten country passes; its capital does not
        assert not guarded.gate.flags([f"What do you call a person from {COUNTRIES[0]}?"]).any()
        assert guarded.gate.flags([f"Tell me the capital city of {COUNTRIES[0]}."]).all()


class ConstEncoder:
    """An encoder that says nothing (one vector for every text): the gate's words alone decide."""

    name = "const"

    def embed(self, request):
        from blackbox.types import EmbedResult

        return EmbedResult(np.ones((len(request.texts), 8)) / np.sqrt(8))


def test_topic_gate_reads_content_words_not_the_templates_function_words():
    # Forgetting "{c} is part of which continent?" must not flag "{c}'s capital is which city?":
    # with function words as features, "which ... is" alone was topic evidence (dev: 24-31% of
    # other-topic questions flagged; bench/eco_topic_gate.py).
    from blackbox.methods.eco.job import gate_config

    g = gate_config(EcoConfig(scope="topic"))
    assert g.stop_words and not g.char_ngrams
    assert not gate_config(EcoConfig(scope="entity")).stop_words
    topic = ["Which continent is {c} in?", "{c} is part of which continent?", "On what continent is {c} located?"]
    forget = as_items([{"prompt": t.format(c=c), "answer": "x"} for c in COUNTRIES[:10] for t in topic], "forget")
    retain = as_items(rows(COUNTRIES[:20], CAPITAL[:1]), "retain")
    unseen = COUNTRIES[20:]
    cfg = EcoConfig(scope="topic", fpr=0.05)
    gate, _ = build_gate(forget, retain, [], cfg, encoder=ConstEncoder())
    before, _ = build_gate(forget, retain, [], cfg, encoder=ConstEncoder(), gate_overrides={"stop_words": False, "char_ngrams": True})
    alike = [f"{c}'s capital is which city?" for c in unseen]
    assert gate.flags(alike).mean() == 0.0 and before.flags(alike).mean() >= 0.5
    assert gate.flags([f"Tell me the continent {c} lies on." for c in unseen]).mean() == 1.0
