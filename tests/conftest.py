"""Shared fixtures: the CLI as a subprocess, isolated from the user's environment.

Strict mode. A test that needs a real model, an optional package or a data set skips,
with its reason, when that is missing (``pytest -rs`` lists the reasons). With
``BLACKBOX_REQUIRE_MODELS=1`` (set by ``.ci/run``) every such skip is turned into a
failure instead, so CI cannot pass while a real-model test quietly did not run: the hooks
below see every skip, whether it comes from ``pytest.importorskip`` at module level (a
collection report), a ``skipif`` mark, a fixture or ``pytest.skip`` in a test body.
``needs.need`` (tests/needs.py, importable from every test module because this file's
folder is on ``sys.path``) is the one helper tests use to ask for a module or a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from needs import STRICT_VAR, strict

REPO = Path(__file__).resolve().parents[1]

# One BLAS/OpenMP thread in the tests and in the processes they start, as bench/_common.py does for
# benchmarks (set before any test module imports numpy or torch; an explicit setting wins). The
# tiny models and fits here only contend with more threads on a busy machine: on 2 shared cores
# tests/methods/test_fusion.py took 30.9 s with the default threads and 4.3 s with one.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def _strict_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if strict() and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"{STRICT_VAR}=1: {item.nodeid} would have been skipped: {_strict_reason(rep.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if strict() and rep.outcome == "skipped":
        rep.outcome = "failed"
        rep.longrepr = f"{STRICT_VAR}=1: {collector.nodeid} would have been skipped: {_strict_reason(rep.longrepr)}"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m blackbox.cli ARGS`` in a subprocess and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "blackbox.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli
