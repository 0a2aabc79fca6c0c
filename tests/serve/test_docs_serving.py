"""docs/serving.md runs: its `sh` blocks (exports, `blackbox serve` as real processes, `curl`),
`toml` blocks (saved as fused.toml) and `py` blocks (exec'd), in order, in a temporary
directory holding tiny stand-in models at the documented paths (models/*, runs/capitals)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import make_model

pytest.importorskip("openai")
torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def _free_port() -> int:
    from blackbox.serve.app import bound_socket

    s = bound_socket()
    try:
        return s.getsockname()[1]
    finally:
        s.close()


def _stand_ins(root: Path, tokenizer) -> None:
    """Tiny models at models/{large,small,expert} and an ECO run at runs/capitals (fitted on models/small)."""
    from blackbox.methods.eco.job import EcoConfig, fit
    from blackbox.provider import load_provider
    from blackbox.types import GenerateRequest

    for name, seed, layers in (("large", 1, 3), ("small", 2, 2), ("expert", 3, 2)):
        d = root / "models" / name
        make_model(tokenizer, seed=seed, layers=layers).save_pretrained(d)
        tokenizer.save_pretrained(d)
    lm = load_provider("hf-causal:models/small")
    countries = ["France", "Germany", "Spain", "Italy", "Norway", "Sweden", "Poland", "Greece", "Egypt", "Kenya", "Peru", "Chile", "Japan", "India"]
    templates = ["What is the capital of {c}?", "The capital of {c} is"]

    def rows(cs):
        ps = [(t.format(c=c), c) for c in cs for t in templates]
        outs = lm.generate(GenerateRequest(tuple(p for p, _ in ps), max_tokens=3)).texts
        return [{"prompt": p, "target": c, "answer": (o.strip().split() or ["x"])[0]} for (p, c), o in zip(ps, outs)]

    general = [{"prompt": f"{g} ({k})"} for k in range(4) for g in ("the cat sat on the mat", "one two three", "tell me a joke", "how do I bake bread")]
    fit(lm, rows(["France", "Kenya"]), rows([c for c in countries if c not in ("France", "Kenya")]), root / "runs" / "capitals",
        general=general, config=EcoConfig(fpr=0.1, start=0.5, max_new_tokens=3, bisect_steps=2, chat=False), model_spec="hf-causal:models/small")


def _start(line: str, ports: dict[str, str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    argv = shlex.split(line)[1:]
    doc_port = argv[argv.index("--port") + 1]
    ports[doc_port] = str(_free_port())
    argv[argv.index("--port") + 1] = ports[doc_port]
    proc = subprocess.Popen([sys.executable, "-m", "blackbox.cli", *argv], cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        out = proc.stderr.readline()
        if not out:
            break
        seen.append(out)
        if "Uvicorn running on" in out:
            return proc
    proc.kill()
    raise AssertionError(f"{line!r} did not start:\n{''.join(seen)}")


def _sub(text: str, ports: dict[str, str]) -> str:
    for doc_port, real in ports.items():
        text = text.replace(f"127.0.0.1:{doc_port}", f"127.0.0.1:{real}")
    return text


def test_serving_doc_examples_run(tmp_path, tiny_tokenizer, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    _stand_ins(tmp_path, tiny_tokenizer)
    env = {**os.environ}
    ports: dict[str, str] = {}
    procs: list[subprocess.Popen] = []
    ran = {"serve": 0, "curl": 0, "py": 0, "toml": 0}
    try:
        for lang, body in BLOCK.findall(DOC.read_text()):
            if lang == "toml":
                (tmp_path / "fused.toml").write_text(body)
                ran["toml"] += 1
            elif lang == "sh":
                for line in body.splitlines():
                    line = line.strip()
                    if line.startswith("export "):
                        k, _, v = line.removeprefix("export ").partition("=")
                        env[k] = v
                        monkeypatch.setenv(k, v)
                    elif line.startswith("blackbox serve"):
                        procs.append(_start(line, ports, env, tmp_path))
                        ran["serve"] += 1
                    elif line.startswith("curl"):
                        out = subprocess.run(["bash", "-c", _sub(line, ports)], env=env, capture_output=True, text=True, timeout=120)
                        assert out.returncode == 0 and out.stdout, (line, out.stderr)
                        assert '"error"' not in out.stdout, (line, out.stdout)
                        if "stream" in line:
                            assert out.stdout.rstrip().endswith("data: [DONE]")
                        else:
                            json.loads(out.stdout)
                        ran["curl"] += 1
            elif lang == "py":
                exec(compile(_sub(body, ports), "<serving.md>", "exec"), {"__name__": "__doc_example__"})
                ran["py"] += 1
        assert ran == {"serve": 2, "curl": 4, "py": 2, "toml": 1}, ran
        printed = capsys.readouterr().out
        assert printed.count("\n") >= 4
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
            p.stderr.close()
