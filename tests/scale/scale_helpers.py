"""Constants and helpers of the scale tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import json
from pathlib import Path

COUNTRIES = ["France", "Germany", "Spain", "Italy", "Norway", "Sweden", "Poland", "Greece", "Egypt", "Kenya",
             "Peru", "Chile", "Brazil", "Canada", "Mexico", "Japan"]
TEMPLATES = ["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"]
GENERAL = ["how do I bake bread", "what is two plus two", "write a haiku about rain", "tell me a joke",
           "how far is the moon", "what colour is the sky", "the cat sat on the mat", "one two three four"]
# ECO settings small enough for a test (fpr 0.2 calibrates on the built-in general prompts).
ECO_ARGS = ["--fpr", "0.2", "--set", "calibration_fraction=0.5", "--set", "max_new_tokens=3", "--set", "bisect_steps=2"]


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
