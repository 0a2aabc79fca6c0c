"""Helpers shared by the benchmark scripts: thread pinning, machine facts, JSON rows,
raw results under ``bench/results/`` and rewriting marked sections of the docs.

Evidence contract (checked by tests/test_docs.py): every ``bench:NAME`` start/end marked
section in ``docs/*.md`` is rendered from one committed results file
``bench/results/STEM.json`` whose ``"sections"`` maps NAME to the docs file and whose
``"script"`` names the bench script. That script defines ``render_section(name, results)``,
a pure function (no clock, no machine look-ups: the command, date and machine facts are
stored in the results file), and rebuilds its sections from the file with ``--render``
(``publish_results``). A measuring run writes the file with ``save_results`` first, so the
docs never hold a number that is not in ``bench/results/``. Keep results small: summaries,
never features or weights.

Import this module before numpy: it pins BLAS/OpenMP to one thread per process, so that a
benchmark measures the optimizer and not how a BLAS library spreads over the cores.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import datetime as _dt
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"
DOCS_HEADER = """# Benchmarks

Measured numbers from the scripts in `bench/`. Each section below is rewritten by the
script named in it when run with `--write-docs` (between its `<!-- bench:NAME -->`
markers); everything outside the markers is left alone. Every section states the command,
the date and the machine that produced it.
"""


def emit(row: dict[str, Any]) -> None:
    """Print one JSON object per line on stdout (NaN/inf become strings)."""
    print(json.dumps(_clean(row), sort_keys=False), flush=True)


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else repr(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalar
        return _clean(x.item())
    return x


def command_line() -> str:
    """The command that was run, relative to the repository root when possible."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_s = str(script.relative_to(REPO))
    except ValueError:
        script_s = str(script)
    return " ".join(["python", shlex.quote(script_s), *map(shlex.quote, sys.argv[1:])])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    """Facts about the machine and software, for the docs and the summary line."""
    import numpy as np

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (other processes on a shared machine show here)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_line(info: dict[str, Any]) -> str:
    load = info.get("loadavg_at_start")
    load_s = f"; 1/5/15-min load average at start {load[0]}/{load[1]}/{load[2]}" if load else ""
    end = info.get("loadavg_at_end")
    if end:
        load_s += f", at end {end[0]}/{end[1]}/{end[2]}"
    return (
        f"{info['cores']}-core CPU ({info['cpu']}), {info['os']}, Python {info['python']}, "
        f"numpy {info['numpy']}; BLAS pinned to 1 thread per process{load_s}"
    )


def today() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def write_section(name: str, body: str, path: Path = DOCS) -> None:
    """Replace the text between this section's markers (or its withdrawn placeholder; else append)."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    # a section whose figures were withdrawn keeps its place between these two comments
    gone, gone_end = f"<!-- bench:{name}:withdrawn -->", f"<!-- bench:{name}:withdrawn-end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else DOCS_HEADER
    i, j = text.find(start), text.find(end)
    gi, gj = text.find(gone), text.find(gone_end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    elif gi >= 0 and gj > gi:
        text = text[:gi] + block + text[gj + len(gone_end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def publish(name: str, body: str, write_docs: bool) -> None:
    """Print a rendered section and, with ``--write-docs``, put it into docs/benchmarks.md."""
    print(body)
    if write_docs:
        write_section(name, body)


def fmt(x: float | None, digits: int = 3) -> str:
    """Compact number for tables: 3 significant digits, scientific when tiny or huge."""
    if x is None:
        return "–"
    if x != x:
        return "nan"
    if x == 0:
        return "0"
    ax = abs(x)
    if ax < 1e-3 or ax >= 1e5:
        return f"{x:.{digits - 1}e}"
    if ax >= 10 ** (digits - 1):
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


# --- raw results and rendering from them ------------------------------------------------
def stamp(info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance stored with a run's results: the command, the date and the machine."""
    return {"command": command_line(), "date": today(), "machine": info if info is not None else machine()}


def results_path(stem: str) -> Path:
    return RESULTS / f"{stem}.json"


def save_results(stem: str, results: dict[str, Any], sections: dict[str, str], script: str | None = None) -> Path:
    """Write ``bench/results/STEM.json`` (atomic): the results plus which script renders
    which docs sections from them (``{"NAME": "docs/FILE.md"}``)."""
    if script is None:
        script = str(Path(sys.argv[0]).resolve().relative_to(REPO))
    data = {"script": script, "sections": dict(sections), **results}
    path = results_path(stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load_results(stem: str) -> dict[str, Any]:
    path = results_path(stem)
    if not path.exists():
        raise SystemExit(f"{path.relative_to(REPO)} not found: run the benchmark first (it writes that file)")
    return json.loads(path.read_text())


def publish_results(stem: str, render_section: Any, write_docs: bool) -> None:
    """Render every section listed in ``bench/results/STEM.json``; print each and, with
    ``write_docs``, put it between its markers in its docs file."""
    results = load_results(stem)
    for name, doc in results["sections"].items():
        body = render_section(name, results)
        print(body)
        if write_docs:
            write_section(name, body, REPO / doc)


def docs_sections(path: Path) -> dict[str, str]:
    """``{NAME: text between the markers}`` of every bench section in one docs file."""
    import re

    text = path.read_text()
    out = {}
    for m in re.finditer(r"<!-- bench:([A-Za-z0-9_]+):start -->\n(.*?)\n<!-- bench:\1:end -->", text, re.S):
        out[m.group(1)] = m.group(2)
    return out
