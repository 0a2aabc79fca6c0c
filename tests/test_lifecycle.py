"""One run lifecycle for every command, one config base, one method protocol (issue 15).

What a user meets when things go wrong: runs show/resume on any method's run directory, the
Ctrl-C hint for *that* run, no half-made directory after an early failure, refusal of a
foreign folder and of an edited config, one line for unwritable paths and raising objectives.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blackbox.cli import app
from blackbox.config import Config, coerce, parse_sets
from blackbox.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# --- one config base ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cfg(Config):
    rate: float = field(default=1, metadata={"help": "declared float, int default"})
    steps: int | None = field(default=None, metadata={"help": "optional int"})
    grid: tuple[float, ...] = field(default=(0.1, 1.0), metadata={"help": "numbers"})
    stop: tuple[str, ...] = field(default=("\n",), metadata={"help": "strings"})
    flag: bool = field(default=True, metadata={"help": "a switch"})


def test_one_coercer_for_every_type():
    cfg = _Cfg.from_overrides(["rate=1.5", "steps=auto", "grid=1,10", 'stop=["\\n\\n", "a,b"]', "flag=off"])
    assert cfg == _Cfg(rate=1.5, steps=None, grid=(1.0, 10.0), stop=("\n\n", "a,b"), flag=False)
    assert _Cfg.from_overrides({"steps": "3"}, flag=False) == _Cfg(steps=3, flag=False)  # flags are the base, --set wins
    assert _Cfg.from_dict(cfg.to_dict()) == cfg  # JSON round trip (tuples stored as lists)
    assert [r["name"] for r in _Cfg.describe()] == ["rate", "steps", "grid", "stop", "flag"]
    assert coerce("x", "yes", True) is True and coerce("x", 3, 0) == 3


@pytest.mark.parametrize(("sets", "message"), [
    (["nope=1"], "--set: expected a key among flag, grid, rate, steps, stop, received 'nope'"),
    (["flag=maybe"], "flag: expected a boolean (true/false), received 'maybe'"),
    (["grid=1,x"], "grid: expected a number, received '1,x'"),
    (["rate"], "--set: expected key=value, received 'rate'"),
    (["stop=[1"], "stop: expected a JSON array or a comma-separated list, received '[1'"),
])
def test_one_error_format(sets, message):
    with pytest.raises(ConfigError) as exc:
        _Cfg.from_overrides(parse_sets(sets) if "=" in sets[0] else sets)
    assert str(exc.value) == message


def test_every_config_uses_the_base():
    from blackbox.methods.blackvip.config import BlackVIPConfig
    from blackbox.methods.crosstune.config import CrossTuneConfig
    from blackbox.methods.eco.config import EcoConfig
    from blackbox.methods.fusion.config import FusionConfig
    from blackbox.optim.base import OptimizerConfig

    for cls in (BlackVIPConfig, CrossTuneConfig, EcoConfig, FusionConfig, OptimizerConfig):
        assert issubclass(cls, Config) and cls.__dataclass_params__.frozen, cls
        assert all(row["help"] for row in cls.describe()), cls  # every field documented
    with pytest.raises(ConfigError, match="alpha: expected a finite number"):
        FusionConfig(alpha=float("nan"))  # validated on construction, not by a later .check()


# --- no import cycle, the core does not import a method ---------------------------------------
def _imports(path: Path, package: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            base = package.split(".")
            mod = ".".join(base[: len(base) - node.level] + [node.module]) if node.level else node.module
            out.add(mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_import_cycle_in_the_package():
    graph: dict[str, set[str]] = {}
    for path in (REPO / "blackbox").rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else ".".join(parts[:-1])
        graph[name] = {m for m in _imports(path, package + ".x") if m.startswith("blackbox")}
    core = [m for m in graph if not m.startswith("blackbox.methods") and m not in ("blackbox.cli", "blackbox.serve") and not m.startswith("blackbox.serve")]
    for mod in core:
        assert not any(dep.startswith("blackbox.methods") for dep in graph[mod]), (mod, graph[mod])

    seen: dict[str, int] = {}

    def visit(mod: str, stack: list[str]) -> None:
        if seen.get(mod) == 1:
            raise AssertionError(" -> ".join(stack + [mod]))
        if seen.get(mod) == 2:
            return
        seen[mod] = 1
        for dep in graph.get(mod, ()):
            for cand in (dep, dep.rsplit(".", 1)[0]):  # "from pkg import name" may name a module or an attribute
                if cand in graph and cand != mod:
                    visit(cand, stack + [mod])
                    break
        seen[mod] = 2

    for mod in graph:
        visit(mod, [])


# --- CLI groups come from the methods registry ----------------------------------------------
def test_cli_groups_are_mounted_from_the_registry():
    from blackbox.registry import methods

    groups = {g.name for g in app.registered_groups}
    assert {e.obj.cli_group for e in methods.entries() if e.source == "builtin"} <= groups
    for entry in methods.entries():
        impl = entry.obj.load_method()
        assert {"fit", "evaluate", "load", "owns", "show", "resume_hint"} <= set(dir(impl)), entry.name


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_plugin_method_gets_its_command_group(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(REPO / "examples" / "blackbox-hello-method")],
        check=True, capture_output=True, text=True, timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "blackbox.cli", *args], env=env, capture_output=True, text=True, timeout=120)

    run = tmp_path / "hello-run"
    out = cli("hello", "fit", "--run-dir", str(run), "--budget", "300", "--seed", "2", "--set", "dim=3", "--json")
    assert out.returncode == 0, out.stderr
    res = last_json(out.stdout)
    assert res["queries"] <= 300 and res["best_loss"] < 3.0  # started at 3 (x = 0, target 1 in 3 dims)
    show = cli("runs", "show", str(run), "--json")
    assert show.returncode == 0, show.stderr
    info = last_json(show.stdout)
    assert info["method"] == "hello" and info["finished"] is True and info["metrics"]["best_loss"] == res["best_loss"]
    bad = cli("hello", "fit", "--run-dir", str(tmp_path / "x"), "--set", "dims=3")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == ["error: --set: expected a key among budget, dim, seed, target, received 'dims'"]


# --- runs show / resume on a method's run directory --------------------------------------------
BV = ["blackvip", "train", "--provider", "torch:blackbox.testing:tiny_image_classifier", "--dataset", "digits",
      "--shots", "4", "--set", "encoder=pixels", "--set", "batch_size=8", "--set", "n_test=50", "--no-progress"]


def test_runs_show_and_resume_a_blackvip_run(tmp_path):
    rd = tmp_path / "bv"
    first = invoke(*BV, "--budget", "300", "--run-dir", str(rd), "--json")
    assert first.exit_code == 0, first.output
    info = last_json(invoke("runs", "show", str(rd), "--json").stdout)
    assert info["method"] == "blackvip" and info["finished"] is True and info["queries"] <= 300
    text = invoke("runs", "show", str(rd))
    assert text.exit_code == 0 and "blackvip, finished" in text.stdout
    # A run cut short (here: its result removed, as after a kill before the end) resumes.
    (rd / "result.json").unlink()
    info = last_json(invoke("runs", "show", str(rd), "--json").stdout)
    assert info["finished"] is False and info["resume"] == f"run `blackbox runs resume {rd}`"
    again = invoke("runs", "resume", str(rd), "--json", "--no-progress")
    assert again.exit_code == 0, again.output
    assert last_json(again.stdout)["test_accuracy"] == last_json(first.stdout)["test_accuracy"]


def test_runs_resume_names_the_methods_own_path_when_it_cannot_resume(tmp_path):
    rd = tmp_path / "eco"
    rd.mkdir()
    (rd / "config.json").write_text(json.dumps({"config": {}, "inputs": {}, "counts": {"forget": 2}, "model": "m"}))
    res = invoke("runs", "resume", str(rd))
    assert res.exit_code == 1
    assert f"is a eco run, which `runs resume` cannot continue; re-run the same `blackbox unlearn fit ... --run-dir {rd}` command" in res.output
    show = invoke("runs", "show", str(rd))
    assert show.exit_code == 0 and "eco, in progress" in show.stdout


def test_runs_show_of_a_missing_directory_is_one_line(tmp_path):
    res = invoke("runs", "show", str(tmp_path / "nope"))
    assert res.exit_code == 1 and res.output.strip().splitlines() == [f"error: run_dir: expected a run directory, received '{tmp_path / 'nope'}', which does not exist"]


# --- directories --------------------------------------------------------------------------------
def test_blackvip_refuses_a_foreign_non_empty_directory(tmp_path):
    rd = tmp_path / "mine"
    rd.mkdir()
    (rd / "notes.txt").write_text("keep me")
    res = invoke(*BV, "--budget", "300", "--run-dir", str(rd))
    assert res.exit_code == 1 and "expected a new or empty directory (or a BlackVIP run to resume)" in res.output
    assert sorted(p.name for p in rd.iterdir()) == ["notes.txt"]


def test_a_failed_fit_leaves_nothing_and_the_corrected_rerun_works(tmp_path, monkeypatch):
    from blackbox.methods.blackvip import method as bv

    rd = tmp_path / "bv"

    def boom(self, **kw):
        raise ConfigError("provider: expected probabilities, received nothing")

    monkeypatch.setattr(bv.BlackVIP, "fit", boom)
    res = invoke(*BV, "--budget", "300", "--run-dir", str(rd))
    assert res.exit_code == 1 and not rd.exists()
    monkeypatch.undo()
    assert invoke(*BV, "--budget", "300", "--run-dir", str(rd)).exit_code == 0


def test_unwritable_run_dir_is_one_line(tmp_path):
    res = invoke("optimize", "--objective", "sphere", "--dim", "3", "--budget", "100", "--run-dir", "/proc/nope/x", "--no-progress")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert res.output.startswith("error: run_dir: cannot create '/proc/nope/x'")
    res = invoke(*BV, "--budget", "300", "--run-dir", "/proc/nope/y")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "run_dir: cannot write to '/proc/nope/y'" in res.output


# --- optimize: interrupts, raising objectives, non-finite losses, edited configs --------------
def test_interrupt_before_the_first_checkpoint_says_nothing_to_resume(tmp_path, monkeypatch):
    from blackbox import runs

    def interrupted(self, X):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.Run, "_evaluate", interrupted)
    rd = tmp_path / "r"
    res = invoke("optimize", "--objective", "sphere", "--dim", "3", "--budget", "100", "--run-dir", str(rd), "--no-progress")
    assert res.exit_code == 1 and not rd.exists()
    assert res.output.strip() == "error: interrupted; no checkpoint had been written; the run directory was removed"


def test_interrupt_after_a_checkpoint_names_runs_resume(tmp_path, monkeypatch):
    from blackbox import runs

    real, calls = runs.Run._evaluate, {"n": 0}

    def later(self, X):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(self, X)

    monkeypatch.setattr(runs.Run, "_evaluate", later)
    rd = tmp_path / "r"
    res = invoke("optimize", "--objective", "sphere", "--dim", "3", "--budget", "400", "--run-dir", str(rd),
                 "--checkpoint-every", "5", "--no-progress")
    assert res.exit_code == 1
    assert res.output.strip() == f"error: interrupted; the run keeps its last checkpoint (resume with `blackbox runs resume {rd}`)"
    monkeypatch.undo()
    assert invoke("runs", "resume", str(rd), "--no-progress").exit_code == 0


def _raises(x):
    raise RuntimeError("the simulator crashed")


def _nan(x):
    return float("nan")


def test_an_objective_that_raises_is_one_line(tmp_path):
    res = invoke("optimize", "--objective", "test_lifecycle:_raises", "--dim", "3", "--budget", "100",
                 "--run-dir", str(tmp_path / "r"), "--no-progress")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "objective test_lifecycle:_raises: raised RuntimeError: the simulator crashed" in res.output


def test_every_loss_non_finite_with_skip_warns(tmp_path):
    res = invoke("optimize", "--objective", "test_lifecycle:_nan", "--dim", "3", "--budget", "60", "--set", "on_nonfinite=skip",
                 "--run-dir", str(tmp_path / "r"), "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "warning: no finite loss in" in res.output and "there is no result" in res.output
    assert last_json(res.stdout)["warnings"]


def test_resume_refuses_a_config_edited_to_change_the_result(tmp_path):
    rd = tmp_path / "r"
    assert invoke("optimize", "--objective", "sphere", "--dim", "3", "--budget", "400", "--run-dir", str(rd), "--no-progress").exit_code == 0
    cfg = json.loads((rd / "config.json").read_text())
    cfg["request"]["budget"] = 999
    (rd / "config.json").write_text(json.dumps(cfg))
    res = invoke("runs", "resume", str(rd), "--no-progress")
    assert res.exit_code == 1 and "was edited after the run started (budget: 400 -> 999)" in res.output
    cfg["request"]["budget"], cfg["request"]["checkpoint_seconds"] = 400, 1.0  # when to checkpoint: allowed
    (rd / "config.json").write_text(json.dumps(cfg))
    assert invoke("runs", "resume", str(rd), "--no-progress").exit_code == 0


def test_unwritable_output_file_is_one_line(capsys):
    import typer

    from blackbox._cli_util import handle_errors

    @handle_errors
    def write() -> None:
        Path("/proc/nope/o.jsonl").write_text("x")

    with pytest.raises(typer.Exit) as exc:
        write()
    assert exc.value.exit_code == 1
    assert capsys.readouterr().err == "error: FileNotFoundError '/proc/nope/o.jsonl': No such file or directory\n"
