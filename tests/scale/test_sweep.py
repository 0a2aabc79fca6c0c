"""`blackbox sweep`: grids of runs, one run directory each; kill and restart; show (table + plot)."""

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
from needs import need
from typer.testing import CliRunner

from blackbox.cli import app
from blackbox.errors import ConfigError
from blackbox.runs import load_tensors
from blackbox.scale import sweep as sw

runner = CliRunner()

SLOW = '''
import time
import numpy as np

def f(x):
    time.sleep(0.02)
    return float(np.sum((np.asarray(x) - 0.5) ** 2))
'''

SPEC = '''
command = "optimize"
[options]
objective = "slow:f"
dim = 4
budget = 120
optimizer = "spsa"
checkpoint_every = 1
[grid]
seed = [0, 1, 2]
'''


def _write(tmp_path: Path) -> Path:
    (tmp_path / "slow.py").write_text(SLOW)
    (tmp_path / "spec.toml").write_text(SPEC)
    return tmp_path / "spec.toml"


def _sweep(*args: str, cwd: Path) -> subprocess.Popen:
    # One torch/OpenMP thread in the runs, as in the in-process references (CPU kernels vary with the thread count).
    return subprocess.Popen([sys.executable, "-m", "blackbox.cli", "sweep", *args], cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, what: str, timeout: float) -> None:
    """SIGKILL (no cleanup) the sweep ``proc`` as soon as ``ready()``; fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail(f"the sweep never reached a state with {what}")


def test_killed_sweep_restarts_skipping_finished_and_resuming_checkpointed(tmp_path):
    spec = _write(tmp_path)
    out = tmp_path / "sw"
    first = _sweep(str(spec), "--run-dir", str(out), "--max-parallel", "1", cwd=tmp_path)
    r0, r1 = out / "runs" / "seed=0", out / "runs" / "seed=1"
    # Kill the sweep while seed=1 is mid-run with a checkpoint.
    _kill_when(first, lambda: (r0 / "result.json").is_file() and (r1 / "state.safetensors").is_file() and not (r1 / "result.json").is_file(),
               "one run finished and the next checkpointed", 120)
    partial = load_tensors(r1 / "state.safetensors")[1]["history_lines"]
    finished_at = (r0 / "result.json").stat().st_mtime_ns
    time.sleep(0.5)  # the killed sweep's child died with it: nothing more is written
    assert not (r1 / "result.json").exists()
    mid = sw.summarize(out)
    assert [r["status"] for r in mid["runs"]] == ["finished", "checkpointed", "pending"]

    second = _sweep(str(spec), "--run-dir", str(out), "--json", cwd=tmp_path)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["counts"]["finished"] == 3 and Path(summary["plot"]).stat().st_size > 0
    assert (r0 / "result.json").stat().st_mtime_ns == finished_at  # skipped, not re-run
    log = (out / "logs" / "seed=1.log").read_text()
    assert f"$ blackbox runs resume {r1}" in log and partial > 0  # resumed from its checkpoint, not restarted
    assert sorted(stderr.strip().splitlines()) == ["seed=1: finished", "seed=2: finished"]  # seed=0 was not run again

    # The resumed run ends exactly where an uninterrupted one does.
    ref = subprocess.run([sys.executable, "-m", "blackbox.cli", "optimize", "--objective", "slow:f", "--dim", "4", "--budget", "120",
                          "--optimizer", "spsa", "--checkpoint-every", "1", "--seed", "1", "--run-dir", str(tmp_path / "ref"), "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    assert (tmp_path / "ref" / "history.jsonl").read_bytes() == (r1 / "history.jsonl").read_bytes()
    assert np.array_equal(load_tensors(tmp_path / "ref" / "state.safetensors")[0]["x"], load_tensors(r1 / "state.safetensors")[0]["x"])
    rows = {r["name"]: r for r in summary["runs"]}
    assert rows["seed=1"]["metric"] == json.loads((tmp_path / "ref" / "result.json").read_text())["best_loss"]


def test_show_prints_a_table_and_writes_a_plot(tmp_path):
    (tmp_path / "spec.toml").write_text('command = "optimize"\n[options]\nobjective = "sphere"\ndim = 3\nbudget = 40\n'
                                        '[grid]\noptimizer = ["spsa", "spsa-gc"]\n"set.c" = [0.01, 0.1]\n')
    res = runner.invoke(app, ["sweep", str(tmp_path / "spec.toml"), "--run-dir", str(tmp_path / "sw"), "--max-parallel", "2"])
    assert res.exit_code == 0, res.output
    shown = runner.invoke(app, ["sweep", "show", str(tmp_path / "sw")])
    lines = shown.stdout.strip().splitlines()
    assert lines[0].split() == ["optimizer", "set.c", "status", "best_loss"]
    assert [ln.split()[:3] for ln in lines[1:5]] == [["spsa", "0.01", "finished"], ["spsa", "0.1", "finished"],
                                                     ["spsa-gc", "0.01", "finished"], ["spsa-gc", "0.1", "finished"]]
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 0
    data = json.loads(runner.invoke(app, ["sweep", "show", str(tmp_path / "sw"), "--json"]).stdout.strip().splitlines()[-1])
    cfg = json.loads((tmp_path / "sw" / "runs" / "optimizer=spsa-gc,set.c=0.1" / "config.json").read_text())
    assert float(cfg["request"]["hyperparameters"]["c"]) == 0.1 and cfg["request"]["optimizer"] == "spsa-gc"
    best = min(data["runs"], key=lambda r: r["metric"])
    assert data["best"] == best["name"] and all(isinstance(r["metric"], float) for r in data["runs"])


def test_failed_runs_are_reported_and_retried(tmp_path):
    (tmp_path / "spec.toml").write_text('command = "optimize"\n[options]\nobjective = "sphere"\nbudget = 20\n[grid]\ndim = [2, 0]\n')
    res = runner.invoke(app, ["sweep", str(tmp_path / "spec.toml"), "--run-dir", str(tmp_path / "sw")])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: sweep: 1 of 2 runs failed")
    rows = {r["name"]: r for r in sw.summarize(tmp_path / "sw")["runs"]}
    assert rows["dim=2"]["status"] == "finished" and rows["dim=0"]["status"] == "failed"
    assert rows["dim=0"]["error"] == "error: dim: expected an integer >= 1, received 0"


@pytest.mark.parametrize("text, message", [
    ('command = "optimize"\n', "grid: expected a table of option = [values...] with at least one option, received {}"),
    ('command = 3\n[grid]\nseed=[1]\n', "command: expected a command such as 'optimize' or 'blackvip train', received 3"),
    ('command = "optimize"\n[grid]\nseed = []\n', "grid.seed: expected a non-empty list of strings, numbers or booleans, received []"),
    ('command = "optimize"\ngoal = "up"\n[grid]\nseed = [1]\n', "goal: expected min or max, received 'up'"),
    ('command = "optimize"\n[options]\nrun_dir = "x"\n[grid]\nseed = [1]\n', "options.run_dir: expected not set in a sweep (the sweep chooses it), received 'x'"),
])
def test_bad_specs_are_one_line(tmp_path, text, message):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        sw.load_spec(tmp_path / "s.toml")
    assert str(err.value) == message


def test_cli_errors(tmp_path):
    (tmp_path / "s.toml").write_text('command = "blackvip nope"\n[grid]\nseed = [1]\n')
    res = runner.invoke(app, ["sweep", str(tmp_path / "s.toml"), "--run-dir", str(tmp_path / "sw")])
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == [
        "error: command: expected a blackbox command such as 'optimize' or 'blackvip train', received 'blackvip nope'"]
    assert not (tmp_path / "sw").exists()
    (tmp_path / "t.toml").write_text('command = "optimize"\n[grid]\nseed = [1]\n')
    res = runner.invoke(app, ["sweep", str(tmp_path / "t.toml"), "--run-dir", str(tmp_path / "sw"), "--backend", "spark"])
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == ["error: backend: expected local or ray, received 'spark'"]
    res = runner.invoke(app, ["sweep", "show", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "expected a sweep directory containing sweep.json" in res.stderr
    # A directory of a different sweep is refused, not mixed.
    (tmp_path / "u.toml").write_text('command = "optimize"\n[options]\nobjective = "sphere"\ndim = 2\nbudget = 40\n[grid]\nseed = [1]\n')
    assert runner.invoke(app, ["sweep", str(tmp_path / "u.toml"), "--run-dir", str(tmp_path / "sw2")]).exit_code == 0
    (tmp_path / "u.toml").write_text('command = "optimize"\n[options]\nobjective = "sphere"\ndim = 2\nbudget = 40\n[grid]\nseed = [1, 2]\n')
    res = runner.invoke(app, ["sweep", str(tmp_path / "u.toml"), "--run-dir", str(tmp_path / "sw2")])
    assert res.exit_code == 1 and "holds a different sweep" in res.stderr


def test_plan_builds_command_lines():
    spec = sw.spec_from_dict({"command": "blackvip train", "options": {"dataset": "digits", "set": ["q=2", "n_test=50"], "verbose": False},
                              "grid": {"shots": [4, 8], "set.a": [0.5]}})
    runs = sw.plan(spec)
    assert [r.name for r in runs] == ["shots=4,set.a=0.5", "shots=8,set.a=0.5"]
    assert runs[0].args == ("--dataset", "digits", "--set", "q=2", "--set", "n_test=50", "--no-verbose", "--shots", "4", "--set", "a=0.5")
    assert spec.metric == "test_accuracy" and spec.goal == "max"
    other = sw.spec_from_dict({"command": "crosstune fit", "grid": {"shots": [4]}})
    assert (other.metric, other.goal) == ("train_info.val_acc", "max")  # every built-in group has a default headline
    assert sw.spec_from_dict({"command": "serve", "grid": {"port": [1]}}).metric is None  # others name theirs with `metric`


def test_docs_scaling_sweep_example_runs(tmp_path, monkeypatch):
    # docs/scaling.md's sweep spec and its `blackbox sweep` lines, as written.
    import re
    import shlex

    text = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text()
    (tmp_path / "sweep.toml").write_text(re.search(r"```toml\n(.*?)```", text, re.S).group(1))
    lines = [ln[2:].split("#")[0].strip() for ln in text.splitlines() if ln.startswith("$ blackbox sweep")]
    assert len(lines) == 2
    monkeypatch.chdir(tmp_path)
    for line in lines:
        res = runner.invoke(app, shlex.split(line)[1:])
        assert res.exit_code == 0, (line, res.output)
    assert "4 finished" in res.stdout and (tmp_path / "sweep1" / "sweep.png").is_file()


def test_blackvip_train_sweep(tmp_path):
    need("torch")
    need("sklearn")
    (tmp_path / "bv.toml").write_text(
        'command = "blackvip train"\n[options]\nprovider = "torch:blackbox.testing:tiny_image_classifier"\ndataset = "digits"\n'
        'shots = 4\nbudget = 200\nset = ["encoder=pixels", "batch_size=8", "n_test=50", "q=2"]\n[grid]\n"set.a" = [0.01]\n')
    args = ["sweep", str(tmp_path / "bv.toml"), "--run-dir", str(tmp_path / "sw"), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["metric"] == "test_accuracy" and summary["goal"] == "max" and summary["counts"]["finished"] == 1
    for row in summary["runs"]:
        result = json.loads((Path(row["run_dir"]) / "result.json").read_text())
        assert row["metric"] == result["test_accuracy"] and result["queries"] <= 200
    cfg = json.loads((tmp_path / "sw" / "runs" / "set.a=0.01" / "config.json").read_text())
    assert cfg["config"]["a"] == 0.01 and cfg["config"]["shots"] == 4
    again = runner.invoke(app, args)  # everything finished: nothing runs again
    assert again.exit_code == 0 and again.stderr == ""


def test_killed_unlearn_sweep_resumes_from_its_evaluations_and_then_skips_it(tmp_path, tiny_lm_dir, eco_files):
    """A non-optimize group: `unlearn fit` has no result.json; the sweep asks ECO (through the
    method protocol) whether a run is finished, and a killed run resumes from its memoised
    evaluations to the same artifact as an uninterrupted fit."""
    from blackbox.methods.eco.config import EcoConfig
    from blackbox.methods.eco.method import EcoMethod

    spec_text = (f'command = "unlearn fit"\n[options]\nmodel = "hf-causal:{tiny_lm_dir}"\nforget = "{eco_files["forget"]}"\n'
                 f'retain = "{eco_files["retain"]}"\ngeneral = "{eco_files["general"]}"\nfpr = 0.2\n'
                 'set = ["calibration_fraction=0.5", "max_new_tokens=3"]\n[grid]\n"set.bisect_steps" = [2]\n')
    (tmp_path / "eco.toml").write_text(spec_text)
    out = tmp_path / "sw"
    args = (str(tmp_path / "eco.toml"), "--run-dir", str(out))
    first = _sweep(*args, cwd=tmp_path)
    rd = out / "runs" / "set.bisect_steps=2"
    evals = rd / "evals.jsonl"  # kill while the fit is part-way, with some evaluations kept
    _kill_when(first, lambda: evals.is_file() and len(evals.read_text().splitlines()) >= 2 and not (rd / "artifact.json").is_file(),
               "the fit part-way", 240)
    time.sleep(0.5)  # its child died with it
    kept = (rd / "evals.jsonl").read_text()
    assert not (rd / "artifact.json").exists() and not (rd / "result.json").exists()
    mid = sw.summarize(out)
    assert [r["status"] for r in mid["runs"]] == ["checkpointed"]
    assert (mid["metric"], mid["goal"]) == ("forget_accuracy_after", "min")

    second = _sweep(*args, "--json", cwd=tmp_path)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert stderr.strip().splitlines() == ["set.bisect_steps=2: finished"]
    assert (rd / "evals.jsonl").read_text().startswith(kept)  # the evaluations made before the kill were replayed, not redone
    assert (out / "logs" / "set.bisect_steps=2.log").read_text().count("$ blackbox unlearn fit") == 2
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["counts"]["finished"] == 1 and not (rd / "result.json").exists()  # finished by ECO's own marker

    # Started again: the finished run is recognised (no result.json) and not run a third time.
    third = _sweep(*args, cwd=tmp_path)
    _, stderr = third.communicate(timeout=120)
    assert third.returncode == 0 and stderr == ""
    assert (out / "logs" / "set.bisect_steps=2.log").read_text().count("$ blackbox unlearn fit") == 2

    # The resumed run ends exactly where an uninterrupted fit does.
    cfg = EcoConfig.from_overrides(["calibration_fraction=0.5", "max_new_tokens=3", "bisect_steps=2"], fpr=0.2)
    torch = need("torch")
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one torch and one BLAS thread, as the sweep's runs (OMP_NUM_THREADS=1): the gate's
    try:  # logistic regression moves in the last bits with the BLAS thread count
        with threadpool_limits(1):
            ref = EcoMethod().fit(cfg, tmp_path / "ref", model=f"hf-causal:{tiny_lm_dir}", **eco_files)
    finally:
        torch.set_num_threads(threads)
    got = json.loads((rd / "artifact.json").read_text())
    for art in (ref, got):
        art.pop("timing")
        art.pop("resumed", None)
    assert got == ref
    assert (tmp_path / "ref" / "evals.jsonl").read_bytes() == (rd / "evals.jsonl").read_bytes()
    assert summary["runs"][0]["metric"] == ref["metrics"]["forget_accuracy_after"]
    (out / "logs" / "set.bisect_steps=2.json").unlink()  # no command output to read: the headline comes from ECO's show()
    assert sw.summarize(out)["runs"][0]["metric"] == ref["metrics"]["forget_accuracy_after"]


def test_crosstune_fit_sweep_status_and_headline_from_the_method(tmp_path, tiny_lm_dir):
    """`crosstune fit` runs: finished by CrossTune's own word (its model saved), headline its
    held-out-shot accuracy (train_info.val_acc), read back when the sweep did not run it itself."""
    from scale_helpers import COUNTRIES, GENERAL, TEMPLATES, write_jsonl

    rows = [{"text": t.format(c=c), "label": "question"} for c in COUNTRIES[:6] for t in TEMPLATES[:2]]
    rows += [{"text": f"{g} {k}", "label": "chat"} for k in range(2) for g in GENERAL]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    spec = sw.spec_from_dict({"command": "crosstune fit", "options": {"features": f"hf-causal:{tiny_lm_dir}", "train": train,
                                                                      "set": ["max_epochs=10", "dim=8", "heads=2", "rank=8"]},
                              "grid": {"shots": [4]}})
    assert (spec.metric, spec.goal) == ("train_info.val_acc", "max")
    out = tmp_path / "sw"
    sw._prepare(spec, out)
    run = sw.plan(spec)[0]
    assert sw.status_of(out, run) == "pending"
    rd = out / "runs" / run.name
    res = runner.invoke(app, ["crosstune", "fit", *run.args, "--run-dir", str(rd), "--json"])  # as the sweep would run it
    assert res.exit_code == 0, res.output
    row = sw.summarize(out)["runs"][0]
    assert row["status"] == "finished"
    assert isinstance(row["metric"], float) and row["metric"] == json.loads((rd / "result.json").read_text())["train_info"]["val_acc"]
    (rd / "result.json").unlink()  # CrossTune's own marker of a finished fit is its saved model
    assert sw.status_of(out, run) == "finished"
    (rd / "model.json").unlink()
    assert sw.status_of(out, run) == "checkpointed"  # its settings are there: the same command resumes it
