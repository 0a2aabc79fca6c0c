"""``blackbox serve MODEL``: an OpenAI-compatible HTTP endpoint for a plain, guarded or fused model.

Heavy imports (torch, transformers, fastapi, uvicorn) happen inside the command, so mounting it
on the main app keeps ``blackbox --help`` fast.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional

import typer

from blackbox._cli_util import handle_errors
from blackbox.errors import ConfigError


@handle_errors
def serve(
    model: Optional[str] = typer.Argument(None, help="hf-causal:PATH, eco:RUN_DIR, an encoder spec (embeddings), or a fused spec file (.toml/.json). Omit it to give a fused model by --large/--small/--expert."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback needs --api-key-env."),
    port: int = typer.Option(8000, "--port", help="TCP port (0 = any free port)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of the environment variable holding the API key clients must send (Bearer)."),
    max_batch: int = typer.Option(16, "--max-batch", help="Rows (request choices) decoded together at most."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests waiting at most; beyond it: 429 with Retry-After."),
    max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", help="Largest max_tokens a request may ask for."),
    served_name: Optional[str] = typer.Option(None, "--served-name", help="Model id clients send (default: MODEL as given)."),
    log_prompts: bool = typer.Option(False, "--log-prompts", help="Include prompt text in the request log lines."),
    large: Optional[str] = typer.Option(None, "--large", help="Fused model: provider spec of the large base."),
    small: Optional[str] = typer.Option(None, "--small", help="Fused model: provider spec of the small base."),
    expert: List[str] = typer.Option([], "--expert", help="Fused model: provider spec of an expert (repeatable)."),
    mode: str = typer.Option("proxy", "--mode", help="Fused model: proxy or dynamic."),
    alpha: float = typer.Option(1.0, "--alpha", help="Fused model (proxy): the expert weight."),
) -> None:
    """Serve MODEL behind an OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings)."""
    from .app import create_app, is_loopback_host

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise ConfigError(f"--api-key-env: the environment variable {api_key_env} is not set or empty")
    if not is_loopback_host(host) and key is None:
        raise ConfigError(f"--host {host} is not loopback: an API key is required (--api-key-env NAME)")
    for name, v in (("--max-batch", max_batch), ("--max-queue", max_queue), ("--max-tokens-limit", max_tokens_limit)):
        if v < 1:
            raise ConfigError(f"{name}: expected an integer >= 1, received {v}")
    fused_flags = large is not None or small is not None or bool(expert)
    if model is None and not fused_flags:
        raise ConfigError("MODEL: expected a model spec or a fused spec file, or --large/--small/--expert")
    if model is not None and fused_flags:
        raise ConfigError("MODEL: give either MODEL or --large/--small/--expert, not both")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .backends import FusedBackend, fused_from_dict, load_backend

    if model is None:
        if not (large and small and expert):
            raise ConfigError("fused model: --large, --small and at least one --expert are all needed")
        backend = FusedBackend(fused_from_dict({"large": large, "small": small, "experts": list(expert), "mode": mode, "alpha": alpha}))
        name = served_name or "fused"
    else:
        backend = load_backend(model)
        name = served_name or model
    app = create_app(backend, model_name=name, api_key=key, max_batch=max_batch, max_queue=max_queue,
                     max_tokens_limit=max_tokens_limit, log_prompts=log_prompts)
    import uvicorn

    # uvicorn's SIGTERM handling stops accepting, lets in-flight requests finish, then runs the
    # lifespan shutdown that stops the model loop. Its access log is off: we log one line per request.
    logging.getLogger("blackbox.serve").info("serving model %s (%s)", name, backend.describe()["kind"])
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=60)
