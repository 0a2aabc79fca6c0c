"""Settings of logit fusion (proxy-tuning and dynamic weights), validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blackbox.config import Config
from blackbox.errors import bad_value

if TYPE_CHECKING:
    import torch

MODES = ("proxy", "dynamic")
PRECISIONS = ("float32", "float64")
LARGE_TAILS = ("small", "uniform", "floor")
EXPERT_CHOICES = ("step", "first", "cumulative")  # as blackbox.methods.fusion.arith (which imports torch)


@dataclass(frozen=True)
class FusionConfig(Config):
    """Settings of fused decoding, validated on construction."""

    mode: str = field(default="proxy", metadata={"help": 'proxy (fixed weight alpha for every expert) or dynamic (per-step weights from the KL-matching search)'})
    alpha: float = field(default=1.0, metadata={"help": 'proxy: the fixed expert weight, in [0, alpha_max]'})
    alpha_max: float = field(default=2.0, metadata={"help": 'dynamic: the search grid is 0, alpha_step, ..., alpha_max'})
    alpha_step: float = field(default=0.1, metadata={"help": 'dynamic: spacing of the search grid'})
    refine: int = field(default=0, metadata={"help": 'dynamic: golden-section steps after the grid (0 = grid only)'})
    max_tokens: int = field(default=32, metadata={"help": 'tokens generated at most per prompt'})
    temperature: float = field(default=0.0, metadata={"help": '0 = greedy; > 0 samples from the fused distribution'})
    top_p: float = field(default=1.0, metadata={"help": 'nucleus sampling mass (with temperature > 0)'})
    stop: tuple[str, ...] = field(default=(), metadata={"help": 'stop strings; the output ends before the first one'})
    seed: int | None = field(default=None, metadata={"help": 'sampling seed (None: unseeded)'})
    batch_size: int = field(default=8, metadata={"help": 'prompts decoded together'})
    large_top_k: int | None = field(default=None, metadata={"help": "fuse over the large model's top-k tokens only (an approximation; needed for an API that returns top-k logprobs)"})
    large_tail: str = field(default="small", metadata={"help": "with large_top_k: the log-probabilities of the tokens the large model did not return: "
                                                        "small (its missing mass spread like the small base's distribution), uniform (spread evenly), "
                                                        "floor (the lowest returned value, fused over the returned and experts' top-k tokens only)"})
    use_cache: bool = field(default=True, metadata={"help": 'reuse KV caches between steps'})
    precision: str = field(default="float32", metadata={"help": 'dynamic search arithmetic: float32 (fast) or float64 (reference)'})
    expert_choice: str = field(default="step", metadata={"help": "dynamic, several experts: which expert is active at a step: step (this step's best, the paper's), "
                                                                 "first (the first expert given a weight > 0 stays active for the rest of the answer), "
                                                                 "cumulative (the expert with the lowest best objective summed over the answer's steps so far)"})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise bad_value("mode", f"one of {', '.join(MODES)}", self.mode)
        for name in ("alpha", "alpha_max", "alpha_step", "temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad_value(name, "a finite number", v)
        if not 0 < self.alpha_max <= 10:
            raise bad_value("alpha_max", "a number in (0, 10]", self.alpha_max)
        if not 0 < self.alpha_step <= self.alpha_max:
            raise bad_value("alpha_step", f"a number in (0, alpha_max={self.alpha_max:g}]", self.alpha_step)
        if not 0 <= self.alpha <= self.alpha_max:
            raise bad_value("alpha", f"a number in [0, {self.alpha_max:g}] (alpha_max)", self.alpha)
        for name in ("max_tokens", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad_value(name, "a positive integer", v)
        if isinstance(self.refine, bool) or not isinstance(self.refine, int) or not 0 <= self.refine <= 100:
            raise bad_value("refine", "an int in [0, 100] (golden-section steps)", self.refine)
        if self.temperature < 0:
            raise bad_value("temperature", "a number >= 0 (0 = greedy)", self.temperature)
        if not 0 < self.top_p <= 1:
            raise bad_value("top_p", "a number in (0, 1]", self.top_p)
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise bad_value("stop", "a tuple of non-empty strings", self.stop)
        if self.large_top_k is not None and (isinstance(self.large_top_k, bool) or not isinstance(self.large_top_k, int) or self.large_top_k < 1):
            raise bad_value("large_top_k", "a positive integer or None", self.large_top_k)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad_value("seed", "an int or None", self.seed)
        if self.large_tail not in LARGE_TAILS:
            raise bad_value("large_tail", f"one of {', '.join(LARGE_TAILS)}", self.large_tail)
        if self.expert_choice not in EXPERT_CHOICES:
            raise bad_value("expert_choice", f"one of {', '.join(EXPERT_CHOICES)}", self.expert_choice)
        if self.expert_choice != "step" and self.refine:
            raise bad_value("refine", f"0 with expert_choice={self.expert_choice} (refinement re-searches one step alone)", self.refine)
        if self.precision not in PRECISIONS:
            raise bad_value("precision", f"one of {', '.join(PRECISIONS)}", self.precision)

    def check(self) -> "FusionConfig":
        """The config itself (validation runs on construction; kept for callers that chain it)."""
        return self

    def grid(self) -> "torch.Tensor":
        """The dynamic search's weight grid 0, alpha_step, ..., alpha_max (float64)."""
        import torch

        n = int(round(self.alpha_max / self.alpha_step))
        return torch.arange(n + 1, dtype=torch.float64) * self.alpha_step
