"""The ``blackbox`` command line: wiring only (typer), one group per area.

Library errors become one line on stderr and exit code 1, never a traceback. With
``--json`` the last line of stdout is one JSON object. Progress bars go to stderr.

(The app lives here rather than in the repository-root ``cli.py`` because a wheel may not
install a generic top-level ``cli`` module; the root ``cli.py`` runs this app from a
checkout. See docs/architecture.md.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer

from ._cli_util import (  # noqa: F401 - re-exported for older imports
    JSON_OPT,
    PROGRESS_OPT,
    ProgressBar,
    _emit_json,
    _fail,
    _show_progress,
    handle_errors,
    on_interrupt,
    parse_sets,
    run_with_query_bar,
)
from ._version import __version__
from .errors import BlackboxError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="blackbox",
    help="Black-box and zeroth-order adaptation of pretrained models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold API keys
    add_completion=False,
)
runs_app = typer.Typer(help="Inspect and resume run directories.", no_args_is_help=True)
optimizers_app = typer.Typer(help="List the zeroth-order optimizers.", no_args_is_help=True)
providers_app = typer.Typer(help="List and probe model providers.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(optimizers_app, name="optimizers")
app.add_typer(providers_app, name="providers")

def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"blackbox {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Black-box and zeroth-order adaptation of pretrained models."""
    import sys

    from ._cli_util import quiet_third_party

    # Other libraries' loading bars and info logs (transformers, hub) only on an interactive
    # terminal, and never with --json or --no-progress: every command, with or without a bar.
    argv = sys.argv[1:]
    quiet_third_party(sys.stderr.isatty() and "--json" not in argv and "--no-progress" not in argv)


class _Progress(ProgressBar):
    """The shared progress bar fed by optimizer callbacks (queries / budget, loss, best, ETA)."""

    def __init__(self, budget: int, enabled: bool, done: int = 0) -> None:
        super().__init__(budget, "queries", enabled, done=done)

    def __call__(self, info: Any) -> None:
        self.update(info.queries, loss=f"{info.loss:.4g}", best=f"{info.best_loss:.4g}")


def _print_result(result: Any, as_json: bool) -> None:
    data = result.to_json()
    for warning in data.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        _emit_json(data)
        return
    typer.echo(
        f"{data['optimizer']}: best loss {data['best_loss']} after {data['queries']}/{data['budget']} queries "
        f"({data['wall_seconds']:.2f} s) -> {data['run_dir']}"
    )


@app.command()
@handle_errors
def optimize(
    objective: str = typer.Option(..., "--objective", help="Built-in (sphere, rosenbrock, noisy_quadratic, logistic), a problem of the suite (blackbox.problems.SUITE, e.g. logistic_far, mlp_digits; see docs/optimizers.md) or MODULE:FUNCTION."),
    dim: int = typer.Option(..., "--dim", help="Number of parameters."),
    optimizer: str = typer.Option("spsa-gc", "--optimizer", help="Optimizer name (see `blackbox optimizers list`)."),
    budget: int = typer.Option(..., "--budget", help="Total objective evaluations allowed, calibration included."),
    seed: int = typer.Option(0, "--seed", help="Seed; the same seed gives the same run."),
    run_dir: str = typer.Option(..., "--run-dir", help="New directory for config, checkpoints and history."),
    x0: float = typer.Option(0.0, "--x0", help="Starting value of every parameter."),
    sets: list[str] = typer.Option([], "--set", help="Hyperparameter override key=value (repeatable)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Checkpoint every N rounds (0: every --checkpoint-seconds)."),
    checkpoint_seconds: float = typer.Option(5.0, "--checkpoint-seconds", help="Checkpoint at least this often."),
    replicas: int = typer.Option(1, "--replicas", help="Ray replicas serving each provider the objective gets from blackbox.scale.client_for (needs the [ray] extra when > 1)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster for the replicas: auto, local or HOST:PORT (default: a local cluster)."),
    as_json: bool = JSON_OPT,
    progress: Optional[bool] = PROGRESS_OPT,
) -> None:
    """Minimise a Python objective with a zeroth-order optimizer, in a resumable run directory."""
    from .runs import RunConfig, start_run
    from .scale import configure

    configure(replicas, ray_address)  # replicas do not change the result, so they are not part of the run's config

    config = RunConfig(
        objective=objective,
        dim=dim,
        optimizer=optimizer,
        budget=budget,
        seed=seed,
        x0=x0,
        hyperparameters=parse_sets(sets),
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
    )
    on_interrupt(lambda: f"the run keeps its last checkpoint (resume with `blackbox runs resume {run_dir}`)"
                 if (Path(run_dir) / "state.safetensors").is_file()
                 else "no checkpoint had been written; the run directory was removed")
    with _Progress(budget, _show_progress(progress, as_json)) as bar:
        result = start_run(run_dir, config, callbacks=(bar,))
    _print_result(result, as_json)


@runs_app.command("show")
@handle_errors
def runs_show(run_dir: str = typer.Argument(..., help="Run directory (of `optimize` or of any method)."), as_json: bool = JSON_OPT) -> None:
    """Show a run's config, progress and result, whichever command made it."""
    from .methods.base import method_of, require_run_dir
    from .runs import show_run

    method = method_of(require_run_dir(run_dir))
    if method is not None:
        info = {"run_dir": run_dir, **method.show(Path(run_dir))}
        if not info["finished"]:
            info["resume"] = method.resume_hint(Path(run_dir))
        if as_json:
            _emit_json(info)
            return
        status = "finished" if info["finished"] else f"in progress ({info['resume']} to continue)"
        typer.echo(f"run {run_dir}: {info['method']}, {status}")
        typer.echo(f"  {info['progress']}")
        if info["metrics"]:
            typer.echo("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info["metrics"].items()))
        return
    info = show_run(run_dir)
    if as_json:
        _emit_json(info)
        return
    req = info["config"]["request"]
    status = "finished" if info["finished"] else "in progress (resume with `blackbox runs resume`)"
    typer.echo(f"run {info['run_dir']}: {req['optimizer']} on {req['objective']} (d={req['dim']}, seed={req['seed']})")
    typer.echo(f"  queries {info['queries']}/{info['budget']}, best loss {info['best_loss']}, {status}")
    resolved = info["config"].get("resolved", {})
    gains = {k: resolved.get(k) for k in ("a", "c", "o", "step0") if k in resolved}
    if gains:
        typer.echo("  gains " + ", ".join(f"{k}={v}" for k, v in gains.items()))


@runs_app.command("resume")
@handle_errors
def runs_resume(
    run_dir: str = typer.Argument(..., help="Run directory to continue."),
    as_json: bool = JSON_OPT,
    progress: Optional[bool] = PROGRESS_OPT,
) -> None:
    """Continue a run from its last checkpoint; the result is identical to an uninterrupted run."""
    from .methods.base import method_of, require_run_dir
    from .runs import Run

    method = method_of(require_run_dir(run_dir))
    if method is not None:
        if not hasattr(method, "resume"):
            raise BlackboxError(f"run_dir: {run_dir} is a {method.name} run, which `runs resume` cannot continue; "
                                f"{method.resume_hint(Path(run_dir))}")
        on_interrupt(lambda: f"the run keeps its last checkpoint ({method.resume_hint(Path(run_dir))} to continue)")
        info = method.show(Path(run_dir))
        res = run_with_query_bar(_show_progress(progress, as_json), info.get("budget", 0), info.get("queries", 0),
                                 lambda on_step: method.resume(Path(run_dir), on_step=on_step))
        if as_json:
            _emit_json(res)
        else:
            typer.echo(", ".join(f"{k} {v}" for k, v in sorted(res.items()) if isinstance(v, (int, float, str))))
        return
    on_interrupt(lambda: f"the run keeps its last checkpoint (resume with `blackbox runs resume {run_dir}`)")
    run = Run.load(run_dir)
    with _Progress(run.config.budget, _show_progress(progress, as_json), done=run.opt.queries) as bar:
        result = run.execute((bar,), resumed=True)
    _print_result(result, as_json)


@app.command("sweep")
@handle_errors
def sweep(
    spec: str = typer.Argument(..., help="SPEC.toml (a grid over any command's options), or `show` to summarise a sweep."),
    directory: Optional[str] = typer.Argument(None, help="With `show`: the sweep directory."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Sweep directory: one run directory per grid point; the same DIR again continues a killed sweep."),
    backend: str = typer.Option("local", "--backend", help="local (subprocesses on this machine) or ray (one Ray task per run)."),
    max_parallel: int = typer.Option(1, "--max-parallel", help="Runs at once."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --backend ray: auto, local or HOST:PORT (default: a local cluster)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run a grid of runs (`blackbox sweep SPEC.toml --run-dir DIR`), or summarise one as a table and a plot
    (`blackbox sweep show DIR`). Finished runs are skipped and checkpointed ones resumed. See docs/scaling.md."""
    from .scale import sweep as sw

    if spec == "show":
        if directory is None:
            raise BlackboxError("sweep show: expected a sweep directory, received nothing (blackbox sweep show DIR)")
        summary = sw.summarize(directory)
        plot = sw.plot_summary(summary, Path(directory) / "sweep.png")
        summary["plot"] = None if plot is None else str(plot)
        if as_json:
            _emit_json(summary)
            return
        _print_sweep(summary)
        return
    if directory is not None:
        raise BlackboxError(f"sweep: expected SPEC.toml --run-dir DIR or show DIR, received an extra argument {directory!r}")
    if run_dir is None:
        raise BlackboxError("run_dir: expected --run-dir DIR for the sweep's run directories, received nothing")
    parsed = sw.load_spec(spec)
    _check_command(parsed.command)

    def done(run: Any, out: dict[str, Any]) -> None:
        status = "finished" if out["returncode"] == 0 else f"failed ({out['error'] or 'exit ' + str(out['returncode'])})"
        typer.echo(f"{run.name}: {status}", err=True)

    summary = sw.run_sweep(parsed, run_dir, backend=backend, max_parallel=max_parallel, address=ray_address, on_done=done)
    plot = sw.plot_summary(summary, Path(run_dir) / "sweep.png")
    summary["plot"] = None if plot is None else str(plot)
    failed = summary["counts"]["failed"]
    if as_json:
        _emit_json(summary)
    else:
        _print_sweep(summary)
    if failed:
        raise BlackboxError(f"sweep: {failed} of {len(summary['runs'])} runs failed (logs under {Path(run_dir) / 'logs'}); "
                            "run the same command again to retry them")


def _check_command(words: tuple[str, ...]) -> None:
    """Fail before any run when a sweep names a command this CLI does not have."""
    group = typer.main.get_command(app)
    cmd: Any = group
    for word in words:
        nxt = cmd.get_command(None, word) if hasattr(cmd, "get_command") else None
        if nxt is None:
            raise BlackboxError(f"command: expected a blackbox command such as 'optimize' or 'blackvip train', received {' '.join(words)!r}")
        cmd = nxt
    if hasattr(cmd, "get_command"):
        raise BlackboxError(f"command: expected a command of the group {' '.join(words)!r} (e.g. {' '.join(words)} {sorted(cmd.commands)[0]}), received the group")


def _print_sweep(summary: dict[str, Any]) -> None:
    keys, metric = summary["swept"], summary["metric"] or "metric"
    header = [*keys, "status", metric]
    rows = [[str(r["settings"][k]) for k in keys] + [r["status"], "-" if r["metric"] is None else f"{r['metric']:.6g}" if isinstance(r["metric"], float) else str(r["metric"])]
            for r in summary["runs"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for line in [header, *rows]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    counts = ", ".join(f"{n} {k}" for k, n in summary["counts"].items() if n)
    best = f"; best ({summary['goal']} {metric}): {summary['best']}" if summary["best"] else ""
    plot = f"; plot {summary['plot']}" if summary.get("plot") else ""
    typer.echo(f"{summary['command']} sweep in {summary['sweep_dir']}: {counts}{best}{plot}")


@optimizers_app.command("list")
@handle_errors
def optimizers_list(as_json: bool = JSON_OPT) -> None:
    """List optimizers with their hyperparameters and defaults."""
    from .registry import optimizers

    rows = []
    for entry in optimizers.entries():
        cls = entry.obj
        params = cls.Config.describe() if hasattr(cls, "Config") else []
        rows.append({"name": entry.name, "summary": entry.summary, "source": entry.source, "hyperparameters": params})
    if as_json:
        _emit_json({"optimizers": rows})
        return
    for row in rows:
        typer.echo(f"{row['name']}  [{row['source']}]  {row['summary']}")
        for p in row["hyperparameters"]:
            typer.echo(f"    {p['name']} = {p['default']!r}  {p['help']}")


@providers_app.command("list")
@handle_errors
def providers_list(as_json: bool = JSON_OPT) -> None:
    """List built-in and plugin providers with the capabilities each kind can offer."""
    from .registry import providers

    rows = [
        {
            "name": e.name,
            "capabilities": sorted(str(c) for c in getattr(e.obj, "declared_capabilities", ())),
            "source": e.source,
            "summary": e.summary,
        }
        for e in providers.entries()
    ]
    if as_json:
        _emit_json({"providers": rows})
        return
    for r in rows:
        typer.echo(f"{r['name']:<20} [{r['source']}] {', '.join(r['capabilities'])}")


@providers_app.command("probe")
@handle_errors
def providers_probe(spec: str = typer.Argument(..., help="Provider spec, e.g. openai:MODEL?base_url=..."), as_json: bool = JSON_OPT) -> None:
    """Instantiate a provider, exercise each capability once, report capabilities and latency."""
    import time

    from .provider import load_provider
    from .testing import check_provider

    t0 = time.perf_counter()
    provider = load_provider(spec)
    load_ms = (time.perf_counter() - t0) * 1000.0
    try:
        try:
            latencies = check_provider(provider)
        except AssertionError as exc:
            raise BlackboxError(f"provider {provider.name}: failed its conformance probe: {exc}") from None
        info = {
            "name": provider.name,
            "capabilities": sorted(str(c) for c in provider.capabilities),
            "latency_ms": {k: round(v, 3) for k, v in latencies.items()},
            "load_ms": round(load_ms, 1),
            "describe": provider.describe(),
        }
    finally:
        provider.close()
    if as_json:
        _emit_json(info)
        return
    typer.echo(f"{info['name']}: {', '.join(info['capabilities'])} (loaded in {info['load_ms']} ms)")
    for cap, ms in info["latency_ms"].items():
        typer.echo(f"  {cap:<14} {ms:9.2f} ms")


def _mount_methods() -> None:
    """Mount every registered method's command group (built-ins and entry-point plugins).

    Each group module defines ``app`` and imports torch and friends only inside its commands,
    so ``blackbox --help`` stays fast. A plugin whose group fails to import is a warning.
    """
    import warnings

    from .errors import PluginWarning
    from .registry import methods

    for entry in methods.entries():
        info = entry.obj
        group, cli_path = getattr(info, "cli_group", ""), getattr(info, "cli", "")
        if not group or not cli_path:
            continue
        try:
            app.add_typer(info.load_cli(), name=group)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            if entry.source == "builtin":
                raise
            warnings.warn(f"method plugin {entry.name!r}: its command group {cli_path} failed to load: "
                          f"{type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)


_mount_methods()

from blackbox.serve.cli import serve as _serve  # noqa: E402 - light: fastapi/torch load inside the command
app.command("serve")(_serve)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
