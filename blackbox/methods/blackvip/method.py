"""BlackVIP training, evaluation and prediction against a black-box image classifier.

One step: the optimizer asks for the 2q (or q+1) probe parameter vectors; the prompts of all
probes for one shared minibatch are rendered locally and sent to the black box in one
batched call; one loss per probe goes back to the optimizer. Only the black box's
probabilities are used. Run directories resume exactly (see ``docs/blackvip.md``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from blackbox.errors import ConfigError, ObjectiveError, RunError, bad_value
from blackbox.optim.recipes import make_optimizer
from blackbox.provider import Provider, require
from blackbox.runs import (
    atomic_write_json,
    discard_unless_checkpointed,
    load_tensors,
    prepare_run_dir,
    save_tensors,
    trim_history,
)
from blackbox.types import Capability, ClassifyRequest

from ..base import read_config
from .config import BlackVIPConfig
from .data import ImageSet, few_shot_split
from .encoders import WHITE_BOX_ENCODERS, fit_projection, make_encoder, project
from .outputs import FoldedHead, fixed_map, frequency_map, identity_map, mapped_log_probs
from .prompts import Coordinator, FullPrompt, NoPrompt, PadPrompt, PromptModule, apply_prompt

VERSION = 1
STATE = "state.safetensors"


def make_prompt(cfg: BlackVIPConfig, side: int) -> PromptModule:
    """The prompt module named by ``cfg.prompt`` for ``side``-pixel images."""
    if cfg.prompt == "coordinator":
        return Coordinator(cfg.code_dim, cfg.trigger_dim, cfg.channels, side, cfg.init_scale)
    if cfg.prompt == "full":
        return FullPrompt(cfg.prompt_res, side)
    if cfg.prompt == "pad":
        return PadPrompt(cfg.pad_width, side)
    return NoPrompt(side)


@dataclass
class Outputs:
    """How the black box's source-class probabilities become task log-probabilities."""

    kind: str
    n_task: int
    M: np.ndarray | None = None
    head: FoldedHead | None = None

    def train_log_probs(self, probs: np.ndarray, train_pos: np.ndarray) -> np.ndarray:
        if self.kind == "head":
            return self.head.train_log_probs(probs, train_pos)  # type: ignore[union-attr]
        return mapped_log_probs(probs, self.M)  # type: ignore[arg-type]

    def log_probs(self, probs: np.ndarray) -> np.ndarray:
        if self.kind == "head":
            return self.head.full.log_probs(probs)  # type: ignore[union-attr]
        return mapped_log_probs(probs, self.M)  # type: ignore[arg-type]


def complete_top_k(scores: np.ndarray) -> np.ndarray:
    """Full distributions from top-k answers: NaN marks a class the black box did not return.

    The probability mass the black box left unreported, ``max(1 - sum(top k), 0)``, is spread
    uniformly over the missing classes (the maximum-entropy completion, below every returned
    score when k is large enough), with a floor of 1e-6 of the smallest returned score so that
    log-probabilities stay finite; rows are renormalised. Rows without NaN pass unchanged.
    """
    missing = np.isnan(scores)
    if not missing.any():
        return scores
    known = np.where(missing, 0.0, scores)
    if (missing.all(axis=1)).any():
        raise ObjectiveError("black-box scores: expected at least one returned class per image, received none")
    n_missing = missing.sum(axis=1, keepdims=True)
    rest = np.clip(1.0 - known.sum(axis=1, keepdims=True), 0.0, None) / np.maximum(n_missing, 1)
    floor = 1e-6 * np.where(missing, np.inf, scores).min(axis=1, keepdims=True)
    out = np.where(missing, np.maximum(rest, floor), known)
    return out / out.sum(axis=1, keepdims=True)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class BlackBoxImages:
    """Black-box calls with query accounting: probabilities for a batch of images.

    Every call goes through a :class:`~blackbox.client.Client` (retries on transient errors and
    a ledger; no disk cache, since every probe is a new image), so a remote classifier and a
    local one take the same path. ``ledger`` counts what the black box was asked.
    """

    def __init__(self, provider: Provider, chunk: int = 0) -> None:
        from blackbox.client import Client, Ledger

        require(provider, [Capability.PROBS, Capability.LOGITS], "blackvip", any_of=True)
        self.provider = provider if isinstance(provider, Client) else Client(provider, ledger=Ledger())
        self.want = "probs" if Capability.PROBS in provider.capabilities else "logits"
        self.chunk = chunk
        self.queries = 0
        self.calls = 0
        self.seconds = 0.0

    def probs(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, n_source)``; one provider call (or ``chunk``-sized calls)."""
        parts = [images] if not self.chunk else [images[i:i + self.chunk] for i in range(0, len(images), self.chunk)]
        out = []
        for part in parts:
            t = time.perf_counter()
            res = self.provider.classify(ClassifyRequest(inputs=part, output=self.want))
            self.seconds += time.perf_counter() - t
            self.calls += 1
            self.queries += res.usage.queries or len(part)
            # A top-k API marks unreturned classes with NaN: completed explicitly (see complete_top_k).
            out.append(complete_top_k(res.scores) if self.want == "probs" else _softmax(res.scores))
        return np.concatenate(out)


@dataclass
class TrainResult:
    """What ``train`` and ``eval`` report (see ``to_json``)."""

    zero_shot_accuracy: float
    linear_head_accuracy: float
    test_accuracy: float
    queries: int
    eval_queries: int
    wall_seconds: float
    run_dir: str
    steps: int
    trainable_parameters: int
    train_loss: float
    black_box_seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extras"}
        out.update(self.extras)
        return out


class BlackVIP:
    """A BlackVIP run: provider + data + config, trained in ``run_dir`` (resumable).

    ``fit()`` trains until the query budget is spent (or ``max_steps``), checkpointing;
    calling it again on the same directory resumes where the last checkpoint left off.
    """

    def __init__(self, provider: Provider, data: ImageSet, config: BlackVIPConfig, run_dir: str | Path, *,
                 provider_spec: str = "", dataset: str = "") -> None:
        self.cfg = config
        self.data = data
        self.run_dir = Path(run_dir)
        self.bb = BlackBoxImages(provider, config.provider_batch)
        self.provider_spec, self.dataset = provider_spec, dataset
        self.side = data.images.shape[1]
        if data.images.shape[1] != data.images.shape[2]:
            raise bad_value("dataset", "square images", f"{data.images.shape[1]}x{data.images.shape[2]}")
        self.module = make_prompt(config, self.side)
        self.train_idx, self.test_idx = few_shot_split(data, config.shots, config.n_test, config.seed)
        self.n_task = len(data.classes)
        # Positions (in train_idx) of the images the prompt's loss sees, and of the held-out
        # ones that only choose among prompts (early stopping).
        self.early_stopping = config.output == "head" and config.holdout > 0 and self.module.dim > 0
        self.fit_pos, self.hold_pos = holdout_split(data.labels[self.train_idx], config.holdout if self.early_stopping else 0.0, config.seed)
        self.best: dict[str, Any] = {}
        self.step = 0
        self.queries = 0
        self.eval_queries = 0
        self.history_lines = 0
        self.metrics: dict[str, Any] = {}
        self.opt: Any = None
        self.outputs: Outputs | None = None
        self.theta = self.module.init(config.seed)

    # --- setup ----------------------------------------------------------------------------
    def _codes(self) -> None:
        """Encoder features of every split image, computed once and cached in the run dir
        (with the trained encoder's weights, so predictions on new images need no retraining)."""
        path = self.run_dir / "features.safetensors"
        self.encoder_state: dict[str, np.ndarray] = {}
        if self.cfg.prompt != "coordinator":
            self.codes_train = np.zeros((len(self.train_idx), 1))
            self.codes_test = np.zeros((len(self.test_idx), 1))
            self.proj: dict[str, np.ndarray] = {}
            return
        if path.exists():
            arrays, _ = load_tensors(path)
        else:
            enc = make_encoder(self.cfg.encoder, self.cfg.encoder_size, self.cfg.encoder_steps)
            # Unsupervised: the encoder sees the training images, never their labels.
            enc.fit(self.data.images[self.train_idx], self.cfg.seed)
            f_train = enc.features(self.data.images[self.train_idx])
            f_test = enc.features(self.data.images[self.test_idx])
            proj = fit_projection(f_train, self.cfg.code_dim)
            arrays = {"train": f_train, "test": f_test, **{f"proj.{k}": v for k, v in proj.items()}, **enc.state()}
            save_tensors(path, arrays, {"encoder": self.cfg.encoder, "size": self.cfg.encoder_size})
        self.encoder_state = {k: v for k, v in arrays.items() if k.startswith("ae.")}
        self.proj = {"mean": arrays["proj.mean"], "components": arrays["proj.components"]}
        self.codes_train = project(arrays["train"], self.proj)
        self.codes_test = project(arrays["test"], self.proj)

    def _fit_outputs(self, probs_train: np.ndarray) -> None:
        """(Re)build the label map or head from training-image probabilities."""
        cfg, y = self.cfg, self.data.labels[self.train_idx]
        if cfg.output == "identity":
            self.outputs = Outputs("identity", self.n_task, M=identity_map(self.n_task, probs_train.shape[1]))
        elif cfg.output == "map":
            if cfg.label_map == "fixed":
                names = getattr(getattr(self.bb.provider, "provider", self.bb.provider), "class_names", None)
                try:
                    spec = json.loads(cfg.fixed_map)
                except json.JSONDecodeError as exc:
                    raise bad_value("fixed_map", "a JSON object {task class: [source classes]}", cfg.fixed_map) from exc
                if not isinstance(spec, dict):
                    raise bad_value("fixed_map", "a JSON object {task class: [source classes]}", cfg.fixed_map)
                M = fixed_map(spec, self.data.classes, names, probs_train.shape[1])
            else:
                M = frequency_map(probs_train, y, self.n_task, cfg.map_per_class)
            self.outputs = Outputs("map", self.n_task, M=M)
        else:
            if self.outputs is None or self.outputs.head is None:
                head = FoldedHead(max(cfg.head_folds, 1), cfg.head_C, len(self.fit_pos), cfg.seed)
                self.outputs = Outputs("head", self.n_task, head=head)
            self.outputs.head.fit(probs_train[self.fit_pos], y[self.fit_pos], self.n_task)  # type: ignore[union-attr]

    def _check_holdout(self, theta: np.ndarray, probs_train: np.ndarray) -> bool:
        """Held-out loss of ``theta`` (head fitted on the other shots, already refit on
        ``probs_train``); keeps the best prompt so far. True when patience has run out."""
        y = self.data.labels[self.train_idx][self.hold_pos]
        lp = self.outputs.head.full.log_probs(probs_train[self.hold_pos])  # type: ignore[union-attr]
        loss = -float(np.mean(lp[np.arange(len(y)), y]))
        b = self.best
        if not b or loss < b["loss"]:
            self.best = {"loss": loss, "theta": np.array(theta, copy=True), "probs": probs_train, "step": self.step,
                         "queries": self.queries, "since": 0, "accuracy": float(np.mean(lp.argmax(axis=1) == y))}
        else:
            b["since"] += 1
        self.metrics["holdout_checks"] = self.metrics.get("holdout_checks", 0) + 1
        return bool(self.cfg.patience) and self.best["since"] >= self.cfg.patience

    def _prompted(self, theta: np.ndarray, images: np.ndarray, codes: np.ndarray) -> np.ndarray:
        import torch

        if not np.all(np.isfinite(theta)):
            raise ObjectiveError("prompt parameters: expected finite values, received NaN or inf (lower a or eps; the run keeps its last checkpoint)")
        with torch.no_grad():
            t = torch.as_tensor(theta, dtype=torch.float32)
            p = self.module.prompts(t, torch.as_tensor(codes, dtype=torch.float32))
            x = apply_prompt(torch.as_tensor(images), p, self.cfg.eps)
        return x.numpy()

    def _probs_on(self, theta: np.ndarray, which: str) -> np.ndarray:
        idx, codes = (self.train_idx, self.codes_train) if which == "train" else (self.test_idx, self.codes_test)
        return self.bb.probs(self._prompted(theta, self.data.images[idx], codes))

    def _accuracy(self, probs: np.ndarray) -> float:
        pred = self.outputs.log_probs(probs).argmax(axis=1)  # type: ignore[union-attr]
        return float(np.mean(pred == self.data.labels[self.test_idx]))

    def _make_optimizer(self) -> Any:
        cfg = self.cfg
        over: dict[str, Any] = dict(c=cfg.c, alpha=cfg.alpha, gamma=cfg.gamma, o=cfg.o, q=cfg.q, two_sided=cfg.two_sided,
                                    perturbation=cfg.perturbation, guard=False)
        over["a"] = cfg.a if cfg.a > 0 else None
        over["step0"] = cfg.step0
        if cfg.optimizer == "spsa-gc":
            over.update(momentum="gc", beta=cfg.beta)
        else:
            over.update(momentum="none")
        return make_optimizer(cfg.optimizer, self.theta, seed=cfg.seed, **over)

    def _start(self) -> None:
        """Zero-shot passes: label map / head on un-prompted outputs and the no-prompt baselines."""
        cfg = self.cfg
        before = self.bb.queries
        zero = np.zeros_like(self.theta)
        base = NoPrompt(self.side)
        saved, self.module = self.module, base
        probs_train = self._probs_on(zero[:0], "train")
        self.queries += self.bb.queries - before
        e0 = self.bb.queries
        probs_test = self._probs_on(zero[:0], "test")
        self.module = saved
        # No-prompt references on the same split: the label map, and a head fitted on the
        # un-prompted outputs (the baseline any prompt must beat).
        y = self.data.labels[self.train_idx]
        M = frequency_map(probs_train, y, self.n_task, cfg.map_per_class) if cfg.output != "identity" else identity_map(self.n_task, probs_train.shape[1])
        zs = float(np.mean(mapped_log_probs(probs_test, M).argmax(axis=1) == self.data.labels[self.test_idx]))
        head = FoldedHead(1, cfg.head_C, len(self.train_idx), cfg.seed).fit(probs_train, y, self.n_task)
        lh = float(np.mean(head.full.log_probs(probs_test).argmax(axis=1) == self.data.labels[self.test_idx]))
        self.eval_queries += self.bb.queries - e0
        self.metrics.update(zero_shot_accuracy=zs, linear_head_accuracy=lh, n_source_classes=int(probs_train.shape[1]))
        if self.module.dim and self.cfg.init_scale > 0 and (cfg.output == "head" or cfg.label_map == "frequency"):
            # The initial prompt already moves the black box's predictions: fit the map or
            # head to what the optimizer will actually see (one counted pass).
            before = self.bb.queries
            probs_train = self._probs_on(self.theta, "train")
            self.queries += self.bb.queries - before
        self._fit_outputs(probs_train)
        if self.early_stopping:
            self._check_holdout(self.theta, probs_train)
        self.opt = self._make_optimizer() if self.module.dim else None

    # --- checkpoints ------------------------------------------------------------------------
    def _config_json(self) -> dict[str, Any]:
        return {"method": "blackvip", "version": VERSION, "config": self.cfg.to_dict(), "provider": self.provider_spec,
                "dataset": self.dataset, "classes": list(self.data.classes), "prompt": self.module.describe(),
                "n_train": int(len(self.train_idx)), "n_test": int(len(self.test_idx))}

    def checkpoint(self, final: bool = False) -> None:
        """Atomically write parameters, optimizer, map/head and counters. ``final``: ``theta``
        is the selected prompt (what ``load`` predicts with), not the optimizer's current one."""
        arrays: dict[str, np.ndarray] = {"theta": np.asarray(self.opt.recommend() if self.opt and not final else self.theta)}
        opt_meta: dict[str, Any] = {}
        if self.opt is not None:
            oa, opt_meta = self.opt.state_dict()
            arrays.update({f"opt.{k}": v for k, v in oa.items()})
        if self.outputs is not None and self.outputs.M is not None:
            arrays["map"] = self.outputs.M
        if self.outputs is not None and self.outputs.head is not None:
            arrays.update(self.outputs.head.arrays())
        best_meta = {}
        if self.best:
            arrays["best.theta"], arrays["best.probs"] = np.asarray(self.best["theta"]), self.best["probs"]
            best_meta = {k: v for k, v in self.best.items() if k not in ("theta", "probs")}
        meta = {"best": best_meta, "step": self.step, "queries": self.queries, "eval_queries": self.eval_queries, "metrics": self.metrics,
                "history_lines": self.history_lines, "opt": opt_meta, "bb_seconds": self.bb.seconds}
        save_tensors(self.run_dir / "state.safetensors", arrays, meta)

    def _restore(self) -> None:
        arrays, meta = load_tensors(self.run_dir / "state.safetensors")
        self.step, self.queries, self.eval_queries = meta["step"], meta["queries"], meta["eval_queries"]
        self.metrics, self.history_lines = meta["metrics"], meta["history_lines"]
        self.bb.seconds = meta.get("bb_seconds", 0.0)
        self.opt = self._make_optimizer() if self.module.dim else None
        if self.opt is not None:
            self.opt.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}, meta["opt"])
        self.theta = arrays["theta"]
        self.best = {}
        if meta.get("best"):
            self.best = {**meta["best"], "theta": arrays["best.theta"], "probs": arrays["best.probs"]}
        if self.cfg.output == "head":
            head = FoldedHead(max(self.cfg.head_folds, 1), self.cfg.head_C, len(self.fit_pos), self.cfg.seed)
            head.load(arrays)
            self.outputs = Outputs("head", self.n_task, head=head)
        else:
            self.outputs = Outputs(self.cfg.output, self.n_task, M=arrays["map"])
        # Drop history lines written after the checkpoint, so a resumed run's log matches.
        trim_history(self.run_dir / "history.jsonl", self.history_lines)

    def _log(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / "history.jsonl", "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        self.history_lines += 1

    # --- training ---------------------------------------------------------------------------
    def _step_cost(self) -> int:
        return int(self.opt.next_cost()) * self.cfg.batch_size

    def _minibatch(self, seed: int) -> np.ndarray:
        """Positions in ``fit_pos`` (held-out shots never enter the prompt's loss)."""
        n = len(self.fit_pos)
        return np.random.default_rng(int(seed) & 0x7FFFFFFFFFFFFFFF).choice(n, size=min(self.cfg.batch_size, n), replace=False)

    def _probe_losses(self, X: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """All probes of one step in one batched black-box call (per distinct minibatch)."""
        losses = np.empty(len(X))
        for s in np.unique(seeds):
            rows = np.flatnonzero(seeds == s)
            pos = self._minibatch(int(s))
            at = self.fit_pos[pos]
            imgs = self.data.images[self.train_idx[at]]
            codes = self.codes_train[at]
            batch = np.concatenate([self._prompted(X[r], imgs, codes) for r in rows])
            probs = self.bb.probs(batch).reshape(len(rows), len(pos), -1)
            y = self.data.labels[self.train_idx[at]]
            for j, r in enumerate(rows):
                lp = self.outputs.train_log_probs(probs[j], pos)  # type: ignore[union-attr]
                losses[r] = -float(np.mean(lp[np.arange(len(pos)), y]))
        return losses

    def fit(self, max_steps: int | None = None, on_step: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Train until the budget is spent (or ``max_steps`` more steps); resumes from ``run_dir``."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.run_dir / "config.json"
        if cfg_path.exists():
            saved = json.loads(cfg_path.read_text())
            if saved.get("config") != self.cfg.to_dict() or saved.get("dataset") != self.dataset:
                raise RunError(f"run_dir: expected a new directory or one with the same configuration, received {self.run_dir} "
                               "whose config.json differs (use another --run-dir)")
        else:
            atomic_write_json(cfg_path, self._config_json())
        self._codes()
        if (self.run_dir / "state.safetensors").exists():
            self._restore()
        else:
            if (self.run_dir / "history.jsonl").exists():
                (self.run_dir / "history.jsonl").unlink()
            self._start()
            self.checkpoint()
        wall0 = self.metrics.get("wall_seconds", 0.0)
        taken = 0
        last_loss = math.nan
        trainable = self.module.dim > 0
        while (trainable and not self.metrics.get("stopped_early") and self.queries + self._step_cost() <= cfg.budget
               and (max_steps is None or taken < max_steps)):
            refit_due = self.step > 0 and (
                (cfg.output == "head" and cfg.head_every and self.step % cfg.head_every == 0)
                or (cfg.output == "map" and cfg.label_map == "frequency" and cfg.remap_every and self.step % cfg.remap_every == 0)
            )
            if refit_due:
                if self.queries + len(self.train_idx) + self._step_cost() > cfg.budget:
                    break
                before = self.bb.queries
                theta_now = self.opt.recommend()
                probs_now = self._probs_on(theta_now, "train")
                self.queries += self.bb.queries - before
                self._fit_outputs(probs_now)
                if self.early_stopping and self._check_holdout(theta_now, probs_now):
                    self.metrics["stopped_early"] = True
                    break
            X = self.opt.ask()
            seeds = self.opt.candidate_seeds()
            before = self.bb.queries
            losses = self._probe_losses(X, seeds)
            self.queries += self.bb.queries - before
            info = self.opt.tell(losses)
            self.step += 1
            taken += 1
            last_loss = float(np.mean(losses))
            row: dict[str, Any] = {"step": self.step, "queries": self.queries, "loss": last_loss, "phase": info.phase}
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                e0 = self.bb.queries
                row["test_accuracy"] = self._accuracy(self._probs_on(self.opt.recommend(), "test"))
                self.eval_queries += self.bb.queries - e0
            self._log(row)
            if on_step:
                on_step(row)
            if self.step % cfg.checkpoint_every == 0:
                self.metrics["wall_seconds"] = wall0 + time.perf_counter() - t0
                self.checkpoint()
        if self.opt is not None:
            self.theta = self.opt.recommend()
        if self.early_stopping and self.best:
            # The prompt with the best held-out loss, and a head on all training shots at
            # that prompt (their outputs were queried at the check: no extra queries).
            self.theta = np.array(self.best["theta"], copy=True)
            self.outputs.head.full.fit(self.best["probs"], self.data.labels[self.train_idx], self.n_task)  # type: ignore[union-attr]
            self.metrics.update(selected_step=int(self.best["step"]), selected_queries=int(self.best["queries"]),
                                holdout_loss=float(self.best["loss"]), holdout_accuracy=float(self.best["accuracy"]))
        self.metrics["unused_budget"] = int(cfg.budget - self.queries)
        e0 = self.bb.queries
        acc = self._accuracy(self._probs_on(self.theta, "test"))
        self.eval_queries += self.bb.queries - e0
        self.metrics["test_accuracy"] = acc
        self.metrics["wall_seconds"] = wall0 + time.perf_counter() - t0
        self.checkpoint(final=True)
        result = self.result(last_loss)
        atomic_write_json(self.run_dir / "result.json", result.to_json())
        return result

    def result(self, train_loss: float = math.nan) -> TrainResult:
        m = self.metrics
        return TrainResult(
            zero_shot_accuracy=m["zero_shot_accuracy"], linear_head_accuracy=m["linear_head_accuracy"],
            test_accuracy=m.get("test_accuracy", math.nan), queries=self.queries, eval_queries=self.eval_queries,
            wall_seconds=round(m.get("wall_seconds", 0.0), 3), run_dir=str(self.run_dir), steps=self.step,
            trainable_parameters=self.module.dim, train_loss=train_loss if math.isfinite(train_loss) else -1.0,
            black_box_seconds=round(self.bb.seconds, 3),
            extras={"prompt": self.cfg.prompt, "output": self.cfg.output, "optimizer": self.cfg.optimizer, "encoder": self.cfg.encoder,
                    "white_box": self.white_box, "stopped_early": bool(m.get("stopped_early", False)),
                    "unused_budget": int(m.get("unused_budget", self.cfg.budget - self.queries)),
                    **{k: m[k] for k in ("selected_step", "selected_queries", "holdout_loss", "holdout_accuracy") if k in m}},
        )

    @property
    def white_box(self) -> bool:
        """True when the Coordinator reads a target network's weights (encoder=target-features)."""
        return self.cfg.prompt == "coordinator" and self.cfg.encoder in WHITE_BOX_ENCODERS

    # --- inference -------------------------------------------------------------------------
    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Task-class log-probabilities for new images (same side as the training images)."""
        if images.ndim != 4 or images.shape[1:] != (self.side, self.side, 3):
            raise bad_value("images", f"RGB images of shape (n, {self.side}, {self.side}, 3) in [0, 1]", f"shape {images.shape}")
        codes = np.zeros((len(images), 1))
        if self.cfg.prompt == "coordinator":
            enc = make_encoder(self.cfg.encoder, self.cfg.encoder_size, self.cfg.encoder_steps)
            enc.load(self.encoder_state)
            codes = project(enc.features(images), self.proj)
        probs = self.bb.probs(self._prompted(self.theta, images, codes))
        return self.outputs.log_probs(probs)  # type: ignore[union-attr]

    @classmethod
    def load(cls, run_dir: str | Path, provider: Provider | None = None, data: ImageSet | None = None) -> "BlackVIP":
        """Reopen a run directory (provider and data rebuilt from its config unless given)."""
        from blackbox.provider import load_provider

        from .data import load_dataset

        run_dir = Path(run_dir)
        path = run_dir / "config.json"
        if not path.exists() or not (run_dir / "state.safetensors").exists():
            raise RunError(f"run_dir: expected a BlackVIP run directory with config.json and state.safetensors, received {run_dir}")
        saved = json.loads(path.read_text())
        if saved.get("method") != "blackvip":
            raise RunError(f"run_dir: expected a BlackVIP run, received a {saved.get('method')!r} run in {run_dir}")
        cfg = BlackVIPConfig.from_dict(saved["config"])
        provider = provider or load_provider(saved["provider"])
        data = data or load_dataset(saved["dataset"])
        run = cls(provider, data, cfg, run_dir, provider_spec=saved["provider"], dataset=saved["dataset"])
        run._codes()
        run._restore()
        return run

    def evaluate(self) -> dict[str, Any]:
        """Test accuracy of the saved prompt and map/head on this run's test split (only what
        this evaluation measured, with the black-box queries it spent)."""
        e0 = self.bb.queries
        acc = self._accuracy(self._probs_on(self.theta, "test"))
        spent = self.bb.queries - e0
        self.eval_queries += spent
        return {"run_dir": str(self.run_dir), "dataset": self.dataset, "n_test": int(len(self.test_idx)),
                "test_accuracy": acc, "queries": int(spent), "prompt": self.cfg.prompt, "output": self.cfg.output}


def holdout_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the prompt's shots and of the held-out shots: ``round(share * n_c)`` per
    class (at least 1, at most n_c - 1) when ``share`` > 0, stratified and seeded."""
    if share <= 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 7])  # independent of the split's own stream
    hold = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise bad_value("holdout", f"0 with {len(idx)} shot(s) of a class (holding one out needs 2)", share)
        k = min(max(int(round(share * len(idx))), 1), len(idx) - 1)
        hold.append(rng.permutation(idx)[:k])
    h = np.sort(np.concatenate(hold))
    return np.setdiff1d(np.arange(len(labels)), h), h


def check_config_for(data: ImageSet, cfg: BlackVIPConfig) -> None:
    """Fail early when the split cannot be made (more shots than images)."""
    counts = np.bincount(data.labels, minlength=len(data.classes))
    if cfg.shots >= counts.min():
        c = int(np.argmin(counts))
        raise ConfigError(f"shots: expected at most {counts.min() - 1} for class {data.classes[c]!r} ({counts.min()} images), received {cfg.shots}")


class BlackVIPMethod:
    """BlackVIP behind the method protocol (:class:`blackbox.methods.base.Method`)."""

    name = "blackvip"
    Config = BlackVIPConfig
    requires = frozenset({Capability.PROBS, Capability.LOGITS})  # either one (any_of)

    def fit(self, config: BlackVIPConfig, run_dir: str | Path, *, provider: str, dataset: str,
            on_step: Callable[[dict[str, Any]], None] | None = None, replicas: int = 1,
            ray_address: str | None = None) -> dict[str, Any]:
        """Train (or resume) a prompt against ``provider`` on ``dataset``; writes the pictures.
        ``replicas`` > 1 (or a ``ray_address``) serves the provider from Ray replicas
        (:class:`blackbox.scale.ReplicaPool`); the result is the same."""
        from blackbox.scale.context import check_replicas, make_provider

        from .data import load_dataset
        from .report import write_pictures

        scale = check_replicas(replicas, ray_address)
        data = load_dataset(dataset)
        check_config_for(data, config)
        path = prepare_run_dir(run_dir, "BlackVIP")
        black_box = None
        try:
            with discard_unless_checkpointed(path, STATE):
                black_box = make_provider(provider, scale)
                run = BlackVIP(black_box, data, config, path, provider_spec=provider, dataset=dataset)
                result = run.fit(on_step=on_step)
        finally:
            if scale.scaled and black_box is not None:
                black_box.close()  # stops the replicas
        write_pictures(run)
        return result.to_json()

    def evaluate(self, run_dir: str | Path, data: str | None = None, **options: Any) -> dict[str, Any]:
        """Test accuracy of a trained prompt on the run's split (or ``data``'s)."""
        from .data import load_dataset

        return BlackVIP.load(run_dir, data=load_dataset(data) if data else None).evaluate()

    def load(self, run_dir: str | Path, **options: Any) -> BlackVIP:
        """The trained run, ready for ``predict_images``."""
        return BlackVIP.load(run_dir, **options)

    def owns(self, run_dir: Path) -> bool:
        """A folder whose config.json was written by BlackVIP."""
        cfg = read_config(run_dir)
        return cfg is not None and cfg.get("method") == "blackvip"

    def show(self, run_dir: Path) -> dict[str, Any]:
        """Queries spent of the budget and the last test accuracy seen."""
        saved = read_config(run_dir) or {}
        budget = saved.get("config", {}).get("budget")
        meta: dict[str, Any] = {}
        if (Path(run_dir) / STATE).is_file():
            meta = load_tensors(Path(run_dir) / STATE)[1]
        queries = int(meta.get("queries", 0))
        finished = (Path(run_dir) / "result.json").is_file()
        return {"method": self.name, "finished": finished, "metrics": meta.get("metrics", {}), "queries": queries, "budget": budget,
                "progress": f"{queries}/{budget} queries, step {meta.get('step', 0)} ({saved.get('provider')} on {saved.get('dataset')})"}

    def resume_hint(self, run_dir: Path) -> str:
        """Resuming re-runs training from the stored provider, dataset and settings."""
        return f"run `blackbox runs resume {run_dir}`"

    def resume(self, run_dir: Path, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Continue a run from its checkpoint with the settings stored in it."""
        saved = read_config(run_dir) or {}
        return self.fit(BlackVIPConfig.from_dict(saved["config"]), run_dir, provider=saved["provider"],
                        dataset=saved["dataset"], on_step=on_step)

