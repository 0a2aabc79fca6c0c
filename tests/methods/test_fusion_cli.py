"""``blackbox fuse generate --stream`` and ``--weights-out`` on tiny local models (issue 21 item 4)."""

from __future__ import annotations

import json

import pytest

from needs import need  # noqa: E402

torch = need("torch", hint="pip install torch==2.13.0")
need("transformers", hint="the llm extra: pip install -e '.[llm]'")
torch.set_num_threads(1)

from tiny_lm import tiny_llama, tiny_tokenizer  # noqa: E402

CORPUS = ["the cat sat on the mat", "a bird can fly over the tree", "one two three four five six",
          "the dog ate the bone", "what is two plus two", "write a haiku about rain"] * 4


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    tok = tiny_tokenizer(CORPUS, vocab_size=300)
    out = {}
    for name, seed, hidden in (("large", 1, 48), ("small", 2, 32), ("e1", 3, 32), ("e2", 4, 32)):
        d = tmp_path_factory.mktemp(name)
        tiny_llama(tok, seed=seed, hidden=hidden).save_pretrained(d)
        tok.save_pretrained(d)
        out[name] = f"hf-causal:{d}"
    return out


def _cli(*args):
    from typer.testing import CliRunner

    from blackbox.cli import app

    return CliRunner().invoke(app, ["fuse", "generate", *args])


def test_stream_prints_the_same_text_and_weights_out_traces_every_step(specs, tmp_path):
    base = ["--large", specs["large"], "--small", specs["small"], "--expert", specs["e1"], "--expert", specs["e2"],
            "--mode", "dynamic", "--max-tokens", "8", "--prompt", "the cat sat"]
    ref = _cli(*base, "--json", "--no-progress")
    assert ref.exit_code == 0, ref.output
    ref = json.loads(ref.stdout.strip().splitlines()[-1])
    trace = tmp_path / "w.jsonl"
    streamed = _cli(*base, "--stream", "--weights-out", str(trace))
    assert streamed.exit_code == 0, streamed.output
    assert streamed.stdout == ref["outputs"][0] + "\n"  # the streamed pieces add up to the final text
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [r["token"] for r in rows] == ref["tokens"][0] and [r["step"] for r in rows] == list(range(len(rows)))
    assert [r["weights"] for r in rows] == ref["weights"][0] and all(len(r["weights"]) == 2 for r in rows)
    assert all(0.0 <= w <= 2.0 for r in rows for w in r["weights"])


def test_stream_with_a_stop_string_never_prints_it(specs):
    args = ["--large", specs["large"], "--small", specs["small"], "--expert", specs["e1"], "--max-tokens", "12", "--prompt", "the cat sat"]
    ref = json.loads(_cli(*args, "--json", "--no-progress").stdout.strip().splitlines()[-1])
    text = ref["outputs"][0]
    assert len(text) > 4, text
    stop = text[2:4]  # a string the unconstrained output contains
    cut = json.loads(_cli(*args, "--stop", stop, "--json", "--no-progress").stdout.strip().splitlines()[-1])["outputs"][0]
    streamed = _cli(*args, "--stop", stop, "--stream")
    assert streamed.exit_code == 0 and streamed.stdout == cut + "\n" and stop not in streamed.stdout


def test_stream_needs_one_prompt(specs, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("the cat\nthe dog\n")
    res = _cli("--large", specs["large"], "--small", specs["small"], "--expert", specs["e1"], "--prompts", str(f), "--stream")
    assert res.exit_code == 1 and res.output.strip() == "error: --stream: expected one prompt and no --json, received 2 prompt(s)"


def test_fusion_method_records_a_fused_model_that_loads_evaluates_and_shows(specs, tmp_path):
    from blackbox.methods.fusion.config import FusionConfig
    from blackbox.methods.fusion.method import FusionMethod

    method, run = FusionMethod(), tmp_path / "fused"
    spec = method.fit(FusionConfig(mode="proxy", max_tokens=6), run, large=specs["large"], small=specs["small"], experts=[specs["e1"]])
    assert method.owns(run) and json.loads((run / "fusion.json").read_text()) == spec
    text = method.load(run).generate(["the cat sat"]).texts[0]
    word = text.split()[0] if text.split() else text
    report = method.evaluate(run, [{"prompt": "the cat sat", "answer": word}, {"prompt": "the cat sat", "answer": "zzqx"}])
    assert report["accuracy"] == 0.5 and report["n"] == 2 and report["tokens"] > 0
    show = _runs_show(run)
    assert show["method"] == "fusion" and show["finished"] is True and "proxy fusion" in show["progress"]
    with pytest.raises(Exception, match="holds a different fused model"):
        method.fit(FusionConfig(mode="dynamic"), run, large=specs["large"], small=specs["small"], experts=[specs["e1"]])


def _runs_show(run):
    from typer.testing import CliRunner

    from blackbox.cli import app

    res = CliRunner().invoke(app, ["runs", "show", str(run), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_large_tail_reaches_the_fusion_and_a_bad_value_is_one_line(specs):
    from blackbox.methods.fusion.decode import FusionConfig, LogitFusion
    from blackbox.provider import load_provider

    args = ["--large", specs["large"], "--small", specs["small"], "--expert", specs["e1"], "--mode", "dynamic", "--large-top-k", "3",
            "--max-tokens", "5", "--prompt", "the cat sat", "--json", "--no-progress"]
    roles = [load_provider(specs[r]) for r in ("large", "small", "e1")]
    for tail in ("small", "uniform", "floor"):
        res = _cli(*args, "--large-tail", tail)
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout.strip().splitlines()[-1])
        ref = LogitFusion(roles[0], roles[1], roles[2:], FusionConfig(mode="dynamic", large_top_k=3, max_tokens=5, large_tail=tail)).generate(["the cat sat"])
        assert got["tokens"] == ref.tokens and got["weights"] == ref.weights
    bad = _cli(*args, "--large-tail", "zero")
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == ["error: large_tail: expected one of small, uniform, floor, received 'zero'"]


def test_queries_are_counted_in_one_process_and_in_a_replicas_share(specs, tmp_path):
    # --json reports the queries billed to each role's ledger; a replica's share (FusedRows, the
    # body --replicas runs) carries its own on its first row for the driver to add up
    from blackbox.methods.fusion.decode import FusionConfig
    from blackbox.methods.fusion.replicas import FusedRows

    f = tmp_path / "p.txt"
    f.write_text("the cat sat\na bird can\n")
    args = ["--large", specs["large"], "--small", specs["small"], "--expert", specs["e1"], "--expert", specs["e2"], "--mode", "dynamic",
            "--max-tokens", "4", "--prompts", str(f), "--json", "--no-progress"]
    res = _cli(*args)
    assert res.exit_code == 0, res.output
    q = json.loads(res.stdout.strip().splitlines()[-1])["queries"]
    steps = max(len(t) for t in json.loads(res.stdout.strip().splitlines()[-1])["tokens"])
    assert q["large"] == q["small"] == 2 * steps and q["experts"] == [2 * steps, 2 * steps] and q["total"] == 8 * steps
    body = FusedRows([specs["large"], specs["small"], specs["e1"], specs["e2"]], FusionConfig(mode="dynamic", max_tokens=4).to_dict())
    try:
        rows = body.decode(["the cat sat", "a bird can"])
    finally:
        body.close()
    assert rows[0]["queries"] == q and rows[1]["queries"] is None


def test_expert_choice_reaches_the_search_from_the_cli(specs):
    """--expert-choice first: one expert active per answer (the trace shows it); a bad value is one line."""
    base = ["--large", specs["large"], "--small", specs["small"], "--expert", specs["e1"], "--expert", specs["e2"],
            "--mode", "dynamic", "--max-tokens", "8", "--prompt", "the cat sat", "--json", "--no-progress"]
    res = _cli(*base, "--expert-choice", "first")
    assert res.exit_code == 0, res.output
    weights = json.loads(res.stdout.strip().splitlines()[-1])["weights"][0]
    active = {i for row in weights for i, w in enumerate(row) if w > 0}
    assert len(weights) > 0 and len(active) <= 1, weights
    bad = _cli(*base, "--expert-choice", "vote")
    assert bad.exit_code == 1 and bad.output.strip() == "error: expert_choice: expected one of step, first, cumulative, received 'vote'"
