"""The model loop: dynamic batching of prefill and decode steps across concurrent requests.

One thread owns the models. Each iteration it

1. admits waiting jobs while the batch has room (a job with ``n`` choices takes ``n`` rows),
   prefills them together (one left-padded forward pass per model) and merges their KV caches
   into the running batch (caches left-padded to a common length; explicit position ids and
   the attention mask make padding invisible to each row);
2. picks one token for every row from its own logits, with its own sampler, and applies its
   own stop conditions (eos, stop strings, ``max_tokens``);
3. drops finished and cancelled rows from the batch (their slots are free at once) and trims
   cache columns no remaining row attends to;
4. runs one decode forward pass for every remaining row.

Greedy output does not depend on what else is in the batch (up to float round-off, as for
``HFCausalProvider.generate`` on a padded batch). Nothing here knows about HTTP: events go to a
per-job ``sink`` callable, so the loop is testable in process (:meth:`Engine.run`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from blackbox.errors import BlackboxError, BudgetError

from .backends import Backend, Prompt

log = logging.getLogger("blackbox.serve")


class QueueFull(BlackboxError, RuntimeError):
    """The engine's waiting queue is full (HTTP 429)."""


class EngineClosed(BlackboxError, RuntimeError):
    """The engine is shutting down and takes no new jobs (HTTP 503)."""


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one job (already validated by the caller)."""

    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's log-prob and k alternatives


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one choice; ``delta`` is the text now safe to show (may be empty)."""

    choice: int
    token: int
    delta: str
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclass(frozen=True)
class ChoiceDone:
    """A choice finished: its full text (stop strings cut) and why it ended."""

    choice: int
    text: str
    finish_reason: str
    delta: str  # text not yet sent in a TokenEvent
    n_tokens: int


@dataclass(frozen=True)
class JobDone:
    """Every choice of the job finished."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class JobError:
    """The job failed inside the model loop (the engine keeps serving the others)."""

    message: str


Event = TokenEvent | ChoiceDone | JobDone | JobError
_ids = itertools.count()


class Job:
    """A request: one prompt, its sampling settings, ``n`` choices, and where events go."""

    def __init__(self, prompt: Prompt, sampling: Sampling, sink: Callable[[Event], None], *, n: int = 1, job_id: str | None = None) -> None:
        self.prompt, self.sampling, self.sink, self.n = prompt, sampling, sink, n
        self.id = job_id or f"job-{next(_ids)}"
        self.cancelled = False
        self.remaining = n
        self.completion_tokens = 0
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        """Stop decoding this job; its rows leave the batch at the next step."""
        self.cancelled = True

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except Exception:  # noqa: BLE001 - a broken consumer must not stop the loop
            log.exception("event sink of %s failed; cancelling it", self.id)
            self.cancelled = True


class _Row:
    """One choice being decoded: the state dict ``advance_row`` maintains, plus streaming state."""

    __slots__ = ("job", "choice", "gen", "request", "state", "emitted")

    def __init__(self, job: Job, choice: int, gen: Any, request: Any) -> None:
        self.job, self.choice, self.gen, self.request = job, choice, gen, request
        self.state: dict[str, Any] = {"tokens": [], "logprobs": [], "top": [], "text": "", "finish": None}
        self.emitted = ""


def safe_prefix(text: str, stops: Sequence[str]) -> str:
    """The part of ``text`` that can be streamed now: without a trailing partial UTF-8 character
    (decoded as U+FFFD) and without a suffix that could still grow into a stop string."""
    end = len(text.rstrip("\ufffd"))
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), hold, -1):
            if text[:end].endswith(s[:k]):
                hold = k
                break
    return text[: end - hold]


class Engine:
    """Continuous batching over a :class:`~blackbox.serve.backends.Backend` in one thread."""

    def __init__(self, backend: Backend, *, max_batch: int = 16, max_queue: int = 64) -> None:
        if backend.kind != "generate":
            raise BlackboxError("engine: the backend does not generate text")
        if max_batch < 1 or max_queue < 1:
            raise BlackboxError("engine: max_batch and max_queue must be >= 1")
        self.backend, self.max_batch, self.max_queue = backend, max_batch, max_queue
        self._pending: deque[Job] = deque()
        self._rows: list[_Row] = []
        self._caches: list[Any] = []
        self._mask: Any = None
        self._pos: Any = None
        self._logits: Any = None
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode forward passes run (for tests and stats)
        self.prefills = 0
        self.max_rows_seen = 0

    # control --------------------------------------------------------------------------------
    def start(self) -> "Engine":
        """Start the loop thread (idempotent)."""
        import torch

        # OpenMP thread counts are per thread: a new thread starts from OMP_NUM_THREADS, not
        # from the creator's torch.set_num_threads. Decode with the creator's setting.
        threads = torch.get_num_threads()
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(threads,), name="blackbox-serve-engine", daemon=True)
                self._thread.start()
        return self

    def submit(self, job: Job) -> Job:
        """Queue ``job``; raises :class:`QueueFull` or :class:`EngineClosed` instead of waiting."""
        if job.n > self.max_batch:
            raise BlackboxError(f"n: at most {self.max_batch} choices (the batch size)")
        with self._cv:
            if self._closing:
                raise EngineClosed("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (the queue limit)")
            self._pending.append(job)
            self._cv.notify()
        self.start()
        return job

    def close(self, timeout: float | None = None) -> None:
        """Finish every admitted and waiting job, then stop the loop (no new jobs meanwhile)."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        """Rows being decoded, jobs waiting, and counters."""
        with self._cv:
            return {"active_rows": len(self._rows), "queued": len(self._pending), "steps": self.steps,
                    "prefills": self.prefills, "max_rows_seen": self.max_rows_seen}

    def run(self, prompts: Sequence[Prompt], sampling: Sampling, *, n: int = 1) -> list[dict[str, Any]]:
        """In-process helper: submit every prompt at once and wait; one dict per job with
        ``texts``, ``finish_reasons``, ``tokens`` and ``usage``."""
        results: list[dict[str, Any]] = []
        done = threading.Semaphore(0)
        for p in prompts:
            res: dict[str, Any] = {"texts": [None] * n, "finish_reasons": [None] * n, "tokens": [[] for _ in range(n)], "streamed": [""] * n, "error": None}
            results.append(res)

            def sink(ev: Event, res: dict[str, Any] = res) -> None:
                if isinstance(ev, TokenEvent):
                    res["tokens"][ev.choice].append(ev.token)
                    res["streamed"][ev.choice] += ev.delta
                elif isinstance(ev, ChoiceDone):
                    res["texts"][ev.choice], res["finish_reasons"][ev.choice] = ev.text, ev.finish_reason
                    res["streamed"][ev.choice] += ev.delta
                elif isinstance(ev, JobDone):
                    res["usage"] = {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens}
                    done.release()
                else:
                    res["error"] = ev.message
                    done.release()

            self.submit(Job(p, sampling, sink, n=n))
        for _ in prompts:
            done.acquire()
        return results

    # the loop -----------------------------------------------------------------------------
    def _run(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        while True:
            with self._cv:
                while not self._pending and not self._rows and not self._closing:
                    self._cv.wait()
                if self._closing and not self._pending and not self._rows:
                    return
                new = self._admit()
            try:
                with torch.inference_mode():
                    self._iteration(new)
            except Exception as exc:  # noqa: BLE001 - one failure must not take the server down
                log.exception("model loop failed; failing the jobs in the batch")
                jobs = {id(r.job): r.job for r in self._rows}
                jobs.update({id(j): j for j in new})
                for job in jobs.values():
                    # A spent budget is the user's own limit, not a fault: say which (ledger messages hold no secrets).
                    job.emit(JobError(f"model error: {type(exc).__name__}" + (f": {exc}" if isinstance(exc, BudgetError) else "")))
                with self._cv:
                    self._reset()

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit in the batch now (FIFO; cancelled ones are dropped)."""
        out, used = [], len(self._rows)
        while self._pending:
            job = self._pending[0]
            if job.cancelled:
                self._pending.popleft()
                continue
            if used + job.n > self.max_batch:
                break
            out.append(self._pending.popleft())
            used += job.n
        return out

    def _reset(self) -> None:
        self._rows, self._caches, self._mask, self._pos, self._logits = [], [], None, None, None

    def _iteration(self, new: list[Job]) -> None:
        import torch

        if new:
            self._prefill(new)
        rows = self._rows
        if not rows:  # every waiting job was cancelled before admission
            return
        picked = self._logits
        next_ids: list[int] = []
        keep: list[int] = []
        finished: list[_Row] = []
        want_lp = any(r.job.sampling.logprobs is not None for r in rows)
        logp = torch.log_softmax(picked.to(torch.float64), dim=-1) if want_lp else None
        ref = self.backend.ref
        for i, row in enumerate(rows):
            job = row.job
            if job.cancelled:
                continue
            s = job.sampling
            tok = ref.pick_token(picked[i], row.gen, row.request)
            st = row.state
            st["tokens"].append(tok)
            lp = top = None
            if s.logprobs is not None:
                lp = float(logp[i, tok])
                if s.logprobs > 0:
                    vals, idx = torch.topk(logp[i], min(s.logprobs, logp.shape[1]))
                    top = list(zip(idx.tolist(), vals.tolist()))
            ref.advance_row(st, tok, s.stop, len(st["tokens"]) >= s.max_tokens)
            if st["finish"] is None:
                safe = safe_prefix(st["text"], s.stop)
                delta = safe[len(row.emitted) :] if safe.startswith(row.emitted) else ""
                row.emitted += delta
                job.emit(TokenEvent(row.choice, tok, delta, lp, top))
                next_ids.append(tok)
                keep.append(i)
            else:
                job.emit(TokenEvent(row.choice, tok, "", lp, top))
                finished.append(row)
        for row in finished:
            self._finish(row)
        with self._cv:
            if len(keep) < len(rows):
                self._select(keep)
            self._rows = [rows[i] for i in keep]
        if self._rows:
            self._decode(next_ids)

    def _finish(self, row: _Row) -> None:
        st, job = row.state, row.job
        text = st["text"]
        delta = text[len(row.emitted) :] if text.startswith(row.emitted) else ""
        job.completion_tokens += len(st["tokens"])
        job.emit(ChoiceDone(row.choice, text, st["finish"], delta, len(st["tokens"])))
        job.remaining -= 1
        if job.remaining == 0:
            job.emit(JobDone(len(job.prompt.ids), job.completion_tokens))

    # batch state ----------------------------------------------------------------------------
    def _prefill(self, jobs: list[Job]) -> None:
        """One forward pass per model over the new rows; merge their caches into the batch."""
        import torch

        from blackbox.types import GenerateRequest

        b = self.backend
        prompts = [j.prompt for j in jobs]
        embeds = b.prefill_embeds(prompts)  # per model, per job (the gate runs once per job)
        rows: list[_Row] = []
        seqs: list[list[int]] = []
        row_embeds: list[list[Any]] = [[] for _ in b.models]
        for k, job in enumerate(jobs):
            s = job.sampling
            req = GenerateRequest(prompts=("",), max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed)
            # One generator per choice, seeded (seed, choice): choice i samples as prompt i of
            # an in-process generate() over n copies of the prompt.
            gens = b.ref.sampling_generators(req, job.n)
            for c in range(job.n):
                rows.append(_Row(job, c, gens[c], req))
                seqs.append(job.prompt.ids)
                for m in range(len(b.models)):
                    row_embeds[m].append(embeds[m][k])
        outs, caches = [], []
        inputs = None
        tokens = sum(len(s) for s in seqs)
        for m, model in enumerate(b.models):
            inputs = model.model_inputs(seqs, row_embeds[m])
            out = b.metered(m, "decode_start", len(seqs), tokens, lambda: model.model_forward(inputs, keep=1, use_cache=True))
            outs.append(out.logits)
            caches.append(model.cache_of(out))
        self.prefills += 1
        logits = b.combine(outs)
        mask, pos = inputs["attention_mask"], inputs["position_ids"][:, -1:]
        with self._cv:
            if not self._rows:
                self._caches, self._mask, self._pos, self._logits = caches, mask, pos, logits
            else:
                width = max(self._mask.shape[1], mask.shape[1])
                self._caches = [_cache_cat(a, c, width) for a, c in zip(self._caches, caches)]
                self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)], dim=0)
                self._pos = torch.cat([self._pos, pos], dim=0)
                self._logits = torch.cat([self._logits, logits.to(self._logits.dtype)], dim=0)
            self._rows = self._rows + rows
            self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _select(self, keep: list[int]) -> None:
        """Keep only rows ``keep``; drop cache columns no remaining row attends to."""
        import torch

        idx = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        self._mask, self._pos = self._mask[idx], self._pos[idx]
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self._mask = self._mask[:, start:]
        self._caches = [_cache_slice(c, idx, start) for c in self._caches]

    def _decode(self, next_ids: list[int]) -> None:
        """One decode forward pass per model for every row in the batch."""
        import torch

        b = self.backend
        mask = torch.cat([self._mask, torch.ones((len(next_ids), 1), dtype=self._mask.dtype, device=self._mask.device)], dim=1)
        pos = self._pos + 1
        outs, caches = [], []
        for m, (model, cache) in enumerate(zip(b.models, self._caches)):
            ids = torch.tensor(next_ids, dtype=torch.long, device=model.device)[:, None]
            out = b.metered(m, "decode_step", len(next_ids), len(next_ids),
                            lambda: model.model_forward({"input_ids": ids, "attention_mask": mask, "position_ids": pos}, use_cache=True,
                                                        **{model.cache_kwarg: cache}))
            outs.append(out.logits)
            caches.append(model.cache_of(out))
        logits = b.combine(outs)
        with self._cv:
            self._caches, self._mask, self._pos, self._logits = caches, mask, pos, logits
            self.steps += 1


# --- KV-cache surgery (transformers DynamicCache: per layer (B, heads, T, head_dim)) -----------
def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise BlackboxError(f"serve: unsupported KV cache type {type(cache).__name__} (needs transformers >= 4.56 DynamicCache)")
    for layer in layers:
        if getattr(layer, "keys", None) is None:
            raise BlackboxError(f"serve: KV cache layer {type(layer).__name__} has no keys tensor")
        if hasattr(layer, "sliding_window") or hasattr(layer, "cumulative_length"):
            raise BlackboxError("serve: sliding-window KV caches cannot be merged across requests")
    return list(layers)


def _left_pad(x: Any, width: int) -> Any:
    """A (B, T) mask left-padded with zeros to ``width`` columns."""
    import torch

    extra = width - x.shape[1]
    if extra <= 0:
        return x
    return torch.cat([torch.zeros((x.shape[0], extra), dtype=x.dtype, device=x.device), x], dim=1)


def _pad_time(t: Any, width: int) -> Any:
    import torch

    extra = width - t.shape[2]
    if extra <= 0:
        return t
    shape = (t.shape[0], t.shape[1], extra, t.shape[3])
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=2)


def _cache_cat(a: Any, b: Any, width: int) -> Any:
    """Cache ``a`` rows then ``b`` rows, both left-padded in time to ``width`` (``a`` is reused)."""
    import torch

    for la, lb in zip(_layers(a), _layers(b)):
        la.keys = torch.cat([_pad_time(la.keys, width), _pad_time(lb.keys, width)], dim=0)
        la.values = torch.cat([_pad_time(la.values, width), _pad_time(lb.values, width)], dim=0)
    return a


def _cache_slice(cache: Any, rows: Any, start: int) -> Any:
    """Keep batch ``rows`` and time steps ``start:`` of every layer (in place)."""
    for layer in _layers(cache):
        layer.keys = layer.keys[rows, :, start:, :]
        layer.values = layer.values[rows, :, start:, :]
    return cache
