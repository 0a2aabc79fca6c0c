"""A fitted ECO run on disk: ``artifact.json`` + ``artifact.safetensors``, read back into parts.

This module knows the file layout and nothing about fitting, so the guarded provider can load
a run without importing the fitting job (no import cycle: ``job`` → ``guarded`` → ``artifact``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from blackbox.errors import RunError
from blackbox.runs import load_tensors

from .corruption import Corruption
from .gate import Gate

CONFIG, EVALS, ARTIFACT, ARRAYS = "config.json", "evals.jsonl", "artifact.json", "artifact.safetensors"
FORMAT = "blackbox-eco/1"


def load_artifact(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The run's artifact (JSON) and arrays; a clear error when the fit has not finished."""
    run = Path(run_dir)
    if not (run / ARTIFACT).is_file() or not (run / ARRAYS).is_file():
        hint = " (the fit did not finish: run `blackbox unlearn fit` again with the same arguments to resume)" if (run / CONFIG).exists() else ""
        raise RunError(f"run_dir: {run} has no finished ECO artifact ({ARTIFACT} + {ARRAYS}){hint}")
    artifact = json.loads((run / ARTIFACT).read_text())
    if artifact.get("format") != FORMAT:
        raise RunError(f"run_dir: {run}/{ARTIFACT} is not an ECO artifact (format {artifact.get('format')!r})")
    arrays, _ = load_tensors(run / ARRAYS)
    return artifact, arrays


def gate_and_corruption(artifact: dict[str, Any], arrays: dict[str, np.ndarray], encoder: Any = None) -> tuple[Gate, Corruption]:
    """The fitted gate (with its encoder, if any) and the searched corruption of an artifact."""
    gate = Gate.from_json(artifact["gate"], arrays, encoder)
    c = artifact["corruption"]
    return gate, Corruption(c["family"], float(c["strength"]), c["dims"], c["tokens"], int(c["seed"]))
