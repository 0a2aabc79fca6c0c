"""CrossTune behind the method protocol (:class:`blackbox.methods.base.Method`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blackbox.types import Capability

from ..base import read_config
from .config import CrossTuneConfig


class CrossTuneMethod:
    """Label-enhanced cross-attention heads over black-box features."""

    name = "crosstune"
    Config = CrossTuneConfig
    requires = frozenset({Capability.HIDDEN_STATES, Capability.EMBED})  # either one (any_of)

    def fit(self, config: CrossTuneConfig, run_dir: str | Path, **inputs: Any) -> dict[str, Any]:
        """Sample the shots, optionally augment, train and save (``inputs``: see ``fit_run``)."""
        from .run import fit_run

        return fit_run(run_dir, config=config, **inputs)

    def evaluate(self, run_dir: str | Path, data: str, **options: Any) -> dict[str, Any]:
        """Accuracy and macro-F1 on a labelled file."""
        from .run import eval_run

        return eval_run(run_dir, data, **options)

    def load(self, run_dir: str | Path, **options: Any) -> Any:
        """The fitted classifier (``predict``, ``predict_proba``)."""
        from .run import _load

        return _load(run_dir, options.get("cache"))[0]

    def owns(self, run_dir: Path) -> bool:
        """A folder whose config.json holds a CrossTune fit's settings."""
        cfg = read_config(run_dir)
        return cfg is not None and {"features", "shots", "config", "train"} <= set(cfg)

    def show(self, run_dir: Path) -> dict[str, Any]:
        """Finished when the model is saved; metrics from the fit's summary."""
        path = Path(run_dir)
        cfg = read_config(path) or {}
        result = json.loads((path / "result.json").read_text()) if (path / "result.json").is_file() else {}
        metrics = {k: result[k] for k in ("queries", "n_train", "train_seconds") if k in result}
        return {"method": self.name, "finished": (path / "model.json").is_file(), "metrics": metrics,
                "progress": f"{cfg.get('config', {}).get('method')} on {cfg.get('train')} ({cfg.get('shots')} shots, features {cfg.get('features')})"}

    def resume_hint(self, run_dir: Path) -> str:
        """CrossTune resumes by re-running the same fit."""
        return f"re-run the same `blackbox crosstune fit ... --run-dir {run_dir}` command"
