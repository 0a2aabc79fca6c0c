"""Run directories: atomic checkpoints, exact resume (also after SIGKILL), bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from blackbox.errors import ObjectiveError, ObjectiveImportError, RunError, UnknownComponentError
from blackbox.runs import Run, RunConfig, load_tensors, resume_run, show_run, start_run

OPTIMIZERS = ["spsa", "spsa-gc", "zo-sgd", "cma-es"]


def _final(run_dir: Path):
    arrays, meta = load_tensors(run_dir / "state.safetensors")
    return arrays, meta, (run_dir / "history.jsonl").read_bytes()


def _assert_identical(a: Path, b: Path) -> None:
    arr_a, meta_a, hist_a = _final(a)
    arr_b, meta_b, hist_b = _final(b)
    assert sorted(arr_a) == sorted(arr_b)
    for k in arr_a:
        assert np.array_equal(arr_a[k], arr_b[k]), k
    assert meta_a == meta_b
    assert hist_a == hist_b


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_interrupted_run_resumes_bit_identically(tmp_path, name):
    cfg = RunConfig(objective="noisy_quadratic", dim=12, optimizer=name, budget=900, seed=3, checkpoint_every=7)
    full = start_run(tmp_path / "full", cfg)

    class Stop(Exception):
        pass

    def stop_after(n):
        count = {"n": 0}

        def cb(info):
            count["n"] += 1
            if count["n"] == n:
                raise Stop

        return cb

    # Interrupt twice at arbitrary rounds (between checkpoints), resuming each time.
    with pytest.raises(Stop):
        start_run(tmp_path / "cut", cfg, callbacks=(stop_after(19),))
    with pytest.raises(Stop):
        resume_run(tmp_path / "cut", callbacks=(stop_after(23),))
    resumed = resume_run(tmp_path / "cut")
    assert resumed.queries == full.queries <= 900
    assert resumed.best_loss == full.best_loss
    _assert_identical(tmp_path / "full", tmp_path / "cut")
    lines = (tmp_path / "full" / "history.jsonl").read_text().splitlines()
    assert len(lines) == full.rounds
    assert json.loads(lines[-1])["queries"] == full.queries


SLOW_OBJECTIVE = """
import time
import numpy as np

def slow(x):
    time.sleep(0.004)
    return float(np.sum((x - 0.5) ** 2) + 0.1 * np.sum(np.sin(3 * x)))
"""


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("optimizer", ["spsa", "spsa-gc", "zo-sgd"])
def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path, optimizer):
    """Every finite-difference recipe with its defaults (gain adaptation on) resumes exactly."""
    (tmp_path / "slowobj.py").write_text(SLOW_OBJECTIVE)
    # Checkpoints every 10 rounds, not 3: each is fsynced, and they were a third of the run's wall
    # time; the objective's sleep still keeps each run past both kill points.
    args = ["--objective", "slowobj:slow", "--dim", "30", "--optimizer", optimizer, "--budget", "600",
            "--seed", "5", "--checkpoint-every", "10", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = subprocess.run([sys.executable, "-m", "blackbox.cli", "optimize", *args, "--run-dir", "ref", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    for kill_after in (0.6, 1.3):
        target = tmp_path / f"killed{kill_after}"
        proc = subprocess.Popen([sys.executable, "-m", "blackbox.cli", "optimize", *args, "--run-dir", target.name],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (target / "state.safetensors").exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (target / "result.json").exists(), "the run finished before it could be killed"
        out = subprocess.run([sys.executable, "-m", "blackbox.cli", "runs", "resume", target.name, "--json", "--no-progress"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["resumed"] is True
        opt_state = json.loads((target / "state.json").read_text())["optimizer_state"]["opt"]
        assert opt_state["tests"] > 0 and opt_state["gain"] != 1.0  # the adaptive gain was in play
        assert result["best_loss"] == json.loads(ref.stdout.strip().splitlines()[-1])["best_loss"]
        _assert_identical(tmp_path / "ref", target)


def test_calibrated_gains_are_reported_in_config(tmp_path):
    start_run(tmp_path / "r", RunConfig(objective="sphere", dim=5, optimizer="spsa", budget=300))
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    resolved = cfg["resolved"]
    assert resolved["a"] > 0 and resolved["c"] > 0 and resolved["o"] >= 1
    assert resolved["calibrated"] == {**resolved["calibrated"], "a": True, "c": True, "o": True}
    assert cfg["library_version"]
    assert cfg["request"]["optimizer"] == "spsa"
    info = show_run(tmp_path / "r")
    assert info["finished"] and info["queries"] <= 300


def test_explicit_gains_override_calibration(tmp_path):
    start_run(tmp_path / "r", RunConfig(objective="sphere", dim=5, optimizer="spsa", budget=100,
                                        hyperparameters={"a": "0.05", "c": "0.02"}))
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]
    assert resolved["a"] == 0.05 and resolved["c"] == 0.02
    assert resolved["calibrated"]["queries"] == 0
    hist = [json.loads(l) for l in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert all(h["phase"] == "run" for h in hist) and hist[-1]["queries"] == 100


def test_bad_objective_leaves_nothing_behind(tmp_path):
    with pytest.raises(ObjectiveImportError, match="no_such_module"):
        start_run(tmp_path / "r", RunConfig(objective="no_such_module:f", dim=3, optimizer="spsa", budget=50))
    with pytest.raises(UnknownComponentError):
        start_run(tmp_path / "r", RunConfig(objective="sphere", dim=3, optimizer="adam", budget=50))
    assert not (tmp_path / "r").exists()


def test_nan_objective_errors_by_default_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    (tmp_path / "nanobj.py").write_text("def f(x):\n    return float('nan')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ObjectiveError, match="expected a finite loss"):
        start_run(tmp_path / "r", RunConfig(objective="nanobj:f", dim=3, optimizer="spsa", budget=50))
    assert not (tmp_path / "r").exists()


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = RunConfig(objective="sphere", dim=3, optimizer="spsa", budget=60)
    start_run(tmp_path / "r", cfg)
    before = (tmp_path / "r" / "state.safetensors").read_bytes()
    with pytest.raises(RunError, match="runs resume"):
        start_run(tmp_path / "r", cfg)
    assert (tmp_path / "r" / "state.safetensors").read_bytes() == before


def test_resume_refuses_non_runs_and_changed_shapes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="config.json"):
        Run.load(tmp_path / "empty")
    cfg = RunConfig(objective="sphere", dim=4, optimizer="spsa", budget=200, checkpoint_every=1)
    with pytest.raises(KeyError):
        def boom(info):
            if info.round == 10:
                raise KeyError("stop")
        start_run(tmp_path / "r", cfg, callbacks=(boom,))
    data = json.loads((tmp_path / "r" / "config.json").read_text())
    data["request"]["dim"] = 7
    (tmp_path / "r" / "config.json").write_text(json.dumps(data))
    with pytest.raises(RunError, match="does not match"):
        Run.load(tmp_path / "r")
    (tmp_path / "r" / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="not a valid run config"):
        Run.load(tmp_path / "r")


def test_history_cut_back_to_checkpoint(tmp_path):
    cfg = RunConfig(objective="sphere", dim=4, optimizer="zo-sgd", budget=400, checkpoint_every=5)

    def boom(info):
        if info.round == 13:
            raise KeyError("stop")

    with pytest.raises(KeyError):
        start_run(tmp_path / "r", cfg, callbacks=(boom,))
    # A torn, partial history line (as after a kill mid-append) must be discarded.
    with open(tmp_path / "r" / "history.jsonl", "a") as fh:
        fh.write('{"round": 99, "par')
    run = Run.load(tmp_path / "r")
    assert run.history_lines == 10
    assert len((tmp_path / "r" / "history.jsonl").read_text().splitlines()) == 10


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path) -> None:
    """Artifacts are as readable as any file the user writes (mkstemp alone would make them 0600)."""
    import os

    from blackbox.runs import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        (tmp_path / "b.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o640
