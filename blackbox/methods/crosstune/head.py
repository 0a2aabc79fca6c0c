"""The CrossTune head (torch): label descriptions attend over the input's tokens.

For an input with token states ``X (T, d)`` and label descriptions with pooled states
``E (C, d)`` (both standardised with statistics of the few-shot inputs):

1. **Cross-attention, labels → input.** Each class description is a query; the input's
   tokens are keys and values; ``H`` heads. Class ``c`` gets its own summary ``z_c`` of the
   input: the evidence the input holds *for that label*.
2. **Relatedness.** ``s_c = <W_o z_c, W_u e_c> / sqrt(m) + b_c``: the summary is compared with
   a projection of the same description, so the classifier weights of a class are generated
   from its description (shared parameters across classes: few shots go further).
3. **Zero-shot residual** (``prior``): ``+ alpha * cos(x̄, e_c)`` with a learnt ``alpha``,
   initialised at ``prior_scale``: training starts from the zero-shot classifier and learns
   a correction to it.

``use_labels=False`` (the ablation) replaces ``E`` by learnt class embeddings and drops the
residual. With vector features (``T == 1``) step 1 reduces to a value projection and the
head is a description-conditioned bilinear classifier.

Training (:func:`fit_head`): by default a cross-validated ensemble
(:class:`CrossTuneEnsemble`): one head per stratified fold of the few-shot set, trained on
the other folds and early-stopped on its own (``inner_epochs``: trained for an epoch count
chosen on the other folds only, so its own fold scores it with no choice made there);
predictions average the heads' log-probabilities. ``folds=1`` gives the single head (held-out quarter, then refit).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn


class CrossTuneHead(nn.Module):
    """Multi-head cross-attention from label descriptions to input tokens; one score per class."""

    def __init__(self, d: int, n_classes: int, *, dim: int = 64, heads: int = 4, dropout: float = 0.1,
                 use_labels: bool = True, prior: bool = True, prior_scale: float = 10.0, rank: int = 96,
                 linear: bool = False, attention: bool = True) -> None:
        super().__init__()
        self.attention = attention
        self.d, self.n_classes, self.dim, self.heads = d, n_classes, dim, heads
        self.rank = r = min(rank, d)
        self.use_labels, self.prior = use_labels, prior and use_labels
        self.q = nn.Linear(r, dim)
        self.k = nn.Linear(r, dim)
        self.v = nn.Linear(r, dim)
        self.o = nn.Linear(dim, dim)
        nn.init.zeros_(self.o.weight)  # scores start at the zero-shot prior (or uniform)
        nn.init.zeros_(self.o.bias)
        self.u = nn.Linear(r, dim)
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.drop = nn.Dropout(dropout)
        if not use_labels:
            self.class_emb = nn.Parameter(torch.randn(n_classes, r))
        self.alpha = nn.Parameter(torch.tensor(float(prior_scale)), requires_grad=self.prior)
        # optional residual linear term on the pooled (projected) input, zero at the start
        self.linear = linear
        if linear:
            self.lin = nn.Linear(r, n_classes, bias=False)
            nn.init.zeros_(self.lin.weight)
        # fixed, label-free preprocessing of the black-box features (set from the training
        # inputs): standardisation, then a PCA basis of the standardised tokens
        self.register_buffer("mu", torch.zeros(d))
        self.register_buffer("sd", torch.ones(d))
        self.register_buffer("basis", torch.eye(d)[:, :r].clone())

    def set_stats(self, mu: np.ndarray, sd: np.ndarray, basis: np.ndarray) -> None:
        """Feature mean and scale, and the ``(d, rank)`` PCA basis of standardised tokens."""
        self.mu.copy_(torch.as_tensor(mu, dtype=torch.float32))
        self.sd.copy_(torch.as_tensor(sd, dtype=torch.float32))
        self.basis.copy_(torch.as_tensor(basis, dtype=torch.float32))

    def label_matrix(self, labels: torch.Tensor | None) -> torch.Tensor:
        """``(C, rank)`` projected label representations (or the learnt class embeddings)."""
        if not self.use_labels:
            return self.class_emb
        assert labels is not None
        return ((labels - self.mu) / self.sd) @ self.basis

    def prior_scores(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Zero-shot cosine ``(B, C)`` between the pooled standardised input and each description."""
        if not self.prior or labels is None:
            return torch.zeros(x.shape[0], self.n_classes)
        m = mask[..., None].float()
        pooled = ((x - self.mu) / self.sd * m).sum(1) / m.sum(1).clamp_min(1.0)
        e = (labels - self.mu) / self.sd
        return nn.functional.normalize(pooled, dim=-1) @ nn.functional.normalize(e, dim=-1).T

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise and project token states to the PCA space, ``(B, T, rank)``."""
        return ((x - self.mu) / self.sd) @ self.basis

    def forward(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None, return_attention: bool = False,
                projected: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> Any:
        """``x (B, T, d)``, ``mask (B, T)`` bool, ``labels (C, d)`` pooled descriptions → ``(B, C)`` scores.

        ``projected`` (= :meth:`project` of x) and ``prior`` (= :meth:`prior_scores`) can be
        passed precomputed: they do not depend on trained parameters.
        """
        b, t = mask.shape
        if not self.attention:
            # ablation: the learnt prior and class biases alone (no attention, no description projection)
            scores = self.bias.expand(b, self.n_classes)
            if self.prior:
                scores = scores + self.alpha * (self.prior_scores(x, mask, labels) if prior is None else prior)
            return (scores, None) if return_attention else scores
        h, dh = self.heads, self.dim // self.heads
        xs = self.project(x) if projected is None else projected
        if self.training and self.drop.p > 0:
            # dropout on the real tokens only (padding is masked anyway, and often most of a
            # batch: drawing its noise was half of the training time)
            idx = mask.nonzero(as_tuple=True)
            xs = xs.index_put(idx, self.drop(xs[idx]))
        e = self.label_matrix(labels)
        r = xs.shape[-1]
        q = self.q(e).view(self.n_classes, h, dh)                   # (C, H, dh)
        # Keys and values are linear in the tokens, so the key projection is folded into the
        # queries and the value projection applied after pooling: the same attention as
        # softmax(q . (W_k x_t + b_k)) weighting W_v x_t + b_v (q . b_k is constant over t and
        # cancels in the softmax; the weights sum to one), at a third of the cost.
        qk = torch.einsum("chd,hdr->chr", q, self.k.weight.view(h, dh, r))              # (C, H, rank)
        logits = torch.einsum("chr,btr->bcht", qk, xs) / math.sqrt(dh)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        att = torch.softmax(logits, dim=-1)                          # (B, C, H, T)
        pooled_x = torch.einsum("bcht,btr->bchr", att, xs)           # (B, C, H, rank)
        z = torch.einsum("bchr,hdr->bchd", pooled_x, self.v.weight.view(h, dh, r)) + self.v.bias.view(h, dh)
        z = z.reshape(b, self.n_classes, self.dim)
        z = self.o(self.drop(z))                                     # (B, C, m)
        u = self.u(e)                                                # (C, m)
        scores = (z * u[None]).sum(-1) / math.sqrt(self.dim) + self.bias
        if self.prior:
            cos = self.prior_scores(x, mask, labels) if prior is None else prior
            scores = scores + self.alpha * cos
        if self.linear:
            m = mask[..., None].float()
            pooled = (xs * m).sum(1) / m.sum(1).clamp_min(1.0)             # (B, rank), after dropout
            scores = scores + self.lin(pooled)
        return (scores, att) if return_attention else scores


def _seed_all(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def build_head(d: int, n_classes: int, config: Any) -> CrossTuneHead:
    """A head with the sizes of ``config`` (a :class:`CrossTuneConfig`)."""
    return CrossTuneHead(
        d, n_classes, dim=config.dim, heads=config.heads, dropout=config.dropout,
        use_labels=config.method == "crosstune", prior=config.prior, prior_scale=config.prior_scale, rank=config.rank,
        linear=getattr(config, "linear", False), attention=getattr(config, "attention", True),
    )


class CrossTuneEnsemble(nn.Module):
    """The heads of a cross-validated fit; its score is the mean of their log-probabilities.

    Member ``k`` was trained without fold ``k`` of the few-shot set and early-stopped on it,
    so every example is in the training set of all members but one; averaging removes
    much of the variance that 12-16 examples per class leave in a single head.
    """

    def __init__(self, members: list[CrossTuneHead]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.n_classes = members[0].n_classes

    def forward(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        return torch.stack([torch.log_softmax(m(x, mask, labels, **kw), -1) for m in self.members]).mean(0)


def build_model(d: int, n_classes: int, config: Any, members: int) -> nn.Module:
    """One head (``members <= 1``) or an ensemble of ``members`` heads."""
    if members <= 1:
        return build_head(d, n_classes, config)
    return CrossTuneEnsemble([build_head(d, n_classes, config) for _ in range(members)])


class _Batch:
    """Training tensors with the parameter-free parts (projection, prior) computed once."""

    def __init__(self, head: CrossTuneHead, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, w: torch.Tensor, labels: torch.Tensor | None) -> None:
        with torch.no_grad():
            self.proj = head.project(x)
            self.prior = head.prior_scores(x, mask, labels)
        self.x, self.mask, self.y, self.w, self.labels = x, mask, y, w, labels

    def scores(self, head: CrossTuneHead) -> torch.Tensor:
        return head(self.x, self.mask, self.labels, projected=self.proj, prior=self.prior)


def _train(head: CrossTuneHead, data: _Batch, config: Any, epochs: int, val: _Batch | None) -> tuple[int, list[dict[str, float]], float]:
    """Full-batch AdamW; returns the best epoch on ``val`` (or ``epochs``), the history and
    the best held-out loss (nan without ``val``)."""
    # The prior's weight is one scalar: it gets a larger step and no decay, so a poor zero-shot
    # prior fades within the few epochs early stopping allows.
    rest = [p for n, p in head.named_parameters() if p.requires_grad and n != "alpha"]
    groups = [{"params": rest}]
    if head.alpha.requires_grad:
        groups.append({"params": [head.alpha], "lr": config.lr * 30, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    best, best_epoch, best_state, bad = float("inf"), epochs, None, 0
    history: list[dict[str, float]] = []
    wsum = data.w.sum()
    for epoch in range(1, epochs + 1):
        head.train()
        opt.zero_grad()
        loss = (nn.functional.cross_entropy(data.scores(head), data.y, reduction="none") * data.w).sum() / wsum
        loss.backward()
        opt.step()
        row = {"epoch": epoch, "loss": float(loss.detach())}
        if val is not None:
            head.eval()
            with torch.no_grad():
                vs = val.scores(head)
                vloss = float(nn.functional.cross_entropy(vs, val.y))
                vacc = float((vs.argmax(1) == val.y).float().mean())
            row.update(val_loss=vloss, val_acc=vacc)
            if vloss < best - 1e-4:
                best, best_epoch, bad = vloss, epoch, 0
                best_state = {k: t.detach().clone() for k, t in head.state_dict().items()}
            else:
                bad += 1
                if bad >= config.patience:
                    history.append(row)
                    break
        history.append(row)
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return best_epoch, history, (best if val is not None else float("nan"))


def _train_curves(head: CrossTuneHead, data: _Batch, config: Any, vals: list[_Batch]) -> list[int]:
    """Full-batch AdamW as :func:`_train`, watching several held-out sets at once; returns the
    best epoch on each (lowest loss, same tolerance and patience), stopping when every set has
    run out of patience. No state is kept: only the epoch counts are used."""
    rest = [p for n, p in head.named_parameters() if p.requires_grad and n != "alpha"]
    groups = [{"params": rest}]
    if head.alpha.requires_grad:
        groups.append({"params": [head.alpha], "lr": config.lr * 30, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    best = [float("inf")] * len(vals)
    best_epoch = [config.max_epochs] * len(vals)
    bad = [0] * len(vals)
    wsum = data.w.sum()
    for epoch in range(1, config.max_epochs + 1):
        head.train()
        opt.zero_grad()
        loss = (nn.functional.cross_entropy(data.scores(head), data.y, reduction="none") * data.w).sum() / wsum
        loss.backward()
        opt.step()
        head.eval()
        with torch.no_grad():
            for i, val in enumerate(vals):
                vloss = float(nn.functional.cross_entropy(val.scores(head), val.y))
                if vloss < best[i] - 1e-4:
                    best[i], best_epoch[i], bad[i] = vloss, epoch, 0
                else:
                    bad[i] += 1
        if min(bad) >= config.patience:
            break
    return best_epoch


def _pca_basis(z: np.ndarray, rank: int, seed: int) -> np.ndarray:
    """Top-``rank`` principal directions ``(d, rank)`` of the rows of ``z`` (already centred-ish)."""
    d = z.shape[1]
    r = min(rank, d)
    if r == d:
        return np.eye(d, dtype=np.float32)
    if len(z) > 4000:  # enough rows for the covariance; keeps the SVD cheap
        z = z[np.random.default_rng([seed, 9]).choice(len(z), 4000, replace=False)]
    z = z - z.mean(0)
    cov = z.T.astype(np.float64) @ z / max(len(z) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:r]
    basis = vecs[:, order]
    basis *= np.sign(basis[np.abs(basis).argmax(0), np.arange(r)])  # deterministic signs
    return basis.astype(np.float32)


class _OneThread:
    """The head's tensors are tiny: one torch thread is faster than several, and on a loaded
    machine extra threads stall at every op's barrier (measured: ~5x slower with 2 threads)."""

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.old)


def fit_head(x: np.ndarray, mask: np.ndarray, y: np.ndarray, labels: np.ndarray | None, n_classes: int, config: Any,
             val_index: np.ndarray | None = None, weights: np.ndarray | None = None,
             folds: list[np.ndarray] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train the head(s); returns the model and a report.

    * ``folds`` (a list of held-out index arrays, two or more): one head per fold, trained
      on everything else and early-stopped on its fold; the model is their
      :class:`CrossTuneEnsemble` (no refit). The report holds the out-of-fold loss and
      accuracy (each held-out example scored by the head that did not see it).
    * otherwise ``val_index``: one head, early-stopped on it, then (``config.refit``)
      retrained on all rows for the chosen number of epochs.

    ``weights`` (per row, or one row of weights per fold) lets generated examples count
    differently or be left out of one fold's training (weight 0). Held-out rows always
    come from the original few-shot data.
    """
    with _OneThread():
        if folds is not None and len(folds) > 1:
            return _fit_folds(x, mask, y, labels, n_classes, config, folds, weights)
        return _fit_head(x, mask, y, labels, n_classes, config, np.zeros(0, dtype=np.int64) if val_index is None else val_index, weights)


def _stats(x: np.ndarray, mask: np.ndarray, config: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokens = x[mask].astype(np.float64)
    mu = tokens.mean(0)
    sd = tokens.std(0)
    sd = sd + 1e-3 * (sd.mean() + 1e-8)
    basis = _pca_basis(((tokens - mu) / sd).astype(np.float32), config.rank, config.seed)
    return mu, sd, basis


def _fit_folds(x: np.ndarray, mask: np.ndarray, y: np.ndarray, labels: np.ndarray | None, n_classes: int, config: Any,
               folds: list[np.ndarray], weights: np.ndarray | None) -> tuple[nn.Module, dict[str, Any]]:
    t0, c0 = time.perf_counter(), time.process_time()
    n = len(x)
    w = np.ones((len(folds), n), dtype=np.float32) if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float32), (len(folds), n))
    mu, sd, basis = _stats(x, mask, config)
    tx, tm = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(mask)
    ty = torch.as_tensor(y, dtype=torch.long)
    tl = None if labels is None else torch.as_tensor(labels, dtype=torch.float32)
    members, epochs, run = [], [], 0
    oof = np.zeros((n, n_classes))
    held = np.zeros(n, dtype=bool)
    inner = _inner_epochs(x, mask, y, tl, n_classes, config, folds, w, (mu, sd, basis)) if getattr(config, "inner_epochs", False) else None
    for k, vi in enumerate(folds):
        if inner is not None:
            # fold k's head trains for an epoch count chosen without fold k (inner splits of
            # the other folds), so fold k scores it out of fold with no choice made on it
            _seed_all(config.seed * 1009 + k)
            head = build_head(x.shape[2], n_classes, config)
            head.set_stats(mu, sd, basis)
            ti = np.setdiff1d(np.flatnonzero(w[k] > 0), vi)
            tvi, tti = torch.as_tensor(vi), torch.as_tensor(ti)
            train = _Batch(head, tx[tti], tm[tti], ty[tti], torch.as_tensor(np.ascontiguousarray(w[k][ti])), tl)
            _, history, _ = _train(head, train, config, inner[k], None)
            val = _Batch(head, tx[tvi], tm[tvi], ty[tvi], torch.ones(len(vi)), tl)
            with torch.no_grad():
                oof[vi] = torch.log_softmax(val.scores(head), -1).double().numpy()
            held[vi] = True
            members.append(head)
            epochs.append(inner[k])
            run += len(history)
            continue
        _seed_all(config.seed * 1009 + k)
        head = build_head(x.shape[2], n_classes, config)
        head.set_stats(mu, sd, basis)
        ti = np.setdiff1d(np.flatnonzero(w[k] > 0), vi)  # a head never trains on its own fold
        tvi, tti = torch.as_tensor(vi), torch.as_tensor(ti)
        train = _Batch(head, tx[tti], tm[tti], ty[tti], torch.as_tensor(np.ascontiguousarray(w[k][ti])), tl)
        val = _Batch(head, tx[tvi], tm[tvi], ty[tvi], torch.ones(len(vi)), tl)
        best_epoch, history, _ = _train(head, train, config, config.max_epochs, val)
        with torch.no_grad():
            oof[vi] = torch.log_softmax(val.scores(head), -1).double().numpy()
        held[vi] = True
        members.append(head)
        epochs.append(best_epoch)
        run += len(history)
    yi = y[held]
    oof_loss = float(-oof[held][np.arange(len(yi)), yi].mean())
    oof_acc = float((oof[held].argmax(1) == yi).mean())
    info: dict[str, Any] = {
        "inner_epochs": inner is not None,
        "members": len(folds), "n_train": int(n), "n_val": int(held.sum()), "best_epoch": int(round(float(np.mean(epochs)))),
        "best_epochs": [int(e) for e in epochs], "epochs_run": int(run), "oof_loss": oof_loss, "oof_acc": oof_acc,
        "val_acc": oof_acc, "train_seconds": time.perf_counter() - t0, "train_cpu_seconds": time.process_time() - c0,
        "_oof": oof,  # out-of-fold log-probabilities (n, C), for the model selection; not stored
    }
    return CrossTuneEnsemble(members), info


def _inner_epochs(x: np.ndarray, mask: np.ndarray, y: np.ndarray, tl: torch.Tensor | None, n_classes: int, config: Any,
                  folds: list[np.ndarray], w: np.ndarray, stats: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[int]:
    """Epoch count per fold ``k``, chosen on the other folds only: for each other fold ``j``, a
    head trained on the folds other than ``j`` and ``k`` is early-stopped on ``j``; fold ``k``
    gets the mean of those best epochs. One head per pair of folds serves both (its best epoch
    on ``j`` counts for ``k`` and its best epoch on ``k`` for ``j``): K(K-1)/2 inner heads.
    Generated rows train a pair's head only when neither fold's weights exclude them."""
    mu, sd, basis = stats
    tx, tm, ty = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(mask), torch.as_tensor(y, dtype=torch.long)
    found: dict[int, list[int]] = {k: [] for k in range(len(folds))}
    p = 0
    for k in range(len(folds)):
        for j in range(k + 1, len(folds)):
            _seed_all(config.seed * 1009 + 100 + p)
            p += 1
            head = build_head(x.shape[2], n_classes, config)
            head.set_stats(mu, sd, basis)
            wk = np.minimum(w[k], w[j])
            ti = np.setdiff1d(np.flatnonzero(wk > 0), np.concatenate([folds[k], folds[j]]))
            tti = torch.as_tensor(ti)
            train = _Batch(head, tx[tti], tm[tti], ty[tti], torch.as_tensor(np.ascontiguousarray(wk[ti])), tl)
            vals = [_Batch(head, tx[torch.as_tensor(folds[i])], tm[torch.as_tensor(folds[i])], ty[torch.as_tensor(folds[i])],
                           torch.ones(len(folds[i])), tl) for i in (j, k)]
            on_j, on_k = _train_curves(head, train, config, vals)
            found[k].append(on_j)  # chosen on j, used for k's head
            found[j].append(on_k)
    return [max(1, int(round(float(np.mean(e))))) for e in (found[k] for k in range(len(folds)))]


def _fit_head(x: np.ndarray, mask: np.ndarray, y: np.ndarray, labels: np.ndarray | None, n_classes: int, config: Any,
              val_index: np.ndarray, weights: np.ndarray | None) -> tuple[CrossTuneHead, dict[str, Any]]:
    t0, c0 = time.perf_counter(), time.process_time()
    n = len(x)
    w = np.ones(n, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32).reshape(-1, n)[0]
    train_index = np.setdiff1d(np.arange(n), val_index)
    mu, sd, basis = _stats(x, mask, config)
    tx, tm = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(mask)
    ty, tw = torch.as_tensor(y, dtype=torch.long), torch.as_tensor(w)
    tl = None if labels is None else torch.as_tensor(labels, dtype=torch.float32)

    def new_head() -> CrossTuneHead:
        _seed_all(config.seed)
        head = build_head(x.shape[2], n_classes, config)
        head.set_stats(mu, sd, basis)
        return head

    head = new_head()
    info: dict[str, Any] = {"members": 1, "n_train": int(len(train_index)), "n_val": int(len(val_index))}
    if len(val_index):
        vi, ti = torch.as_tensor(val_index), torch.as_tensor(train_index)
        train = _Batch(head, tx[ti], tm[ti], ty[ti], tw[ti], tl)
        val = _Batch(head, tx[vi], tm[vi], ty[vi], torch.ones(len(vi)), tl)
        best_epoch, history, best = _train(head, train, config, config.max_epochs, val)
        info.update(best_epoch=best_epoch, epochs_run=len(history), val_acc=max((r.get("val_acc", 0.0) for r in history), default=0.0),
                    oof_loss=best)
        if config.refit:
            head = new_head()
            _, history, _ = _train(head, _Batch(head, tx, tm, ty, tw, tl), config, best_epoch, None)
            info["refit_epochs"] = best_epoch
    else:
        best_epoch, history, _ = _train(head, _Batch(head, tx, tm, ty, tw, tl), config, config.max_epochs, None)
        info.update(best_epoch=best_epoch, epochs_run=len(history))
    info["train_seconds"] = time.perf_counter() - t0
    info["train_cpu_seconds"] = time.process_time() - c0
    info["final_loss"] = history[-1]["loss"] if history else None
    return head, info


def head_scores(head: nn.Module, x: np.ndarray, mask: np.ndarray, labels: np.ndarray | None, batch: int = 256) -> np.ndarray:
    """``(n, C)`` scores in evaluation mode, in batches."""
    head.eval()
    tl = None if labels is None else torch.as_tensor(labels, dtype=torch.float32)
    out = []
    with torch.no_grad(), _OneThread():
        for s in range(0, len(x), batch):
            out.append(head(torch.as_tensor(x[s : s + batch]), torch.as_tensor(mask[s : s + batch]), tl).double().numpy())
    return np.concatenate(out, 0)


def head_state(head: nn.Module) -> dict[str, np.ndarray]:
    """The head's tensors as numpy arrays (for safetensors)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in head.state_dict().items()}


def load_head(state: dict[str, np.ndarray], d: int, n_classes: int, config: Any) -> nn.Module:
    """Rebuild a head (or an ensemble of heads) from :func:`head_state` arrays."""
    members = len({k.split(".")[1] for k in state if k.startswith("members.")})
    head = build_model(d, n_classes, config, members)
    head.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    head.eval()
    return head
