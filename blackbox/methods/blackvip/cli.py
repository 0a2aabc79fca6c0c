"""``blackbox blackvip``: train, evaluate and use visual prompts against a black-box classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from blackbox._cli_util import JSON_OPT, PROGRESS_OPT, SEED_OPT, SET_OPT, _emit_json, _show_progress, handle_errors, on_interrupt, run_with_query_bar

DEFAULT_PROVIDER = "efficientnet-lite0?size=96"

app = typer.Typer(help="BlackVIP: input-dependent visual prompts trained with SPSA-GC against a black-box image classifier.",
                  no_args_is_help=True)


def _summary(res: dict[str, Any]) -> str:
    chosen = ""
    if "selected_step" in res:
        # early stopping: the prompt with the best held-out training-shot loss, and what was left unspent
        chosen = (f" | held-out-selected prompt of step {res['selected_step']} (held-out accuracy {res['holdout_accuracy']:.1%})"
                  f"{', stopped early' if res.get('stopped_early') else ''}, {res['unused_budget']} queries unused")
    box = "WHITE-BOX encoder (reads the target's weights)" if res.get("white_box") else f"encoder {res.get('encoder', '?')}"
    return (f"zero-shot {res['zero_shot_accuracy']:.1%} | no-prompt head {res['linear_head_accuracy']:.1%} | "
            f"prompted ({res['prompt']}, {res['output']}, {box}) {res['test_accuracy']:.1%}{chosen} | {res['queries']} queries "
            f"({res['steps']} steps, {res['trainable_parameters']} trainable parameters) | {res['wall_seconds']:.1f} s -> {res['run_dir']}")


@app.command()
@handle_errors
def train(
    provider: str = typer.Option(DEFAULT_PROVIDER, "--provider", help="Black-box classifier spec (needs probs or logits)."),
    dataset: str = typer.Option("mnist", "--dataset", help="mnist, digits, fashion-mnist, a class_name/*.png folder, or an .npz."),
    shots: int = typer.Option(16, "--shots", help="Training images per class."),
    budget: int = typer.Option(20000, "--budget", help="Black-box image queries for training."),
    seed: int = SEED_OPT,
    run_dir: str = typer.Option(..., "--run-dir", help="Run directory (an existing one with the same settings resumes)."),
    sets: list[str] = SET_OPT,
    replicas: int = typer.Option(1, "--replicas", help="Ray replicas of the provider; each step's probe images are split across them (needs the [ray] extra when > 1)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster for the replicas: auto, local or HOST:PORT (default: a local cluster)."),
    progress: Optional[bool] = PROGRESS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train a prompt (resumes when RUN_DIR already holds a checkpoint of the same run)."""
    from blackbox.scale.context import check_replicas

    from .config import BlackVIPConfig
    from .method import BlackVIPMethod

    cfg = BlackVIPConfig.from_overrides(sets, shots=shots, budget=budget, seed=seed)
    check_replicas(replicas, ray_address)
    method = BlackVIPMethod()
    show = _show_progress(progress, as_json)
    on_interrupt(lambda: _resume_hint(method, Path(run_dir)))
    done = _queries_done(Path(run_dir))
    if done:
        typer.echo(f"resuming {run_dir} at {done} queries", err=True)
    res = run_with_query_bar(show, budget, done, lambda on_step: method.fit(cfg, run_dir, provider=provider, dataset=dataset, on_step=on_step,
                                                                                   replicas=replicas, ray_address=ray_address))
    if as_json:
        _emit_json(res)
    else:
        typer.echo(_summary(res))


def _queries_done(run_dir: Path) -> int:
    if not (run_dir / "state.safetensors").exists():
        return 0
    from blackbox.runs import load_tensors

    return int(load_tensors(run_dir / "state.safetensors")[1]["queries"])


def _resume_hint(method: Any, run_dir: Path) -> str:
    if (run_dir / "state.safetensors").exists():
        return f"the run keeps its last checkpoint ({method.resume_hint(run_dir)} to continue)"
    return "no checkpoint had been written; nothing to resume"


@app.command("eval")
@handle_errors
def evaluate(
    run_dir: str = typer.Argument(..., help="A BlackVIP run directory."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Evaluate on this dataset's test split instead of the run's."),
    as_json: bool = JSON_OPT,
) -> None:
    """Test accuracy of a trained prompt (re-queries the black box on the test split)."""
    from .method import BlackVIPMethod

    res = BlackVIPMethod().evaluate(run_dir, dataset)
    if as_json:
        _emit_json(res)
    else:
        typer.echo(f"test accuracy {res['test_accuracy']:.1%} on {res['n_test']} images of {res['dataset']} "
                   f"({res['prompt']}, {res['output']}) | {res['queries']} queries")


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
