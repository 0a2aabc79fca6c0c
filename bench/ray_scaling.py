"""Throughput of one run's probes with 1 vs 2 Ray replicas, and the driver's overhead per step.

Three measurements, each against its baseline in the same run (ratios, not absolute speed):

* ``cpu``: EfficientNet-Lite0 (``efficientnet-lite0?size=96``, one torch thread per process)
  classifying batches of 32 images of 96×96: in one process, then through
  :class:`blackbox.scale.ReplicaPool` with 1 and 2 replicas (each batch split 16 + 16).
* ``io``: an I/O-bound provider: one HTTP call per row to a loopback server with a fixed 50 ms
  service time (a threading server, so calls overlap), batches of 8 rows; same three ways.
* ``overhead``: an SPSA step at d = 10,000 (q = 2: 4 candidates of 80 kB, one row each) whose provider answers
  at once (:class:`blackbox.scale.faults.InstantClassifier`), in one process and through pools of
  1, 2 and 4 replicas, plus d = 100 and 100,000 with 2 replicas: the extra time per step is what
  the driver and Ray add. ``render_section("ray_projection")`` fits it as fixed + per replica +
  per megabyte shipped and projects 8 and 64 replicas (docs/scaling.md).

Each configuration is measured ``--repeats`` times, interleaved in blocks, and the median
kept. A local Ray cluster with 2 CPUs (``ray.init(num_cpus=2)``), no dashboard, no usage stats.

    nice python bench/ray_scaling.py --write-docs     # measure, save bench/results/ray_scaling.json, render
    python bench/ray_scaling.py --render --write-docs # re-render the docs section from the saved file
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import _common  # noqa: E402  (before numpy: pins BLAS threads; docs section writer)
import numpy as np  # noqa: E402

from blackbox.provider import Provider  # noqa: E402
from blackbox.types import Capability, ClassifyRequest, ClassifyResult, Usage  # noqa: E402

STEM = "ray_scaling"
SECTIONS = {"ray_scaling": "docs/benchmarks.md", "ray_projection": "docs/scaling.md"}
SERVICE_S = 0.050
TARGETS = {"io_speedup_2_vs_1": 1.8, "overhead_ms_d1e4_2_replicas": 5.0}


# --- the I/O-bound provider and its loopback server ----------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        n = int(self.headers.get("Content-Length", 0))
        row = json.loads(self.rfile.read(n))
        time.sleep(SERVICE_S)
        body = json.dumps({"scores": [float(np.tanh(sum(row))), 0.0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class HttpRowClassifier(Provider):
    """One POST per row to ``url`` (the server takes 50 ms each); logits of 2 classes."""

    name = "bench-http"
    declared_capabilities = frozenset({Capability.LOGITS})

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "url": self.url}

    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        rows = []
        for row in np.asarray(request.inputs, dtype=np.float64):
            req = urllib.request.Request(self.url, data=json.dumps(row.tolist()).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                rows.append(json.loads(resp.read())["scores"])
        return ClassifyResult(scores=np.asarray(rows), output="logits", usage=Usage(queries=len(rows)))


# --- measuring ------------------------------------------------------------------------------------
def _time_calls(call: Callable[[], Any], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    t0 = time.perf_counter()
    for _ in range(steps):
        call()
    return (time.perf_counter() - t0) / steps


def _provider_for(kind: str, replicas: int, source: Any, num_cpus: float = 1.0) -> Any:
    from blackbox.client import Client, Ledger
    from blackbox.provider import load_provider
    from blackbox.scale import ReplicaPool

    if replicas == 0:  # in process
        inner = source() if callable(source) else load_provider(source)
    else:
        inner = ReplicaPool(source, replicas, num_cpus=num_cpus)
    return Client(inner, ledger=Ledger())


def throughput(kind: str, source: Any, batch: np.ndarray, steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Rows per second in one process (replicas=0) and with 1 and 2 replicas; median of repeats."""
    per: dict[int, list[float]] = {0: [], 1: [], 2: []}
    want = None
    for _ in range(repeats):
        for replicas in (0, 1, 2):
            client = _provider_for(kind, replicas, source)
            try:
                out = client.classify(ClassifyRequest(inputs=batch, output="logits")).scores
                if want is None:
                    want = out
                assert np.array_equal(out, want), f"{kind}: results differ with {replicas} replicas"
                s = _time_calls(lambda: client.classify(ClassifyRequest(inputs=batch, output="logits")), steps, warmup)
                per[replicas].append(len(batch) / s)
                queries = client.ledger.queries
                assert queries == (1 + warmup + steps) * len(batch), f"{kind}: ledger {queries}"
            finally:
                client.close()
            _common.emit({"kind": kind, "replicas": replicas, "rows_per_s": per[replicas][-1]})
    med = {r: statistics.median(v) for r, v in per.items()}
    return {"rows_per_step": int(len(batch)), "steps": steps, "repeats": repeats,
            "rows_per_s": {"in_process": med[0], "replicas_1": med[1], "replicas_2": med[2]},
            "all_rows_per_s": {"in_process": per[0], "replicas_1": per[1], "replicas_2": per[2]},
            "speedup_2_vs_1": med[2] / med[1], "speedup_2_vs_in_process": med[2] / med[0],
            "identical_results": True}


def overhead(d: int, replicas: int, steps: int, repeats: int) -> dict[str, Any]:
    """Milliseconds per SPSA step (ask, one batched call of 4 candidates (q = 2), tell) with an instant provider."""
    from blackbox.optim.recipes import make_optimizer
    from blackbox.scale.faults import InstantClassifier

    # Instant replicas use no CPU to speak of: half a CPU each lets 4 of them fit the 2-CPU cluster.
    client = _provider_for("overhead", replicas, InstantClassifier, num_cpus=0.5)
    times = []
    try:
        for _ in range(repeats):
            opt = make_optimizer("spsa", np.zeros(d), seed=0, a=0.01, c=0.01, q=2)

            def step() -> None:
                X = opt.ask()
                scores = client.classify(ClassifyRequest(inputs=X, output="probs")).scores
                opt.tell(scores[:, 0] + np.sum(X * X, axis=1) * 1e-9)

            times.append(_time_calls(step, steps, warmup=5) * 1000.0)
    finally:
        client.close()
    return {"d": d, "replicas": replicas, "ms_per_step": statistics.median(times), "all_ms_per_step": times, "steps": steps}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from blackbox.scale import connect

    info = _common.machine()
    ray = connect("local", num_cpus=2)
    results: dict[str, Any] = {}
    try:
        # (c) driver overhead first (least sensitive to the model loads that follow)
        rows = []
        for d, reps in ((10_000, (0, 1, 2, 4)), (100, (2,)), (100_000, (2,))):
            for r in reps:
                rows.append(overhead(d, r, args.overhead_steps, args.repeats))
                _common.emit({"overhead": rows[-1]})
        base = next(r for r in rows if r["d"] == 10_000 and r["replicas"] == 0)["ms_per_step"]
        for r in rows:
            r["overhead_ms"] = r["ms_per_step"] - base
        results["overhead"] = {"rows": rows, "in_process_ms_per_step": base}

        # (b) I/O bound: loopback server with a fixed 50 ms service time
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/classify"
            batch = np.random.default_rng(0).random((8, 4))
            results["io"] = throughput("io", functools.partial(HttpRowClassifier, url), batch, args.io_steps, 1, args.repeats)
        finally:
            server.shutdown()

        # (a) CPU bound: EfficientNet-Lite0 at 96x96, batch 32
        images = np.random.default_rng(0).random((32, 96, 96, 3))
        results["cpu"] = throughput("cpu", "efficientnet-lite0?size=96", images, args.cpu_steps, 2, args.repeats)
    finally:
        ray.shutdown()
    info["loadavg_at_end"] = _common.loadavg()
    results.update(_common.stamp(info))
    results["targets"] = TARGETS
    results["service_ms"] = SERVICE_S * 1000
    return results


# --- rendering ------------------------------------------------------------------------------------
def overhead_model(r: dict[str, Any]) -> dict[str, float]:
    """Driver overhead per step ≈ fixed + per_replica·k + per_mb·(MB shipped per step), fitted to the
    measured rows: per_mb from d = 100 vs 100,000 (2 replicas), per_replica by least squares over
    k = 1, 2, 4 at d = 10,000 (clipped at 0), fixed from the rest."""
    rows = r["overhead"]["rows"]

    def mb(d: int) -> float:
        return 4 * d * 8 / 1e6  # four float64 candidates per SPSA step (q = 2, two-sided)

    at = {(row["d"], row["replicas"]): row["overhead_ms"] for row in rows}
    per_mb = max(0.0, (at[(100_000, 2)] - at[(100, 2)]) / (mb(100_000) - mb(100)))
    ks = [k for k in (1, 2, 4) if (10_000, k) in at]
    ys = [at[(10_000, k)] for k in ks]
    kbar, ybar = sum(ks) / len(ks), sum(ys) / len(ys)
    slope = sum((k - kbar) * (y - ybar) for k, y in zip(ks, ys)) / sum((k - kbar) ** 2 for k in ks)
    per_replica = max(0.0, slope)
    fixed = max(0.0, ybar - per_replica * kbar - per_mb * mb(10_000))
    return {"fixed_ms": fixed, "per_replica_ms": per_replica, "per_mb_ms": per_mb}


# The projected workload: one BlackVIP step on MNIST (q = 2 two-sided probes x batch 32 = 128
# prompted 28x28 RGB images, float64) against EfficientNet-Lite0 at 96x96, one core per replica.
PROJ_IMAGES, PROJ_IMAGE_MB = 128, 28 * 28 * 3 * 8 / 1e6


def render_projection(r: dict[str, Any]) -> str:
    """docs/scaling.md: the fitted overhead model and what it implies at 8 and 64 replicas."""
    f = _common.fmt
    m = overhead_model(r)
    ms_img = 1000.0 / r["cpu"]["rows_per_s"]["replicas_1"]  # one replica, one (shared) core
    vectors_mb = PROJ_IMAGES * PROJ_IMAGE_MB
    seeds_mb = 10_000 * 8 / 1e6  # ship theta (d = 10,000) once, and a seed per probe
    lines = [
        f"Fitted to `bench/results/ray_scaling.json` ({r['date']}; measured on a shared 2-core machine, so treat "
        "the constants as rough): driver overhead per step ≈ "
        f"**{f(m['fixed_ms'])} ms fixed + {f(m['per_replica_ms'])} ms per replica + {f(m['per_mb_ms'])} ms per MB shipped**.",
        f"One replica of EfficientNet-Lite0 (96×96, one thread) took {f(ms_img)} ms per image here.",
        "",
        f"Projected BlackVIP step on MNIST: {PROJ_IMAGES} prompted images (q = 2 two-sided probes × batch 32), "
        f"{f(vectors_mb)} MB of images shipped per step, or {f(seeds_mb)} MB if replicas render the prompts "
        "themselves from θ (d = 10,000) and the probe seeds:",
        "",
        "| replicas | model time per step (ideal split) | driver overhead, images shipped | driver overhead, seeds shipped | bound by |",
        "|---|---|---|---|---|",
    ]
    for k in (1, 2, 8, 64):
        model = ms_img * -(-PROJ_IMAGES // k)
        ov_vec = m["fixed_ms"] + m["per_replica_ms"] * k + m["per_mb_ms"] * vectors_mb
        ov_seed = m["fixed_ms"] + m["per_replica_ms"] * k + m["per_mb_ms"] * seeds_mb
        bound = "replicas" if model > ov_vec else ("driver (seeds would lift it)" if model > ov_seed else "driver")
        lines.append(f"| {k} | {f(model)} ms | {f(ov_vec)} ms | {f(ov_seed)} ms | {bound} |")
    lines += [
        "",
        "The driver becomes the limit where its per-step overhead reaches the model time of one replica's shard. "
        "The per-replica term grows linearly (one submission and one result per replica per step, serialised in "
        "the driver); the per-MB term does not shrink with more replicas, since every row still crosses the "
        "driver's object store once.",
    ]
    return "\n".join(lines)


def render_section(name: str, r: dict[str, Any]) -> str:
    """The docs section from a results file (pure: no clock, no machine look-ups)."""
    if name == "ray_projection":
        return render_projection(r)
    f = _common.fmt
    io, cpu, ov = r["io"], r["cpu"], r["overhead"]
    ov10k = {row["replicas"]: row for row in ov["rows"] if row["d"] == 10_000}
    o2 = ov10k[2]["overhead_ms"]
    io_ok = "met" if io["speedup_2_vs_1"] >= r["targets"]["io_speedup_2_vs_1"] else "**missed**"
    ov_ok = "met" if o2 <= r["targets"]["overhead_ms_d1e4_2_replicas"] else "**missed**"
    lines = [
        "### Ray replicas: probe throughput and driver overhead (`bench/ray_scaling.py`)",
        "",
        f"Command: `{r['command']}` ({r['date']}). Machine: {_common.machine_line(r['machine'])}. "
        "Local Ray cluster with 2 CPUs; each configuration is the median of "
        f"{io['repeats']} interleaved repeats. The machine was shared (see the load average): compare ratios within this table only.",
        "",
        "| workload | rows per call | in one process | 1 replica | 2 replicas | 2 vs 1 replica | target |",
        "|---|---|---|---|---|---|---|",
        f"| (a) EfficientNet-Lite0, 96×96, CPU-bound | {cpu['rows_per_step']} | {f(cpu['rows_per_s']['in_process'])} img/s | "
        f"{f(cpu['rows_per_s']['replicas_1'])} img/s | {f(cpu['rows_per_s']['replicas_2'])} img/s | {cpu['speedup_2_vs_1']:.2f}× | reported |",
        f"| (b) HTTP on loopback, {r['service_ms']:.0f} ms per call, I/O-bound | {io['rows_per_step']} | {f(io['rows_per_s']['in_process'])} rows/s | "
        f"{f(io['rows_per_s']['replicas_1'])} rows/s | {f(io['rows_per_s']['replicas_2'])} rows/s | {io['speedup_2_vs_1']:.2f}× | "
        f"≥ {r['targets']['io_speedup_2_vs_1']}×: {io_ok} |",
        "",
        "Results were identical (bit for bit) with 0, 1 and 2 replicas, and the driver's ledger billed every row once.",
        "",
        "| driver overhead per SPSA step, instant provider | d | ms per step | overhead vs one process |",
        "|---|---|---|---|",
    ]
    for row in ov["rows"]:
        who = "one process" if row["replicas"] == 0 else f"{row['replicas']} replica{'s' if row['replicas'] > 1 else ''}"
        lines.append(f"| {who} | {row['d']:,} | {f(row['ms_per_step'])} | {'–' if row['replicas'] == 0 else f(row['overhead_ms']) + ' ms'} |")
    lines += [
        "",
        f"Target: ≤ {r['targets']['overhead_ms_d1e4_2_replicas']:g} ms per step at d = 10,000 with 2 replicas: {ov_ok} ({f(o2)} ms).",
        "The CPU-bound ceiling: two replicas can use at most the two cores, and on this shared machine the other "
        "engineers' processes take most of them, so (a) measures the share of the cores Ray could get, not the "
        "library. (b) waits on the server, not the CPU, so the replicas' calls overlap. See docs/scaling.md for the "
        "projection to 8 and 64 replicas.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-steps", type=int, default=8)
    ap.add_argument("--io-steps", type=int, default=8)
    ap.add_argument("--overhead-steps", type=int, default=100)
    ap.add_argument("--render", action="store_true", help="re-render from bench/results/ray_scaling.json, no measuring")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    if not args.render:
        _common.save_results(STEM, measure(args), SECTIONS)
    _common.publish_results(STEM, render_section, args.write_docs)


if __name__ == "__main__":
    main()
