"""The fusion arithmetic on logits (torch): proxy-tuning, the dynamic KL objective, top-k.

Shapes: ``zl``, ``zs`` are ``(V,)`` rows of the large and small base's logits, ``ze`` is
``(T, V)`` (one row per expert). Everything is computed in float64.

Dynamic objective (the dynamic logit fusion paper; see docs/fusion.md). With ``d_t = ze_t − zs`` and the fused
distribution ``P̃ = softmax(zl + α d_t)`` (one expert active, the others at 0)::

    J(t, α) = Σ_t' [(KL(P̃‖P) − KL(Q_t'‖Q))² + (KL(P‖P̃) − KL(Q‖Q_t'))²]

Both KL terms reduce to two per-candidate sums, ``L(α) = logsumexp(zl + α d)`` and
``g(α) = E_P̃[d]``::

    KL(P̃‖P) = lse(zl) − L(α) + α g(α)        KL(P‖P̃) = L(α) − lse(zl) − α E_P[d]

so a whole grid is one ``(T, C, V)`` tensor operation. On the uniform grid ``α_c = c·h``
the unnormalised weights ``exp(zl + α_c d)`` are a cumulative product over the candidates
(one multiplication per candidate and token, not an exponential), followed by one batched
matrix product against ``[1, d]``; everything is float64.

``prune=True`` first drops the tokens whose fused logit stays more than :data:`PRUNE_NATS`
below a lower bound of the row maximum for every α in ``[0, α_max]`` (the logit is linear
in α, so both ends suffice); their total weight is below ``V·e^-50 ≈ 3e-17`` of the row's,
under float64 round-off. It pays off only for very peaked logits, so it is off by default.

Decoding uses :func:`dynamic_weights_batch`: the same objective for a whole batch of rows at
once, by default in float32 (the float64 functions above are the reference). It works with
the large model's log-probabilities ``lp`` (one log-softmax per row, shared by every
candidate) and the centred shift ``dc = d − E_P[d]``::

    M(α) = E_P[exp(α dc)]           KL(P‖P̃) = log M(α)        KL(P̃‖P) = α E_P̃[dc] − log M(α)

(no difference of two large log-normalisers, so float32 loses little). On the grid
``α_c = c·h`` the factors ``exp(h (dc − m))^c`` (``m = max dc``, every factor ≤ 1) fill a
``(rows, experts, candidates, block)`` buffer (by doubling: r^(h+1..2h) = r^(1..h)·r^h) and
the two sums two broadcast dot products against ``p`` and ``p·dc``, block by block of the vocabulary. A row whose sums underflow in float32 (a
large model that puts less than ~e^-80 on every token the expert boosts) is recomputed with
the float64 reference.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .config import EXPERT_CHOICES

PRUNE_NATS = 50.0
_INVPHI = (5 ** 0.5 - 1) / 2


def proxy_logits(zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, alpha: Any) -> torch.Tensor:
    """``zl + Σ_t α_t (ze_t − zs)``; ``alpha`` is a float (same for every expert) or ``(T,)``."""
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1)
    return zl.double() + (a * (ze.double() - zs.double()[None])).sum(0)


def kl_targets(zs: torch.Tensor, ze: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(Q_t‖Q), KL(Q‖Q_t))``, each ``(T,)``: how far each expert moved the small base."""
    lq = torch.log_softmax(zs.double(), -1)[None]
    lqt = torch.log_softmax(ze.double(), -1)
    fwd = (lqt.exp() * (lqt - lq)).sum(-1)
    rev = (lq.exp() * (lq - lqt)).sum(-1)
    return fwd, rev


def _keep_mask(zl: torch.Tensor, d: torch.Tensor, alpha_max: float) -> torch.Tensor:
    """Tokens that can matter for some expert and some α in [0, α_max] (see module doc)."""
    hi = torch.maximum(zl[None], zl[None] + alpha_max * d)  # (T, V) max over α of the fused logit
    top = int(torch.argmax(zl))
    bound = torch.minimum(zl[top], zl[top] + alpha_max * d[:, top])  # (T,) lower bound of the row max
    return (hi >= (bound - PRUNE_NATS)[:, None]).any(0)


def kl_pair(zl: torch.Tensor, d: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(P̃‖P), KL(P‖P̃))`` for every expert row of ``d`` (T, V) and α in ``alphas`` (C,): ``(T, C)``."""
    lse_l = torch.logsumexp(zl, -1)
    e_p = (torch.softmax(zl, -1)[None] * d).sum(-1)  # E_P[d_t], (T,)
    big, g = _lse_and_mean(zl, d, alphas)
    kl_fwd = lse_l - big + alphas[None] * g
    kl_rev = big - lse_l - alphas[None] * e_p[:, None]
    return kl_fwd.clamp_min(0), kl_rev.clamp_min(0)


_local = threading.local()


def _workspace(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A reused buffer (per thread and dtype): a fresh 25 MB tensor per step costs page faults."""
    # Inference-mode and ordinary tensors don't mix, so each mode keeps its own buffer.
    key = f"buf_{dtype}_{torch.is_inference_mode_enabled()}"
    n = 1
    for x in shape:
        n *= x
    buf = getattr(_local, key, None)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype)
        setattr(_local, key, buf)
    return buf[:n].view(shape)


def _uniform_from_zero(alphas: torch.Tensor) -> bool:
    if alphas.numel() < 3 or float(alphas[0]) != 0.0:
        return False
    h = float(alphas[1])
    return h > 0 and bool(torch.allclose(alphas, torch.arange(alphas.numel(), dtype=alphas.dtype) * h, rtol=0, atol=1e-12))


def _lse_and_mean(zl: torch.Tensor, d: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``L(α) = logsumexp(zl + α d)`` and ``g(α) = E_softmax(zl + α d)[d]``, each ``(T, C)``.

    On a uniform grid ``α_c = c·h`` the unnormalised weights are
    ``exp(zl − m_l) · (exp(h (d − m_d)))^c``: a cumulative product over the candidates (one
    multiplication per candidate and token instead of an exponential), then one matrix
    product against ``[1, d]``. float64 keeps every term far from underflow unless the
    logits span hundreds of nats, where the direct form is used instead.
    """
    T, C = d.shape[0], alphas.numel()
    m_l, m_d = zl.max(), d.max(-1, keepdim=True).values  # (T, 1)
    span = float(m_l - zl.min()) + float(alphas.max()) * float((m_d.squeeze(-1) - d.min(-1).values).max()) if d.numel() else 0.0
    if _uniform_from_zero(alphas) and span < 600:
        h = float(alphas[1])
        w = _workspace((T, C, zl.numel()))
        w[:, 0] = torch.exp(zl - m_l)
        w[:, 1:] = torch.exp(h * (d - m_d))[:, None]
        w.cumprod_(dim=1)  # (T, C, V): exp(zl − m_l + α_c (d − m_d))
        rhs = torch.stack([torch.ones_like(d), d], dim=-1)  # (T, V, 2)
        sums = torch.bmm(w, rhs)  # (T, C, 2): Σ w and Σ w d
        shift = m_l + alphas[None] * m_d  # (T, C): what was taken out of the exponent
        return shift + torch.log(sums[..., 0]), sums[..., 1] / sums[..., 0]
    z = zl[None, None] + alphas[None, :, None] * d[:, None]  # (T, C, V)
    return torch.logsumexp(z, -1), (torch.softmax(z, -1) * d[:, None]).sum(-1)


def dynamic_objective(zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, alphas: torch.Tensor, *, prune: bool = False) -> torch.Tensor:
    """``J(t, α)`` for every expert ``t`` and candidate ``α``: ``(T, C)`` float64."""
    zl, zs, ze = zl.double(), zs.double(), ze.double()
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    a, b = kl_targets(zs, ze)
    d = ze - zs[None]
    if prune:
        keep = _keep_mask(zl, d, float(alphas.max()) if alphas.numel() else 0.0)
        # pruning changes neither P's normaliser in the KL formulas (computed over kept tokens
        # for both P and P̃ consistently) nor the sums beyond float64 round-off
        zl, d = zl[keep], d[:, keep]
    kl_fwd, kl_rev = kl_pair(zl, d, alphas)
    return ((kl_fwd[..., None] - a) ** 2 + (kl_rev[..., None] - b) ** 2).sum(-1)


def _golden(f: Any, lo: float, hi: float, iters: int) -> tuple[float, float]:
    """Golden-section minimum of a 1-D function on [lo, hi]: ``(x, f(x))``."""
    x1, x2 = hi - _INVPHI * (hi - lo), lo + _INVPHI * (hi - lo)
    f1, f2 = f(x1), f(x2)
    for _ in range(iters):
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - _INVPHI * (hi - lo)
            f1 = f(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + _INVPHI * (hi - lo)
            f2 = f(x2)
    return (x1, f1) if f1 <= f2 else (x2, f2)


def dynamic_weights(
    zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, alphas: torch.Tensor, *, refine: int = 0
) -> tuple[torch.Tensor, float]:
    """The weights ``(T,)`` minimising the objective (one expert at a time) and its value.

    Grid search over ``alphas``; ties go to the smaller α and the first expert. ``refine > 0``
    runs that many golden-section steps on the chosen expert's α within one grid step of the
    grid's pick, and keeps the refined α only when its objective is lower.
    """
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    obj = dynamic_objective(zl, zs, ze, alphas)
    flat = int(torch.argmin(obj.reshape(-1)))
    t, c = divmod(flat, obj.shape[1])
    best_a, best_j = float(alphas[c]), float(obj[t, c])
    if refine and alphas.numel() > 1:
        step = float(alphas[1] - alphas[0])
        lo, hi = max(float(alphas[0]), best_a - step), min(float(alphas[-1]), best_a + step)
        zl64, zs64, ze64 = zl.double(), zs.double(), ze.double()
        a, b = kl_targets(zs64, ze64)
        d = (ze64[t] - zs64)[None]

        def f(x: float) -> float:
            kf, kr = kl_pair(zl64, d, torch.tensor([x], dtype=torch.float64))
            return float(((kf[0, 0] - a) ** 2 + (kr[0, 0] - b) ** 2).sum())

        x, fx = _golden(f, lo, hi, refine)
        if fx < best_j:
            best_a, best_j = x, fx
    w = torch.zeros(ze.shape[0], dtype=torch.float64)
    w[t] = best_a
    return w, best_j


def topk_union(
    large_ids: torch.Tensor, large_logprobs: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Restrict a step to the union of the large model's returned tokens and each expert's top-k.

    Returns ``(ids (U,), zl_U, zs_U, ze_U (T, U))``. The large model's log-probability of a token
    it did not return is unknown; it is set to the lowest returned value (an upper bound on the
    truth). The fusion is then renormalised over the union: an approximation of the
    full-vocabulary fusion (exact only when the union holds all the probability mass).
    """
    parts = [large_ids.long()] + [torch.topk(ze[t], min(k, ze.shape[1])).indices for t in range(ze.shape[0])]
    ids = torch.unique(torch.cat(parts))
    floor = large_logprobs.double().min()
    zl_u = torch.full((ids.numel(),), float(floor), dtype=torch.float64)
    pos = torch.searchsorted(ids, large_ids.long())
    zl_u[pos] = large_logprobs.double()
    return ids, zl_u, zs.double()[ids], ze.double()[:, ids]


TAILS = ("small", "uniform", "floor")


def topk_fill(large_ids: torch.Tensor, large_logprobs: torch.Tensor, zs: torch.Tensor, tail: str = "small") -> torch.Tensor:
    """The large model's full-vocabulary log-probabilities ``(V,)`` from its top-k (float64).

    The returned tokens keep their log-probabilities; the mass the server did not return,
    ``1 − Σ p_returned``, is spread over the other tokens in proportion to the small base's
    distribution (``tail="small"``: exact when the two models agree on the tail's shape) or
    evenly (``"uniform"``). A top-k answer also says that no other token is more likely than
    the least likely returned one, so every filled value is capped just below that; with an
    expert equal to the small base the fused greedy choice is then the large model's own.
    """
    if tail not in ("small", "uniform"):
        raise ValueError(f"tail: expected small or uniform, received {tail!r}")
    zs = zs.double()
    ids, lp = large_ids.long(), large_logprobs.double()
    seen = torch.zeros(zs.numel(), dtype=torch.bool)
    seen[ids] = True
    # log(1 − Σ p): at least 1e-12 of the mass stays unassigned, so log stays finite
    missing = torch.log1p(-torch.logsumexp(lp, 0).exp().clamp_max(1 - 1e-12))
    if tail == "small":
        lq = torch.log_softmax(zs, -1)
        rest = torch.logsumexp(lq[~seen], 0) if bool((~seen).any()) else torch.tensor(0.0, dtype=torch.float64)
        out = missing + lq - rest
    else:
        out = torch.full_like(zs, float(missing - torch.log(torch.tensor(max(int((~seen).sum()), 1), dtype=torch.float64))))
    # strictly below the lowest returned value (a tie would let a filled token take a greedy pick)
    cap = torch.nextafter(lp.min(), torch.tensor(-float("inf"), dtype=torch.float64))
    out = torch.minimum(out, cap)
    out[ids] = lp
    return out


# --- batched, float32 by default (decoding) --------------------------------------------
_TINY = {torch.float32: 1e-30, torch.float64: 1e-290}


def kl_targets_batch(zs: torch.Tensor, ze: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(Q_t‖Q), KL(Q‖Q_t))`` for rows ``zs`` (B, V) and experts ``ze`` (B, T, V): each ``(B, T)``."""
    lq = torch.log_softmax(zs.to(dtype), -1)[:, None]
    lqt = torch.log_softmax(ze.to(dtype), -1)
    diff = lqt - lq
    fwd = (lqt.exp() * diff).sum(-1)
    rev = -(lq.exp() * diff).sum(-1)
    return fwd.clamp_min(0), rev.clamp_min(0)


def _powers(r: torch.Tensor, out: torch.Tensor) -> None:
    """``out[..., c, :] = r ** (c + 1)`` for ``r`` (B, T, k) and ``out`` (B, T, K, k), by doubling.

    Each product fills a whole range of exponents at once (``r^(h+1..2h) = r^(1..h) · r^h``),
    so K powers take ⌈log2 K⌉ + 1 vectorised multiplications; a cumulative product along the
    candidate axis ran element by element (measured 2.6x slower for K = 20).
    """
    K = out.shape[2]
    out[:, :, 0] = r
    have = 1
    while have < K:
        take = min(have, K - have)
        torch.mul(out[:, :, :take], out[:, :, have - 1 : have], out=out[:, :, have : have + take])
        have += take


CHUNK_ELEMS = 1 << 19  # elements of the candidates × vocabulary block per chunk (2 MB in float32: stays in cache)


def kl_pair_batch(zl: torch.Tensor, d: torch.Tensor, alphas: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(P̃‖P), KL(P‖P̃))`` for rows ``zl`` (B, V), shifts ``d`` (B, T, V) and grid ``alphas`` (C,): ``(B, T, C)``.

    ``alphas`` must be the uniform grid ``0, h, 2h, ...`` (what decoding searches); see the
    module doc for the formulas. With ``r = exp(h (dc − m)) ≤ 1`` the sums are
    ``S0_c = Σ_v r_v^c p_v`` and ``S1_c = Σ_v r_v^c p_v dc_v``: the powers ``r^c`` of every
    candidate are filled by doubling (:func:`_powers`) and the sums are two broadcast dot products against
    ``p`` and ``p·dc``, taken over blocks of the vocabulary of :data:`CHUNK_ELEMS` elements so
    that the (rows × experts × candidates × block) buffer stays in cache (the loop is over
    vocabulary blocks; each block is one tensor operation over every row and candidate).
    """
    B, T, V = d.shape
    C = alphas.numel()
    if not _uniform_from_zero(alphas):
        raise ValueError("kl_pair_batch needs the uniform grid 0, h, 2h, ... (use kl_pair otherwise)")
    h = float(alphas[1])
    lp = torch.log_softmax(zl.to(dtype), -1)  # once per row, shared by every expert and candidate
    p = lp.exp()
    d = d.to(dtype)
    e_p = torch.einsum("bv,btv->bt", p, d)  # E_P[d]
    dc = d - e_p[..., None]  # centred shift (B, T, V)
    m = dc.amax(-1, keepdim=True)  # (B, T, 1), >= 0
    r = torch.exp(h * (dc - m))  # (B, T, V), <= 1
    pe = p[:, None].expand(B, T, V)
    pd = pe * dc  # p·dc (B, T, V)
    s0 = torch.zeros(B, T, C, dtype=dtype)
    s1 = torch.zeros(B, T, C, dtype=dtype)
    s0[..., 0] = pe.sum(-1)  # α = 0: Σ p (≈ 1) and Σ p·dc (≈ 0)
    s1[..., 0] = pd.sum(-1)
    if C > 1:
        n = max(1, min(V, CHUNK_ELEMS // max(B * T * (C - 1), 1)))
        buf = _workspace((B * T * (C - 1) * n,), dtype)
        for v0 in range(0, V, n):
            k = min(n, V - v0)
            w = buf[: B * T * (C - 1) * k].view(B, T, C - 1, k)
            _powers(r[:, :, v0 : v0 + k], w)  # r^1 .. r^(C-1)
            # Two broadcast dot products, not one (C-1)×k @ k×2 matrix product per row: a
            # two-column product runs far below BLAS speed (measured 2x slower at B = 16).
            s0[..., 1:] += torch.linalg.vecdot(w, pe[:, :, None, v0 : v0 + k])
            s1[..., 1:] += torch.linalg.vecdot(w, pd[:, :, None, v0 : v0 + k])
    a = alphas.to(dtype)
    log_m = torch.log(s0) - torch.log(s0[..., :1]) + a * m  # log E_P[exp(α dc)]; exact 0 at α = 0
    kl_fwd = a * (s1 / s0) - log_m
    kl_rev = log_m
    bad = ~(s0 > _TINY[dtype]).all(-1) | ~torch.isfinite(kl_fwd).all(-1) | ~torch.isfinite(kl_rev).all(-1)  # (B, T)
    if bool(bad.any()):  # underflow in float32: the float64 reference for those rows
        for b, t in bad.nonzero().tolist():
            kf, kr = kl_pair(zl[b].double(), d[b, t : t + 1].double(), alphas.double())
            kl_fwd[b, t], kl_rev[b, t] = kf[0].to(dtype), kr[0].to(dtype)
    return kl_fwd.clamp_min(0), kl_rev.clamp_min(0)


def dynamic_objective_batch(zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, alphas: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``J(t, α)`` for every row, expert and candidate: ``(B, T, C)`` (rows ``zl``, ``zs`` (B, V), ``ze`` (B, T, V))."""
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    a, b = kl_targets_batch(zs, ze, dtype)  # (B, T)
    kf, kr = kl_pair_batch(zl, ze.to(dtype) - zs.to(dtype)[:, None], alphas, dtype)  # (B, T, C)
    # Σ over the experts t' of the target terms, with expert t active at α (the others at 0)
    return ((kf[..., None] - a[:, None, None]) ** 2 + (kr[..., None] - b[:, None, None]) ** 2).sum(-1)


def choose_weights_batch(obj: torch.Tensor, alphas: torch.Tensor, choice: str = "step", memory: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(B, T)`` (float64, one expert active per row) and their objective ``(B,)`` from ``obj`` (B, T, C).

    ``choice`` says which expert is active (ties: the first expert, then the smaller α):

    * ``step``: the pair (expert, α) minimising this step's objective (the paper's search);
    * ``first``: as ``step`` until some expert gets α > 0, then that expert for the rest of
      the answer (only its α is searched);
    * ``cumulative``: the expert whose best objective, summed over the answer's steps so far,
      is lowest (a switch needs the other expert to be better on the sum, not on one step).

    ``first`` and ``cumulative`` keep per-row state across steps in ``memory`` (B, T) float64,
    updated in place (zeros at an answer's first step): the locked expert's 1 (``first``) or
    the running sums (``cumulative``).
    """
    if choice not in EXPERT_CHOICES:
        raise ValueError(f"choice: expected one of {', '.join(EXPERT_CHOICES)}, received {choice!r}")
    B, T, C = obj.shape
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    if choice != "step" and (memory is None or tuple(memory.shape) != (B, T)):
        raise ValueError(f"memory: expected a ({B}, {T}) tensor for choice={choice!r}, received {None if memory is None else tuple(memory.shape)}")
    rows = torch.arange(B)
    if choice == "cumulative":
        memory += obj.amin(-1).double()
        t = torch.argmin(memory, dim=1)  # first minimum: ties go to the first expert
        c = torch.argmin(obj[rows, t], dim=1)
    else:
        o = obj
        if choice == "first":
            locked = memory > 0  # (B, T); rows with no lock search every expert
            o = obj.masked_fill((locked.any(1, keepdim=True) & ~locked)[..., None], float("inf"))
        flat = torch.argmin(o.reshape(B, T * C), dim=1)  # first minimum: expert-major, then α
        t, c = flat // C, flat % C
        if choice == "first":
            new = (alphas[c] > 0) & ~(memory > 0).any(1)
            memory[rows[new], t[new]] = 1.0
    best = obj[rows, t, c].double()
    w = torch.zeros(B, T, dtype=torch.float64)
    w[rows, t] = alphas[c]
    return w, best


def dynamic_weights_batch(
    zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, alphas: torch.Tensor, *, refine: int = 0, dtype: torch.dtype = torch.float32,
    choice: str = "step", memory: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(B, T)`` (float64) minimising the objective per row, and the objective ``(B,)``.

    One tensor operation over rows × experts × candidates × vocabulary; ``dtype`` float32
    (default, fast) or float64. Ties go to the first expert, then the smaller α (as
    :func:`dynamic_weights`). ``refine`` golden-section steps (float64 reference, per row)
    as in :func:`dynamic_weights` (``choice="step"`` only). ``choice`` and ``memory``: which
    expert is active, :func:`choose_weights_batch`.
    """
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    # Tiny or irregular grids, and refinement (which re-searches each row in float64 anyway):
    # the reference, row by row.
    if refine or alphas.numel() < 3 or not _uniform_from_zero(alphas):
        if choice == "step":
            out = [dynamic_weights(zl[i], zs[i], ze[i], alphas, refine=refine) for i in range(zl.shape[0])]
            return torch.stack([w for w, _ in out]), torch.tensor([j for _, j in out], dtype=torch.float64)
        if refine:
            raise ValueError(f"refine: expected 0 with choice={choice!r} (refinement re-searches one step alone), received {refine}")
        obj = torch.stack([dynamic_objective(zl[i], zs[i], ze[i], alphas) for i in range(zl.shape[0])])
    else:
        obj = dynamic_objective_batch(zl, zs, ze, alphas, dtype)  # (B, T, C)
    return choose_weights_batch(obj, alphas, choice, memory)


def proxy_logits_batch(zl: torch.Tensor, zs: torch.Tensor, ze: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``zl + Σ_t w_t (ze_t − zs)`` for rows ``zl``, ``zs`` (B, V), ``ze`` (B, T, V), weights ``w`` (B, T); float64."""
    d = ze.double() - zs.double()[:, None]  # exactly 0 where an expert equals the small base
    return zl.double() + torch.einsum("bt,btv->bv", w.double(), d)
