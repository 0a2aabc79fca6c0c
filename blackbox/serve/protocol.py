"""The OpenAI wire format, as pure functions: request validation, error objects, responses and
stream chunks. No HTTP and no model here (unit-testable with plain dicts).

Validation follows the OpenAI API: unknown fields and parameters the model cannot honour are
a 400 ``invalid_request_error`` naming the parameter, never silently ignored.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from .engine import Sampling

MAX_TOP_LOGPROBS = 20
MAX_STOP = 4
ROLES = ("system", "developer", "user", "assistant")

# Accepted fields per endpoint. Parameters in NEUTRAL are accepted only at their neutral value
# (what the server does anyway); any other value is refused by name.
COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options", "user",
          "presence_penalty", "frequency_penalty", "logit_bias"}
COMPLETION_FIELDS = COMMON | {"prompt", "logprobs", "echo", "best_of", "suffix"}
CHAT_FIELDS = COMMON | {"messages", "logprobs", "top_logprobs", "max_completion_tokens", "response_format", "tools",
                        "tool_choice", "functions", "function_call", "parallel_tool_calls", "service_tier", "store", "metadata"}
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},), "echo": (False,),
    "best_of": (1,), "suffix": ("",), "tools": ([],), "tool_choice": ("none",), "functions": ([],),
    "function_call": ("none",), "parallel_tool_calls": (False, True), "service_tier": ("auto", "default"),
    "store": (False,), "metadata": ({},),
}
WHY_NOT = {
    "presence_penalty": "penalties are not supported by this server", "frequency_penalty": "penalties are not supported by this server",
    "logit_bias": "logit_bias is not supported by this server", "echo": "echo is not supported by this server",
    "best_of": "best_of is not supported (use n)", "suffix": "suffix (insertion) is not supported",
    "tools": "tool calling is not supported", "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported", "function_call": "function calling is not supported",
    "parallel_tool_calls": "tool calling is not supported", "service_tier": "service tiers are not supported",
    "store": "stored completions are not supported", "metadata": "stored completions are not supported",
}


class ApiError(Exception):
    """An OpenAI-style error: HTTP status plus ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, message: str, code: str | None = None) -> ApiError:
    """A 400 naming ``param``."""
    return ApiError(400, message, param=param, code=code)


@dataclass
class Parsed:
    """A validated generation request."""

    kind: str  # "completion" or "chat"
    model: str
    prompts: list[Any]  # completion: list of str; chat: one list of messages
    sampling: Sampling
    n: int
    stream: bool
    include_usage: bool
    max_tokens_given: bool


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(name, f"'{name}' must be a finite number, received {v!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        side = f"({lo:g}" if lo_open else f"[{lo:g}"
        raise bad(name, f"'{name}' must be in {side}, {hi:g}], received {v!r}")
    return float(v)


def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"'{name}' must be an integer, received {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise bad(name, f"'{name}' must be in [{lo}, {hi if hi is not None else 'inf'}], received {v}")
    return v


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise bad(key, f"Unrecognized request argument supplied: {key}")
    for key, ok in NEUTRAL.items():
        if key in body and body[key] is not None and body[key] not in ok:
            raise bad(key, f"'{key}': {WHY_NOT[key]} (received {body[key]!r})", code="unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad("response_format", f"'response_format': only {{'type': 'text'}} is supported, received {fmt!r}", code="unsupported_parameter")


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > MAX_STOP:
        raise bad("stop", f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings, received {v!r}")
    return tuple(items)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise bad("messages", f"'messages' must be a list of messages, received {type(msgs).__name__}")
    if not msgs:
        raise bad("messages", "'messages' must contain at least one message", code="empty_array")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}]", f"messages[{i}] must be an object with 'role' and 'content'")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise bad(f"messages[{i}].{sorted(extra)[0]}", f"messages[{i}]: field {sorted(extra)[0]!r} is not supported")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role", f"messages[{i}].role must be one of {', '.join(ROLES)}, received {role!r}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"messages[{i}].content", f"messages[{i}].content: only text parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", f"messages[{i}].content must be a string, received {type(content).__name__}")
        # The OpenAI "developer" role is the newer name of "system".
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def parse_request(body: Any, kind: str, *, max_tokens_limit: int, max_n: int) -> Parsed:
    """Validate a ``/v1/completions`` (``kind="completion"``) or ``/v1/chat/completions`` body."""
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object")
    _check_fields(body, COMPLETION_FIELDS if kind == "completion" else CHAT_FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "'model' is required (a model id from /v1/models)")
    if kind == "completion":
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise bad("prompt", "'prompt' must be a string or a non-empty list of strings (token arrays are not supported)")
        if any(not p for p in prompts):
            raise bad("prompt", "'prompt' must not be empty")
        lp = _int(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
        max_key = "max_tokens"
        default_max = 16  # the OpenAI default for completions
    else:
        prompts = [_messages(body)]
        if body.get("logprobs") is not None and not isinstance(body.get("logprobs"), bool):
            raise bad("logprobs", f"'logprobs' must be a boolean, received {body.get('logprobs')!r}")
        top = _int(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if top is not None and not body.get("logprobs"):
            raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        lp = (top or 0) if body.get("logprobs") else None
        if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
            raise bad("max_completion_tokens", "give one of 'max_tokens' and 'max_completion_tokens'")
        max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        default_max = None  # filled by the caller: the room left in the context, up to the limit
    v = body.get(max_key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise bad(max_key, f"'{max_key}' must be a positive integer, received {v!r}")
    if v is not None and v > max_tokens_limit:
        raise bad(max_key, f"'{max_key}' is {v}, above this server's limit of {max_tokens_limit}", code="max_tokens_exceeded")
    max_tokens = v if v is not None else (min(default_max, max_tokens_limit) if default_max else max_tokens_limit)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad("seed", f"'seed' must be an integer, received {seed!r}")
    n = _int(body, "n", 1, 1, max_n)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad("stream", f"'stream' must be a boolean, received {stream!r}")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise bad("stream_options", "'stream_options' is only allowed with 'stream': true")
        if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
            raise bad("stream_options", f"'stream_options' supports only include_usage, received {opts!r}")
        include_usage = bool(opts.get("include_usage"))
    sampling = Sampling(max_tokens=int(max_tokens), temperature=temperature, top_p=top_p, seed=seed, stop=_stop(body), logprobs=lp)
    return Parsed(kind, model, prompts, sampling, int(n), stream, include_usage, v is not None)


def parse_embeddings(body: Any) -> tuple[str, list[str], bool]:
    """Validate a ``/v1/embeddings`` body: ``(model, texts, base64)``."""
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object")
    _check_fields(body, {"model", "input", "encoding_format", "user", "dimensions"})
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "'model' is required")
    inp = body.get("input")
    texts = [inp] if isinstance(inp, str) else inp
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise bad("input", "'input' must be a non-empty string or a non-empty list of non-empty strings")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise bad("encoding_format", f"'encoding_format' must be 'float' or 'base64', received {body.get('encoding_format')!r}")
    if body.get("dimensions") is not None:
        raise bad("dimensions", "'dimensions' is not supported by this model", code="unsupported_parameter")
    return model, texts, body.get("encoding_format") == "base64"


def embedding_data(vectors: Any, as_base64: bool) -> list[dict[str, Any]]:
    """``data`` of an embeddings response: float lists, or base64 of little-endian float32
    (what the openai client asks for by default and decodes)."""
    import base64

    import numpy as np

    out = []
    for i, v in enumerate(vectors):
        arr = np.asarray(v, dtype="<f4")
        emb: Any = base64.b64encode(arr.tobytes()).decode() if as_base64 else [float(x) for x in arr]
        out.append({"object": "embedding", "index": i, "embedding": emb})
    return out


# --- responses -------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    """An OpenAI-style object id (``cmpl-…``, ``chatcmpl-…``)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chat_logprob_entry(token: str, logprob: float, top: Sequence[tuple[str, float]] | None) -> dict[str, Any]:
    """One entry of ``choices[].logprobs.content``."""
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in (top or ())]}


def completion_logprobs(tokens: Sequence[str], logprobs: Sequence[float], tops: Sequence[Sequence[tuple[str, float]] | None], k: int, start: int = 0) -> dict[str, Any]:
    """The legacy ``choices[].logprobs`` object (text offsets from ``start``)."""
    offsets, at = [], start
    for t in tokens:
        offsets.append(at)
        at += len(t)
    top = None
    if k > 0:
        top = []
        for entry in tops:
            d: dict[str, float] = {}
            for t, v in entry or ():
                d.setdefault(t, v)  # two ids may decode alike: keep the likelier
            top.append(d)
    return {"tokens": list(tokens), "token_logprobs": list(logprobs), "top_logprobs": top, "text_offset": offsets}


def completion_response(rid: str, model: str, created: int, choices: list[dict[str, Any]], use: dict[str, int]) -> dict[str, Any]:
    """A ``text_completion`` object."""
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices, "usage": use, "system_fingerprint": None}


def chat_response(rid: str, model: str, created: int, choices: list[dict[str, Any]], use: dict[str, int]) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices, "usage": use, "system_fingerprint": None}


def chat_chunk(rid: str, model: str, created: int, choices: list[dict[str, Any]], use: dict[str, int] | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` (``usage`` only on the final usage chunk)."""
    out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices, "system_fingerprint": None}
    if use is not None:
        out["usage"] = use
    return out


def completion_chunk(rid: str, model: str, created: int, choices: list[dict[str, Any]], use: dict[str, int] | None = None) -> dict[str, Any]:
    """A streamed ``text_completion`` chunk."""
    out = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices, "system_fingerprint": None}
    if use is not None:
        out["usage"] = use
    return out


def models_list(names: Sequence[str], created: int) -> dict[str, Any]:
    """The ``/v1/models`` list."""
    return {"object": "list", "data": [model_object(n, created) for n in names]}


def model_object(name: str, created: int) -> dict[str, Any]:
    """One ``model`` object."""
    return {"id": name, "object": "model", "created": created, "owned_by": "blackbox"}


def now() -> int:
    """Unix seconds, for ``created``."""
    return int(time.time())
