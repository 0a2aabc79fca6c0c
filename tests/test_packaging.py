"""The wheel: builds, installs into a fresh venv, exposes `blackbox`, maps providers/ right."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = wheels.glob("blackbox_adapt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "blackbox/providers/__init__.py" in names
    assert "blackbox/cli.py" in names and "blackbox/optim/recipes.py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"blackbox"}, top_level

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300,
                   capture_output=True)
    # Dependencies come from the test environment (a .pth after the venv's own site-packages),
    # so the check needs no network and still imports blackbox only from the installed wheel.
    site = Path(subprocess.check_output([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    help_out = subprocess.run([str(venv / "bin" / "blackbox"), "--help"], cwd=outside, env=env,
                              capture_output=True, text=True, timeout=120)
    assert help_out.returncode == 0, help_out.stderr
    assert "optimize" in help_out.stdout
    probe = (
        "import importlib.util, blackbox, blackbox.providers;"
        "print(blackbox.__file__);"
        "print(importlib.util.find_spec('providers') is None, importlib.util.find_spec('cli') is None)"
    )
    out = subprocess.run([str(vpy), "-c", probe], cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path_line, flags = out.stdout.strip().splitlines()
    assert path_line.startswith(str(site)), path_line
    assert flags == "True True"
    assert not (site / "providers").exists() and not (site / "cli.py").exists()
