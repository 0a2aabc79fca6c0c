"""Plot dynamic fusion's per-step expert weights for one prompt per expert (docs/fusion.md).

Reads the traces stored in bench/results/fusion_multi.json (dynamic fusion with both experts
on the first capital and the first region prompt of the reported set; the same per-step
weights ``fuse generate --weights-out`` writes) and draws ``docs/img/fusion_weights.png``.

    python bench/fusion_weights_plot.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "fusion_multi.json"
OUT = REPO / "docs" / "img" / "fusion_weights.png"


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = json.loads(RESULTS.read_text())["traces"]
    fig, axes = plt.subplots(1, len(traces), figsize=(5.2 * len(traces), 3.2), squeeze=False)
    for ax, (skill, tr) in zip(axes[0], traces.items()):
        steps = list(range(len(tr["weights"])))
        for t, (name, marker) in enumerate((("expert capital", "o"), ("expert region", "s"))):
            ax.plot(steps, [w[t] for w in tr["weights"]], marker=marker, label=name)
        ax.set_xticks(steps)
        ax.set_xticklabels([repr(s)[1:-1] for s in tr["tokens"]], rotation=60, fontsize=8)
        ax.set_ylim(-0.05, 2.05)
        ax.set_ylabel("weight α_t")
        ax.set_title(f"{skill} prompt: {tr['prompt'].splitlines()[0]!s}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Dynamic fusion, two experts: the weight of each expert at every generated token", fontsize=10)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110, metadata={"Software": None})
    print("wrote", OUT.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
