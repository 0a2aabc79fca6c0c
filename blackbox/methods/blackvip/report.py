"""Pictures of a BlackVIP run: prompts (image | prompt | prompted image) and the learning curve."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from blackbox.runs import atomic_write_bytes


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def prompt_grid(run: Any, n: int = 10, scale: int = 3) -> np.ndarray:
    """Rows of (test image, prompt contrast-stretched to [0, 1], prompted image), one per class, upscaled ``scale``×."""
    import torch

    # One test image per class (as many classes as fit), so the grid shows input dependence.
    labels = run.data.labels[run.test_idx]
    pos = np.array([int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:n])
    imgs = run.data.images[run.test_idx[pos]]
    codes = run.codes_test[pos]
    with torch.no_grad():
        p = run.module.prompts(torch.as_tensor(run.theta, dtype=torch.float32), torch.as_tensor(codes, dtype=torch.float32)).numpy()
    prompted = run._prompted(run.theta, imgs, codes)
    side = imgs.shape[1]
    gap = 2
    grid = np.ones((len(pos) * (side + gap), 3 * (side + gap), 3), dtype=np.float32)
    for i in range(len(pos)):
        # The prompt is contrast-stretched per image (its raw range may be tiny).
        lo, hi = float(p[i].min()), float(p[i].max())
        shown = (p[i] - lo) / (hi - lo) if hi > lo else np.full_like(p[i], 0.5)
        for j, tile in enumerate((imgs[i], shown, prompted[i])):
            grid[i * (side + gap):i * (side + gap) + side, j * (side + gap):j * (side + gap) + side] = tile
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def learning_curve_png(history: list[dict[str, Any]], title: str) -> bytes:
    """Train loss and test accuracy against black-box queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(6, 3.5), dpi=100)
    q = [r["queries"] for r in history]
    ax1.plot(q, [r["loss"] for r in history], color="tab:blue", lw=0.8, label="train loss (minibatch)")
    ax1.set_xlabel("black-box queries (images)")
    ax1.set_ylabel("train loss", color="tab:blue")
    ev = [r for r in history if "test_accuracy" in r]
    if ev:
        ax2 = ax1.twinx()
        ax2.plot([r["queries"] for r in ev], [100 * r["test_accuracy"] for r in ev], "o-", color="tab:red", label="test accuracy")
        ax2.set_ylabel("test accuracy (%)", color="tab:red")
    ax1.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_pictures(run: Any) -> list[Path]:
    """Write ``prompts.png`` and ``learning_curve.png`` into the run directory."""
    out = []
    if run.module.dim > 0:
        path = run.run_dir / "prompts.png"
        atomic_write_bytes(path, _png(prompt_grid(run)))
        out.append(path)
    hist_path = run.run_dir / "history.jsonl"
    history = [json.loads(l) for l in hist_path.read_text().splitlines()] if hist_path.exists() else []
    if history:
        path = run.run_dir / "learning_curve.png"
        title = f"BlackVIP {run.cfg.prompt} + {run.cfg.optimizer}, output={run.cfg.output} ({run.dataset})"
        atomic_write_bytes(path, learning_curve_png(history, title))
        out.append(path)
    return out
