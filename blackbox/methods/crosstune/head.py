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
                 use_labels: bool = True, prior: bool = True, prior_scale: float = 10.0, rank: int = 96) -> None:
        super().__init__()
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
        h, dh = self.heads, self.dim // self.heads
        xs = self.project(x) if projected is None else projected
        xs = self.drop(xs)
        e = self.label_matrix(labels)
        q = self.q(e).view(self.n_classes, h, dh)                   # (C, H, dh)
        # keys and values of the real tokens only (padding is often most of a batch)
        valid = xs[mask]                                             # (N_tokens, rank)
        k = xs.new_zeros(b, t, self.dim).index_put((mask.nonzero(as_tuple=True)), self.k(valid)).view(b, t, h, dh)
        v = xs.new_zeros(b, t, self.dim).index_put((mask.nonzero(as_tuple=True)), self.v(valid)).view(b, t, h, dh)
        logits = torch.einsum("chd,bthd->bcht", q, k) / math.sqrt(dh)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        att = torch.softmax(logits, dim=-1)                          # (B, C, H, T)
        z = torch.einsum("bcht,bthd->bchd", att, v).reshape(b, self.n_classes, self.dim)
        z = self.o(self.drop(z))                                     # (B, C, m)
        u = self.u(e)                                                # (C, m)
        scores = (z * u[None]).sum(-1) / math.sqrt(self.dim) + self.bias
        if self.prior:
            cos = self.prior_scores(x, mask, labels) if prior is None else prior
            scores = scores + self.alpha * cos
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
    )


class _Batch:
    """Training tensors with the parameter-free parts (projection, prior) computed once."""

    def __init__(self, head: CrossTuneHead, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, w: torch.Tensor, labels: torch.Tensor | None) -> None:
        with torch.no_grad():
            self.proj = head.project(x)
            self.prior = head.prior_scores(x, mask, labels)
        self.x, self.mask, self.y, self.w, self.labels = x, mask, y, w, labels

    def scores(self, head: CrossTuneHead) -> torch.Tensor:
        return head(self.x, self.mask, self.labels, projected=self.proj, prior=self.prior)


def _train(head: CrossTuneHead, data: _Batch, config: Any, epochs: int, val: _Batch | None) -> tuple[int, list[dict[str, float]]]:
    """Full-batch AdamW; returns the best epoch on ``val`` (or ``epochs``) and the history."""
    # The prior's weight is one scalar: it gets a larger step and no decay, so a poor zero-shot
    # prior fades within the few epochs early stopping allows.
    rest = [p for n, p in head.named_parameters() if p.requires_grad and n != "alpha"]
    groups = [{"params": rest}]
    if head.alpha.requires_grad:
        groups.append({"params": [head.alpha], "lr": config.lr * 30, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    best, best_epoch, best_state, bad = float("inf"), epochs, None, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        head.train()
        opt.zero_grad()
        loss = (nn.functional.cross_entropy(data.scores(head), data.y, reduction="none") * data.w).sum() / data.w.sum()
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
    return best_epoch, history


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
             val_index: np.ndarray, weights: np.ndarray | None = None) -> tuple[CrossTuneHead, dict[str, Any]]:
    """Train a head on ``x[train]``, early-stop on ``x[val_index]``, optionally refit on all.

    ``weights`` (per example) lets generated examples count differently; the held-out part
    always comes from the original few-shot data.
    """
    with _OneThread():
        return _fit_head(x, mask, y, labels, n_classes, config, val_index, weights)


def _fit_head(x: np.ndarray, mask: np.ndarray, y: np.ndarray, labels: np.ndarray | None, n_classes: int, config: Any,
              val_index: np.ndarray, weights: np.ndarray | None) -> tuple[CrossTuneHead, dict[str, Any]]:
    t0 = time.perf_counter()
    n = len(x)
    w = np.ones(n, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    train_index = np.setdiff1d(np.arange(n), val_index)
    tokens = x[mask].astype(np.float64)
    mu = tokens.mean(0)
    sd = tokens.std(0)
    sd = sd + 1e-3 * (sd.mean() + 1e-8)
    basis = _pca_basis(((tokens - mu) / sd).astype(np.float32), config.rank, config.seed)
    tx, tm = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(mask)
    ty, tw = torch.as_tensor(y, dtype=torch.long), torch.as_tensor(w)
    tl = None if labels is None else torch.as_tensor(labels, dtype=torch.float32)

    def new_head() -> CrossTuneHead:
        _seed_all(config.seed)
        head = build_head(x.shape[2], n_classes, config)
        head.set_stats(mu, sd, basis)
        return head

    head = new_head()
    info: dict[str, Any] = {"n_train": int(len(train_index)), "n_val": int(len(val_index))}
    if len(val_index):
        vi, ti = torch.as_tensor(val_index), torch.as_tensor(train_index)
        train = _Batch(head, tx[ti], tm[ti], ty[ti], tw[ti], tl)
        val = _Batch(head, tx[vi], tm[vi], ty[vi], tw[vi], tl)
        best_epoch, history = _train(head, train, config, config.max_epochs, val)
        info.update(best_epoch=best_epoch, epochs_run=len(history), val_acc=max((r.get("val_acc", 0.0) for r in history), default=0.0))
        if config.refit:
            head = new_head()
            _, history = _train(head, _Batch(head, tx, tm, ty, tw, tl), config, best_epoch, None)
            info["refit_epochs"] = best_epoch
    else:
        best_epoch, history = _train(head, _Batch(head, tx, tm, ty, tw, tl), config, config.max_epochs, None)
        info.update(best_epoch=best_epoch, epochs_run=len(history))
    info["train_seconds"] = time.perf_counter() - t0
    info["final_loss"] = history[-1]["loss"] if history else None
    return head, info


def head_scores(head: CrossTuneHead, x: np.ndarray, mask: np.ndarray, labels: np.ndarray | None, batch: int = 256) -> np.ndarray:
    """``(n, C)`` scores in evaluation mode, in batches."""
    head.eval()
    tl = None if labels is None else torch.as_tensor(labels, dtype=torch.float32)
    out = []
    with torch.no_grad(), _OneThread():
        for s in range(0, len(x), batch):
            out.append(head(torch.as_tensor(x[s : s + batch]), torch.as_tensor(mask[s : s + batch]), tl).double().numpy())
    return np.concatenate(out, 0)


def head_state(head: CrossTuneHead) -> dict[str, np.ndarray]:
    """The head's tensors as numpy arrays (for safetensors)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in head.state_dict().items()}


def load_head(state: dict[str, np.ndarray], d: int, n_classes: int, config: Any) -> CrossTuneHead:
    """Rebuild a head from :func:`head_state` arrays."""
    head = build_head(d, n_classes, config)
    head.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    head.eval()
    return head
