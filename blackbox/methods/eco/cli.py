"""``blackbox unlearn``: ECO unlearning as offline jobs (fit, eval, generate).

Inputs are JSONL files, one object per line: ``prompt`` (required), ``answer`` (the correct
answer, to measure knowledge), ``target`` (the entity to forget), ``aliases`` (other names).
Heavy libraries are imported inside the commands only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer

from blackbox._cli_util import (JSON_OPT, PROGRESS_OPT, RAY_ADDRESS_OPT, REPLICAS_OPT, SEED_OPT, ProgressBar, _emit_json, _show_progress,
                                handle_errors, on_interrupt)

app = typer.Typer(
    help="Unlearning with ECO: a gate + embedding-corrupted prompts in front of a local model (no weight changes).",
    no_args_is_help=True,
)

SET_OPT = typer.Option([], "--set", help="Config override key=value (repeatable), e.g. --set corruption=zero_top_k --set fpr=0.05.")


def _fmt(x: object) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


@app.command("fit")
@handle_errors
def fit_cmd(
    model: str = typer.Option(..., "--model", help="Provider spec of a model that accepts input embeddings, e.g. hf-causal:smollm2."),
    forget: Path = typer.Option(..., "--forget", help="JSONL of prompts about what to forget (prompt, answer, target, aliases)."),
    retain: Path = typer.Option(..., "--retain", help="JSONL of prompts whose answers must not change."),
    run_dir: Path = typer.Option(..., "--run-dir", help="Run directory (created; re-running resumes a killed job)."),
    general: Optional[Path] = typer.Option(None, "--general", help="JSONL of general prompts (gate negatives, outputs checked unchanged)."),
    fpr: Optional[float] = typer.Option(None, "--fpr", help="Gate false-positive level to calibrate to (default 0.01)."),
    corruption: Optional[str] = typer.Option(None, "--corruption", help="Corruption family (default gaussian_first_n)."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Tokens to corrupt: entity or all_but_last."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Encoder spec for gate features, e.g. sentence-encoder:minilm."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Ask through the model's chat template (default: when the model has one)."),
    scope: Optional[str] = typer.Option(None, "--scope", help="What to forget: entity (all about each target; default), fact (only the facts asked), topic (a subject area, no entity; MiniLM gate)."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Chat template for a tokenizer without one: gemma, or a Jinja template (default: the tokenizer's own; Gemma's is recognised by its turn tokens)."),
    seed: int = SEED_OPT,
    sets: List[str] = SET_OPT,
    replicas: int = REPLICAS_OPT,
    ray_address: Optional[str] = RAY_ADDRESS_OPT,
    as_json: bool = JSON_OPT,
    progress: Optional[bool] = PROGRESS_OPT,
) -> None:
    """Fit a guard: gate, knowledge before, strength search, metrics after; writes an artifact."""
    from blackbox.scale import served
    from .config import EcoConfig
    from .job import load_jsonl
    from .method import EcoMethod

    flags = {k: v for k, v in (("fpr", fpr), ("corruption", corruption), ("tokens", tokens), ("encoder", encoder), ("chat", chat), ("scope", scope),
                               ("chat_template", chat_template)) if v is not None}
    config = EcoConfig.from_overrides(sets, seed=seed, **flags)
    f_items = load_jsonl(forget, "forget")
    r_items = load_jsonl(retain, "retain")
    g_items = load_jsonl(general, "general") if general else []
    method = EcoMethod()
    show = _show_progress(progress, as_json)  # before the model loads: quiets its loading bars too
    on_interrupt(lambda: f"the evaluations done so far are kept ({method.resume_hint(run_dir)} to continue)"
                 if (run_dir / "evals.jsonl").is_file() else "nothing had been evaluated yet; nothing to resume")
    total = 3 * len(f_items) + 2 * len(r_items) + 2 * len(g_items)
    with ProgressBar(max(1, (total + 15) // 16 + 8), "unlearn fit", show) as bar:
        def on_event(ev: dict) -> None:
            if ev.get("event") == "evaluation":
                bar.update(ev["done"], step=ev["key"].split(":")[0])

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # The model's queries go through a Client (ledger, retries), from Ray replicas with --replicas N.
            with served([model], replicas, ray_address, client=True):
                art = method.fit(config, run_dir, model=model, forget=f_items, retain=r_items, general=g_items, progress=on_event)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    resumed = art.pop("resumed")
    m = art["metrics"]
    summary = {"run_dir": str(run_dir), "resumed": resumed, "strength": art["strength"], "corruption": art["corruption"]["family"],
               "threshold": art["gate"]["threshold"], **m}
    if as_json:
        _emit_json(summary)
        return
    typer.echo(f"{'resumed' if resumed else 'fitted'}: {run_dir}")
    typer.echo(f"  corruption {art['corruption']['family']} on {art['corruption']['tokens']} tokens, strength {art['strength']:.4g} "
               f"({m['search_queries']} model queries in {m['search_evaluations']} search evaluations)")
    typer.echo(f"  forget accuracy {_fmt(m['forget_accuracy_before'])} -> {_fmt(m['forget_accuracy_after'])}; "
               f"retain {_fmt(m['retain_accuracy_before'])} -> {_fmt(m['retain_accuracy_after'])}")


@app.command("eval")
@handle_errors
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A fitted run directory."),
    forget: Path = typer.Option(..., "--forget", help="JSONL of forget prompts (e.g. held-out paraphrases)."),
    retain: Path = typer.Option(..., "--retain", help="JSONL of retain prompts."),
    general: Optional[Path] = typer.Option(None, "--general", help="JSONL of general prompts (outputs compared, gate false positives)."),
    same_entity: Optional[Path] = typer.Option(None, "--same-entity", help="JSONL of other facts about the forgotten entities (same-entity collateral)."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the model spec stored in the artifact."),
    replicas: int = REPLICAS_OPT,
    ray_address: Optional[str] = RAY_ADDRESS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Report accuracy before/after, the gate's recall and false-positive rate, and same-entity collateral."""
    from blackbox.scale import served

    from .artifact import load_artifact
    from .job import evaluate, load_guarded, load_jsonl

    f_items = load_jsonl(forget, "forget")
    r_items = load_jsonl(retain, "retain")
    g_items = load_jsonl(general, "general") if general else []
    s_items = load_jsonl(same_entity, "same_entity") if same_entity else []
    with served([model or load_artifact(run_dir)[0].get("model")], replicas, ray_address, client=True):
        guarded = load_guarded(run_dir, model=model)
        report = evaluate(guarded, f_items, r_items, g_items, s_items)
    if as_json:
        _emit_json(report)
        return
    rows = [
        ("forget accuracy", report["forget_accuracy_before"], report["forget_accuracy_after"]),
        ("retain accuracy", report["retain_accuracy_before"], report["retain_accuracy_after"]),
    ]
    if "same_entity_accuracy_before" in report:
        rows.append(("same-entity accuracy", report["same_entity_accuracy_before"], report["same_entity_accuracy_after"]))
    typer.echo(f"{'metric':<22}{'before':>10}{'after':>10}")
    for name, b, a in rows:
        typer.echo(f"{name:<22}{_fmt(b):>10}{_fmt(a):>10}")
    typer.echo(f"{'gate recall':<22}{'':>10}{_fmt(report['gate_recall']):>10}")
    typer.echo(f"{'gate false-pos. rate':<22}{'':>10}{_fmt(report['gate_false_positive_rate']):>10}")
    if "general_unchanged" in report:
        typer.echo(f"{'general unchanged':<22}{'':>10}{_fmt(report['general_unchanged']):>10}")
    typer.echo(f"n_forget {report['n_forget']}, n_retain {report['n_retain']}, gate {report['gate_ms_per_prompt']:.3f} ms/prompt")


@app.command("generate")
@handle_errors
def generate_cmd(
    run_dir: Path = typer.Argument(..., help="A fitted run directory."),
    prompt: List[str] = typer.Option(..., "--prompt", help="Prompt text (repeatable)."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Tokens to generate."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Apply the model's chat template (default: as the run was fitted)."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the model spec stored in the artifact."),
    as_json: bool = JSON_OPT,
) -> None:
    """Answer through the guarded model (flagged prompts are corrupted)."""
    from blackbox.scale import served
    from blackbox.types import GenerateRequest

    from .artifact import load_artifact
    from .job import load_guarded

    with served([model or load_artifact(run_dir)[0].get("model")], client=True):
        guarded = load_guarded(run_dir, model=model)
        if chat is None:
            chat = bool(guarded.artifact["config"].get("chat"))
        res = guarded.generate(GenerateRequest(tuple(prompt), max_tokens=max_tokens, chat=chat))
    flags = [bool(f) for f in guarded.last_flags]
    if as_json:
        _emit_json({"texts": list(res.texts), "flagged": flags, "queries": res.usage.queries})
        return
    for text, flag in zip(res.texts, flags):
        typer.echo(("[corrupted] " if flag else "") + text)
