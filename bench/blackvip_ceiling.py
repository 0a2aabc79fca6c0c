"""White-box ceiling of BlackVIP's first-pass default configuration (not black-box).

Measured with that pass's defaults: the Coordinator's codes from the target's own features
(``encoder=target-features``) and every training shot in the loss (no hold-out).

The default of ``blackbox blackvip train`` is the Coordinator trained by SPSA-GC through
out-of-fold logistic-regression heads on the black box's log-probabilities. This script
trains the *same* Coordinator, through the *same* out-of-fold heads (refitted every epoch on
the prompted outputs, as the black-box run refits them every ``head_every`` steps), with
exact gradients: backpropagation through a local copy of the same EfficientNet-Lite0 and
Adam. It answers one question: how far can this prompt design take the head, given
gradients? Test accuracy is measured with the head refitted on all training images, as in
the method. Prints one JSON line per evaluated epoch and a summary line, and adds the seed's
results (the per-epoch curve) to ``bench/results/blackvip_ceiling.json`` (a run with other
settings starts the file afresh); ``--write-docs`` renders the ``blackvip_ceiling`` section
of docs/benchmarks.md from that file, ``--render`` does so without measuring.

    for S in 0 1 2; do python bench/blackvip_ceiling.py --seed $S --epochs 10 --lr 3e-4 --write-docs; done
    python bench/blackvip_ceiling.py --render --write-docs
"""

from __future__ import annotations

import _common  # noqa: F401  (pins BLAS threads before numpy)

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
from _common import emit, loadavg, machine, machine_line, publish_results, results_path, save_results, stamp

STEM = "blackvip_ceiling"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="few-shot split and initialisation seed")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-4, help="Adam step size on the Coordinator's parameters")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the blackvip_ceiling section of docs/benchmarks.md")
    ap.add_argument("--render", action="store_true", help="only render the section from bench/results/blackvip_ceiling.json")
    args = ap.parse_args()
    if args.render:
        publish_results(STEM, render_section, args.write_docs)
        return
    info = machine()

    import torch
    from blackvip import whitebox_coordinator

    from blackbox.methods.blackvip.config import BlackVIPConfig
    from blackbox.methods.blackvip.data import few_shot_split, load_dataset
    from blackbox.methods.blackvip.encoders import make_encoder
    from blackbox.methods.blackvip.outputs import FoldedHead

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    d = BlackVIPConfig()
    data = load_dataset("mnist")
    tr, te = few_shot_split(data, args.shots, args.n_test, args.seed)
    # As measured: the first pass's default encoder, the target's own features (white-box).
    enc = make_encoder("target-features", d.encoder_size)
    wb = whitebox_coordinator(data, enc.features(data.images[tr]), enc.features(data.images[te]), tr, te, args.seed)
    theta, logp, ctr, cte, xtr, xte = wb.theta, wb.logp, wb.ctr, wb.cte, wb.xtr, wb.xte
    ytr, yte = data.labels[tr], data.labels[te]

    def probs(x: Any, codes: Any) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([logp(x[i:i + 200], codes[i:i + 200]) for i in range(0, len(x), 200)]).double().exp().numpy()

    head = FoldedHead(d.head_folds, d.head_C, len(tr), args.seed)

    def test_accuracy() -> float:
        return float((head.full.log_probs(probs(xte, cte)).argmax(1) == yte).mean())

    def torch_head(h: Any) -> Any:
        a = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in h.arrays.items()}
        return lambda lp: ((torch.log(lp.exp() + 1e-12) - a["mean"]) / a["std"]) @ a["W"].T + a["b"]

    head.fit(probs(xtr, ctr), ytr, 10)
    curve = [(0, test_accuracy())]
    emit({"epoch": 0, "test_accuracy": curve[0][1], "note": "no prompt trained yet (initial Coordinator)"})
    opt = torch.optim.Adam([theta], lr=args.lr)
    fold_of = torch.as_tensor(head.fold_of)
    y = torch.as_tensor(ytr)
    t0 = time.perf_counter()
    oof: list[float] = []
    for epoch in range(1, args.epochs + 1):
        heads = [torch_head(h) for h in head.heads]
        total, batches = 0.0, 0
        for b in torch.randperm(len(xtr)).split(32):
            lp = logp(xtr[b], ctr[b])
            z = torch.zeros(len(b), 10)
            for k, h in enumerate(heads):
                rows = fold_of[b] == k
                if rows.any():
                    z[rows] = h(lp[rows])
            loss = torch.nn.functional.cross_entropy(z, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
        head.fit(probs(xtr, ctr), ytr, 10)  # refit on the new prompted outputs (all heads)
        acc = test_accuracy()
        curve.append((epoch, acc))
        oof.append(total / batches)
        emit({"epoch": epoch, "oof_loss": total / batches, "test_accuracy": acc, "seconds": time.perf_counter() - t0})
    best = max(curve[1:], key=lambda c: c[1]) if len(curve) > 1 else curve[0]
    info["loadavg_at_end"] = loadavg()
    run = {**stamp(info), "seconds": time.perf_counter() - t0, "start": curve[0][1], "final": curve[-1][1], "best": best[1],
           "best_epoch": best[0], "curve": [[e, a] for e, a in curve], "oof_loss": oof}
    emit({"summary": True, "seed": args.seed, "lr": args.lr, "epochs": args.epochs, **run})
    settings = {"lr": args.lr, "epochs": args.epochs, "shots": args.shots, "n_test": args.n_test}
    old = json.loads(results_path(STEM).read_text()) if results_path(STEM).exists() else {}
    seeds = old.get("seeds", {}) if old.get("settings") == settings else {}
    seeds[str(args.seed)] = run
    save_results(STEM, {"settings": settings, "seeds": dict(sorted(seeds.items(), key=lambda kv: int(kv[0])))}, {STEM: "docs/benchmarks.md"})
    publish_results(STEM, render_section, args.write_docs)


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section, from bench/results/blackvip_ceiling.json only."""
    st, seeds = r["settings"], r["seeds"]
    lines = [
        "## BlackVIP: white-box ceiling of the default design (not black-box)",
        "",
        "The default's own Coordinator, trained through the default's own out-of-fold logistic-regression heads (refitted after "
        "every epoch on the prompted outputs), but with exact gradients: backpropagation through a local copy of the same "
        f"EfficientNet-Lite0 and Adam (lr = {st['lr']:g}). {st['shots']} shots per class, {st['n_test']:,} held-out test images per "
        "seed (the same splits as the BlackVIP table); test accuracy in %, read after every epoch; \"best\" picks the epoch by the "
        "test set, so it flatters the ceiling. Raw results in `bench/results/blackvip_ceiling.json`.",
        "",
        f"| seed | initial Coordinator (≈ no prompt) | best epoch | final ({st['epochs']} epochs) | out-of-fold loss, epoch 1 → last | command | date | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, x in seeds.items():
        loss = f"{x['oof_loss'][0]:.2f} → {x['oof_loss'][-1]:.2f}" if x["oof_loss"] else "-"
        lines.append(f"| {seed} | {100 * x['start']:.1f} | {100 * x['best']:.1f} (epoch {x['best_epoch']}) | {100 * x['final']:.1f} | "
                     f"{loss} | `{x['command']}` | {x['date']} | {x['seconds']:.0f} |")
    if len(seeds) > 1:
        med = lambda k: f"{100 * statistics.median(x[k] for x in seeds.values()):.1f}"  # noqa: E731
        lines.append(f"| median | {med('start')} | {med('best')} | {med('final')} | | | | |")
    bare = sorted({machine_line({**x["machine"], "loadavg_at_start": None, "loadavg_at_end": None}) for x in seeds.values()})

    def load(x: dict[str, Any]) -> str:
        a, e = x["machine"].get("loadavg_at_start"), x["machine"].get("loadavg_at_end")
        return f"{'/'.join(map(str, a))} → {'/'.join(map(str, e))}" if a and e else "not recorded"

    lines += ["", "Machine: " + "; ".join(bare) + ". 1/5/15-min load average at start → end, by seed: "
              + "; ".join(f"seed {s}: {load(x)}" for s, x in seeds.items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
