"""Fusion's evaluation of a prompt set on Ray replicas (``blackbox fuse generate --replicas N``).

Logit fusion steps the large model, the small one and the experts token by token, each with its
own KV cache: that loop cannot be split across processes step by step, and stays in one. What
spreads is the prompt set: each replica builds the whole fused model (every role loaded from its
spec in the replica's own process) and decodes a contiguous share of the prompts; the driver
joins the outputs, tokens and per-step expert weights in prompt order. Greedy decoding gives
every prompt the same result as the single-process run as long as the models' rows do not depend
on their batch-mates (see docs/scaling.md, "What is exact"); sampled decoding seeds each prompt
from its position in the set, so it is refused with more than one replica.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

from blackbox.errors import BlackboxError
from blackbox.provider import Provider
from blackbox.types import Capability

__all__ = ["FusedRows", "counted", "fused_generate", "queries_of"]


def counted(provider: Provider) -> Provider:
    """``provider`` behind a :class:`~blackbox.client.Client` with its own ledger (every decode
    step and top-k call is billed there; the tokens are the same)."""
    from blackbox.client import Client, Ledger

    return Client(provider, ledger=Ledger(), use_cache=False)


def queries_of(roles: Sequence[Any]) -> dict[str, Any]:
    """Queries billed to each role's ledger (large, small, experts), for ``FusionResult.info``."""
    n = [int(getattr(getattr(p, "ledger", None), "queries", 0) or 0) for p in roles]
    return {"large": n[0], "small": n[1], "experts": n[2:], "total": sum(n)}


def _add_queries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"large": a["large"] + b["large"], "small": a["small"] + b["small"],
            "experts": [x + y for x, y in zip(a["experts"], b["experts"])], "total": a["total"] + b["total"]}


class FusedRows(Provider):
    """A fused model built from provider specs, decoding whole prompt sets (a replica's body)."""

    name = "fusion"
    declared_capabilities = frozenset({Capability.TEXT})
    summary = "logit fusion of a large model, a small one and experts, decoding a share of a prompt set"

    def __init__(self, specs: Sequence[str], config: dict[str, Any]) -> None:
        from blackbox.provider import load_provider

        from .decode import FusionConfig, LogitFusion

        super().__init__()
        self.specs = list(specs)
        self.loaded: list[Provider] = []
        try:
            for spec in self.specs:
                self.loaded.append(counted(load_provider(spec)))
            self.fusion = LogitFusion(self.loaded[0], self.loaded[1], self.loaded[2:], FusionConfig.from_dict(config))
        except BaseException:
            self.close()
            raise

    @property
    def tokenizer(self) -> Any:
        """The fused model's tokenizer (the small model's)."""
        return self.fusion.tokenizer

    def describe(self) -> dict[str, Any]:
        """The roles' specs."""
        return {"provider": self.name, "large": self.specs[0], "small": self.specs[1], "experts": self.specs[2:]}

    def decode(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        """One row per prompt: text, token ids, per-step expert weights, finish reason."""
        before = queries_of(self.loaded)
        r = self.fusion.generate(list(prompts))
        after = queries_of(self.loaded)
        # The share's queries ride on its first row (the driver adds them up): a step bills every
        # row of a batch at once, so they cannot be split by prompt.
        spent = _add_queries(after, {k: ([-x for x in v] if isinstance(v, list) else -v) for k, v in before.items()})
        return [{"text": t, "tokens": k, "weights": w, "finish": f, "queries": spent if i == 0 else None}
                for i, (t, k, w, f) in enumerate(zip(r.texts, r.tokens, r.weights, r.finish_reasons))]

    def result_info(self) -> dict[str, Any]:
        """What FusionResult.info reports (the fused vocabulary, whether top-k is approximate)."""
        c = self.fusion.config
        return {"n_vocab": self.fusion.n_vocab, "approximate": c.large_top_k is not None}

    def close(self) -> None:
        for p in self.loaded:
            p.close()


def fused_generate(specs: Sequence[str], config: Any, prompts: Sequence[str], replicas: int, *, address: str | None = None,
                   timeout: float | None = None) -> tuple[Any, Any]:
    """Decode ``prompts`` with the fused model of ``specs`` (large, small, experts...) on
    ``replicas`` Ray replicas; returns a :class:`~blackbox.methods.fusion.decode.FusionResult` and
    the fused model's tokenizer (a copy, for the driver's text bookkeeping)."""
    from blackbox.scale.context import check_replicas
    from blackbox.scale.pool import ReplicaPool

    from .decode import FusionResult

    settings = check_replicas(replicas, address, timeout)
    if settings.replicas > 1 and config.temperature > 0:
        raise BlackboxError("replicas: sampled fusion (temperature > 0) seeds each prompt from its position in the set, so a "
                            "share of the set would draw other samples; use --replicas 1, or --temperature 0 (greedy)")
    with ReplicaPool(functools.partial(FusedRows, list(specs), config.to_dict()), settings.replicas, address=settings.address,
                     timeout=settings.timeout) as pool:
        t0 = time.perf_counter()  # decoding time, as the single-process result reports it
        rows = pool.map_rows("decode", prompts)
        seconds = time.perf_counter() - t0
        info = pool.invoke("result_info")
        tokenizer = pool.invoke("tokenizer")
    shares = [r["queries"] for r in rows if r.get("queries") is not None]
    if shares:  # every replica's share, summed in the driver
        total = shares[0]
        for q in shares[1:]:
            total = _add_queries(total, q)
        info = {**info, "queries": total}
    return FusionResult(texts=[r["text"] for r in rows], tokens=[r["tokens"] for r in rows], weights=[r["weights"] for r in rows],
                        finish_reasons=[r["finish"] for r in rows], seconds=seconds, mode=config.mode, info=info), tokenizer
