"""``blackbox blackvip``: train, evaluate and use visual prompts against a black-box classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from blackbox._cli_util import JSON_OPT, PROGRESS_OPT, ProgressBar, _emit_json, _show_progress, handle_errors, parse_sets

DEFAULT_PROVIDER = "efficientnet-lite0?size=96"

app = typer.Typer(help="BlackVIP: input-dependent visual prompts trained with SPSA-GC against a black-box image classifier.",
                  no_args_is_help=True)


def _summary(res: dict[str, Any]) -> str:
    return (f"zero-shot {res['zero_shot_accuracy']:.1%} | no-prompt head {res['linear_head_accuracy']:.1%} | "
            f"prompted ({res['prompt']}, {res['output']}) {res['test_accuracy']:.1%} | {res['queries']} queries "
            f"({res['steps']} steps, {res['trainable_parameters']} trainable parameters) | {res['wall_seconds']:.1f} s -> {res['run_dir']}")


@app.command()
@handle_errors
def train(
    provider: str = typer.Option(DEFAULT_PROVIDER, "--provider", help="Black-box classifier spec (needs probs or logits)."),
    dataset: str = typer.Option("mnist", "--dataset", help="mnist, digits, fashion-mnist, a class_name/*.png folder, or an .npz."),
    shots: int = typer.Option(16, "--shots", help="Training images per class."),
    budget: int = typer.Option(20000, "--budget", help="Black-box image queries for training."),
    run_dir: str = typer.Option(..., "--run-dir", help="Run directory (an existing one with the same settings resumes)."),
    sets: list[str] = typer.Option([], "--set", help="Any other setting as key=value (see `blackbox blackvip options`)."),
    progress: Optional[bool] = PROGRESS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train a prompt (resumes when RUN_DIR already holds a checkpoint of the same run)."""
    from blackbox.provider import load_provider

    from .config import BlackVIPConfig
    from .data import load_dataset
    from .method import BlackVIP, check_config_for

    overrides: dict[str, Any] = {**parse_sets(sets), "shots": shots, "budget": budget}
    cfg = BlackVIPConfig.from_overrides(overrides)
    data = load_dataset(dataset)
    check_config_for(data, cfg)
    model = load_provider(provider)
    run = BlackVIP(model, data, cfg, run_dir, provider_spec=provider, dataset=dataset)
    done = 0
    if (Path(run_dir) / "state.safetensors").exists():
        from blackbox.runs import load_tensors

        done = int(load_tensors(Path(run_dir) / "state.safetensors")[1]["queries"])
        typer.echo(f"resuming {run_dir} at {done} queries", err=True)
    last: dict[str, Any] = {"acc": "-"}
    with ProgressBar(budget, "queries", _show_progress(progress), done=done) as bar:

        def on_step(row: dict[str, Any]) -> None:
            if "test_accuracy" in row:
                last["acc"] = f"{row['test_accuracy']:.1%}"
            bar.update(row["queries"], loss=f"{row['loss']:.3f}", test=last["acc"])

        result = run.fit(on_step=on_step)
    from .report import write_pictures

    write_pictures(run)
    res = result.to_json()
    if as_json:
        _emit_json(res)
    else:
        typer.echo(_summary(res))


@app.command("eval")
@handle_errors
def evaluate(
    run_dir: str = typer.Argument(..., help="A BlackVIP run directory."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Evaluate on this dataset's test split instead of the run's."),
    as_json: bool = JSON_OPT,
) -> None:
    """Test accuracy of a trained prompt (re-queries the black box on the test split)."""
    from .data import load_dataset
    from .method import BlackVIP

    run = BlackVIP.load(run_dir, data=load_dataset(dataset) if dataset else None)
    res = run.evaluate().to_json()
    if as_json:
        _emit_json(res)
    else:
        typer.echo(_summary(res))


@app.command()
@handle_errors
def predict(
    run_dir: str = typer.Argument(..., help="A BlackVIP run directory."),
    images: list[str] = typer.Argument(..., help="Image files (png/jpg); resized to the training side."),
    as_json: bool = JSON_OPT,
) -> None:
    """Classify image files through the prompted black box."""
    import numpy as np

    from blackbox.errors import bad_value

    from .method import BlackVIP

    run = BlackVIP.load(run_dir)
    from PIL import Image

    arrs = []
    for f in images:
        try:
            with Image.open(f) as im:
                arrs.append(np.asarray(im.convert("RGB").resize((run.side, run.side), Image.BILINEAR), dtype=np.float32) / 255.0)
        except OSError as exc:
            raise bad_value("images", "readable image files", f"{f}: {exc}") from exc
    lp = run.predict_images(np.stack(arrs))
    out = [{"image": f, "label": run.data.classes[int(np.argmax(r))], "probability": float(np.exp(r.max()))} for f, r in zip(images, lp)]
    if as_json:
        _emit_json({"predictions": out})
    else:
        for row in out:
            typer.echo(f"{row['image']}\t{row['label']}\t{row['probability']:.3f}")


@app.command()
@handle_errors
def options(as_json: bool = JSON_OPT) -> None:
    """Every setting with its default and help."""
    from .config import BlackVIPConfig

    rows = BlackVIPConfig.describe()
    if as_json:
        _emit_json({"options": rows})
        return
    for r in rows:
        typer.echo(f"{r['name']:<18} {str(r['default']):<20} {r['help']}")
