"""Per-item split and join of the typed requests and results of :mod:`blackbox.types`.

A batch request (several prompts, texts, rows or pairs) splits into single-item requests and
joins back; a batch result likewise. The client caches per item with these; providers that
fan a request out into one HTTP call per item use them to hand back the items that succeeded.
Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ProviderError, bad_value
from .types import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    HiddenStatesRequest,
    HiddenStatesResult,
    NextTokenRequest,
    NextTokenResult,
    ScoreRequest,
    ScoreResult,
    Usage,
)

__all__ = [
    "RESULT_TYPES", "REQUEST_TO_RESULT", "ItemOps", "ITEM_OPS", "RESULT_ITEM_OPS", "item_ops",
    "count_items", "split_request", "join_requests", "split_result", "join_results", "merge_usage",
]

RESULT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (ClassifyResult, NextTokenResult, GenerateResult, EmbedResult, HiddenStatesResult, ScoreResult)
}
REQUEST_TO_RESULT: dict[type, type] = {
    ClassifyRequest: ClassifyResult,
    NextTokenRequest: NextTokenResult,
    GenerateRequest: GenerateResult,
    EmbedRequest: EmbedResult,
    HiddenStatesRequest: HiddenStatesResult,
    ScoreRequest: ScoreResult,
}




# =========================================================================================
# per-item split / join, one small set of pure functions per request type
# =========================================================================================
def _texts(request: Any, name: str) -> tuple[str, ...]:
    value = getattr(request, name)
    # A bare string would otherwise be split into characters.
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(t, str) for t in value):
        raise bad_value(f"{type(request).__name__}.{name}", "a tuple of str", value)
    return tuple(value)


def _rows(array: Any, where: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise bad_value(where, "a numpy array with one row per item", "a 0-d array" if isinstance(array, np.ndarray) else array)
    return array


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts, axis=0)


def _optional_join(parts: Sequence[Any], what: str, join: Callable[[Sequence[Any]], Any]) -> Any:
    present = [p is not None for p in parts]
    if all(present):
        return join(parts)
    if not any(present):
        return None
    raise ProviderError(f"{what}: some items have it and some do not (cache entries from a different provider setup?)")


# classify ---------------------------------------------------------------------------------
def _count_classify(r: ClassifyRequest) -> int:
    return len(_rows(r.inputs, "ClassifyRequest.inputs"))


def _split_classify(r: ClassifyRequest) -> list[ClassifyRequest]:
    return [replace(r, inputs=r.inputs[i : i + 1]) for i in range(_count_classify(r))]


def _join_classify(items: Sequence[ClassifyRequest]) -> ClassifyRequest:
    return replace(items[0], inputs=_concat([it.inputs for it in items]))


def _rcount_classify(r: ClassifyResult) -> int:
    return len(_rows(r.scores, "ClassifyResult.scores"))


def _rsplit_classify(r: ClassifyResult) -> list[ClassifyResult]:
    return [ClassifyResult(scores=r.scores[i : i + 1], output=r.output) for i in range(_rcount_classify(r))]


def _rjoin_classify(items: Sequence[ClassifyResult], usage: Usage) -> ClassifyResult:
    return ClassifyResult(scores=_concat([it.scores for it in items]), output=items[0].output, usage=usage)


# next token -------------------------------------------------------------------------------
def _count_prompts(r: Any) -> int:
    return len(_texts(r, "prompts"))


def _split_prompts(r: Any) -> list[Any]:
    return [replace(r, prompts=(p,)) for p in _texts(r, "prompts")]


def _join_prompts(items: Sequence[Any]) -> Any:
    return replace(items[0], prompts=tuple(p for it in items for p in _texts(it, "prompts")))


def _rcount_next(r: NextTokenResult) -> int:
    if r.logits is not None:
        return len(_rows(r.logits, "NextTokenResult.logits"))
    if r.top_logprobs is not None:
        return len(r.top_logprobs)
    raise ProviderError("NextTokenResult: neither logits nor top_logprobs were returned")


def _rsplit_next(r: NextTokenResult) -> list[NextTokenResult]:
    n = _rcount_next(r)
    if r.top_logprobs is not None and len(r.top_logprobs) != n:
        raise ProviderError(f"NextTokenResult: {n} rows of logits but {len(r.top_logprobs)} top_logprobs")
    return [
        NextTokenResult(
            logits=None if r.logits is None else r.logits[i : i + 1],
            top_logprobs=None if r.top_logprobs is None else (r.top_logprobs[i],),
        )
        for i in range(n)
    ]


def _rjoin_next(items: Sequence[NextTokenResult], usage: Usage) -> NextTokenResult:
    return NextTokenResult(
        logits=_optional_join([it.logits for it in items], "NextTokenResult.logits", _concat),
        top_logprobs=_optional_join([it.top_logprobs for it in items], "NextTokenResult.top_logprobs", _flatten),
        usage=usage,
    )


def _flatten(parts: Sequence[tuple]) -> tuple:
    return tuple(x for p in parts for x in p)


# generate ---------------------------------------------------------------------------------
def _rcount_generate(r: GenerateResult) -> int:
    return len(r.texts)


def _rsplit_generate(r: GenerateResult) -> list[GenerateResult]:
    n = len(r.texts)
    for name in ("token_logprobs", "top_logprobs"):
        value = getattr(r, name)
        if value is not None and len(value) != n:
            raise ProviderError(f"GenerateResult.{name}: expected one entry per text ({n}), received {len(value)}")
    if len(r.finish_reasons) not in (0, n):
        raise ProviderError(f"GenerateResult.finish_reasons: expected 0 or {n} entries, received {len(r.finish_reasons)}")
    return [
        GenerateResult(
            texts=(r.texts[i],),
            token_logprobs=None if r.token_logprobs is None else (r.token_logprobs[i],),
            top_logprobs=None if r.top_logprobs is None else (r.top_logprobs[i],),
            finish_reasons=r.finish_reasons[i : i + 1],
        )
        for i in range(n)
    ]


def _rjoin_generate(items: Sequence[GenerateResult], usage: Usage) -> GenerateResult:
    reasons: tuple[str, ...] = ()
    if any(it.finish_reasons for it in items):
        # An item without a reason (older cache entry) gets "" so positions stay aligned.
        reasons = tuple((it.finish_reasons or ("",))[0] for it in items)
    return GenerateResult(
        texts=_flatten([it.texts for it in items]),
        token_logprobs=_optional_join([it.token_logprobs for it in items], "GenerateResult.token_logprobs", _flatten),
        top_logprobs=_optional_join([it.top_logprobs for it in items], "GenerateResult.top_logprobs", _flatten),
        finish_reasons=reasons,
        usage=usage,
    )


# embed ------------------------------------------------------------------------------------
def _count_texts(r: Any) -> int:
    return len(_texts(r, "texts"))


def _split_texts(r: Any) -> list[Any]:
    return [replace(r, texts=(t,)) for t in _texts(r, "texts")]


def _join_texts(items: Sequence[Any]) -> Any:
    return replace(items[0], texts=tuple(t for it in items for t in _texts(it, "texts")))


def _rcount_embed(r: EmbedResult) -> int:
    return len(_rows(r.vectors, "EmbedResult.vectors"))


def _rsplit_embed(r: EmbedResult) -> list[EmbedResult]:
    return [EmbedResult(vectors=r.vectors[i : i + 1]) for i in range(_rcount_embed(r))]


def _rjoin_embed(items: Sequence[EmbedResult], usage: Usage) -> EmbedResult:
    return EmbedResult(vectors=_concat([it.vectors for it in items]), usage=usage)


# hidden states ----------------------------------------------------------------------------
def _rcount_hidden(r: HiddenStatesResult) -> int:
    return len(r.states)


def _rsplit_hidden(r: HiddenStatesResult) -> list[HiddenStatesResult]:
    return [HiddenStatesResult(states=(s,)) for s in r.states]


def _rjoin_hidden(items: Sequence[HiddenStatesResult], usage: Usage) -> HiddenStatesResult:
    return HiddenStatesResult(states=_flatten([it.states for it in items]), usage=usage)


# score ------------------------------------------------------------------------------------
def _count_score(r: ScoreRequest) -> int:
    prompts, conts = _texts(r, "prompts"), _texts(r, "continuations")
    if len(prompts) != len(conts):
        raise bad_value("ScoreRequest.continuations", f"one continuation per prompt ({len(prompts)})", f"{len(conts)} continuations")
    return len(prompts)


def _split_score(r: ScoreRequest) -> list[ScoreRequest]:
    _count_score(r)
    return [ScoreRequest(prompts=(p,), continuations=(c,)) for p, c in zip(r.prompts, r.continuations)]


def _join_score(items: Sequence[ScoreRequest]) -> ScoreRequest:
    return ScoreRequest(
        prompts=tuple(p for it in items for p in it.prompts),
        continuations=tuple(c for it in items for c in it.continuations),
    )


def _rcount_score(r: ScoreResult) -> int:
    n = len(_rows(r.logprobs, "ScoreResult.logprobs"))
    if len(_rows(r.n_tokens, "ScoreResult.n_tokens")) != n:
        raise ProviderError(f"ScoreResult: {n} logprobs but {len(r.n_tokens)} n_tokens")
    return n


def _rsplit_score(r: ScoreResult) -> list[ScoreResult]:
    return [ScoreResult(logprobs=r.logprobs[i : i + 1], n_tokens=r.n_tokens[i : i + 1]) for i in range(_rcount_score(r))]


def _rjoin_score(items: Sequence[ScoreResult], usage: Usage) -> ScoreResult:
    return ScoreResult(
        logprobs=_concat([it.logprobs for it in items]), n_tokens=_concat([it.n_tokens for it in items]), usage=usage
    )


@dataclass(frozen=True)
class ItemOps:
    """The six pure functions that split a batch request/result into items and join them back."""

    count: Callable[[Any], int]
    split: Callable[[Any], list]
    join: Callable[[Sequence[Any]], Any]
    result_count: Callable[[Any], int]
    split_result: Callable[[Any], list]
    join_results: Callable[[Sequence[Any], Usage], Any]


ITEM_OPS: dict[type, ItemOps] = {
    ClassifyRequest: ItemOps(_count_classify, _split_classify, _join_classify, _rcount_classify, _rsplit_classify, _rjoin_classify),
    NextTokenRequest: ItemOps(_count_prompts, _split_prompts, _join_prompts, _rcount_next, _rsplit_next, _rjoin_next),
    GenerateRequest: ItemOps(_count_prompts, _split_prompts, _join_prompts, _rcount_generate, _rsplit_generate, _rjoin_generate),
    EmbedRequest: ItemOps(_count_texts, _split_texts, _join_texts, _rcount_embed, _rsplit_embed, _rjoin_embed),
    HiddenStatesRequest: ItemOps(_count_texts, _split_texts, _join_texts, _rcount_hidden, _rsplit_hidden, _rjoin_hidden),
    ScoreRequest: ItemOps(_count_score, _split_score, _join_score, _rcount_score, _rsplit_score, _rjoin_score),
}
RESULT_ITEM_OPS: dict[type, ItemOps] = {REQUEST_TO_RESULT[k]: v for k, v in ITEM_OPS.items()}


def item_ops(obj: Any, table: dict[type, ItemOps], what: str) -> ItemOps:
    """The split/join functions for ``obj``'s type in ``table``; a clear error for any other type."""
    try:
        return table[type(obj)]
    except KeyError:
        names = ", ".join(t.__name__ for t in table)
        raise bad_value(what, f"one of {names}", f"a {type(obj).__name__}") from None


def count_items(request: Any) -> int:
    """Number of items (rows, prompts, texts, pairs) in a batch request."""
    return item_ops(request, ITEM_OPS, "request").count(request)


def split_request(request: Any) -> list[Any]:
    """One single-item request per item of a batch request, in order."""
    return item_ops(request, ITEM_OPS, "request").split(request)


def join_requests(items: Sequence[Any]) -> Any:
    """The batch request made of single-item ``items`` (same type and settings), in order."""
    if not items:
        raise bad_value("items", "at least one request", list(items))
    return item_ops(items[0], ITEM_OPS, "items[0]").join(items)


def split_result(result: Any) -> list[Any]:
    """One single-item result per item of a batch result (usage is not carried over)."""
    return item_ops(result, RESULT_ITEM_OPS, "result").split_result(result)


def join_results(items: Sequence[Any], usage: Usage | None = None) -> Any:
    """The batch result made of single-item ``items``, in order, carrying ``usage``."""
    if not items:
        raise bad_value("items", "at least one result", list(items))
    return item_ops(items[0], RESULT_ITEM_OPS, "items[0]").join_results(items, usage or Usage())



def merge_usage(usages: Sequence[Usage]) -> Usage:
    """Sum of several calls' usage; request ids joined with ``,`` (in order); estimated if any part is."""
    ids = [u.request_id for u in usages if u.request_id]
    return Usage(
        queries=sum(u.queries for u in usages),
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        cost=sum(u.cost for u in usages),
        request_id=",".join(ids) if ids else None,
        estimated=any(u.estimated for u in usages),
    )
