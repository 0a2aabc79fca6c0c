"""Zeroth-order optimizers built from small pure pieces (optax style) behind ask/tell."""

from .base import Optimizer, OptimizerConfig, StepInfo, round_rng, round_seed
from .estimators import estimate_gradient, finite_differences, probe_points, queries_per_estimate
from .perturbations import PERTURBATIONS, get_perturbation
from .recipes import CMAESRecipe, SPSA, SPSAGC, ZOSGD, make_optimizer
from .schedules import Constant, Cosine, PowerDecay
from .transforms import Transform, chain, gradient_correction, identity, momentum, scale_by_schedule

__all__ = [
    "Optimizer", "OptimizerConfig", "StepInfo", "round_rng", "round_seed",
    "estimate_gradient", "finite_differences", "probe_points", "queries_per_estimate",
    "PERTURBATIONS", "get_perturbation",
    "CMAESRecipe", "SPSA", "SPSAGC", "ZOSGD", "make_optimizer",
    "Constant", "Cosine", "PowerDecay",
    "Transform", "chain", "gradient_correction", "identity", "momentum", "scale_by_schedule",
]
