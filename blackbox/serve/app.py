"""The FastAPI application: OpenAI-compatible routes over an :class:`~blackbox.serve.engine.Engine`.

HTTP concerns only: authentication (bearer key, constant-time compare, never logged), JSON
parsing, OpenAI-style error objects, server-sent events, disconnects, one log line per
request. Decoding lives in the engine; translation in :mod:`blackbox.serve.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from typing import Any, AsyncIterator, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P
from .backends import Backend
from .engine import ChoiceDone, Engine, EngineClosed, Job, JobDone, JobError, QueueFull, TokenEvent

log = logging.getLogger("blackbox.serve")
DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there


class _RequestLog:
    """Collects one request's facts and writes them as one log line (no prompt text unless asked)."""

    def __init__(self, rid: str, endpoint: str, model: str, log_prompts: bool) -> None:
        self.rid, self.endpoint, self.model, self.log_prompts = rid, endpoint, model, log_prompts
        self.t0 = time.perf_counter()
        self.status = 200
        self.prompt_tokens = self.completion_tokens = 0
        self.stream = False
        self.prompt: Any = None
        self.note = ""
        self._done = False

    def write(self) -> None:
        if self._done:
            return
        self._done = True
        ms = (time.perf_counter() - self.t0) * 1e3
        line = (f"request id={self.rid} endpoint={self.endpoint} model={self.model} status={self.status} "
                f"stream={str(self.stream).lower()} prompt_tokens={self.prompt_tokens} "
                f"completion_tokens={self.completion_tokens} latency_ms={ms:.1f}")
        if self.note:
            line += f" note={self.note}"
        if self.log_prompts and self.prompt is not None:
            line += f" prompt={json.dumps(self.prompt)}"
        log.info(line)


class ServeState:
    """What the routes share: the backend, the engine, limits and the served model name."""

    def __init__(self, backend: Backend, *, model_name: str, api_key: str | None, max_batch: int, max_queue: int,
                 max_tokens_limit: int, log_prompts: bool) -> None:
        self.backend, self.model_name = backend, model_name
        self._key = api_key.encode() if api_key else None  # kept as bytes, never printed
        self.max_batch, self.max_tokens_limit, self.log_prompts = max_batch, max_tokens_limit, log_prompts
        self.engine = Engine(backend, max_batch=max_batch, max_queue=max_queue) if backend.kind == "generate" else None
        self.embed_lock = threading.Lock()
        self.created = P.now()
        self._tok_cache: dict[int, str] = {}

    def authorized(self, header: str | None) -> bool:
        """Bearer-key check in constant time (no key configured: everyone is)."""
        if self._key is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        ok = hmac.compare_digest(given.strip().encode(), self._key)
        return ok and scheme.lower() == "bearer"

    def token_text(self, tok: int) -> str:
        """The text of one token id (cached: logprobs ask for it every step)."""
        s = self._tok_cache.get(tok)
        if s is None:
            s = self._tok_cache[tok] = self.backend.tokenizer.decode([int(tok)])
        return s


def create_app(backend: Backend, *, model_name: str, api_key: str | None = None, max_batch: int = 16, max_queue: int = 64,
               max_tokens_limit: int = 1024, log_prompts: bool = False) -> FastAPI:
    """The OpenAI-compatible app serving ``backend`` as ``model_name``."""
    state = ServeState(backend, model_name=model_name, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                       max_tokens_limit=max_tokens_limit, log_prompts=log_prompts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.engine is not None:
            state.engine.start()
        yield
        # uvicorn has finished the in-flight requests by now (graceful shutdown): stop the loop.
        if state.engine is not None:
            await run_in_threadpool(state.engine.close)

    app = FastAPI(title="blackbox serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    @app.exception_handler(P.ApiError)
    async def _api_error(request: Request, exc: P.ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = P.ApiError(exc.status_code, str(exc.detail), type="invalid_request_error", code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse(P.ApiError(500, "The server had an error while processing your request.", type="server_error").body(), status_code=500)

    def auth(request: Request) -> None:
        if not state.authorized(request.headers.get("authorization")):
            raise P.ApiError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.", code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = state.engine.stats() if state.engine is not None else {}
        return {"status": "ok", "model": state.model_name, **stats}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        auth(request)
        return P.models_list([state.model_name], state.created)

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict[str, Any]:
        auth(request)
        if name != state.model_name:
            raise _unknown_model(name)
        return P.model_object(name, state.created)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _generate(state, request, "completion")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await _generate(state, request, "chat")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        rid = P.new_id("embd")
        rlog = _RequestLog(rid, "embeddings", state.model_name, state.log_prompts)
        try:
            auth(request)
            name, texts, as_b64 = P.parse_embeddings(await _json(request))
            if name != state.model_name:
                raise _unknown_model(name)
            if state.backend.kind != "embed":
                raise P.bad("model", f"The model `{name}` does not support embeddings (it is a text generator)", code="unsupported_model")
            rlog.prompt = texts

            def run() -> Any:
                with state.embed_lock:  # one encoder call at a time
                    return state.backend.embed(texts)  # type: ignore[attr-defined]

            vectors, n_tok = await run_in_threadpool(run)
            rlog.prompt_tokens = n_tok
            data = P.embedding_data(vectors, as_b64)
            return {"object": "list", "data": data, "model": state.model_name, "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}
        except P.ApiError as exc:
            rlog.status = exc.status
            raise
        finally:
            rlog.write()

    return app


def _unknown_model(name: str) -> P.ApiError:
    return P.ApiError(404, f"The model `{name}` does not exist or you do not have access to it.", param="model", code="model_not_found")


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise P.ApiError(400, "We could not parse the JSON body of your request. The body must be valid JSON.", code="invalid_json") from None


def _prepare(state: ServeState, parsed: P.Parsed) -> list[Any]:
    """Encode the prompts and check them against the context (400s name the parameter)."""
    b = state.backend
    if b.kind != "generate":
        raise P.bad("model", f"The model `{state.model_name}` is an encoder: it serves /v1/embeddings only", code="unsupported_model")
    param = "prompt" if parsed.kind == "completion" else "messages"
    if parsed.kind == "chat":
        if not b.has_chat_template():
            raise P.bad("messages", "This model's tokenizer has no chat template: use /v1/completions", code="unsupported_model")
        try:
            prompts = [b.chat_prompt(parsed.prompts[0])]
        except Exception as exc:  # noqa: BLE001 - templates raise on role orders they refuse
            raise P.bad("messages", f"The chat template refused these messages: {type(exc).__name__}: {str(exc)[:200]}") from None
    else:
        prompts = [b.completion_prompt(p) for p in parsed.prompts]
    limit = b.context_length
    for p in prompts:
        if not p.ids:
            raise P.bad(param, f"'{param}' encodes to zero tokens")
        if parsed.kind == "chat" and not parsed.max_tokens_given and limit is not None:
            room = limit - len(p.ids)
            if room >= 1:
                parsed.sampling = _replace_max(parsed.sampling, min(parsed.sampling.max_tokens, room))
        if limit is not None and len(p.ids) + parsed.sampling.max_tokens > limit:
            raise P.bad(param, (f"This model's maximum context length is {limit} tokens. However, you requested "
                                f"{len(p.ids) + parsed.sampling.max_tokens} tokens ({len(p.ids)} in the {param}, "
                                f"{parsed.sampling.max_tokens} in the completion)."), code="context_length_exceeded")
    return prompts


def _replace_max(s: Any, m: int) -> Any:
    from dataclasses import replace

    return replace(s, max_tokens=m)


async def _generate(state: ServeState, request: Request, kind: str) -> Any:
    rid = P.new_id("cmpl" if kind == "completion" else "chatcmpl")
    rlog = _RequestLog(rid, "completions" if kind == "completion" else "chat.completions", state.model_name, state.log_prompts)
    streaming = False
    try:
        if not state.authorized(request.headers.get("authorization")):
            raise P.ApiError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.", code="invalid_api_key")
        parsed = P.parse_request(await _json(request), kind, max_tokens_limit=state.max_tokens_limit, max_n=state.max_batch)
        if parsed.model != state.model_name:
            raise _unknown_model(parsed.model)
        rlog.prompt, rlog.stream = parsed.prompts, parsed.stream
        prompts = await run_in_threadpool(_prepare, state, parsed)
        rlog.prompt_tokens = sum(len(p.ids) for p in prompts)
        run = _Run(state, parsed, prompts)
        run.submit()
        if parsed.stream:
            streaming = True
            return StreamingResponse(_stream(state, run, rid, rlog), media_type="text/event-stream",
                                     headers={"x-request-id": rid, "cache-control": "no-cache"})
        body = await _collect(run, request, rid, rlog)
        return JSONResponse(body, headers={"x-request-id": rid})
    except P.ApiError as exc:
        rlog.status = exc.status
        raise
    finally:
        if not streaming:
            rlog.write()


class _Run:
    """The engine jobs of one HTTP request and the asyncio queue their events arrive on."""

    def __init__(self, state: ServeState, parsed: P.Parsed, prompts: list[Any]) -> None:
        self.state, self.parsed, self.prompts = state, parsed, prompts
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.jobs: list[Job] = []
        self.created = P.now()

    def submit(self) -> None:
        engine = self.state.engine
        assert engine is not None
        for k, prompt in enumerate(self.prompts):
            def sink(ev: Any, k: int = k) -> None:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (k, ev))

            try:
                self.jobs.append(engine.submit(Job(prompt, self.parsed.sampling, sink, n=self.parsed.n)))
            except QueueFull:
                self.cancel()
                raise P.ApiError(429, "The server is busy: too many requests are waiting. Retry shortly.", type="requests",
                                 code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
            except EngineClosed:
                self.cancel()
                raise P.ApiError(503, "The server is shutting down.", type="server_error", code="unavailable") from None

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    def index(self, k: int, choice: int) -> int:
        return k * self.parsed.n + choice


async def _collect(run: _Run, request: Request, rid: str, rlog: _RequestLog) -> dict[str, Any]:
    """Wait for every choice; a client that goes away cancels the jobs (frees their rows)."""
    st, parsed = run.state, run.parsed
    n_choices = len(run.prompts) * parsed.n
    tokens: dict[int, list[TokenEvent]] = {i: [] for i in range(n_choices)}
    done: dict[int, ChoiceDone] = {}
    jobs_left = len(run.prompts)
    completion_tokens = 0
    try:
        while jobs_left:
            try:
                k, ev = await asyncio.wait_for(run.queue.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    rlog.status, rlog.note = 499, "client_disconnected"
                    run.cancel()
                    return {}
                continue
            if isinstance(ev, TokenEvent):
                tokens[run.index(k, ev.choice)].append(ev)
            elif isinstance(ev, ChoiceDone):
                done[run.index(k, ev.choice)] = ev
            elif isinstance(ev, JobDone):
                completion_tokens += ev.completion_tokens
                jobs_left -= 1
            elif isinstance(ev, JobError):
                run.cancel()
                raise P.ApiError(500, f"The server had an error while processing your request ({ev.message}).", type="server_error")
    except asyncio.CancelledError:
        run.cancel()
        raise
    rlog.completion_tokens = completion_tokens
    k_lp = parsed.sampling.logprobs
    choices = []
    for i in range(n_choices):
        d = done[i]
        lp = None
        if k_lp is not None:
            toks = tokens[i]
            strs = [st.token_text(t.token) for t in toks]
            tops = [[(st.token_text(a), v) for a, v in (t.top or ())] for t in toks]
            if parsed.kind == "chat":
                lp = {"content": [P.chat_logprob_entry(s, t.logprob, tp) for s, t, tp in zip(strs, toks, tops)], "refusal": None}
            else:
                lp = P.completion_logprobs(strs, [t.logprob for t in toks], tops, k_lp)
        if parsed.kind == "chat":
            choices.append({"index": i, "message": {"role": "assistant", "content": d.text, "refusal": None},
                            "logprobs": lp, "finish_reason": d.finish_reason})
        else:
            choices.append({"index": i, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason})
    use = P.usage(rlog.prompt_tokens, completion_tokens)
    make = P.chat_response if parsed.kind == "chat" else P.completion_response
    return make(rid, st.model_name, run.created, choices, use)


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


async def _stream(state: ServeState, run: _Run, rid: str, rlog: _RequestLog) -> AsyncIterator[bytes]:
    """Server-sent events in the official chunk format, ending with ``data: [DONE]``.

    If the client disconnects, Starlette cancels this generator: ``finally`` cancels the jobs,
    which leave the batch at the next decode step.
    """
    parsed, model = run.parsed, state.model_name
    chat = parsed.kind == "chat"
    chunk = P.chat_chunk if chat else P.completion_chunk
    n_choices = len(run.prompts) * parsed.n
    jobs_left = len(run.prompts)
    completion_tokens = 0
    finished = False
    k_lp = parsed.sampling.logprobs

    def lp_of(ev: TokenEvent) -> Any:
        if k_lp is None:
            return None
        s = state.token_text(ev.token)
        top = [(state.token_text(a), v) for a, v in (ev.top or ())]
        if chat:
            return {"content": [P.chat_logprob_entry(s, ev.logprob, top)], "refusal": None}
        return P.completion_logprobs([s], [ev.logprob], [top], k_lp)

    try:
        if chat:  # the first chunk of each choice carries the role
            yield _sse(chunk(rid, model, run.created, [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None} for i in range(n_choices)]))
        while jobs_left:
            k, ev = await run.queue.get()
            if isinstance(ev, TokenEvent):
                if not ev.delta and k_lp is None:
                    continue
                i = run.index(k, ev.choice)
                c = {"index": i, "delta": {"content": ev.delta}} if chat else {"index": i, "text": ev.delta}
                yield _sse(chunk(rid, model, run.created, [{**c, "logprobs": lp_of(ev), "finish_reason": None}]))
            elif isinstance(ev, ChoiceDone):
                i = run.index(k, ev.choice)
                if ev.delta:
                    c = {"index": i, "delta": {"content": ev.delta}} if chat else {"index": i, "text": ev.delta}
                    yield _sse(chunk(rid, model, run.created, [{**c, "logprobs": None, "finish_reason": None}]))
                c = {"index": i, "delta": {}} if chat else {"index": i, "text": ""}
                yield _sse(chunk(rid, model, run.created, [{**c, "logprobs": None, "finish_reason": ev.finish_reason}]))
            elif isinstance(ev, JobDone):
                completion_tokens += ev.completion_tokens
                jobs_left -= 1
            elif isinstance(ev, JobError):
                rlog.status = 500
                yield _sse(P.ApiError(500, f"The server had an error while processing your request ({ev.message}).", type="server_error").body())
                break
        else:
            if parsed.include_usage:
                yield _sse(chunk(rid, model, run.created, [], P.usage(rlog.prompt_tokens, completion_tokens)))
            finished = True
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:
            run.cancel()
            if rlog.status == 200:
                rlog.status, rlog.note = 499, "client_disconnected"
        rlog.completion_tokens = completion_tokens
        rlog.write()


# --- running ------------------------------------------------------------------------------------
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready socket (``port=0``: a free port, no race between picking and binding)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class ServerThread:
    """A uvicorn server in a background thread (tests, benchmarks, notebooks).

    ``with ServerThread(app) as srv: srv.base_url`` → ``http://127.0.0.1:PORT/v1``.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = bound_socket(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` of this server."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError("serve: the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def serving(backend: Backend, *, model_name: str = "model", **kwargs: Any) -> Iterator[ServerThread]:
    """Serve ``backend`` on a free loopback port for the duration of the block."""
    with ServerThread(create_app(backend, model_name=model_name, **kwargs)) as srv:
        yield srv
