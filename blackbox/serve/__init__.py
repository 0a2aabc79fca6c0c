"""Serve adapted models behind an OpenAI-compatible HTTP endpoint.

* :mod:`blackbox.serve.backends` — what is decoded: a plain ``hf-causal`` model, an ECO-guarded
  model, or a logit-fused model (large + small + experts), all stepped token by token.
* :mod:`blackbox.serve.engine` — the model loop: dynamic batching of prefill and decode steps
  across requests, per-request stop conditions, cancellation. No HTTP in it.
* :mod:`blackbox.serve.protocol` — pure translation between the OpenAI wire format and the
  engine (request validation, error objects, response and stream chunks).
* :mod:`blackbox.serve.app` — the FastAPI application (auth, errors, SSE, logging).
* :mod:`blackbox.serve.cli` — ``blackbox serve MODEL``.

Importing this package imports neither torch nor fastapi.
"""
