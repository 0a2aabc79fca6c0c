"""Prompt modules: the Coordinator (input-dependent) and input-independent baselines.

Every module maps a flat parameter vector ``theta`` (what the zeroth-order optimizer
trains) and a batch to an image-shaped prompt in [-1, 1]; the prompted input is
``clip(x + eps * prompt, 0, 1)``. Modules are pure functions of ``theta`` so that the 2q
probe vectors of one SPSA step can be evaluated side by side, and so that the white-box
reference can backpropagate through the very same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from blackbox.errors import bad_value


def _torch() -> Any:
    import torch

    return torch


@dataclass(frozen=True)
class ParamSpec:
    """Name and shape of one tensor inside the flat parameter vector."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _unflatten(theta: Any, specs: list[ParamSpec]) -> dict[str, Any]:
    out, i = {}, 0
    for s in specs:
        out[s.name] = theta[i:i + s.size].reshape(s.shape)
        i += s.size
    return out


class PromptModule:
    """Base class: ``init(seed)`` gives theta0; ``prompts(theta, codes)`` gives (n, S, S, 3) in [-1, 1]."""

    kind = "base"
    specs: list[ParamSpec]
    side: int

    @property
    def dim(self) -> int:
        """Number of trainable parameters (the optimizer's dimension)."""
        return sum(s.size for s in self.specs)

    def init(self, seed: int) -> np.ndarray:
        raise NotImplementedError

    def prompts(self, theta: Any, codes: Any) -> Any:
        """Prompts for a batch; ``theta`` is a torch tensor (dim,), ``codes`` (n, code_dim)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON description (kind, sizes, trainable parameter count)."""
        return {"kind": self.kind, "side": self.side, "trainable_parameters": self.dim}


class Coordinator(PromptModule):
    """Frozen-encoder code ⊕ learned prompt trigger → linear → 3 transposed convolutions → prompt.

    The encoder runs once per image outside this module (its codes are cached); only the
    trigger and the decoder are trained. Shapes: (code+trigger) → C×(S/8)² → C×(S/4)² →
    C×(S/2)² → 3×S², with parameter-free group normalisation and GELU between layers and
    tanh at the end.
    """

    kind = "coordinator"

    def __init__(self, code_dim: int, trigger_dim: int = 16, channels: int = 8, side: int = 32, init_scale: float = 0.1) -> None:
        if side < 8:
            raise bad_value("prompt side", "at least 8 pixels (the decoder doubles 3 times)", side)
        self.code_dim, self.trigger_dim, self.channels, self.side = code_dim, trigger_dim, channels, side
        self.init_scale = init_scale
        # The decoder works on a multiple of 8 and is resized to the image side when it differs.
        s0, c = -(-side // 8), channels
        self.specs = [
            ParamSpec("trigger", (trigger_dim,)),
            ParamSpec("fc.w", (c * s0 * s0, code_dim + trigger_dim)),
            ParamSpec("fc.b", (c * s0 * s0,)),
            ParamSpec("up1.w", (c, c, 4, 4)),
            ParamSpec("up1.b", (c,)),
            ParamSpec("up2.w", (c, c, 4, 4)),
            ParamSpec("up2.b", (c,)),
            ParamSpec("out.w", (c, 3, 4, 4)),
            ParamSpec("out.b", (3,)),
        ]

    def init(self, seed: int) -> np.ndarray:
        """Kaiming-uniform-like initialisation; the last layer is scaled down by ``init_scale``
        so training starts near the un-prompted image."""
        rng = np.random.default_rng(seed)
        parts = []
        for s in self.specs:
            if s.name == "trigger":
                parts.append(rng.standard_normal(s.size) * 0.1)
                continue
            if s.name.endswith(".b"):
                parts.append(np.zeros(s.size))
                continue
            fan_in = s.shape[1] if s.name == "fc.w" else s.shape[0] * s.shape[2] * s.shape[3] // 4
            bound = 1.0 / math.sqrt(fan_in)
            w = rng.uniform(-bound, bound, s.size) * math.sqrt(3.0)
            parts.append(w * (self.init_scale if s.name == "out.w" else 1.0))
        return np.concatenate(parts)

    def prompts(self, theta: Any, codes: Any) -> Any:
        torch = _torch()
        F = torch.nn.functional
        p = _unflatten(theta, self.specs)
        n = codes.shape[0]
        s0, c = -(-self.side // 8), self.channels
        u = torch.cat([codes, p["trigger"].expand(n, -1)], dim=1)
        h = F.gelu(F.linear(u, p["fc.w"], p["fc.b"])).reshape(n, c, s0, s0)
        h = F.gelu(F.group_norm(F.conv_transpose2d(h, p["up1.w"], p["up1.b"], stride=2, padding=1), 1))
        h = F.gelu(F.group_norm(F.conv_transpose2d(h, p["up2.w"], p["up2.b"], stride=2, padding=1), 1))
        out = torch.tanh(F.conv_transpose2d(h, p["out.w"], p["out.b"], stride=2, padding=1))
        if out.shape[-1] != self.side:
            out = F.interpolate(out, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return out.permute(0, 2, 3, 1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "code_dim": self.code_dim, "trigger_dim": self.trigger_dim, "channels": self.channels}


class FullPrompt(PromptModule):
    """Input-independent full-image perturbation (BAR-style): a ``res``² × 3 grid, bilinearly
    upsampled to the image side, through tanh."""

    kind = "full"

    def __init__(self, res: int = 8, side: int = 32) -> None:
        self.res, self.side = res, side
        self.specs = [ParamSpec("grid", (3, res, res))]

    def init(self, seed: int) -> np.ndarray:
        return np.zeros(self.dim)

    def prompts(self, theta: Any, codes: Any) -> Any:
        torch = _torch()
        g = theta.reshape(1, 3, self.res, self.res)
        up = torch.nn.functional.interpolate(g, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return torch.tanh(up).permute(0, 2, 3, 1).expand(codes.shape[0], -1, -1, -1)


class PadPrompt(PromptModule):
    """Input-independent frame of ``width`` pixels around the image at full resolution
    (visual-prompting "padding"); the centre is untouched."""

    kind = "pad"

    def __init__(self, width: int = 4, side: int = 32) -> None:
        if not 0 < 2 * width < side:
            raise bad_value("pad_width", f"an integer in [1, {side // 2 - 1}] for {side}-pixel images", width)
        self.width, self.side = width, side
        mask = np.zeros((side, side), dtype=bool)
        mask[:width, :] = mask[-width:, :] = True
        mask[:, :width] = mask[:, -width:] = True
        self._mask = mask
        self.specs = [ParamSpec("frame", (int(mask.sum()) * 3,))]

    def init(self, seed: int) -> np.ndarray:
        return np.zeros(self.dim)

    def prompts(self, theta: Any, codes: Any) -> Any:
        torch = _torch()
        full = torch.zeros(self.side, self.side, 3, dtype=theta.dtype)
        full[torch.as_tensor(self._mask)] = torch.tanh(theta.reshape(-1, 3))
        return full.unsqueeze(0).expand(codes.shape[0], -1, -1, -1)


class NoPrompt(PromptModule):
    """Zero-shot: nothing to train (kept so every arm shares one code path)."""

    kind = "none"

    def __init__(self, side: int = 32) -> None:
        self.side = side
        self.specs = []

    def init(self, seed: int) -> np.ndarray:
        return np.zeros(0)

    def prompts(self, theta: Any, codes: Any) -> Any:
        torch = _torch()
        return torch.zeros(codes.shape[0], self.side, self.side, 3)


def apply_prompt(images: Any, prompts: Any, eps: float) -> Any:
    """The prompted input ``clip(x + eps * prompt, 0, 1)`` (torch tensors, channels last)."""
    return (images + eps * prompts).clamp(0.0, 1.0)
