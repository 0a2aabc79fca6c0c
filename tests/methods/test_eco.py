"""ECO unlearning: corruption, gate, strength search, guarded provider, jobs and CLI.

Unit tests run on a tiny in-process Llama (2 layers, hidden 32, a BPE tokenizer trained
here). Its "knowledge" is whatever it answers greedily: answers are set to its own greedy
output, so every forget prompt is known before unlearning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blackbox.errors import CapabilityError, ConfigError, RunError
from blackbox.methods.eco.corruption import CORRUPTIONS, Corruption, select_tokens
from blackbox.methods.eco.gate import EntityMatcher, conformal_threshold, min_calibration_size
from blackbox.methods.eco.search import Measurement, bracket_bisect, central_difference, vector_central_difference

from needs import need  # noqa: E402  (tests/needs.py: skip, or fail under BLACKBOX_REQUIRE_MODELS=1)

torch = need("torch", hint="pip install torch==2.13.0")
need("transformers", "sklearn", hint="the llm extra: pip install -e '.[llm]'")
torch.set_num_threads(1)  # tiny matrices: extra threads only contend on a shared machine

COUNTRIES = [
    "France", "Germany", "Spain", "Italy", "Norway", "Sweden", "Poland", "Greece", "Egypt", "Kenya",
    "Peru", "Chile", "Brazil", "Canada", "Mexico", "Japan", "China", "India", "Nepal", "Ghana",
    "Austria", "Australia", "Niger", "Nigeria", "Cuba", "Iran", "Iraq", "Oman", "Qatar", "Yemen",
]
FORGET = ["France", "Nigeria", "Austria"]
TEMPLATES = ["What is the capital of {c}?", "Name the capital city of {c}.", "{c}'s capital is", "The capital of {c} is"]
HELDOUT = ["Which city is the capital of {c}?", "capital of {c}, please:"]
GENERAL = [
    "the cat sat on the mat", "a bird can fly over the tree", "one two three four five",
    "how do I bake bread", "what is two plus two", "write a haiku about rain", "the dog ate the bone",
    "tell me a joke", "how far is the moon", "what colour is the sky",
]


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from tiny_lm import tiny_tokenizer

    return tiny_tokenizer([t.format(c=c) for t in TEMPLATES + HELDOUT for c in COUNTRIES] + GENERAL * 3, vocab_size=400)


@pytest.fixture(scope="module")
def model(tokenizer):
    from tiny_lm import tiny_llama

    return tiny_llama(tokenizer, seed=0, ctx=128)


@pytest.fixture(scope="module")
def lm(model, tokenizer):
    from blackbox.providers.hf_causal import HFCausalProvider

    return HFCausalProvider.from_model(model, tokenizer, max_batch=4)


@pytest.fixture(scope="module")
def model_dir(model, tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def _answer(lm, prompts):
    from blackbox.types import GenerateRequest

    out = lm.generate(GenerateRequest(tuple(prompts), max_tokens=3, stop=("\n",))).texts
    return [o.strip().split()[0] if o.strip().split() else None for o in out]


@pytest.fixture(scope="module")
def data(lm):
    """forget / retain / general rows with answers = the tiny model's own greedy first word."""
    def rows(countries, templates):
        prompts = [(t.format(c=c), c) for c in countries for t in templates]
        answers = _answer(lm, [p for p, _ in prompts])
        return [{"prompt": p, "target": c, **({"answer": a} if a else {})} for (p, c), a in zip(prompts, answers)]

    others = [c for c in COUNTRIES if c not in FORGET]
    return {
        "forget": rows(FORGET, TEMPLATES),
        "retain": rows(others, TEMPLATES),
        "general": [{"prompt": g} for g in GENERAL],
        "forget_heldout": rows(FORGET, HELDOUT),
        "retain_heldout": rows(others, HELDOUT),
    }


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- corruption ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(CORRUPTIONS))
def test_strength_zero_changes_nothing(family):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    out = CORRUPTIONS[family](x.copy(), 0.0, np.random.default_rng(1), None)
    assert np.array_equal(out, x)
    c = Corruption(family, 0.0)
    assert c.apply(np.arange(5), x, [(i, i + 1) for i in range(5)]) is x


@pytest.mark.parametrize("family", sorted(CORRUPTIONS))
def test_corruption_changes_only_selected_rows_and_is_deterministic(family):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16)).astype(np.float32)
    offsets = [(0, 0), (0, 3), (4, 9), (10, 15), (16, 20), (21, 25)]
    c = Corruption(family, 0.5, dims=8, tokens="all_but_last", seed=3)
    a = c.apply(np.arange(6), x, offsets)
    b = c.apply(np.arange(6), x, offsets)
    assert np.array_equal(a, b)  # seeded per prompt
    assert np.array_equal(a[[0, 5]], x[[0, 5]])  # the special token and the last token are kept
    assert not np.array_equal(a[1:5], x[1:5])
    assert a.dtype == np.float32 and a.shape == x.shape


def test_family_specifics():
    x = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    rng = np.random.default_rng(0)
    assert np.array_equal(CORRUPTIONS["zero_first_n"](x, 0.5, rng, None), [[0, 0, 3, 4], [0, 0, 7, 8]])
    assert np.array_equal(CORRUPTIONS["flip_top_k"](x, 0.25, rng, None), [[1, 2, 3, -4], [5, 6, 7, -8]])
    assert np.array_equal(CORRUPTIONS["zero_top_k"](x, 0.25, rng, None), [[1, 2, 3, 0], [5, 6, 7, 0]])
    assert np.array_equal(CORRUPTIONS["flip_first_n"](x, 0.25, rng, None), [[-1, 2, 3, 4], [-5, 6, 7, 8]])
    assert np.array_equal(CORRUPTIONS["add_constant"](x, 1.0, rng, None), x + 1)
    assert np.array_equal(CORRUPTIONS["subtract_constant"](x, 1.0, rng, None), x - 1)
    assert np.array_equal(CORRUPTIONS["reverse"](x, 1.0, rng, None), x[::-1])
    g = CORRUPTIONS["gaussian_first_n"](x, 1.0, rng, 2)
    assert np.array_equal(g[:, 2:], x[:, 2:]) and not np.array_equal(g[:, :2], x[:, :2])
    r = CORRUPTIONS["gaussian_top_k"](x, 1.0, np.random.default_rng(0), 1)
    assert np.array_equal(r[:, :3], x[:, :3])
    assert sorted(CORRUPTIONS["shuffle"](np.eye(4, dtype=np.float32), 1.0, np.random.default_rng(2), None).argmax(1).tolist()) == [0, 1, 2, 3]


def test_select_tokens_entity_and_fallback():
    offsets = [(0, 0), (0, 4), (4, 7), (8, 14), (14, 15)]  # <s> What is France ?
    assert select_tokens(offsets, [(8, 14)], "entity").tolist() == [3]
    assert select_tokens(offsets, [], "entity").tolist() == [1, 2, 3]
    assert select_tokens(offsets, [(8, 14)], "all_but_last").tolist() == [1, 2, 3]
    with pytest.raises(ConfigError, match="tokens: expected one of entity, all_but_last"):
        select_tokens(offsets, [], "everything")


def test_corruption_config_errors():
    with pytest.raises(ConfigError, match="corruption: expected one of"):
        Corruption("blur", 0.1)
    with pytest.raises(ConfigError, match="strength: expected a finite number >= 0"):
        Corruption("gaussian_first_n", -1.0)


# --- gate --------------------------------------------------------------------------------------
def test_entity_matcher_typos_near_neighbours_and_longest_match():
    m = EntityMatcher({"Nigeria": [], "Austria": [], "Sudan": [], "France": ["French Republic"]}, ["Niger", "Australia", "South Sudan"])
    assert [x.entity for x in m.matches("capital of Niger?")] == ["Niger"]
    assert m.forget_spans("capital of Niger?") == []
    assert m.forget_spans("capital of Nigeria?") == [(11, 18)]
    assert m.forget_spans("capital of Australia") == []
    assert m.forget_spans("capital of Austira") == [(11, 18)]  # transposition typo
    assert m.forget_spans("South Sudan's capital") == []
    assert m.forget_spans("Sudan's capital") == [(0, 5)]
    assert m.forget_spans("the French Republic") == [(4, 19)]
    assert m.forget_spans("capital of Frnace") == [(11, 17)]


def test_conformal_threshold_bound_on_synthetic_data():
    """Split-conformal: over many draws, the test false-positive rate averages <= alpha."""
    for alpha, n_cal in ((0.05, None), (0.05, 60), (0.01, None)):
        rng = np.random.default_rng(int(alpha * 1000) + (n_cal or 0))
        n = n_cal or min_calibration_size(alpha)
        rates = []
        for _ in range(3000):
            tau = conformal_threshold(rng.standard_normal(n), alpha)
            rates.append(np.mean(rng.standard_normal(400) > tau))
        # E[rate] = 1 - k/(n+1) <= alpha exactly; 3000 draws: standard error <= 0.0009
        assert np.mean(rates) <= alpha + 0.003, (alpha, n, np.mean(rates))
        assert np.mean(rates) > alpha / 3  # not trivially conservative


def test_calibration_too_small_says_how_many():
    assert min_calibration_size(0.01) == 99
    with pytest.raises(ConfigError, match=r"needs at least 99 held-out retain/general prompts, received 40"):
        conformal_threshold(np.zeros(40), 0.01)


def test_gate_separates_hard_negatives_and_bounds_fpr(data):
    from blackbox.methods.eco.job import EcoConfig, as_items, build_gate

    general = [{"prompt": t.format(c=c)} for c in COUNTRIES[:3] for t in ("Tell me about {c}.",)] + [{"prompt": g + f" {k}"} for k in range(12) for g in GENERAL]
    cfg = EcoConfig(fpr=0.05)
    gate, report = build_gate(as_items(data["forget"], "f"), as_items(data["retain"], "r"), as_items(general, "g"), cfg)
    assert report["n_hard_negative"] > 0
    assert gate.flags([r["prompt"] for r in data["forget_heldout"]]).all()
    assert gate.flags(["What is the capital of Frnace?"]).all()
    # half of the retain entities calibrate and never train (entity-disjoint calibration), so
    # their unseen templates get the bound any new entity gets (5% here), not memorisation
    assert gate.flags([r["prompt"] for r in data["retain_heldout"]]).mean() <= 0.1
    assert report["calibration_false_positive_rate"] <= 0.05
    assert all(r <= 0.05 for r in report["group_false_positive_rate"].values())
    assert "other entities" in report["group_thresholds"]  # enough near neighbours for a group of their own


# --- search --------------------------------------------------------------------------------------
def cliff(at: float, queries: int = 10):
    """Accuracy 0.9 below ``at``, 0.05 above: the flat-cliff-flat shape of the real response."""
    def f(s):
        s = float(s[0]) if isinstance(s, (list, tuple)) else float(s)
        acc = 0.9 if s < at else 0.05
        return Measurement(abs(acc - 0.0), acc <= 0.05, queries, {"accuracy": acc})
    return f


def test_bracket_bisect_finds_the_cliff_and_counts_queries():
    res = bracket_bisect(cliff(0.09), start=0.01, grow=2.0, rtol=0.02, bisect_steps=20)
    assert res.met and 0.09 <= res.strength <= 0.09 * 1.03
    assert res.queries == 10 * len(res.evaluations)
    res2 = bracket_bisect(cliff(0.09), start=1.0, rtol=0.02, bisect_steps=20)  # starts past the cliff: walks down
    assert res2.met and 0.09 <= res2.strength <= 0.093


def test_bracket_reports_unreachable_target():
    res = bracket_bisect(cliff(5.0), start=0.1, max_strength=1.0)
    assert not res.met and res.stopped == "max strength"


def test_central_difference_stops_early_and_respects_floor():
    calls = []

    def f(s):
        calls.append(s)
        acc = max(0.0, 1.0 - 4 * s)  # smooth: target 0 reached at s >= 0.25
        return Measurement(acc, acc <= 0.0, 5)

    res = central_difference(f, start=0.1, eps=0.05, lr=0.1, floor=0.01, max_step=0.1, max_steps=20)
    assert res.met and res.stopped == "target met"
    assert min(calls) >= 0.01
    assert res.queries == 5 * len(calls)
    # on a flat plateau the unclipped rule cannot move: the gradient is zero
    flat = central_difference(cliff(0.5), start=0.1, eps=0.01, lr=100, floor=0.001, max_steps=3)
    assert not flat.met and all(e["strength"] <= 0.11 + 1e-9 for e in flat.evaluations)


def test_vector_central_difference_uses_random_directions():
    def f(x):
        x = np.asarray(x)
        v = float(np.sum((x - np.array([0.5, 0.2])) ** 2))
        return Measurement(v, v < 1e-3, 1)

    res = vector_central_difference(f, [0.1, 0.1], eps=0.01, lr=0.2, floor=0.0, max_steps=200, directions=2, seed=0)
    assert res.met and np.allclose(res.strength, [0.5, 0.2], atol=0.05)


# --- guarded provider ---------------------------------------------------------------------------
def test_guarded_prefill_only_and_unflagged_identical(lm, data):
    from blackbox.methods.eco.guarded import GuardedProvider
    from blackbox.types import GenerateRequest

    prompts = tuple(r["prompt"] for r in data["forget"][:2]) + tuple(GENERAL[:2])
    seen = []
    weights_before = lm.model.get_input_embeddings().weight.detach().clone()
    forced = GuardedProvider(lm, None, Corruption("gaussian_first_n", 5.0, tokens="all_but_last"))
    # prefill-only: the edit is called once per prompt (at prefill), never per generated token
    orig = lm._prefill_embeds
    lm._prefill_embeds = lambda *a, **k: (seen.append(a[1]), orig(*a, **k))[1]
    try:
        out = forced.generate(GenerateRequest(prompts, max_tokens=6))
    finally:
        del lm._prefill_embeds
    assert sorted(seen) == sorted(prompts)
    base = lm.generate(GenerateRequest(prompts, max_tokens=6))
    assert out.texts != base.texts
    # strength 0: byte-identical to the base model
    zero = GuardedProvider(lm, None, Corruption("gaussian_first_n", 0.0, tokens="all_but_last"))
    assert zero.generate(GenerateRequest(prompts, max_tokens=6)).texts == base.texts
    assert np.allclose(zero.next_token(__import__("blackbox.types", fromlist=["x"]).NextTokenRequest(prompts)).logits,
                       lm.next_token(__import__("blackbox.types", fromlist=["x"]).NextTokenRequest(prompts)).logits, atol=1e-5)
    # the corruption edits a copy of the prompt's embeddings at prefill, never the model's own table
    assert torch.equal(lm.model.get_input_embeddings().weight, weights_before)


def test_refuses_provider_without_inputs_embeds():
    from blackbox.methods.eco.guarded import GuardedProvider
    from blackbox.provider import Provider
    from blackbox.types import Capability

    class TextOnly(Provider):
        name = "text-only"
        declared_capabilities = frozenset({Capability.TEXT})

    with pytest.raises(CapabilityError, match="inputs_embeds.*text-only API cannot be corrupted"):
        GuardedProvider(TextOnly(), None, Corruption())


# --- jobs --------------------------------------------------------------------------------------------
def _general_rows():
    return [{"prompt": f"{g} ({k})"} for k in range(4) for g in GENERAL]


FIT_CFG = dict(fpr=0.05, start=0.5, max_new_tokens=3, bisect_steps=2)


@pytest.fixture(scope="module")
def fitted(lm, data, tmp_path_factory):
    """One uninterrupted reference fit, shared by the tests below."""
    from blackbox.methods.eco.job import EcoConfig, fit

    run = tmp_path_factory.mktemp("eco_ref") / "a"
    return run, fit(lm, data["forget"], data["retain"], run, general=_general_rows(), config=EcoConfig(**FIT_CFG)).artifact


def test_fit_unlearns_and_resume_is_identical(lm, data, fitted, tmp_path):
    from blackbox.methods.eco.job import EcoConfig, fit

    cfg = EcoConfig(**FIT_CFG)
    gen = _general_rows()
    ref_dir, full = fitted
    m = full["metrics"]
    assert m["forget_accuracy_before"] == 1.0
    assert m["forget_accuracy_after"] == 0.0
    assert m["retain_accuracy_after"] == m["retain_accuracy_before"]
    from blackbox.methods.eco.job import load_guarded

    gate = load_guarded(ref_dir, provider=lm).gate
    flagged = gate.flags([g["prompt"] for g in gen])
    # calibrated at 5% over retain + general prompts (marginally; a subgroup may be higher)
    assert gate.flags([r["prompt"] for r in data["retain"]] + [g["prompt"] for g in gen]).mean() <= 0.1
    assert m["general_unchanged"] == 1.0 - flagged.mean()  # every unflagged prompt is unchanged
    assert m["search_queries"] == sum(e["queries"] for e in full["search"]["evaluations"]) > 0

    class Kill(Exception):
        pass

    count = {"n": 0}

    def killer(ev):
        if ev.get("event") == "evaluation":
            count["n"] += 1
            if count["n"] == 7:
                raise Kill

    with pytest.raises(Kill):
        fit(lm, data["forget"], data["retain"], tmp_path / "b", general=gen, config=cfg, progress=killer)
    assert not (tmp_path / "b" / "artifact.json").exists()
    with open(tmp_path / "b" / "evals.jsonl", "a") as fh:
        fh.write('{"key": "torn')  # a torn last line, as after SIGKILL mid-write
    resumed = fit(lm, data["forget"], data["retain"], tmp_path / "b", general=gen, config=cfg)
    assert resumed.resumed
    strip = lambda a: {k: v for k, v in a.items() if k != "timing"}  # noqa: E731
    assert strip(resumed.artifact) == strip(full)
    assert (ref_dir / "artifact.safetensors").read_bytes() == (tmp_path / "b" / "artifact.safetensors").read_bytes()


def test_fit_cheap_mode_and_other_searches(lm, data, fitted, tmp_path):
    """verify_unflagged=False gives the same accuracies; the central/vector rules and the
    divergence objective run through the same job and count their queries."""
    from blackbox.methods.eco.job import EcoConfig, fit

    gen = _general_rows()
    ref = fitted[1]
    cheap = fit(lm, data["forget"], data["retain"], tmp_path / "c", general=gen, config=EcoConfig(**FIT_CFG, verify_unflagged=False)).artifact
    for key in ("forget_accuracy_after", "retain_accuracy_after", "retain_accuracy_before"):
        assert cheap["metrics"][key] == ref["metrics"][key]
    assert cheap["metrics"]["outputs_verified"] is False
    for search in ("central", "vector"):
        cfg = EcoConfig(fpr=0.05, start=0.05, eps=0.02, lr=1.0, max_step=1.0, max_steps=4, search=search, objective="divergence",
                        max_divergence=50.0, max_new_tokens=2, verify_unflagged=False)
        art = fit(lm, data["forget"][:4], data["retain"], tmp_path / search, general=gen, config=cfg).artifact
        ev = art["search"]["evaluations"]
        assert art["search"]["met"] and art["search"]["stopped"] == "target met"
        assert art["metrics"]["search_queries"] == sum(e["queries"] for e in ev) == len(ev) * art["metrics"]["n_known_forget"] > 0
        assert all("divergence" in e for e in ev)


def test_fit_bad_inputs(lm, data, tmp_path):
    from blackbox.methods.eco.job import EcoConfig, NothingToForgetWarning, fit, load_jsonl

    cfg = EcoConfig(fpr=0.05, max_new_tokens=3)
    with pytest.raises(ConfigError, match="forget: expected at least one prompt"):
        fit(lm, [], data["retain"], tmp_path / "x", config=cfg)
    with pytest.raises(ConfigError, match=r"1 prompt\(s\) appear in both sets"):
        fit(lm, data["forget"], data["retain"] + [data["forget"][0]], tmp_path / "x", config=cfg)
    with pytest.raises(ConfigError, match="needs at least 19 held-out retain/general prompts"):
        fit(lm, data["forget"], data["retain"][:10], tmp_path / "x", config=cfg.replace(builtin_general=False))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "oops"\n')
    with pytest.raises(ConfigError, match="line 2: malformed JSON"):
        load_jsonl(bad, "forget")
    bad.write_text('{"prompt": "ok", "answr": "x"}\n')
    with pytest.raises(ConfigError, match="line 1: unknown key"):
        load_jsonl(bad, "forget")
    wrong = [dict(r, answer="Zzyzx") for r in data["forget"]]
    with pytest.raises(RunError, match="the model knows none of the 12 forget answers"):  # no silent no-op
        fit(lm, wrong, data["retain"], tmp_path / "w", general=_general_rows(), config=cfg)
    with pytest.warns(NothingToForgetWarning, match="nothing to forget"):  # scripted jobs may opt in
        fit(lm, wrong, data["retain"], tmp_path / "w", general=_general_rows(), config=cfg.replace(allow_nothing_known=True))
    with pytest.raises(RunError, match="holds a different ECO run"):
        fit(lm, data["forget"], data["retain"], tmp_path / "w", general=_general_rows(), config=cfg)


# --- CLI ---------------------------------------------------------------------------------------------
def test_cli_fit_eval_generate(model_dir, data, tmp_path):
    """In-process (typer's CliRunner): the model loads from a spec, as a user would give it."""
    from typer.testing import CliRunner

    from blackbox.cli import app

    files = {k: write_jsonl(tmp_path / f"{k}.jsonl", v) for k, v in data.items()}
    write_jsonl(tmp_path / "general.jsonl", _general_rows()[:30])
    spec = f"hf-causal:{model_dir}"
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, ["unlearn", *args])

    run = tmp_path / "run"
    p = cli("fit", "--model", spec, "--forget", str(files["forget"]), "--retain", str(files["retain"]), "--general",
            str(tmp_path / "general.jsonl"), "--run-dir", str(run), "--fpr", "0.05", "--set", "start=0.5", "--set", "max_new_tokens=3",
            "--set", "bisect_steps=2", "--json")
    assert p.exit_code == 0, p.output
    fitted = json.loads(p.stdout.strip().splitlines()[-1])
    assert fitted["forget_accuracy_after"] == 0.0
    assert sorted(os.listdir(run)) == ["artifact.json", "artifact.safetensors", "config.json", "evals.jsonl"]
    p = cli("eval", str(run), "--forget", str(files["forget_heldout"]), "--retain", str(files["retain_heldout"]), "--json")
    assert p.exit_code == 0, p.output
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("forget_accuracy_before", "forget_accuracy_after", "retain_accuracy_before", "retain_accuracy_after",
                "gate_recall", "gate_false_positive_rate", "n_forget", "n_retain"):
        assert key in rep
    assert rep["gate_recall"] == 1.0 and rep["gate_false_positive_rate"] == 0.0
    assert rep["forget_accuracy_after"] == 0.0 and rep["retain_accuracy_after"] == rep["retain_accuracy_before"]
    p = cli("eval", str(run), "--forget", str(files["forget_heldout"]), "--retain", str(files["retain_heldout"]))
    assert p.exit_code == 0 and "forget accuracy" in p.stdout and "gate recall" in p.stdout
    p = cli("generate", str(run), "--prompt", "What is the capital of France?", "--prompt", "the cat sat", "--max-tokens", "3", "--json")
    assert p.exit_code == 0, p.output
    assert json.loads(p.stdout.strip().splitlines()[-1])["flagged"] == [True, False]
    p = cli("fit", "--model", spec, "--forget", str(files["forget"]), "--retain", str(files["retain"]), "--general",
            str(tmp_path / "general.jsonl"), "--run-dir", str(run), "--fpr", "0.05", "--set", "start=0.5", "--set", "max_new_tokens=3",
            "--set", "bisect_steps=2", "--json")
    assert p.exit_code == 0 and json.loads(p.stdout.strip().splitlines()[-1])["resumed"] is True
    p = cli("fit", "--model", spec, "--forget", str(files["forget"]), "--retain", str(files["retain"]), "--run-dir", str(tmp_path / "r4"),
            "--set", "builtin_general=false")
    assert p.exit_code == 1 and "needs at least 99 held-out retain/general prompts" in p.output


def test_cli_refuses_text_only_provider(tmp_path, data):
    from typer.testing import CliRunner

    from blackbox.cli import app

    f = write_jsonl(tmp_path / "f.jsonl", data["forget"])
    r = write_jsonl(tmp_path / "r.jsonl", data["retain"])
    g = write_jsonl(tmp_path / "g.jsonl", _general_rows())
    p = CliRunner().invoke(app, ["unlearn", "fit", "--model", "openai:smol?base_url=http://127.0.0.1:9/v1", "--forget", str(f), "--retain", str(r),
                                 "--general", str(g), "--run-dir", str(tmp_path / "x"), "--fpr", "0.05"])
    assert p.exit_code == 1 and "inputs_embeds" in p.output and "text-only API cannot be corrupted" in p.output


@pytest.mark.subprocess
def test_cli_subprocess_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "blackbox.cli", "unlearn", "fit", "--model", "hf-causal:smollm2", "--forget", str(bad),
                        "--retain", str(bad), "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith("error: forget:") and "line 2" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "blackbox.cli", "unlearn", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and all(c in p.stdout for c in ("fit", "eval", "generate"))
