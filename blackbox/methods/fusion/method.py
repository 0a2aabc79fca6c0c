"""Logit fusion behind the method protocol (:class:`blackbox.methods.base.Method`).

Fusion trains nothing: ``fit`` records a *fused model* — the provider specs of the large
model, the small base and the experts, and a :class:`FusionConfig` — as ``fusion.json`` in the
run directory, and ``load`` rebuilds the :class:`LogitFusion` from it. That file is the spec a
user hands to anything that serves or evaluates a fused model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from blackbox.errors import RunError, bad_value
from blackbox.runs import atomic_write_json, prepare_run_dir
from blackbox.types import Capability

from ..base import read_config
from .config import FusionConfig

SPEC = "fusion.json"
FORMAT = "blackbox-fusion/1"


class FusionMethod:
    """Proxy-tuning and dynamic KL-constrained fusion of a large model with small experts."""

    name = "fusion"
    Config = FusionConfig
    requires = frozenset({Capability.LOGITS, Capability.TOP_LOGPROBS})  # either one for the large model

    def fit(self, config: FusionConfig, run_dir: str | Path, *, large: str, small: str, experts: Sequence[str]) -> dict[str, Any]:
        """Record the fused model's specs and settings (no model is loaded or queried)."""
        if not experts:
            raise bad_value("experts", "at least one expert provider spec", "none")
        path = prepare_run_dir(run_dir, "fusion")
        spec = {"format": FORMAT, "large": large, "small": small, "experts": list(experts), "config": config.to_dict()}
        old = read_config(path)
        if old is not None and (path / SPEC).is_file() and json.loads((path / SPEC).read_text()) != spec:
            raise RunError(f"run_dir: {path} holds a different fused model; use a new directory")
        atomic_write_json(path / SPEC, spec)
        atomic_write_json(path / "config.json", {"method": self.name, **spec})
        return spec

    def evaluate(self, run_dir: str | Path, data: Sequence[dict[str, str]], **options: Any) -> dict[str, Any]:
        """Share of ``data`` rows ({prompt, answer}) whose fused greedy output contains the answer."""
        fusion = self.load(run_dir)
        prompts = [row["prompt"] for row in data]
        out = fusion.generate(prompts)
        hits = [row["answer"].strip().lower() in text.lower() for row, text in zip(data, out.texts)]
        return {"accuracy": sum(hits) / max(1, len(hits)), "n": len(hits), "tokens": out.n_tokens}

    def load(self, run_dir: str | Path, **options: Any) -> Any:
        """The :class:`~blackbox.methods.fusion.decode.LogitFusion` of a recorded fused model."""
        from blackbox.provider import load_provider

        from .decode import LogitFusion

        spec = read_spec(run_dir)
        loaded = [load_provider(s) for s in [spec["large"], spec["small"], *spec["experts"]]]
        return LogitFusion(loaded[0], loaded[1], loaded[2:], FusionConfig.from_dict(spec["config"]))

    def owns(self, run_dir: Path) -> bool:
        """A folder holding a recorded fused model."""
        return (Path(run_dir) / SPEC).is_file()

    def show(self, run_dir: Path) -> dict[str, Any]:
        """The fused model's roles and mode (nothing runs, so it is always finished)."""
        spec = read_spec(run_dir)
        return {"method": self.name, "finished": True, "metrics": {},
                "progress": f"{spec['config']['mode']} fusion: large {spec['large']}, small {spec['small']}, "
                            f"{len(spec['experts'])} expert(s)"}

    def resume_hint(self, run_dir: Path) -> str:
        """Nothing to resume: a fused model is recorded in one write."""
        return f"nothing to resume; `{run_dir}` is complete"


def read_spec(run_dir: str | Path) -> dict[str, Any]:
    """``fusion.json`` of a run directory, checked."""
    path = Path(run_dir) / SPEC
    if not path.is_file():
        raise RunError(f"run_dir: expected a fused model ({SPEC}) in {str(run_dir)!r}")
    spec = json.loads(path.read_text())
    if spec.get("format") != FORMAT:
        raise RunError(f"run_dir: {path} is not a fused-model spec (format {spec.get('format')!r})")
    return spec
