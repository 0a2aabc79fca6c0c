"""The ``openai`` provider: any OpenAI-compatible HTTP endpoint (OpenAI, llama.cpp, vLLM...).

Spec::

    openai:MODEL[?base_url=URL&timeout=30&deadline=S&api_key_env=OPENAI_API_KEY&completions=1
                  &embeddings=1|probe&score=1|probe&max_connections=16]

The module is split in three layers:

* **translation** — pure functions (``*_kwargs`` build the SDK call arguments from our typed
  requests, ``parse_*`` turn SDK responses, or plain dicts shaped like them, into our result
  pieces). No network, no ``openai`` import; unit-tested with fake response objects.
* **error mapping** — :func:`map_error` turns an SDK exception into a
  :class:`~blackbox.errors.TransportError` (status, request id, ``Retry-After``, retryable,
  endpoint; "cannot connect" apart from "connection dropped after the request was sent", the
  latter carrying the work it is billed at) or a :class:`~blackbox.errors.ProviderError`,
  with every secret redacted; a 2xx body that is not JSON or lacks what was asked for is an
  :class:`~blackbox.errors.InvalidResponseError`.
* **transport** — :class:`OpenAIProvider` owns one SDK client (``max_retries=0``: retries
  belong to :class:`blackbox.client.Client`) with a bounded connection pool, and fans the
  prompts of one request out over a thread pool of ``max_connections`` (results in order).
  When some of those calls fail it raises :class:`~blackbox.errors.PartialResultError` with
  the items that arrived, so the client retries only the failed ones (docs/providers.md,
  "Accounting rules").

Importing this module does not import ``openai``; the constructor does.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import ipaddress
import math
import os
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from blackbox.client.deadline import call_deadline, time_left
from blackbox.errors import (
    CapabilityError,
    ConfigError,
    DeadlineExceededError,
    InvalidResponseError,
    PartialResultError,
    ProviderError,
    SpecError,
    TransportError,
)
from blackbox.items import merge_usage, split_result
from blackbox.provider import Provider, check_options
from blackbox.registry import providers as _registry
from blackbox.secrets import Secret, redact, redact_loggers, scrub_exception
from blackbox.types import (
    Capability,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    NextTokenRequest,
    NextTokenResult,
    ScoreRequest,
    ScoreResult,
    Usage,
)

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_HOST = "api.openai.com"
# Sent as the bearer token to servers that need none (llama.cpp, vLLM without --api-key).
# Not a secret, so not wrapped in Secret (registering it would mask the word everywhere).
PLACEHOLDER_KEY = "no-key-required"
EMBED_CHUNK = 256  # texts per embeddings call (OpenAI accepts up to 2048)
RETRYABLE_STATUS = frozenset({408, 409, 429})
MAX_MESSAGE = 400  # characters of a server's error text kept in our message
SDK_LOGGERS = ("openai", "openai._base_client", "openai._response", "openai._legacy_response", "httpx2",
               "httpcore2.connection", "httpcore2.http11", "httpcore2.http2", "httpcore2.proxy", "httpcore2.socks")
SCORE_TOLERANCE = 0.05  # nats: echoed vs next-token logprob of the same token (score probe)

OPTIONS = (
    "base_url", "timeout", "api_key", "api_key_env", "completions", "embeddings", "score",
    "max_connections", "deadline",
)


# =============================================================================================
# translation: our requests -> SDK kwargs (pure)
# =============================================================================================
def _sampling(req: GenerateRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"max_tokens": int(req.max_tokens), "temperature": float(req.temperature), "top_p": float(req.top_p)}
    if req.stop:
        out["stop"] = list(req.stop)
    if req.seed is not None:
        out["seed"] = int(req.seed)
    return out


def chat_kwargs(model: str, prompt: str, req: GenerateRequest) -> dict[str, Any]:
    """``chat.completions.create`` arguments: the prompt is one user message."""
    out: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], **_sampling(req)}
    if req.top_logprobs > 0:
        out["logprobs"] = True
        out["top_logprobs"] = int(req.top_logprobs)
    return out


def completion_kwargs(model: str, prompt: str, req: GenerateRequest) -> dict[str, Any]:
    """Legacy ``completions.create`` arguments: raw continuation of the prompt."""
    out: dict[str, Any] = {"model": model, "prompt": prompt, **_sampling(req)}
    if req.top_logprobs > 0:
        out["logprobs"] = int(req.top_logprobs)
    return out


def next_token_kwargs(model: str, prompt: str, top_k: int, *, chat: bool) -> dict[str, Any]:
    """One greedy token with its top-k alternatives (chat: first token of the reply)."""
    if chat:
        return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                "temperature": 0.0, "logprobs": True, "top_logprobs": int(top_k)}
    return {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": int(top_k)}


def score_kwargs(model: str, prompt: str, continuation: str) -> dict[str, Any]:
    """Echo ``prompt + continuation`` with per-token logprobs (one extra token is generated:
    some servers treat ``max_tokens=0`` as "until the context is full")."""
    return {"model": model, "prompt": prompt + continuation, "echo": True, "logprobs": 1,
            "max_tokens": 1, "temperature": 0.0}


def embed_kwargs(model: str, texts: Sequence[str]) -> dict[str, Any]:
    """``embeddings.create`` arguments for one chunk of texts (floats, not base64)."""
    return {"model": model, "input": list(texts), "encoding_format": "float"}


# =============================================================================================
# translation: SDK responses -> our results (pure; accept SDK models or plain dicts)
# =============================================================================================
_MISSING = object()


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    value = getattr(obj, name, _MISSING)
    return default if value is _MISSING else value


def _malformed(what: str, detail: str) -> ProviderError:
    return ProviderError(f"openai provider: malformed {what} response: {detail}")


def _first_choice(resp: Any, what: str) -> Any:
    choices = _get(resp, "choices")
    if not choices:
        raise _malformed(what, "no choices")
    return choices[0]


def _float(value: Any, what: str, field: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise _malformed(what, f"{field} is {value!r}, not a number") from None
    if math.isnan(out):
        raise _malformed(what, f"{field} is NaN")
    return out


def estimate_usage(kwargs: Mapping[str, Any]) -> Usage:
    """What one call built from ``kwargs`` is billed when the server's own count is unknown:
    one query, ``ceil(len/4)`` prompt tokens and ``max_tokens`` completion tokens (an upper
    bound), marked ``estimated``."""
    if "messages" in kwargs:
        text = "".join(str(m.get("content") or "") for m in kwargs["messages"])
    elif "input" in kwargs:
        text = "".join(str(t) for t in kwargs["input"])
    else:
        text = str(kwargs.get("prompt") or "")
    return Usage(queries=1, prompt_tokens=-(-len(text) // 4), completion_tokens=int(kwargs.get("max_tokens") or 0),
                 estimated=True)


def response_usage(resp: Any, *, queries: int = 1, estimate: Usage | None = None) -> Usage:
    """Token counts and request id of one response.

    The request id is the ``x-request-id`` header the SDK stores as ``_request_id``; servers
    that send none (llama.cpp) get the response body's ``id`` instead. A response without
    ``usage`` is billed at ``estimate`` (marked ``estimated``) when one is given.
    """
    u = _get(resp, "usage")
    request_id = _get(resp, "_request_id") or _get(resp, "id")
    request_id = str(request_id) if request_id else None
    if u is None and estimate is not None:
        return replace(estimate, queries=queries, request_id=request_id, estimated=True)
    return Usage(
        queries=queries,
        prompt_tokens=int(_get(u, "prompt_tokens", 0) or 0),
        completion_tokens=int(_get(u, "completion_tokens", 0) or 0),
        request_id=request_id,
    )


def _top_dict(entries: Any, what: str) -> dict[str, float]:
    """``{token: logprob}`` from a chat ``top_logprobs`` list or a completions dict.

    When two tokens print the same (e.g. byte fragments), the more likely one is kept.
    """
    out: dict[str, float] = {}
    if entries is None:
        return out
    items = entries.items() if isinstance(entries, Mapping) else ((_get(e, "token"), _get(e, "logprob")) for e in entries)
    for token, lp in items:
        if token is None:
            raise _malformed(what, "top_logprobs entry without a token")
        lp = _float(lp, what, f"logprob of {token!r}")
        if token not in out or lp > out[token]:
            out[token] = lp
    return out


def parse_chat(resp: Any) -> tuple[str, str, tuple[float, ...] | None, tuple[dict[str, float], ...] | None]:
    """Text, finish reason, per-token logprobs and top-logprobs of a chat completion."""
    choice = _first_choice(resp, "chat completion")
    message = _get(choice, "message")
    text = _get(message, "content")
    if message is None or (text is not None and not isinstance(text, str)):
        raise _malformed("chat completion", "choice has no message content")
    content = _get(_get(choice, "logprobs"), "content")
    token_lps = tops = None
    if content is not None:
        token_lps = tuple(_float(_get(t, "logprob"), "chat completion", "logprob") for t in content)
        tops = tuple(_top_dict(_get(t, "top_logprobs"), "chat completion") for t in content)
    return text or "", str(_get(choice, "finish_reason") or ""), token_lps, tops


def parse_completion(resp: Any) -> tuple[str, str, tuple[float, ...] | None, tuple[dict[str, float], ...] | None]:
    """Text, finish reason, per-token logprobs and top-logprobs of a legacy completion."""
    choice = _first_choice(resp, "completion")
    text = _get(choice, "text")
    if not isinstance(text, str):
        raise _malformed("completion", "choice has no text")
    lp = _get(choice, "logprobs")
    token_lps = tops = None
    if lp is not None:
        raw = _get(lp, "token_logprobs") or []
        token_lps = tuple(_float(v, "completion", "token_logprobs") for v in raw)
        tops = tuple(_top_dict(d, "completion") for d in (_get(lp, "top_logprobs") or []))
    return text, str(_get(choice, "finish_reason") or ""), token_lps, tops


def parse_next_token(resp: Any, *, chat: bool, top_k: int | None = None) -> dict[str, float]:
    """The ``{token: logprob}`` of the first generated token, most likely first, at most
    ``top_k`` entries (servers may add the sampled token as a k+1-th)."""
    what = "chat completion" if chat else "completion"
    _, _, _, tops = (parse_chat if chat else parse_completion)(resp)
    if not tops or not tops[0]:
        raise _malformed(what, "no top_logprobs for the first token (does the server support logprobs?)")
    ranked = sorted(tops[0].items(), key=lambda kv: -kv[1])
    return dict(ranked if top_k is None else ranked[:top_k])


def parse_score(resp: Any, prompt: str, continuation: str) -> tuple[float, int]:
    """Summed logprob and token count of ``continuation`` in an echoed completion.

    Tokens are assigned by ``text_offset``: those starting at or after ``len(prompt)`` and
    before ``len(prompt + continuation)`` belong to the continuation (a token that straddles
    the boundary counts with the prompt, as in lm-eval-harness).
    """
    choice = _first_choice(resp, "completion")
    lp = _get(choice, "logprobs")
    offsets = _get(lp, "text_offset")
    values = _get(lp, "token_logprobs")
    if offsets is None or values is None:
        raise _malformed("completion", "echo=True returned no text_offset/token_logprobs (the server cannot score)")
    if len(offsets) != len(values):
        raise _malformed("completion", f"{len(offsets)} text offsets but {len(values)} token logprobs")
    start, end = len(prompt), len(prompt) + len(continuation)
    total, n = 0.0, 0
    for off, v in zip(offsets, values):
        if start <= int(off) < end:
            if v is None:
                raise _malformed("completion", "continuation token without a logprob")
            total += _float(v, "completion", "token_logprobs")
            n += 1
    if continuation and n == 0:
        raise _malformed("completion", "no continuation token found in the echoed prompt")
    return total, n


def parse_embeddings(resp: Any, n: int) -> np.ndarray:
    """The ``(n, d)`` matrix of an embeddings response, in input order."""
    data = _get(resp, "data")
    if not data or len(data) != n:
        raise _malformed("embeddings", f"expected {n} vectors, received {0 if not data else len(data)}")
    rows = sorted(data, key=lambda d: int(_get(d, "index", 0) or 0))
    try:
        vecs = [np.asarray(_get(d, "embedding"), dtype=np.float64) for d in rows]
        # a server without pooling (llama.cpp with a causal LM) returns one vector per token:
        # mean-pooled here, so every input still gives one vector
        vecs = [v.mean(0) if v.ndim == 2 and len(v) else v for v in vecs]
        out = np.asarray(vecs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _malformed("embeddings", f"vectors are not numeric arrays of one length ({exc})") from None
    if out.ndim != 2 or not np.all(np.isfinite(out)):
        raise _malformed("embeddings", f"expected finite (n, d) vectors, received shape {out.shape}")
    return out


# =============================================================================================
# error mapping
# =============================================================================================
def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    get = headers.get
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = get(name)
        if value is None:
            continue
        try:
            secs = float(value) * scale
        except ValueError:
            continue
        return secs if math.isfinite(secs) and secs >= 0 else None
    value = get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is not None:
            if when.tzinfo is None:  # RFC 7231 dates are GMT
                when = when.replace(tzinfo=_dt.timezone.utc)
            return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return None


def is_retryable_status(status: int, headers: Mapping[str, str] | None = None) -> bool:
    """408, 409, 429 and 5xx, unless the server says otherwise in ``x-should-retry``."""
    hint = (headers or {}).get("x-should-retry")
    if hint in ("true", "false"):
        return hint == "true"
    return status in RETRYABLE_STATUS or status >= 500


def _one_line(text: Any, *secrets: Any) -> str:
    out = " ".join(redact(str(text), *[s for s in secrets if s]).split())
    return out if len(out) <= MAX_MESSAGE else out[: MAX_MESSAGE - 3] + "..."


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, Mapping) else err
        if msg:
            return str(msg)
        detail = body.get("detail")
        if detail:
            return str(detail)
    return str(getattr(exc, "message", "") or exc)


def _lost_after_sending(exc: BaseException) -> bool:
    """True when the HTTP layer failed after the request may have reached the server (a read
    error, a dropped connection, a read timeout); False when it never left (cannot connect)."""
    import httpx2

    cause = exc.__cause__ or exc.__context__
    never_sent = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.UnsupportedProtocol, httpx2.ProxyError)
    return not isinstance(cause, never_sent)


def map_error(exc: BaseException, *, where: str, secrets: Sequence[Any] = (), billed: Usage | None = None) -> ProviderError:
    """Translate an ``openai`` SDK exception into our error tree (the caller raises ``from``).

    ``where`` names the call (e.g. ``"POST /chat/completions at http://..."``). Messages
    pass through :func:`blackbox.secrets.redact` with ``secrets``. ``billed`` is what the call
    costs when the server may have done the work but its answer was lost (attached to the
    error only in that case; an HTTP error status or a refused connection bills nothing).
    """
    import openai  # lazy: the provider's constructor already imported it

    if isinstance(exc, openai.APIResponseValidationError):
        return InvalidResponseError(
            f"openai provider: {where}: server answered with an invalid body (it does not match the API schema: "
            f"{_one_line(exc, *secrets)})",
            status=getattr(exc, "status_code", None), endpoint=where, billed=billed,
        )
    if isinstance(exc, openai.APIStatusError):
        headers = exc.response.headers
        status = int(exc.status_code)
        request_id = getattr(exc, "request_id", None) or headers.get("x-request-id")
        return TransportError(
            f"openai provider: {where} failed: {_one_line(_server_message(exc), *secrets)}",
            status=status,
            request_id=request_id,
            retry_after=parse_retry_after(headers),
            retryable=is_retryable_status(status, headers),
            endpoint=where,
        )
    cause = exc.__cause__ or exc.__context__
    detail = _one_line(f"{type(cause).__name__}: {cause}" if cause is not None else str(exc), *secrets)
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)) and not _lost_after_sending(exc):
        return TransportError(f"openai provider: {where}: cannot connect ({detail}); is the server running?",
                              retryable=True, endpoint=where)
    if isinstance(exc, openai.APITimeoutError):
        return TransportError(
            f"openai provider: {where} timed out waiting for the answer ({detail}); the request was sent, so the "
            "server may have done the work (billed as an estimate)",
            retryable=True, endpoint=where, billed=billed,
        )
    if isinstance(exc, openai.APIConnectionError):
        return TransportError(
            f"openai provider: {where}: connection dropped after the request was sent ({detail}); the server may "
            "have done the work (billed as an estimate)",
            retryable=True, endpoint=where, billed=billed,
        )
    return ProviderError(f"openai provider: {where}: {type(exc).__name__}: {_one_line(exc, *secrets)}")


# =============================================================================================
# configuration helpers
# =============================================================================================
def is_loopback(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or a loopback address."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (what describe() and messages show)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _flag(name: str, value: Any, *, allow: tuple[str, ...] = ()) -> bool | str:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in allow:
        return text
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    choices = "1/0, true/false, yes/no" + "".join(f", {a}" for a in allow)
    raise SpecError(f"provider openai: option {name}: expected {choices}, received {value!r}")


# =============================================================================================
# transport
# =============================================================================================
class OpenAIProvider(Provider):
    """An OpenAI-compatible endpoint: chat/legacy completions with logprobs, embeddings.

    Capabilities: ``text`` and ``top_logprobs`` always (never ``logits``: the API returns at
    most the top-k tokens); ``embed`` with ``embeddings=1`` (or ``embeddings=probe`` when a
    probe call returns one vector per text); ``score`` with ``score=1|probe`` (legacy
    completions with ``echo`` + ``logprobs``; needs ``completions=1``), only after a probe
    has checked that the server's echoed logprobs are right (``score=1`` raises otherwise,
    ``score=probe`` just leaves the capability out).
    """

    name = "openai"
    declared_capabilities = frozenset({Capability.TEXT, Capability.TOP_LOGPROBS, Capability.EMBED, Capability.SCORE})
    summary = "OpenAI-compatible HTTP endpoint (OpenAI, llama.cpp, vLLM): text, top-k logprobs, embeddings"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: "str | Secret | None" = None,
        api_key_env: str | None = None,
        timeout: float = 30.0,
        completions: bool = False,
        embeddings: "bool | str" = False,
        score: "bool | str" = False,
        max_connections: int = 16,
        deadline: float | None = None,
        transport: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"provider openai: expected a model name (openai:MODEL), received {model!r}")
        timeout = float(timeout)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError(f"provider openai: timeout: expected seconds > 0, received {timeout!r}")
        if not isinstance(max_connections, int) or isinstance(max_connections, bool) or max_connections < 1:
            raise ConfigError(f"provider openai: max_connections: expected an integer >= 1, received {max_connections!r}")
        if deadline is not None:
            deadline = float(deadline)
            if not (deadline > 0 and math.isfinite(deadline)):
                raise ConfigError(f"provider openai: deadline: expected seconds > 0, received {deadline!r}")
        score = _flag("score", score, allow=("probe",))
        completions = bool(_flag("completions", completions))
        embeddings = _flag("embeddings", embeddings, allow=("probe",))
        if score and not completions:
            raise ConfigError(f"provider openai: score={'1' if score is True else score} needs completions=1 (it uses the legacy completions endpoint with echo)")

        self.model = model.strip()
        self.timeout = timeout
        # Seconds one request may take in all (its fanned-out calls and, through the Client,
        # every retry); each HTTP call's timeout is cut to what is left. None: no limit.
        self.deadline = deadline
        self.completions = completions
        self.score_enabled = False
        self.max_connections = max_connections
        self._key, self.base_url = self._resolve_key(base_url, api_key, api_key_env)
        # At DEBUG the SDK and its HTTP stack log what a server sends back, which a badly behaved
        # server may fill with the key it received.
        redact_loggers(SDK_LOGGERS)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

        try:
            import httpx2  # the SDK's HTTP stack (openai >= 3); one stack only
            import openai
        except ImportError as exc:
            raise ConfigError(
                f"provider openai: needs the openai SDK (>= 3): pip install 'blackbox-adapt[api]' ({exc})"
            ) from None

        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        http_timeout = httpx2.Timeout(timeout, connect=min(5.0, timeout))
        http_kwargs: dict[str, Any] = {"limits": limits, "timeout": http_timeout}
        if transport is not None:
            http_kwargs["transport"] = transport
        self._sdk = openai.OpenAI(
            api_key=self._key.reveal() if isinstance(self._key, Secret) else self._key,
            base_url=self.base_url,
            timeout=http_timeout,
            max_retries=0,  # blackbox.client.Client retries; never both
            http_client=openai.DefaultHttpxClient(**http_kwargs),
        )

        caps = {Capability.TEXT, Capability.TOP_LOGPROBS}
        try:
            if score:
                why_not = self._probe_score()
                if why_not is not None and score is True:
                    raise ConfigError(
                        f"provider openai: score=1 but {public_url(self.base_url)} cannot score continuations: {why_not}"
                    )
                self.score_enabled = why_not is None
            if embeddings == "probe":
                embeddings = self._probe_embeddings()
        except BaseException:
            self._sdk.close()
            raise
        self.embeddings = bool(embeddings)
        if self.score_enabled:
            caps.add(Capability.SCORE)
        if self.embeddings:
            caps.add(Capability.EMBED)
        self.capabilities = frozenset(caps)

    # --- configuration ----------------------------------------------------------------------
    @staticmethod
    def _resolve_key(base_url: str | None, api_key: Any, api_key_env: str | None) -> tuple["Secret | str", str]:
        """Key policy (docs/providers.md): see the module docs; never echoes a key."""
        url_from_env = False
        if not base_url:
            base_url = os.environ.get(BASE_URL_ENV) or ""
            url_from_env = bool(base_url)
        base_url = (base_url or f"https://{OPENAI_HOST}/v1").strip()
        parts = urlsplit(base_url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
        except ValueError:
            raise ConfigError(f"provider openai: base_url: invalid port in {parts.hostname or base_url!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"provider openai: base_url: expected an http(s) URL, received {public_url(base_url)!r}")
        if parts.username or parts.password or parts.query:
            raise ConfigError("provider openai: base_url: must not carry credentials or a query string")
        base_url = base_url.rstrip("/")
        loopback = is_loopback(base_url)
        official = parts.hostname == OPENAI_HOST

        if isinstance(api_key, Secret):
            return api_key, base_url
        if isinstance(api_key, str) and api_key.strip():
            if api_key.strip().lower() == "none":
                if official:
                    raise ConfigError(f"provider openai: api_key=none needs a base_url other than {OPENAI_HOST}")
                return PLACEHOLDER_KEY, base_url
            return Secret(api_key.strip()), base_url
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigError(f"provider openai: api_key: expected a str or Secret, received <{type(api_key).__name__}>")

        explicit_env = api_key_env is not None
        env = (api_key_env or DEFAULT_KEY_ENV).strip()
        if not env:
            raise ConfigError("provider openai: api_key_env: expected an environment variable name, received ''")
        # The default variable holds an OpenAI key: send it only to OpenAI, or to a base_url that
        # also comes from the environment; a spec's own base_url must name its variable.
        default_ok = official or url_from_env
        value = os.environ.get(env, "").strip() if (explicit_env or default_ok) else ""
        if value:
            return Secret(value), base_url
        if loopback and not explicit_env:
            return PLACEHOLDER_KEY, base_url
        if explicit_env or default_ok:
            raise ConfigError(
                f"provider openai: no API key: the environment variable {env} is not set "
                f"(set it, or name another one with api_key_env=VAR)"
            )
        raise ConfigError(
            f"provider openai: no API key for {public_url(base_url)}: name the environment variable that "
            f"holds its key with api_key_env=VAR ({DEFAULT_KEY_ENV} is only sent to {OPENAI_HOST} or to "
            f"{BASE_URL_ENV}), or pass api_key=none for a server without authentication"
        )

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "OpenAIProvider":
        check_options(cls.name, options, OPTIONS)
        kwargs: dict[str, Any] = {}
        for key in ("base_url", "api_key", "api_key_env", "completions", "embeddings", "score"):
            if key in options:
                kwargs[key] = options[key]
        for key, conv, what in (("timeout", float, "seconds > 0"), ("max_connections", int, "an integer >= 1"),
                                ("deadline", float, "seconds > 0")):
            if key in options:
                try:
                    kwargs[key] = conv(options[key])
                except ValueError:
                    raise SpecError(f"provider openai: option {key}: expected {what}, received {options[key]!r}") from None
        if not target:
            raise SpecError("provider openai: expected a model name after 'openai:' (e.g. openai:gpt-4o-mini)")
        return cls(target, **kwargs)

    # --- identity -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "model": self.model,
            "base_url": public_url(self.base_url),
            "completions": self.completions,
            "embeddings": self.embeddings,
            "score": self.score_enabled,
        }

    def cache_identity(self) -> dict[str, Any]:
        """What changes outputs: model, endpoint, and chat vs legacy completions."""
        return {"provider": self.name, "model": self.model, "base_url": public_url(self.base_url),
                "completions": self.completions}

    # --- transport ----------------------------------------------------------------------------
    def _where(self, endpoint: str) -> str:
        return f"POST /{endpoint} at {public_url(self.base_url)}"

    def _post(self, endpoint: str, kwargs: dict[str, Any], estimate: Usage | None = None) -> tuple[Any, int]:
        """One HTTP call: the parsed response and its status.

        Errors are typed (see :func:`map_error`): ``estimate`` is attached as the billed work
        when the answer was lost after sending, or when the server answered with a body that
        is not JSON (:class:`InvalidResponseError`, status and request id included). The SDK
        error is chained only after :func:`scrub_exception` has dropped its request/response
        objects and redacted its body (they hold the Authorization header).
        """
        if self._closed:
            raise ProviderError("openai provider: used after close()")
        import openai

        create: Callable[..., Any] = {
            "chat/completions": self._sdk.chat.completions.with_raw_response.create,
            "completions": self._sdk.completions.with_raw_response.create,
            "embeddings": self._sdk.embeddings.with_raw_response.create,
        }[endpoint]
        where = self._where(endpoint)
        left = time_left()
        if left is not None and left <= 0:
            raise DeadlineExceededError(f"openai provider: {where}: deadline passed; not sent", endpoint=where)
        if left is not None and left < self.timeout:
            import httpx2

            kwargs = {**kwargs, "timeout": httpx2.Timeout(left, connect=min(5.0, left))}
        try:
            raw = create(**kwargs)
        except openai.OpenAIError as exc:
            err = map_error(exc, where=where, secrets=[self._key], billed=estimate)
            # The chained original is printed in tracebacks and reachable as __cause__: scrub it
            # (its message and body redacted, its request/response objects dropped).
            scrub_exception(exc, self._key)
            raise err from exc
        status, request_id = raw.status_code, raw.headers.get("x-request-id")
        invalid = None
        try:
            return raw.parse(), status
        except (ValueError, TypeError, openai.OpenAIError) as exc:  # json.JSONDecodeError is a ValueError
            invalid = _one_line(f"{type(exc).__name__}: {exc}", self._key)
        # Raised outside the except block, so the parser's exception is not kept as context.
        raise InvalidResponseError(
            f"openai provider: {where}: server answered with an invalid body ({invalid})",
            status=status, request_id=request_id, endpoint=where, billed=estimate,
        )

    def _send(self, endpoint: str, kwargs: dict[str, Any]) -> Any:
        """One HTTP call's parsed response (no billing estimate: used by the probes)."""
        return self._post(endpoint, kwargs)[0]

    def _call(self, endpoint: str, kwargs: dict[str, Any], parse: Callable[[Any], Any]) -> tuple[Any, Usage]:
        """One HTTP call, parsed by ``parse``: ``(parsed, usage)``. A response that lacks what
        was asked for (``parse`` raises) is an :class:`InvalidResponseError` billed at the
        response's usage, since the server did the work."""
        estimate = estimate_usage(kwargs)
        resp, status = self._post(endpoint, kwargs, estimate)
        usage = response_usage(resp, estimate=estimate)
        try:
            return parse(resp), usage
        except InvalidResponseError:
            raise
        except ProviderError as exc:
            where = self._where(endpoint)
            detail = str(exc).removeprefix("openai provider: ")
            raise InvalidResponseError(f"openai provider: {where}: server answered with an invalid body: {detail}",
                                       status=status, request_id=usage.request_id, endpoint=where, billed=usage) from None

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.max_connections, thread_name_prefix="blackbox-openai")
            return self._pool

    def _fan_out(self, fn: Callable[[Any], Any], units: Sequence[Any]) -> tuple[dict[int, Any], dict[int, BaseException]]:
        """``fn`` over ``units`` with up to ``max_connections`` in flight: ``(outputs, errors)``
        by position. A failed call does not stop the others (their work is kept and billed);
        only an interrupt (a BaseException) cancels the calls not yet started."""
        outs: dict[int, Any] = {}
        errors: dict[int, BaseException] = {}
        if len(units) <= 1 or self.max_connections == 1:
            for i, x in enumerate(units):
                try:
                    outs[i] = fn(x)
                except Exception as exc:  # noqa: BLE001 - reported by position
                    errors[i] = exc
            return outs, errors
        pool = self._executor()
        # One context copy per task: each worker sees the caller's deadline.
        futures = [pool.submit(contextvars.copy_context().run, fn, x) for x in units]
        try:
            for i, fut in enumerate(futures):
                try:
                    outs[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - reported by position
                    errors[i] = exc
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        return outs, errors

    def _gather(self, fn: Callable[[Any], Any], units: Sequence[Any], assemble: Callable[[list[Any]], Any],
                sizes: Sequence[int] | None = None) -> Any:
        """Run ``fn`` on every unit (one HTTP call each) and ``assemble`` the outputs into the
        typed result. When some calls fail: a one-call request raises that call's error; a
        larger one raises :class:`PartialResultError` with the items that did arrive (each
        unit's usage on its first item), so the Client keeps them and retries only the rest."""
        with call_deadline(None if self.deadline is None else time.monotonic() + self.deadline):
            outs, errors = self._fan_out(fn, units)
        if not errors:
            return assemble([outs[i] for i in range(len(units))])
        if len(units) == 1:
            raise errors[0]
        sizes = list(sizes) if sizes is not None else [1] * len(units)
        starts = [sum(sizes[:i]) for i in range(len(units))]
        results: dict[int, Any] = {}
        for i, out in outs.items():
            part = assemble([out])
            pieces = split_result(part)
            for k, piece in enumerate(pieces):
                results[starts[i] + k] = replace(piece, usage=part.usage if k == 0 else Usage())
        failed = {starts[i] + k: exc for i, exc in errors.items() for k in range(sizes[i])}
        raise PartialResultError(results, failed, n_items=sum(sizes))

    def _probe_embeddings(self) -> bool:
        try:
            vecs = parse_embeddings(self._send("embeddings", embed_kwargs(self.model, ["probe"])), 1)
        except InvalidResponseError:
            return False  # it answered, but not with embeddings
        except TransportError as exc:
            if exc.status is None or exc.retryable:
                raise  # unreachable or overloaded: do not silently drop the capability
            return False
        except ProviderError:
            return False
        return vecs.shape[1] > 0

    def _probe_score(self) -> str | None:
        """None when the server's echoed logprobs are right; otherwise why they are not.

        Two calls: the greedy next token ``t`` of a prompt with its logprob ``a``, then
        ``prompt + t`` echoed: the logprob it reports for ``t`` must equal ``a``. (A server
        that returns each echoed token's logprob one position off — llama-cpp-python 0.3.x —
        would give plausible-looking but wrong scores.)
        """
        prompt = "The capital of France is"
        try:
            text, _, lps, _ = parse_completion(self._send("completions", next_token_kwargs(self.model, prompt, 1, chat=False)))
            if not text or not lps:
                return "its completions return no logprobs"
            logprob, n = parse_score(self._send("completions", score_kwargs(self.model, prompt, text)), prompt, text)
        except InvalidResponseError as exc:
            return str(exc)
        except TransportError as exc:
            if exc.status is None or exc.retryable:
                raise  # unreachable or overloaded: not an answer about scoring
            return f"echo with logprobs was refused ({exc})"
        except ProviderError as exc:
            return str(exc)
        if n != 1 or abs(logprob - lps[0]) > SCORE_TOLERANCE:
            return (f"the echoed logprob of {text!r} after {prompt!r} is {logprob:.4f} over {n} token(s), but the "
                    f"next-token logprob is {lps[0]:.4f} (echo logprobs are misaligned)")
        return None

    # --- calls --------------------------------------------------------------------------------
    def generate(self, request: GenerateRequest) -> GenerateResult:
        chat = request.chat or not self.completions
        build, parse, endpoint = (
            (chat_kwargs, parse_chat, "chat/completions") if chat else (completion_kwargs, parse_completion, "completions")
        )
        want_lp = request.top_logprobs > 0

        def parse_checked(resp: Any) -> Any:
            out = parse(resp)
            if want_lp and out[2] is None:
                # Never served (and so never cached) as an empty result: the caller asked for them.
                raise _malformed("chat completion" if chat else "completion",
                                 f"logprobs were requested (top_logprobs={request.top_logprobs}) but the response has none")
            return out

        def one(prompt: str) -> tuple[Any, Usage]:
            return self._call(endpoint, build(self.model, prompt, request), parse_checked)

        def assemble(out: list[tuple[Any, Usage]]) -> GenerateResult:
            return GenerateResult(
                texts=tuple(p[0] for p, _ in out),
                finish_reasons=tuple(p[1] for p, _ in out),
                token_logprobs=tuple(p[2] or () for p, _ in out) if want_lp else None,
                top_logprobs=tuple(p[3] or () for p, _ in out) if want_lp else None,
                usage=merge_usage([u for _, u in out]),
            )

        return self._gather(one, list(request.prompts), assemble)

    def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        if request.top_k is None:
            raise CapabilityError(
                "provider openai: full-vocabulary logits are not available over the API "
                "(capability top_logprobs only); pass NextTokenRequest(top_k=k)"
            )
        if int(request.top_k) < 1:
            raise ConfigError(f"NextTokenRequest.top_k: expected an integer >= 1, received {request.top_k!r}")
        chat = not self.completions
        endpoint = "chat/completions" if chat else "completions"

        def one(prompt: str) -> tuple[dict[str, float], Usage]:
            return self._call(endpoint, next_token_kwargs(self.model, prompt, int(request.top_k), chat=chat),
                              lambda resp: parse_next_token(resp, chat=chat, top_k=int(request.top_k)))

        def assemble(out: list[tuple[dict[str, float], Usage]]) -> NextTokenResult:
            return NextTokenResult(logits=None, top_logprobs=tuple(d for d, _ in out), usage=merge_usage([u for _, u in out]))

        return self._gather(one, list(request.prompts), assemble)

    def score(self, request: ScoreRequest) -> ScoreResult:
        if not self.score_enabled:
            raise self._missing("score")
        if len(request.prompts) != len(request.continuations):
            raise ConfigError(
                f"ScoreRequest: expected as many continuations as prompts, received "
                f"{len(request.continuations)} for {len(request.prompts)}"
            )

        def one(pair: tuple[str, str]) -> tuple[tuple[float, int], Usage]:
            return self._call("completions", score_kwargs(self.model, *pair), lambda resp: parse_score(resp, *pair))

        def assemble(out: list[tuple[tuple[float, int], Usage]]) -> ScoreResult:
            return ScoreResult(
                logprobs=np.array([s for (s, _), _ in out], dtype=np.float64),
                n_tokens=np.array([n for (_, n), _ in out], dtype=np.int64),
                usage=merge_usage([u for _, u in out]),
            )

        return self._gather(one, list(zip(request.prompts, request.continuations)), assemble)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        if not self.embeddings:
            raise self._missing("embed")
        texts = list(request.texts)
        chunks = [texts[i : i + EMBED_CHUNK] for i in range(0, len(texts), EMBED_CHUNK)]

        def one(chunk: list[str]) -> tuple[np.ndarray, Usage]:
            return self._call("embeddings", embed_kwargs(self.model, chunk), lambda resp: parse_embeddings(resp, len(chunk)))

        def assemble(out: list[tuple[np.ndarray, Usage]]) -> EmbedResult:
            vectors = np.concatenate([v for v, _ in out]) if out else np.zeros((0, 0))
            if request.normalize and vectors.size:
                norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                vectors = vectors / np.where(norms > 0, norms, 1.0)
            return EmbedResult(vectors=vectors, usage=merge_usage([u for _, u in out]))

        return self._gather(one, chunks, assemble, sizes=[len(c) for c in chunks])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._sdk.close()


_registry.register("openai", OpenAIProvider, summary=OpenAIProvider.summary)
