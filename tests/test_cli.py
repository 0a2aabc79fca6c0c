"""The CLI: in-process with typer's CliRunner and as a real subprocess."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from blackbox._version import __version__
from blackbox.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and __version__ in res.stdout


def test_optimize_json_then_show_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    res = invoke("optimize", "--objective", "sphere", "--dim", "10", "--optimizer", "spsa-gc", "--budget", "800",
                 "--seed", "1", "--run-dir", str(run_dir), "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    out = last_json(res.stdout)
    assert {"optimizer", "queries", "best_loss", "run_dir"} <= set(out)
    assert out["optimizer"] == "spsa-gc" and out["queries"] <= 800 and out["run_dir"] == str(run_dir)
    assert out["best_loss"] < 10 * 0.5  # started at 10 (all zeros vs optimum at ones)
    show = last_json(invoke("runs", "show", str(run_dir), "--json").stdout)
    assert show["finished"] is True and show["queries"] == out["queries"]
    text = invoke("runs", "show", str(run_dir)).stdout
    assert "finished" in text and "gains" in text
    again = invoke("runs", "resume", str(run_dir), "--json", "--no-progress")
    assert again.exit_code == 0 and last_json(again.stdout)["best_loss"] == out["best_loss"]


def test_set_overrides_reach_the_optimizer(tmp_path):
    res = invoke("optimize", "--objective", "logistic", "--dim", "20", "--optimizer", "spsa", "--budget", "200",
                 "--run-dir", str(tmp_path / "r"), "--set", "a=0.3", "--set", "c=0.05", "--set", "q=2", "--json",
                 "--no-progress")
    assert res.exit_code == 0, res.output
    hp = last_json(res.stdout)["hyperparameters"]
    assert hp["a"] == 0.3 and hp["c"] == 0.05 and hp["q"] == 2


def test_optimizers_list_json_has_hyperparameters():
    res = invoke("optimizers", "list", "--json")
    assert res.exit_code == 0
    rows = {r["name"]: r for r in last_json(res.stdout)["optimizers"]}
    assert set(rows) >= {"spsa", "spsa-gc", "zo-sgd", "cma-es"}
    gc = {p["name"]: p["default"] for p in rows["spsa-gc"]["hyperparameters"]}
    assert gc["beta"] == 0.9 and gc["perturbation"] == "rademacher" and gc["alpha"] == 0.4
    assert {p["name"] for p in rows["cma-es"]["hyperparameters"]} >= {"sigma", "popsize"}


BAD_INPUTS = [
    (["--optimizer", "adam"], "valid optimizers: cma-es, spsa, spsa-gc, zo-sgd"),
    (["--set", "c=0"], "c: expected a finite number > 0, received 0.0"),
    (["--set", "a=-2"], "a: expected a finite number > 0, received -2.0"),
    (["--set", "alpha=1.5"], "alpha: expected a number in [0.0, 1.0], received 1.5"),
    (["--set", "gamma=0.9"], "gamma: expected a number in [0.0, 0.5], received 0.9"),
    (["--set", "q=zero"], "q: expected an integer, received 'zero'"),
    (["--set", "bogus=1"], "--set: expected a key among "),
    (["--set", "novalue"], "--set: expected key=value, received 'novalue'"),
    (["--budget", "3"], "budget: expected at least 14 queries"),
    (["--objective", "nosuchmod:f"], "could not import module 'nosuchmod'"),
    (["--objective", "json:nothing_here"], "module 'json' has no attribute 'nothing_here'"),
    (["--dim", "0"], "dim: expected an integer >= 1, received 0"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_exit_1(tmp_path, extra, message):
    base = {"--objective": "sphere", "--dim": "4", "--optimizer": "spsa", "--budget": "100"}
    args = ["optimize", "--run-dir", str(tmp_path / "r"), "--no-progress"]
    for k, v in base.items():
        if k not in extra:
            args += [k, v]
    res = invoke(*args, *extra)
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], res.stderr
    assert "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_wrong_shape_and_nan_returns_are_clear(tmp_path, monkeypatch):
    (tmp_path / "badobj.py").write_text(
        "import numpy as np\n"
        "def vec(x):\n    return np.ones(3)\n"
        "def nan(x):\n    return float('nan')\n"
        "def batched(x):\n    return 1.0\n"
        "batched.batched = True\n"
    )
    monkeypatch.chdir(tmp_path)
    cases = {
        "badobj:vec": "expected a float loss, received ndarray of shape (3,)",
        "badobj:nan": "expected a finite loss, received nan",
        "badobj:batched": "declared batched, so expected",
    }
    for spec, message in cases.items():
        res = invoke("optimize", "--objective", spec, "--dim", "3", "--budget", "50", "--run-dir",
                     str(tmp_path / "r"), "--no-progress")
        assert res.exit_code == 1 and message in res.stderr, (spec, res.stderr)
        assert not (tmp_path / "r").exists()


def test_nan_can_be_skipped_by_configuration(tmp_path, monkeypatch):
    (tmp_path / "sometimes.py").write_text(
        "import numpy as np\n"
        "def f(x):\n    v = float(np.sum((x - 1) ** 2))\n    return float('nan') if x[0] > 0.3 else v\n"
    )
    monkeypatch.chdir(tmp_path)
    res = invoke("optimize", "--objective", "sometimes:f", "--dim", "3", "--budget", "300", "--set", "on_nonfinite=skip",
                 "--set", "step0=0.5", "--run-dir", str(tmp_path / "r"), "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    hist = [json.loads(l) for l in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert any(h.get("skipped") for h in hist)
    assert last_json(res.stdout)["queries"] <= 300


def test_resume_of_a_non_run_is_clear(tmp_path):
    res = invoke("runs", "resume", str(tmp_path))
    assert res.exit_code == 1 and "expected a run directory containing config.json" in res.stderr
    res = invoke("runs", "show", str(tmp_path / "missing"))
    assert res.exit_code == 1 and "expected a run directory" in res.stderr


@pytest.mark.subprocess
def test_real_subprocess_json_last_line_and_error_exit(tmp_path, cli):
    ok = cli("optimize", "--objective", "rosenbrock", "--dim", "5", "--optimizer", "cma-es", "--budget", "500",
             "--run-dir", str(tmp_path / "r"), "--json", check=True)
    out = last_json(ok.stdout)
    assert out["optimizer"] == "cma-es" and out["queries"] <= 500
    bad = cli("optimize", "--objective", "sphere", "--dim", "3", "--budget", "50", "--optimizer", "nope",
              "--run-dir", str(tmp_path / "x"))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "Traceback" not in bad.stderr
    assert cli("--help", check=True).stdout.count("optimize") >= 1
