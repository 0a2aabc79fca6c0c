"""bench/crosstune_bbt.py: the BBT-style baseline's template, test sample and pure renderer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bbt():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import crosstune_bbt
    finally:
        sys.path.remove(str(REPO / "bench"))
    return crosstune_bbt


def test_template_holds_the_placeholders_and_both_segments(bbt):
    from blackbox.methods.crosstune.data import pair_text

    t = bbt.template("a fine day", ["negative", "positive"], 3)
    assert t.startswith(bbt.FILLER * 3 + "\n") and "Text: a fine day" in t and t.endswith("Answer (negative, positive):")
    p = bbt.template(pair_text("first part", "second part"), ["same", "different"], 2)
    assert "Text A: first part\nText B: second part" in p and "\x1f" not in p


def test_test_sample_is_seeded_random_not_the_first_texts(bbt):
    a, b = bbt.test_sample(500, 80), bbt.test_sample(500, 80)
    assert a == b and len(set(a)) == 80 and a == sorted(a)
    assert a != list(range(80)) and max(a) > 400  # spread over the split
    assert bbt.test_sample(50, 80) == list(range(50))


def test_render_is_pure_and_states_both_budgets(bbt):
    rows = [{"task": t, "seed": 0, "classes": 2, "bbt": b, "prompt_zero": z, "crosstune": c, "linear_probe": 0.5,
             "bbt_train_queries": 288, "crosstune_fit_queries": 34} for t, b, z, c in (("x", 0.5, 0.4, 0.7), ("y", 0.6, 0.5, 0.5))]
    info = {"command": "python bench/crosstune_bbt.py", "date": "d", "machine": "m",
            "args": {"shots": 16, "n_test": 80, "prompt_tokens": 5, "dim": 20, "sigma": 1.0, "popsize": 6, "batch": 16, "budget": 288}}
    res = {"info": info, "note": "", "rows": rows}
    out = bbt.render_section("crosstune_bbt", res)
    assert out == bbt.render_section("crosstune_bbt", res)
    assert "| x (2) | 1 | 40.0 | **50.0** | 288 | 70.0 | 34 | 50.0 | +20.0 |" in out
    assert "CrossTune − BBT-style: **+5.0 points**" in out and "1 of 2 task-seeds won" in out
    assert "at least CrossTune's training queries on 2 of 2 task-seeds (8.5x to 8.5x)" in out
    assert "(CrossTune − untuned prompt: +15.0 points)" in out and "untuned prompt on 0 of 2 task-seeds." in out


def test_describe_bench_render_is_pure():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import crosstune_describe
    finally:
        sys.path.remove(str(REPO / "bench"))
    row = {"task": "x", "seed": 0, "classes": 2, "n_test": 500, "writer_queries": 6, "crosstune_used": True, "zero-shot_used": False,
           "crosstune": {"template": 0.5, "generated": 0.6, "hand": 0.7}, "zero-shot": {"template": 0.4, "generated": 0.4, "hand": 0.5}}
    info = {"command": "c", "date": "d", "machine": "m", "shots": 16, "n": 3, "writer": "w", "template": "This text is about {label}."}
    res = {"info": info, "note": "", "rows": [row]}
    out = crosstune_describe.render_section("crosstune_describe", res)
    assert out == crosstune_describe.render_section("crosstune_describe", res)
    assert "| x (2) | 1 | 40.0 | 40.0 | 50.0 | 50.0 | **60.0** | 70.0 | 1 / 0 | 6 |" in out
    assert "CrossTune generated − template +10.0 (1W/0L), generated − hand-written -10.0 (0W/1L)" in out
