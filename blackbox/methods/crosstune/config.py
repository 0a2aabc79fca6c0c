"""Configuration of CrossTune and its baselines (validated on construction, JSON round-trip)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blackbox.config import Config
from blackbox.errors import bad_value

METHODS = ("crosstune", "no-labels", "linear-probe", "zero-shot", "probe-ensemble")
SELECT_RULES = ("margin", "stacked", "weighted")
# values that models saved before an option existed were fitted with (load fills them in)
LEGACY = {"select_rule": "margin", "pair_similarity": 0.0, "head_cv": False, "inner_epochs": False, "probe_inner": False}


def _int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise bad_value(name, f"an integer in [{lo}, {hi if hi is not None else 'inf'}]", value)


def _float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise bad_value(name, f"a number in {lb}{lo}, {hi}{rb}", value)


@dataclass(frozen=True)
class CrossTuneConfig(Config):
    """Hyperparameters of the head, its training, and augmentation with the switch."""

    method: str = field(default="crosstune", metadata={"help": "crosstune (label-enhanced cross-attention head), no-labels (same head, learnt class queries, no descriptions), linear-probe, zero-shot, probe-ensemble (one linear probe per fold, averaged: the ensemble without attention)"})
    dim: int = field(default=64, metadata={"help": "width of the attention space (sum over heads)"})
    rank: int = field(default=96, metadata={"help": "the head works on the top principal directions of the standardised token features (label-free, fitted on the few-shot inputs)"})
    heads: int = field(default=4, metadata={"help": "attention heads; must divide dim"})
    dropout: float = field(default=0.5, metadata={"help": "dropout on input tokens and attended values during training"})
    prior: bool = field(default=True, metadata={"help": "add the zero-shot cosine to the label descriptions as a learnt-weight residual score"})
    prior_scale: float = field(default=5.0, metadata={"help": "initial multiplier of the zero-shot cosine (1 / temperature)"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.5, metadata={"help": "AdamW weight decay"})
    max_epochs: int = field(default=50, metadata={"help": "full-batch epochs at most"})
    patience: int = field(default=10, metadata={"help": "epochs without a better held-out loss before stopping"})
    val_fraction: float = field(default=0.25, metadata={"help": "share of each class of the few-shot set held out for early stopping (at least one per class)"})
    refit: bool = field(default=True, metadata={"help": "with folds=1: after early stopping, retrain on the whole few-shot set for the chosen number of epochs"})
    folds: int = field(default=4, metadata={"help": "cross-validated ensemble: one head per stratified fold of the few-shot set, early-stopped on that fold; predictions average the heads (1: a single head with val_fraction held out, then refit)"})
    select: bool = field(default=True, metadata={"help": "method crosstune with folds >= 2: predict with the blend of the head ensemble and the linear probe, or with the head, the probe or zero-shot when its out-of-fold accuracy on the few-shot set is clearly better (select_margin); recorded in train_info['selection']"})
    select_by: str = field(default="accuracy", metadata={"help": "criterion of the selection: accuracy or log-loss, out of fold on the few-shot set"})
    select_margin: float = field(default=0.05, metadata={"help": "the blend of head and probe predicts unless another candidate beats its criterion by more than this (accuracy: a fraction of the shots)"})
    select_rule: str = field(default="margin", metadata={"help": "margin: the blend of head and probe unless another candidate beats it by select_margin; stacked: predict with a weighted product of head, probe and zero-shot, the weights (a grid of quarters summing to one) picked by out-of-fold log-loss on the few-shot set; weighted: predict with a weighted product of head and probe, the head's weight (0, .25, .5, .75 or 1) picked by out-of-fold accuracy on the few-shot set (ties: log-loss, then nearest .5)"})
    head_cv: bool = field(default=False, metadata={"help": "head ensembles: fit the heads at three regularisation levels (dropout, weight decay: 0.5, 0.5 as configured; 0.25, 0.05 weaker; 0.75, 5 stronger) and keep the level with the best out-of-fold accuracy on the few-shot set (ties: log-loss, then the configured one); false: the configured dropout and weight_decay only"})
    inner_epochs: bool = field(default=False, metadata={"help": "head ensembles: fold k's head trains for an epoch count chosen on inner splits of the other folds (one head per pair of folds, early-stopped on each), so its out-of-fold score on fold k, which the model selection reads, involves no choice made on fold k; false: each head is early-stopped on the fold that then scores it (out-of-fold accuracy biased upward)"})
    probe_inner: bool = field(default=False, metadata={"help": "model selection: fold k's linear probe in the out-of-fold estimate takes the probe_cs value chosen on the other folds only (nested), not the one with the best out-of-fold accuracy over all folds (biased upward); the final probe's C is chosen as before"})
    pair_similarity: float = field(default=10.0, metadata={"help": "sentence pairs: the cosine of the two segments joins the linear probe's input (alone, in the probe ensemble and in CrossTune's blend) as a feature this many times the scale of a standardised one, so its L2 penalty is this squared times weaker; 0 leaves it out (models saved before this option)"})
    attention: bool = field(default=True, metadata={"help": "the cross-attention term of the head; false leaves the learnt prior and class biases (ablation)"})
    linear: bool = field(default=False, metadata={"help": "add a residual linear term on the pooled, projected input to the cross-attention score"})
    probe_cs: tuple[float, ...] = field(default=(0.01, 0.1, 1.0, 10.0), metadata={"help": "inverse regularisation strengths the linear probe picks from on the held-out part"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the initialisation and dropout"})
    description_template: str = field(default="This text is about {label}.", metadata={"help": "default label description when none is given"})
    # label descriptions written by an LLM (--describe-labels-with) ---------------------------
    describe_n: int = field(default=3, metadata={"help": "candidate descriptions generated per label without a given one"})
    describe_temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the description writer"})
    describe_max_tokens: int = field(default=40, metadata={"help": "longest generated description, in tokens"})
    # augmentation ---------------------------------------------------------------------------
    augment_n: int = field(default=0, metadata={"help": "examples to generate per class (0: no augmentation)"})
    augment_shots: int = field(default=4, metadata={"help": "in-context examples per generation prompt"})
    augment_temperature: float = field(default=0.8, metadata={"help": "sampling temperature of the generator"})
    augment_max_tokens: int = field(default=48, metadata={"help": "longest generated example, in tokens"})
    switch: bool = field(default=True, metadata={"help": "keep a generated example only when a teacher trained on the original few-shot data agrees with its intended label"})
    switch_min_prob: float = field(default=0.0, metadata={"help": "the teacher's probability of the intended label must also reach this"})
    augment_weight: float = field(default=0.5, metadata={"help": "training weight of a generated example (an original one weighs 1)"})
    augment_fallback: bool = field(default=True, metadata={"help": "keep the generated data only if it lowers the out-of-fold loss on the original few-shot data (compared with the same head fitted without it); otherwise fit without it"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise bad_value("method", f"one of {', '.join(METHODS)}", self.method)
        _int("dim", self.dim, 1, 4096)
        _int("heads", self.heads, 1, 64)
        _int("rank", self.rank, 1, 100_000)
        if self.dim % self.heads:
            raise bad_value("heads", f"a divisor of dim={self.dim}", self.heads)
        _float("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if not isinstance(self.prior, bool):
            raise bad_value("prior", "true or false", self.prior)
        _float("prior_scale", self.prior_scale, 0.0, 1e4, lo_open=True)
        _float("lr", self.lr, 0.0, 10.0, lo_open=True)
        _float("weight_decay", self.weight_decay, 0.0, 10.0)
        _int("max_epochs", self.max_epochs, 1, 100_000)
        _int("patience", self.patience, 1, 100_000)
        _float("val_fraction", self.val_fraction, 0.0, 0.9)
        if not isinstance(self.refit, bool):
            raise bad_value("refit", "true or false", self.refit)
        _int("folds", self.folds, 1, 64)
        for name in ("select", "attention", "head_cv", "inner_epochs", "probe_inner"):
            if not isinstance(getattr(self, name), bool):
                raise bad_value(name, "true or false", getattr(self, name))
        if self.select_by not in ("log-loss", "accuracy"):
            raise bad_value("select_by", "log-loss or accuracy", self.select_by)
        _float("select_margin", self.select_margin, 0.0, 10.0)
        if self.select_rule not in SELECT_RULES:
            raise bad_value("select_rule", f"one of {', '.join(SELECT_RULES)}", self.select_rule)
        _float("pair_similarity", self.pair_similarity, 0.0, 1e4)
        if not self.attention and not self.prior and self.method == "crosstune":
            raise bad_value("attention", "true when prior is false (the head would have class biases only)", self.attention)
        if not isinstance(self.linear, bool):
            raise bad_value("linear", "true or false", self.linear)
        object.__setattr__(self, "probe_cs", tuple(self.probe_cs))
        if not self.probe_cs or any(isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0 for c in self.probe_cs):
            raise bad_value("probe_cs", "a non-empty list of positive numbers", list(self.probe_cs))
        _int("seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.description_template, str) or "{label}" not in self.description_template:
            raise bad_value("description_template", "a string containing '{label}'", self.description_template)
        _int("describe_n", self.describe_n, 1, 64)
        _float("describe_temperature", self.describe_temperature, 0.0, 5.0)
        _int("describe_max_tokens", self.describe_max_tokens, 1, 4096)
        _int("augment_n", self.augment_n, 0, 100_000)
        _int("augment_shots", self.augment_shots, 1, 64)
        _float("augment_temperature", self.augment_temperature, 0.0, 5.0)
        _int("augment_max_tokens", self.augment_max_tokens, 1, 4096)
        if not isinstance(self.switch, bool):
            raise bad_value("switch", "true or false", self.switch)
        _float("switch_min_prob", self.switch_min_prob, 0.0, 1.0)
        _float("augment_weight", self.augment_weight, 0.0, 100.0, lo_open=True)
        if not isinstance(self.augment_fallback, bool):
            raise bad_value("augment_fallback", "true or false", self.augment_fallback)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types."""
        return self.to_dict()

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "CrossTuneConfig":
        """Inverse of :meth:`to_json`; unknown keys are an error naming the valid ones."""
        return cls.from_dict(obj)
