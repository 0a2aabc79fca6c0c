"""ECO behind the method protocol (:class:`blackbox.methods.base.Method`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from blackbox.runs import discard_unless_checkpointed, prepare_run_dir
from blackbox.types import Capability

from ..base import read_config
from .artifact import ARTIFACT, EVALS
from .config import EcoConfig


class EcoMethod:
    """Unlearning by embedding-corrupted prompts: ``fit`` writes a guard, ``load`` gives the guarded provider."""

    name = "eco"
    Config = EcoConfig
    requires = frozenset({Capability.INPUTS_EMBEDS, Capability.TEXT})

    def fit(self, config: EcoConfig, run_dir: str | Path, *, model: str, forget: str | Path | Sequence[Any],
            retain: str | Path | Sequence[Any], general: str | Path | Sequence[Any] | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Fit (or resume) a guard for ``model`` from JSONL files or item lists; returns the artifact."""
        from blackbox.provider import load_provider

        from .job import fit, load_jsonl

        def items(x: Any, role: str) -> Any:
            return load_jsonl(x, role) if isinstance(x, (str, Path)) else list(x or [])

        f_items, r_items, g_items = items(forget, "forget"), items(retain, "retain"), items(general, "general")
        path = prepare_run_dir(run_dir, "ECO")
        with discard_unless_checkpointed(path, EVALS, ARTIFACT):
            provider = load_provider(model)
            result = fit(provider, f_items, r_items, path, general=g_items, config=config, model_spec=model, progress=progress)
        return {"resumed": result.resumed, **result.artifact}

    def evaluate(self, run_dir: str | Path, data: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Accuracy before/after and gate rates on ``data`` = {forget, retain, general, same_entity} (files or items)."""
        from .job import evaluate, load_jsonl

        def items(role: str) -> Any:
            x = data.get(role)
            return load_jsonl(x, role) if isinstance(x, (str, Path)) else list(x or [])

        guarded = self.load(run_dir, **options)
        return evaluate(guarded, items("forget"), items("retain"), items("general"), items("same_entity"))

    def load(self, run_dir: str | Path, **options: Any) -> Any:
        """The guarded provider (``model=SPEC`` overrides the stored model spec)."""
        from .guarded import load_guarded

        return load_guarded(run_dir, **options)

    def owns(self, run_dir: Path) -> bool:
        """A folder whose config.json holds an ECO fit's inputs."""
        cfg = read_config(run_dir)
        return cfg is not None and "inputs" in cfg and "counts" in cfg and "config" in cfg

    def show(self, run_dir: Path) -> dict[str, Any]:
        """Finished when the artifact exists; otherwise how many evaluations are memoised."""
        import json

        path = Path(run_dir)
        cfg = read_config(path) or {}
        done = len((path / EVALS).read_text().splitlines()) if (path / EVALS).is_file() else 0
        metrics: dict[str, Any] = {}
        if (path / ARTIFACT).is_file():
            art = json.loads((path / ARTIFACT).read_text())
            metrics = {"strength": art.get("strength"), **{k: v for k, v in art.get("metrics", {}).items() if isinstance(v, (int, float))}}
        counts = cfg.get("counts", {})
        return {"method": self.name, "finished": (path / ARTIFACT).is_file(), "metrics": metrics,
                "progress": f"{done} evaluations memoised; model {cfg.get('model')}; forget {counts.get('forget')}, "
                            f"retain {counts.get('retain')}, general {counts.get('general')} prompts"}

    def resume_hint(self, run_dir: Path) -> str:
        """ECO resumes by re-running the same fit (its inputs are files the run only digests)."""
        return f"re-run the same `blackbox unlearn fit ... --run-dir {run_dir}` command"
