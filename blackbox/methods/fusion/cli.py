"""``blackbox fuse``: decode with a large model steered by small experts (proxy-tuning, dynamic fusion)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import typer

from blackbox._cli_util import JSON_OPT, PROGRESS_OPT, RAY_ADDRESS_OPT, REPLICAS_OPT, ProgressBar, _emit_json, _show_progress, handle_errors
from blackbox.errors import BlackboxError, ConfigError, bad_value

app = typer.Typer(help="Logit fusion: proxy-tuning and dynamic weak-to-strong fusion at decode time.", no_args_is_help=True)


def _read_prompts(prompt: Optional[str], prompts: Optional[Path]) -> list[str]:
    if (prompt is None) == (prompts is None):
        raise ConfigError("prompts: expected exactly one of --prompt TEXT or --prompts FILE, received " + ("both" if prompt is not None else "neither"))
    if prompt is not None:
        return [prompt]
    assert prompts is not None
    if not prompts.is_file():
        raise bad_value("--prompts", "a text file with one prompt per line", str(prompts))
    lines = [line.rstrip("\n").replace("\\n", "\n") for line in prompts.read_text(encoding="utf-8").splitlines()]
    out = [line for line in lines if line.strip()]
    if not out:
        raise bad_value("--prompts", "a file with at least one non-empty line", str(prompts))
    return out


class _StreamPrinter:
    """Writes decoded text as tokens arrive, holding back what could still become a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tok, self.stop, self.ids, self.printed = tokenizer, tuple(stop), [], ""

    def _safe(self, text: str) -> str:
        hold = max((k for s in self.stop for k in range(1, len(s) + 1) if text.endswith(s[:k])), default=0)
        return text[: len(text) - hold] if hold else text

    def step(self, info: dict[str, Any]) -> None:
        self.ids.append(int(info["token"]))
        self._emit(self._safe(self.tok.decode(self.ids)))

    def _emit(self, text: str) -> None:
        if text.startswith(self.printed) and len(text) > len(self.printed):
            sys.stdout.write(text[len(self.printed):])
            sys.stdout.flush()
            self.printed = text

    def finish(self, final: str) -> None:
        self._emit(final)  # the final text has stop strings cut: only what is missing is written
        sys.stdout.write("\n")
        sys.stdout.flush()


def _write_weights(path: Path, result: Any, tokenizer: Any) -> None:
    """One JSON line per prompt and step: the token chosen and the experts' weights there."""
    from blackbox.runs import atomic_write_bytes

    lines = []
    for i, (toks, ws) in enumerate(zip(result.tokens, result.weights)):
        for step, (tok, w) in enumerate(zip(toks, ws)):
            lines.append(json.dumps({"prompt": i, "step": step, "token": int(tok), "text": tokenizer.decode([tok]), "weights": w}))
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())


@app.command("generate")
@handle_errors
def generate(
    large: str = typer.Option(..., "--large", help="Provider spec of the large base model (hf-causal:..., or openai:... with --large-top-k)."),
    small: str = typer.Option(..., "--small", help="Provider spec of the small base model (hf-causal:...)."),
    expert: List[str] = typer.Option(..., "--expert", help="Provider spec of a small expert tuned from the small base; repeat for several."),
    mode: str = typer.Option("proxy", "--mode", help="proxy (fixed alpha) or dynamic (per-step KL-matched weights)."),
    alpha: float = typer.Option(1.0, "--alpha", help="proxy: the fixed expert weight, in [0, 2]."),
    refine: int = typer.Option(0, "--refine", help="dynamic: golden-section steps after the 0..2 grid (0 = grid only)."),
    expert_choice: str = typer.Option("step", "--expert-choice", help="dynamic, several experts: the active expert is this step's best (step), the first one given weight, kept (first), or the best summed over the answer (cumulative)."),
    precision: str = typer.Option("float32", "--precision", help="dynamic: arithmetic of the weight search, float32 (fast) or float64 (reference)."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Tokens to generate at most per prompt."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default); > 0 samples."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --temperature > 0)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable); the output ends before it."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts decoded together."),
    large_top_k: Optional[int] = typer.Option(None, "--large-top-k", help="Fuse over the large model's top-k tokens only (approximation; needed for an API)."),
    large_tail: str = typer.Option("small", "--large-tail", help="With --large-top-k: fill the unreturned tokens' log-probs like the small base (small), evenly (uniform), or with the lowest returned value (floor)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="A file with one prompt per line (\\n inside a line is a newline)."),
    stream: bool = typer.Option(False, "--stream", help="Print the text as it is decoded (one prompt)."),
    weights_out: Optional[Path] = typer.Option(None, "--weights-out", help="Write the per-step expert weights as JSONL (prompt, step, token, text, weights)."),
    replicas: int = REPLICAS_OPT,
    ray_address: Optional[str] = RAY_ADDRESS_OPT,
    as_json: bool = JSON_OPT,
    progress: Optional[bool] = PROGRESS_OPT,
) -> None:
    """Generate with fused logits; --json prints outputs and the per-step expert weights."""
    from blackbox.provider import load_provider

    from .decode import FusionConfig, LogitFusion

    texts = _read_prompts(prompt, prompts)
    if stream and (len(texts) != 1 or as_json):
        raise BlackboxError(f"--stream: expected one prompt and no --json, received {len(texts)} prompt(s){' and --json' if as_json else ''}")
    config = FusionConfig(
        mode=mode, alpha=alpha, refine=refine, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
        stop=tuple(stop), batch_size=batch_size, large_top_k=large_top_k, precision=precision,
        large_tail=large_tail, expert_choice=expert_choice,
    )
    if replicas != 1 or ray_address is not None:
        # The prompt set split across Ray replicas, each decoding its share with the whole fused
        # model (the token-by-token loop stays in one process per prompt).
        from .replicas import fused_generate

        if stream:
            raise BlackboxError("--stream: expected one process, received --replicas/--ray-address")
        result, tokenizer = fused_generate([large, small, *expert], config, texts, replicas, address=ray_address)
    else:
        from .replicas import counted, queries_of

        loaded = []
        try:
            for spec in [large, small, *expert]:
                loaded.append(counted(load_provider(spec)))
            fusion = LogitFusion(loaded[0], loaded[1], loaded[2:], config)
            if stream:
                printer = _StreamPrinter(fusion.tokenizer, config.stop)
                result = fusion.generate(texts, on_step=printer.step)
                printer.finish(result.texts[0])
            else:
                with ProgressBar(len(texts), "prompts", _show_progress(progress, as_json)) as bar:
                    result = fusion.generate(texts, on_batch=lambda done: bar.update(done))
        finally:
            for p in loaded:
                p.close()
        result.info["queries"] = queries_of(loaded)
        tokenizer = fusion.tokenizer
    if weights_out is not None:
        _write_weights(weights_out, result, tokenizer)
    if stream:
        return
    if as_json:
        out = result.to_dict()
        out.update({"prompts": texts, "large": large, "small": small, "experts": list(expert), "tokens_per_s": round(result.n_tokens / max(result.seconds, 1e-9), 3)})
        _emit_json(out)
        return
    for text, w in zip(result.texts, result.weights):
        mean = [round(sum(s[t] for s in w) / max(len(w), 1), 3) for t in range(len(expert))]
        typer.echo(f"{text}\n  [mean expert weights {mean}]")
