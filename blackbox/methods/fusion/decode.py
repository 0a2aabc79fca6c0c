"""Decoding with fused logits: one large base, one small base, T ≥ 1 small experts.

Every model with full logits runs its own forward passes and its own KV cache over the same
token ids (one shared vocabulary, checked by :func:`shared_vocab`). Each step fuses the
``(V,)`` logit rows of the large model, the small base and the experts:

* ``proxy``:   ``z_large + α Σ_t (z_expert_t − z_small)`` with a fixed α;
* ``dynamic``: the same with per-step weights that minimise the KL-matching objective of
  :mod:`blackbox.methods.fusion.arith`, searched on the grid ``0, 0.1, …, 2`` (one expert at a
  time) in one tensor operation, optionally refined by golden-section search.

The large model may instead be reachable only through top-k log-probabilities (``large_top_k``):
the large model's log-probabilities of the tokens it did not return are then filled from the
small base's distribution, rescaled to the mass the server did not return — an approximation
(see :func:`blackbox.methods.fusion.arith.topk_fill`; ``large_tail`` selects it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from blackbox.errors import CapabilityError, ConfigError, bad_value
from blackbox.provider import Provider, require
from blackbox.types import Capability, GenerateRequest, NextTokenRequest

from . import arith

from .config import MODES, PRECISIONS, FusionConfig  # noqa: F401 - re-exported


@dataclass
class FusionResult:
    """What :func:`fuse_generate` returns; ``weights[i][s]`` are the expert weights at step s."""

    texts: list[str]
    tokens: list[list[int]]
    weights: list[list[list[float]]]
    finish_reasons: list[str]
    seconds: float = 0.0
    mode: str = "proxy"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "outputs": self.texts, "tokens": self.tokens, "weights": self.weights,
            "finish_reasons": self.finish_reasons, "seconds": round(self.seconds, 4), "n_tokens": self.n_tokens, **self.info,
        }


# --- vocabularies ---------------------------------------------------------------------
def logits_width(provider: Provider) -> int:
    """Number of logits a step-decoding model returns per step (its output-embedding rows)."""
    return int(provider.decode_width())


def shared_vocab(tokenizers: dict[str, Any], widths: dict[str, int]) -> int:
    """Size ``n`` of the id range every model shares; refuse when the vocabularies differ.

    ``n`` is the smallest of every model's logit width and tokenizer length. The
    tokenizers' ``token → id`` maps restricted to ids below ``n`` must be identical. A
    *padded superset* (an expert with extra added tokens or extra padded logit rows beyond
    ``n``) is accepted: its logits are truncated to the first ``n`` ids, so the extra tokens
    can never be produced (the policy of the proxy-tuning reference code).
    """
    n = min(min(widths.values()), min(len(t) for t in tokenizers.values()))
    roles = list(tokenizers)
    ref_role = roles[0]
    ref = {tok: i for tok, i in tokenizers[ref_role].get_vocab().items() if i < n}
    for role in roles[1:]:
        other = {tok: i for tok, i in tokenizers[role].get_vocab().items() if i < n}
        if other != ref:
            inv_ref, inv_other = {i: t for t, i in ref.items()}, {i: t for t, i in other.items()}
            diff = [i for i in range(n) if inv_ref.get(i) != inv_other.get(i)]
            examples = ", ".join(f"id {i}: {inv_ref.get(i)!r} vs {inv_other.get(i)!r}" for i in diff[:3])
            raise ConfigError(
                f"vocabulary: the {role} model's tokenizer differs from the {ref_role} model's on the "
                f"shared ids 0..{n - 1} ({len(diff)} ids differ, e.g. {examples}); fusion needs "
                f"one shared vocabulary (same token → id map)"
            )
    return n


# --- per-model stepping ---------------------------------------------------------------
class _LocalStepper:
    """One model's incremental forward passes over a left-padded batch, through the declared
    step-decode capability (``decode_start`` / ``decode_step``; the provider keeps its KV cache)."""

    def __init__(self, provider: Provider, width: int, use_cache: bool) -> None:
        self.p, self.width, self.use_cache = provider, width, use_cache

    def start(self, seqs: list[list[int]]) -> torch.Tensor:
        self.state, logits = self.p.decode_start(seqs, use_cache=self.use_cache)
        return logits[:, : self.width]

    def step(self, next_ids: list[int]) -> torch.Tensor:
        return self.p.decode_step(self.state, next_ids)[:, : self.width]


class _ApiTopK:
    """A large model reached only through top-k log-probs of a text prompt (e.g. ``openai``).

    Each step sends ``prompt + decoded continuation`` and maps the returned token strings back
    to ids with the small base's tokenizer (strings that are not one token are dropped). The
    server re-tokenises the text, which may split it differently: part of the approximation.
    """

    def __init__(self, provider: Provider, tokenizer: Any, n: int, k: int) -> None:
        self.p, self.tok, self.k = provider, tokenizer, k
        self.lookup: dict[str, int] = {}
        for i in range(n):
            self.lookup.setdefault(tokenizer.decode([i]), i)

    def query(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        res = self.p.next_token(NextTokenRequest(prompts=tuple(texts), top_k=self.k))
        out = []
        for d in res.top_logprobs or ():
            pairs = [(self.lookup[s], lp) for s, lp in d.items() if s in self.lookup]
            if not pairs:
                raise CapabilityError("large_top_k: none of the large model's returned tokens maps to one id of the shared vocabulary")
            ids, lps = zip(*sorted(dict(pairs).items()))
            out.append((torch.tensor(ids, dtype=torch.long), torch.tensor(lps, dtype=torch.float64)))
        return out


def _chat_mode(p: Any) -> bool:
    """True for an API provider (or a Client around one) that would send chat messages."""
    while p is not None:
        if getattr(p, "completions", None) is False:
            return True
        p = getattr(p, "provider", None)
    return False


def _base(p: Any) -> Any:
    """The provider under any wrappers (a Client): its tokenizer does the text bookkeeping,
    while the queries (decode steps, top-k calls) go through the wrapper and its ledger."""
    while isinstance(getattr(p, "provider", None), Provider):
        p = p.provider
    return p


def _is_local(p: Provider) -> bool:
    """A model fusion can step itself: declared step decoding and a tokenizer to share."""
    return Capability.STEP_DECODE in p.capabilities and all(hasattr(_base(p), a) for a in ("tokenizer", "encode"))


# --- the fusion ------------------------------------------------------------------------
class LogitFusion:
    """Fused decoding over ``large``, ``small`` and ``experts`` (providers; see module doc)."""

    def __init__(self, large: Provider, small: Provider, experts: Sequence[Provider], config: FusionConfig | None = None) -> None:
        self.config = (config or FusionConfig()).check()
        if isinstance(experts, Provider) or not isinstance(experts, (list, tuple)):
            raise bad_value("experts", "a list of providers", type(experts).__name__)
        if len(experts) == 0:
            raise bad_value("experts", "at least one expert provider", "zero experts")
        self.large, self.small, self.experts = large, small, list(experts)
        roles = {"small": small, **{f"expert {i + 1}": e for i, e in enumerate(self.experts)}}
        for role, p in roles.items():
            require(p, [Capability.LOGITS], f"fusion ({role} model)")
            require(p, [Capability.STEP_DECODE], f"fusion ({role} model; steps every model with its own KV cache)")
            if not _is_local(p):
                raise CapabilityError(f"fusion ({role} model): needs a tokenizer shared with the other models; provider {p.name} exposes none")
        self.api_large = False
        if self.config.large_top_k is None:
            require(large, [Capability.LOGITS], "fusion (large model; for an API that returns top-k logprobs pass --large-top-k K, large_top_k=K in Python)")
            if not _is_local(large):
                raise CapabilityError(f"fusion (large model): full-vocabulary fusion needs step decoding (step_decode, e.g. hf-causal) and a tokenizer; "
                                      f"provider {large.name} lacks them (for an API pass --large-top-k K, large_top_k=K in Python)")
            roles = {"large": large, **roles}
        else:
            require(large, [Capability.LOGITS, Capability.TOP_LOGPROBS], "fusion (large model)", any_of=True)
            if _is_local(large):
                roles = {"large": large, **roles}  # emulated top-k: local logits, only k kept
            else:
                if _chat_mode(large):
                    # A chat endpoint answers the prompt wrapped in a chat template: its first
                    # reply token is not the base model's next token of the text (the fused
                    # output was "LLLL..." against a real server).
                    raise ConfigError(
                        f"fusion (large model): provider {large.name} is in chat mode; fusion continues raw text, so it "
                        "needs the completions endpoint: add completions=1 to the spec (e.g. openai:MODEL?base_url=URL&completions=1)"
                    )
                self.api_large = True
        self.roles = roles
        widths = {r: logits_width(p) for r, p in roles.items()}
        self.n_vocab = shared_vocab({r: _base(p).tokenizer for r, p in roles.items()}, widths)
        self._small = _base(small)  # tokenizer, sampler and text bookkeeping (no queries)
        self.tokenizer = self._small.tokenizer
        ref = _base(large if not self.api_large else small)
        self._ref = ref
        self.eos_ids = frozenset(i for i in ref.eos_ids if i < self.n_vocab)
        self._grid = self.config.grid()
        c = self.config
        self._sampling = GenerateRequest(prompts=("",), temperature=c.temperature, top_p=c.top_p, seed=c.seed)

    # one step -------------------------------------------------------------------------
    def fuse_batch(self, zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, memory: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused logits (B, V) float64, weights (B, T))`` for a batch of rows: ``zl``, ``zs`` (B, V), ``ze`` (B, T, V).

        Dynamic mode searches every row, expert and candidate in one tensor operation
        (:func:`arith.dynamic_weights_batch`, in ``config.precision``). With
        ``expert_choice`` other than ``step``, ``memory`` (B, T) carries each row's state
        from the answer's earlier steps (zeros at its first step; updated in place).
        """
        c = self.config
        if c.mode == "proxy":
            w = torch.full(ze.shape[:2], float(c.alpha), dtype=torch.float64)
        else:
            dtype = torch.float32 if c.precision == "float32" else torch.float64
            if c.expert_choice != "step" and memory is None:
                memory = torch.zeros(ze.shape[:2], dtype=torch.float64)  # a lone step: the answer's first
            w, _ = arith.dynamic_weights_batch(zl, zs, ze, self._grid, refine=c.refine, dtype=dtype, choice=c.expert_choice, memory=memory)
        return arith.proxy_logits_batch(zl, zs, ze, w), w

    def fuse_row(self, zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, memory: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused logits, weights (T,))`` for one row of full-vocabulary logits (``memory``: (1, T), as :meth:`fuse_batch`)."""
        fused, w = self.fuse_batch(zl[None], zs[None], ze[None], memory)
        return fused[0], w[0]

    def fuse_topk_row(
        self, large_ids: torch.Tensor, large_lp: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, k: int | None = None,
        memory: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids (U,), fused logits over them, weights)`` for the top-k variant.

        ``large_tail`` small/uniform: the large model's unreturned log-probabilities are filled
        (:func:`arith.topk_fill`) and the fusion runs over the whole vocabulary (``ids`` is
        ``0..V-1``); floor: over the union of the returned tokens and the experts' top-``k``
        (default ``large_top_k``), :func:`arith.topk_union`.
        """
        tail = self.config.large_tail
        if tail != "floor":
            zl = arith.topk_fill(large_ids, large_lp, zs, tail)
            fused, w = self.fuse_row(zl, zs.double(), ze.double(), memory)
            return torch.arange(zl.numel()), fused, w
        k = int(k or self.config.large_top_k or large_ids.numel())
        ids, zl_u, zs_u, ze_u = arith.topk_union(large_ids, large_lp, zs, ze, k)
        fused, w = self.fuse_row(zl_u, zs_u, ze_u, memory)
        return ids, fused, w

    def _pick(self, logits: torch.Tensor, gen: Any) -> int:
        # the hf-causal provider's sampler: greedy without a generator, else temperature + top-p
        return self._small.pick_token(logits, gen, self._sampling)

    # generation ------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt (the small base's tokenizer), checked against every context."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise bad_value("prompts", "a non-empty list of strings", prompts if isinstance(prompts, str) else type(prompts).__name__)
        seqs = []
        for p in prompts:
            if not isinstance(p, str):
                raise bad_value("prompts", "strings", type(p).__name__)
            ids = self._small.encode(p)
            if not ids:
                raise bad_value("prompts", "texts that encode to at least one token", p)
            for role, prov in self.roles.items():
                limit = getattr(_base(prov), "context_length", None)
                if limit is not None and len(ids) + self.config.max_tokens > limit:
                    raise bad_value(
                        "prompts", f"at most {limit} tokens including max_tokens={self.config.max_tokens} (context length of the {role} model {prov.describe().get('model', prov.name)})",
                        f"{p[:40]!r}: {len(ids)} prompt tokens",
                    )
            seqs.append(ids)
        return seqs

    def generate(self, prompts: Sequence[str], *, on_batch: Callable[[int], None] | None = None, on_step: Callable[[dict[str, Any]], None] | None = None) -> FusionResult:
        """Decode every prompt; ``on_batch(done)`` after each batch, ``on_step(info)`` after each step and row."""
        seqs = self.encode(prompts)
        n = len(seqs)
        gens = self._small.sampling_generators(self._sampling, n)  # one per prompt, seeded (seed, index)
        order = sorted(range(n), key=lambda i: len(seqs[i]))  # similar lengths share a batch
        rows: list[dict[str, Any]] = [None] * n  # type: ignore[list-item]
        t0 = time.perf_counter()
        done = 0
        for start in range(0, n, self.config.batch_size):
            chunk = order[start : start + self.config.batch_size]
            for i, r in zip(chunk, self._decode([seqs[i] for i in chunk], [list(prompts)[i] for i in chunk], chunk, [gens[i] for i in chunk], on_step)):
                rows[i] = r
            done += len(chunk)
            if on_batch is not None:
                on_batch(done)
        return FusionResult(
            texts=[r["text"] for r in rows], tokens=[r["tokens"] for r in rows], weights=[r["weights"] for r in rows],
            finish_reasons=[r["finish"] for r in rows], seconds=time.perf_counter() - t0, mode=self.config.mode,
            info={"n_vocab": self.n_vocab, "approximate": self.config.large_top_k is not None},
        )

    def _decode(self, seqs: list[list[int]], prompts: list[str], index: list[int], gens: list[Any], on_step: Any) -> list[dict[str, Any]]:
        c = self.config
        b = len(seqs)
        rows = [{"tokens": [], "weights": [], "text": "", "finish": None} for _ in range(b)]
        # One stepper per distinct provider: roles held by the same model (e.g. the large model
        # doubling as the small base) share its forward passes and logits.
        uniq: dict[int, _LocalStepper] = {}
        for p in self.roles.values():
            uniq.setdefault(id(p), _LocalStepper(p, self.n_vocab, c.use_cache))
        api = _ApiTopK(self.large, self.tokenizer, self.n_vocab, int(c.large_top_k)) if self.api_large else None
        pad = next(iter(sorted(self.eos_ids)), 0)
        with torch.inference_mode():
            # each answer's state of the expert choice across its steps (expert_choice first/cumulative)
            memory = torch.zeros(b, len(self.experts), dtype=torch.float64)
            first = {k: s.start(seqs) for k, s in uniq.items()}
            logits = {role: first[id(p)] for role, p in self.roles.items()}
            for step in range(c.max_tokens):
                active = [r for r in range(b) if rows[r]["finish"] is None]
                api_rows = api.query([prompts[r] + self.tokenizer.decode(rows[r]["tokens"]) for r in active]) if api else None
                ze_all = torch.stack([logits[f"expert {t + 1}"] for t in range(len(self.experts))], dim=1)  # (B, T, V)
                next_ids = [pad] * b
                if c.large_top_k is None:  # all active rows in one call
                    rows_t = torch.tensor(active)
                    mem = memory[rows_t]
                    fused_all, w_all = self.fuse_batch(logits["large"][rows_t], logits["small"][rows_t], ze_all[rows_t], mem)
                    memory[rows_t] = mem
                for j, r in enumerate(active):
                    zs, ze = logits["small"][r], ze_all[r]
                    if c.large_top_k is None:
                        fused, w = fused_all[j], w_all[j]
                        tok = self._pick(fused, gens[r])
                    else:
                        if api_rows is not None:
                            lid, llp = api_rows[j]
                        else:
                            zl = logits["large"][r]
                            top = torch.topk(torch.log_softmax(zl, -1), min(c.large_top_k, zl.numel()))
                            lid, llp = top.indices, top.values
                        ids, fused, w = self.fuse_topk_row(lid, llp, zs, ze, memory=memory[r : r + 1])
                        tok = int(ids[self._pick(fused, gens[r])])
                    next_ids[r] = tok
                    row = rows[r]
                    row["tokens"].append(tok)
                    row["weights"].append([float(x) for x in w])
                    if on_step is not None:
                        on_step({"prompt": index[r], "step": step, "token": tok, "weights": w, "large": logits.get("large", [None] * b)[r], "small": zs, "experts": ze})
                    self._advance(row, tok, step + 1 == c.max_tokens)
                if all(row["finish"] is not None for row in rows):
                    break
                nxt = {k: s.step(next_ids) for k, s in uniq.items()}
                logits = {role: nxt[id(p)] for role, p in self.roles.items()}
        return rows

    def _advance(self, row: dict[str, Any], tok: int, last: bool) -> None:
        # the reference provider's bookkeeping: end-of-sequence ids, stop strings, text
        self._ref.advance_row(row, tok, self.config.stop, last)


def fuse_generate(
    large: Provider, small: Provider, experts: Sequence[Provider], prompts: Sequence[str], config: FusionConfig | None = None, **kwargs: Any
) -> FusionResult:
    """One call: build a :class:`LogitFusion` and decode ``prompts`` (``kwargs`` go to ``generate``)."""
    return LogitFusion(large, small, experts, config).generate(prompts, **kwargs)
