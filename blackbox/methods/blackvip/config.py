"""BlackVIP configuration: every hyperparameter, with the reference default or the measured
default of this toolkit (and the reason) in its help text."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from blackbox.config import Config
from blackbox.errors import bad_value

from .encoders import ENCODERS

PROMPTS = ("coordinator", "full", "pad", "none")
OUTPUTS = ("head", "map", "identity")
MAPS = ("frequency", "fixed")
OPTIMIZERS = ("spsa-gc", "spsa")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class BlackVIPConfig(Config):
    """Hyperparameters of a BlackVIP run (``--set key=value`` on the command line)."""

    # data
    shots: int = _f(16, "training images per class (k-shot)")
    n_test: int = _f(1000, "held-out test images (0: all images not used for training)")
    seed: int = _f(0, "seed of the split, the initialisation, the minibatches and the perturbations")
    # prompt
    prompt: str = _f("coordinator", "prompt module: coordinator (input-dependent, the paper), full or pad (input-independent, BAR-style), none (zero-shot)")
    eps: float = _f(0.5, "prompt strength epsilon in clip(x + eps * prompt); the reference uses 0.2-1.0 (1.0 measured worse here)")
    encoder: str = _f("autoencoder", "frozen encoder of the Coordinator: autoencoder (trained without labels on the training images; black-box), "
                      "pixels (no weights), or target-features (the shipped EfficientNet-Lite0's features: WHITE-BOX when it is also the black box)")
    encoder_steps: int = _f(300, "training minibatches of the autoencoder encoder (seconds on a CPU; measured: 300 reach a linear-probe accuracy above raw pixels on MNIST)")
    encoder_size: int = _f(96, "input side of the target-features encoder")
    code_dim: int = _f(16, "encoder features are reduced to this many whitened PCA components")
    trigger_dim: int = _f(16, "length of the learned prompt-trigger vector")
    channels: int = _f(8, "channels of the Coordinator's decoder")
    init_scale: float = _f(0.001, "scale of the decoder's last layer at initialisation: near 0 starts at the un-prompted image (0.1 measured 5-10 points worse early)")
    prompt_res: int = _f(8, "resolution of the full-image prompt grid (prompt=full)")
    pad_width: int = _f(4, "frame width in pixels (prompt=pad)")
    # outputs
    output: str = _f("head", "how source classes become task classes: head (learned logistic regression), map (label map), identity (same classes)")
    label_map: str = _f("frequency", "label map: frequency (chosen from zero-shot predictions) or fixed (see fixed_map)")
    fixed_map: str = _f("", "JSON object {task class: [source index or name, ...]} for label_map=fixed")
    map_per_class: int = _f(1, "source classes summed per task class (many-to-one when > 1)")
    remap_every: int = _f(20, "re-choose the frequency map from the prompted predictions every N steps (0: never); costs one pass over the training images")
    head_every: int = _f(10, "refit the head on the prompted outputs every N steps (0: never); each refit is also the held-out check")
    holdout: float = _f(0.25, "share of each class's shots kept out of the prompt's loss to choose the prompt (early stopping; output=head only; 0: off)")
    patience: int = _f(4, "stop after this many held-out checks without a better held-out loss (0: never stop; the best prompt is still kept)")
    head_C: float = _f(0.1, "inverse L2 strength of the head's logistic regression")
    head_folds: int = _f(4, "training loss through out-of-fold heads (>= 2), so it tracks generalisation; 1: one head for all")
    # optimizer
    optimizer: str = _f("spsa-gc", "spsa-gc (Nesterov gradient correction, the paper) or spsa (plain)")
    a: float = _f(0.0, "step-size scale a in a_k = a/(k+o)^alpha (reference 0.01, which diverged here); 0 calibrates it from the first estimates (see step0)")
    step0: float = _f(0.002, "with a=0: a is calibrated so that the first step moves each parameter by about step0 (dimension-aware gain)")
    c: float = _f(0.01, "perturbation size c in c_k = c/k^gamma (reference 0.005-0.01)")
    alpha: float = _f(0.4, "step-size decay exponent (reference 0.4)")
    gamma: float = _f(0.1, "perturbation decay exponent (reference 0.1)")
    o: float = _f(1.0, "stability constant o (reference 1)")
    beta: float = _f(0.9, "momentum of the gradient correction (reference 0.9)")
    q: int = _f(2, "random directions per step (reference 5; 2 buys 2.5x more steps per query): 2q probes per step, q+1 one-sided")
    two_sided: bool = _f(True, "two-sided differences; false: one-sided with a shared pivot loss (q+1 probes)")
    perturbation: str = _f("segmented", "direction distribution: segmented (+-U[0.5,1], the paper), rademacher, gaussian, sphere")
    batch_size: int = _f(32, "training images per step (common to all probes of the step; reference 128)")
    budget: int = _f(20000, "black-box image queries for training, including remapping and head refits")
    # bookkeeping
    eval_every: int = _f(50, "steps between test evaluations (not counted in the budget; 0: only at the end)")
    checkpoint_every: int = _f(10, "steps between checkpoints")
    provider_batch: int = _f(0, "split each step's probes into calls of this many images (0: one call per step)")

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise bad_value(name, f"one of {', '.join(allowed)}", getattr(self, name))

        choice("prompt", PROMPTS)
        choice("output", OUTPUTS)
        choice("label_map", MAPS)
        choice("optimizer", OPTIMIZERS)
        choice("encoder", ENCODERS)
        for name in ("shots", "q", "batch_size", "budget", "code_dim", "trigger_dim", "channels", "prompt_res", "pad_width",
                     "map_per_class", "encoder_size", "encoder_steps", "checkpoint_every", "head_folds"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad_value(name, "an integer >= 1", v)
        for name in ("n_test", "remap_every", "head_every", "eval_every", "provider_batch", "patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad_value(name, "an integer >= 0", v)
        for name in ("eps", "c", "head_C", "step0"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad_value(name, "a finite number > 0", v)
        if not (math.isfinite(self.a) and self.a >= 0):
            raise bad_value("a", "a finite number >= 0 (0: calibrate)", self.a)
        if not (isinstance(self.holdout, (int, float)) and 0 <= self.holdout < 1):
            raise bad_value("holdout", "a share in [0, 1)", self.holdout)
        if not 0 <= self.alpha <= 1:
            raise bad_value("alpha", "a number in [0, 1]", self.alpha)
        if not 0 <= self.gamma <= 0.5:
            raise bad_value("gamma", "a number in [0, 0.5]", self.gamma)
        if not 0 <= self.beta < 1:
            raise bad_value("beta", "a number in [0, 1)", self.beta)
        if self.o < 0:
            raise bad_value("o", "a number >= 0", self.o)
        if self.label_map == "fixed" and self.output == "map" and not self.fixed_map:
            raise bad_value("fixed_map", "a JSON object {task class: [source classes]} when label_map=fixed", self.fixed_map)
