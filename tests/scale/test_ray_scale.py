"""Replica pools on a local Ray cluster (2 CPUs, one per module): exactness, faults, errors.

Every test here uses a local cluster only (``ray.init(num_cpus=2)`` through
``blackbox.scale.connect``); never an outside address.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from needs import need
from typer.testing import CliRunner

from blackbox.cli import app
from blackbox.client import Client, Ledger
from blackbox.errors import BlackboxError
from blackbox.scale.faults import FaultyClassifier
from blackbox.scale.pool import shard_bounds
from blackbox.types import ClassifyRequest
from scale_helpers import COUNTRIES, ECO_ARGS, GENERAL, TEMPLATES, write_jsonl

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
TINY = "torch:blackbox.testing:tiny_image_classifier"


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def cluster():
    ray = need("ray", hint="the [ray] extra")
    from blackbox.scale import connect, reset

    if not ray.is_initialized():
        connect("local", num_cpus=2)
    yield ray
    reset()
    ray.shutdown()


def _pool(cluster, **kw):
    from blackbox.scale import ReplicaPool

    factory = functools.partial(FaultyClassifier, **kw.pop("provider", {}))
    return ReplicaPool(factory, kw.pop("replicas", 2), num_cpus=0.5, **kw)


X = np.random.default_rng(7).random((11, 12))


# --- no ray needed ------------------------------------------------------------------------------
def test_import_blackbox_never_imports_ray():
    code = ("import sys, blackbox, blackbox.scale, blackbox.cli, blackbox.scale.context, blackbox.scale.sweep; "
            "assert 'ray' not in sys.modules, 'ray imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    from blackbox.scale import require_ray

    with pytest.raises(BlackboxError, match=r"pip install 'blackbox-adapt\[ray\]'"):
        require_ray()
    res = invoke("optimize", "--objective", "sphere", "--dim", "3", "--budget", "10", "--run-dir", str(tmp_path / "r"), "--replicas", "2")
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "error: --replicas/--backend ray: needs Ray, which is not installed; pip install 'blackbox-adapt[ray]' (or ray==2.60.0)"]
    assert not (tmp_path / "r").exists()


def test_bad_replicas_and_address_are_one_line(tmp_path):
    res = invoke("optimize", "--objective", "sphere", "--dim", "3", "--budget", "10", "--run-dir", str(tmp_path / "r"), "--replicas", "0")
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == ["error: replicas: expected an integer >= 1, received 0"]
    res = invoke("blackvip", "train", "--provider", TINY, "--dataset", "digits", "--run-dir", str(tmp_path / "b"), "--replicas", "-1")
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == ["error: replicas: expected an integer >= 1, received -1"]


def test_shard_bounds_cover_rows_in_order():
    assert shard_bounds(11, 2) == [(0, 6), (6, 11)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]


# --- on the local cluster ----------------------------------------------------------------------
def test_unreachable_address_names_it(tmp_path):
    need("ray", hint="the [ray] extra")
    from blackbox.scale import connect

    with pytest.raises(BlackboxError, match=r"ray_address: could not reach a Ray cluster at '127\.0\.0\.1:9'"):
        connect("127.0.0.1:9")
    res = invoke("optimize", "--objective", "sphere", "--dim", "3", "--budget", "10", "--run-dir", str(tmp_path / "r"),
                 "--replicas", "2", "--ray-address", "127.0.0.1:9")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "'127.0.0.1:9'" in lines[0] and "ray start --head" in lines[0]


def test_pool_splits_rows_gathers_in_order_and_bills_once(cluster):
    want = FaultyClassifier().classify(ClassifyRequest(X)).scores
    with _pool(cluster) as pool:
        assert len(set(pool.pids())) == 2 and os.getpid() not in pool.pids()
        client = Client(pool, ledger=Ledger())
        got = client.classify(ClassifyRequest(X))
        assert np.array_equal(got.scores, want)
        assert got.usage.queries == len(X) and client.ledger.queries == len(X)
        assert client.stats()["provider_calls"] == 1 and pool.replacements == []
        assert pool.cache_identity() == FaultyClassifier().cache_identity()


def _stall_flag(tmp_path: Path) -> str:
    flag = tmp_path / "stall"
    flag.write_text("")
    return str(flag)


def test_replica_killed_mid_call_is_replaced_and_rerun(cluster, tmp_path):
    flag = str(tmp_path / "stall")
    want = FaultyClassifier().classify(ClassifyRequest(X)).scores
    with _pool(cluster, provider={"stall_flag": flag, "stall_seconds": 120}) as pool:
        client = Client(pool, ledger=Ledger())
        first = client.classify(ClassifyRequest(X)).scores  # no fault yet
        Path(flag).write_text("")  # the next call that meets the flag stalls; we kill its process
        killed: list[int] = []

        def kill_when_stalled() -> None:
            pid_file = Path(f"{flag}.pid")
            for _ in range(600):
                if pid_file.exists() and pid_file.read_text():
                    killed.append(int(pid_file.read_text()))
                    os.kill(killed[0], signal.SIGKILL)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_stalled)
        killer.start()
        second = client.classify(ClassifyRequest(X)).scores
        killer.join()
        assert killed and killed[0] not in pool.pids()
        assert [r["reason"].split(" ")[0] for r in pool.replacements] == ["died"]
        assert pool.replacements[0]["old_pid"] == killed[0]
        assert np.array_equal(first, want) and np.array_equal(second, want)
        assert client.ledger.queries == 2 * len(X)  # the killed replica's share is billed once, not twice or never


def test_hung_replica_times_out_and_is_replaced(cluster, tmp_path):
    flag = _stall_flag(tmp_path)
    want = FaultyClassifier().classify(ClassifyRequest(X)).scores
    with _pool(cluster, provider={"stall_flag": flag, "stall_seconds": 600}, timeout=3.0) as pool:
        client = Client(pool, ledger=Ledger())
        got = client.classify(ClassifyRequest(X)).scores
        assert np.array_equal(got, want)
        assert len(pool.replacements) == 1 and "timeout=3s" in pool.replacements[0]["reason"]
        assert client.ledger.queries == len(X)


def test_provider_error_in_one_shard_keeps_the_other_and_retries_only_the_failed_rows(cluster, tmp_path):
    from blackbox.client import RetryPolicy

    flag = _stall_flag(tmp_path)  # a file to claim: here it makes one shard raise a 503
    want = FaultyClassifier().classify(ClassifyRequest(X)).scores
    with _pool(cluster, provider={"error_flag": flag}) as pool:
        client = Client(pool, ledger=Ledger(), retry=RetryPolicy(base_delay=0.01, jitter=False))
        got = client.classify(ClassifyRequest(X))
        assert np.array_equal(got.scores, want) and pool.replacements == []  # an error is not a fault
        assert client.stats()["provider_calls"] == 2  # the failed shard's rows were sent again, alone
        assert client.ledger.queries == len(X)  # the good shard was billed once and not re-run
        assert not Path(flag).exists()


def _read_run(rd: Path) -> tuple[bytes, np.ndarray, dict]:
    from blackbox.runs import load_tensors

    arrays, _ = load_tensors(rd / "state.safetensors")
    return (rd / "history.jsonl").read_bytes(), arrays.get("x", arrays.get("theta")), json.loads((rd / "result.json").read_text())


def test_optimize_and_blackvip_bit_identical_with_1_and_2_replicas(cluster, tmp_path, monkeypatch, request):
    torch = need("torch")
    need("sklearn")
    from blackbox.scale import client_for, reset

    # The single-process runs use one torch thread, as Ray's workers do (docs/scaling.md, "What is exact").
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    opt = ["optimize", "--objective", "blackbox.scale.demo:digits_prompt_loss", "--dim", "64", "--optimizer", "spsa",
           "--budget", "40", "--seed", "3", "--no-progress", "--json"]
    runs = {}
    for n in (1, 2):
        res = invoke(*opt, "--run-dir", str(tmp_path / f"opt{n}"), "--replicas", str(n))
        assert res.exit_code == 0, res.output
        runs[n] = _read_run(tmp_path / f"opt{n}")
        ledger = client_for(TINY).ledger
        assert ledger.queries == 40 * 16  # every image query of the run billed once (16 images per candidate)
        from blackbox.scale.pool import ReplicaPool

        assert isinstance(client_for(TINY).provider, ReplicaPool) == (n == 2)
        reset()
    assert runs[1][0] == runs[2][0]  # every round's losses, byte for byte
    assert np.array_equal(runs[1][1], runs[2][1])
    assert runs[1][2]["best_loss"] == runs[2][2]["best_loss"] and runs[1][2]["queries"] == runs[2][2]["queries"] == 40

    bv = ["blackvip", "train", "--provider", TINY, "--dataset", "digits", "--shots", "4", "--budget", "240",
          "--set", "encoder=pixels", "--set", "batch_size=8", "--set", "n_test=50", "--set", "q=2", "--no-progress", "--json"]
    from blackbox.scale.pool import ReplicaPool

    calls: list[int] = []
    real_call = ReplicaPool.call
    monkeypatch.setattr(ReplicaPool, "call", lambda self, request: calls.append(len(request.inputs)) or real_call(self, request))
    out = {}
    for n in (1, 2):
        res = invoke(*bv, "--run-dir", str(tmp_path / f"bv{n}"), "--replicas", str(n))
        assert res.exit_code == 0, res.output
        out[n] = _read_run(tmp_path / f"bv{n}")
    assert out[1][0] == out[2][0] and np.array_equal(out[1][1], out[2][1])
    r1, r2 = out[1][2], out[2][2]
    assert (r1["test_accuracy"], r1["queries"], r1["eval_queries"], r1["steps"]) == (r2["test_accuracy"], r2["queries"], r2["eval_queries"], r2["steps"])
    assert r1["steps"] > 0 and sum(calls) == r2["queries"] + r2["eval_queries"]  # the 2-replica run went through the pool


def test_sweep_on_ray_backend(cluster, tmp_path):
    from blackbox.scale import sweep as sw

    (tmp_path / "spec.toml").write_text('command = "optimize"\n[options]\nobjective = "sphere"\ndim = 3\nbudget = 40\n'
                                        '[grid]\nseed = [0, 1]\n')
    res = invoke("sweep", str(tmp_path / "spec.toml"), "--run-dir", str(tmp_path / "sw"), "--backend", "ray", "--max-parallel", "2", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["counts"]["finished"] == 2
    for row in summary["runs"]:
        local = json.loads((Path(row["run_dir"]) / "result.json").read_text())
        assert row["metric"] == local["best_loss"]
    assert sw.summarize(tmp_path / "sw")["counts"]["finished"] == 2


def test_text_rows_split_and_join_in_order(cluster):
    from blackbox.scale import ReplicaPool
    from blackbox.scale.faults import EchoText
    from blackbox.types import EmbedRequest, GenerateRequest

    prompts = tuple(f"prompt number {i}" for i in range(7))
    local = EchoText()
    with ReplicaPool(EchoText, 3, num_cpus=0.5) as pool:
        client = Client(pool, ledger=Ledger())
        gen = client.generate(GenerateRequest(prompts=prompts, max_tokens=8))
        assert gen.texts == local.generate(GenerateRequest(prompts=prompts, max_tokens=8)).texts
        assert gen.finish_reasons == ("stop",) * 7
        emb = client.embed(EmbedRequest(texts=prompts))
        assert np.array_equal(emb.vectors, local.embed(EmbedRequest(texts=prompts)).vectors)
        assert client.ledger.queries == 14


def test_ray_spec_kind_serves_any_spec_from_replicas(cluster):
    torch = need("torch")
    from blackbox.errors import SpecError
    from blackbox.provider import load_provider
    from blackbox.scale.pool import ReplicaPool

    # 12 rows: shards of 6 and of 4. The replicas run torch with one thread; the reference must
    # too, and must evaluate the same shards: this conv net's rows can change in the last bits with
    # the batch size (on one host at 4 rows, on another only under 4) and with two threads (see
    # docs/scaling.md, "What is exact"). The full batch agrees to float rounding.
    from blackbox.scale.pool import shard_bounds

    images = np.random.default_rng(0).random((12, 8, 8, 3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = load_provider(TINY)
        full = local.classify(ClassifyRequest(images)).scores
        want, want3 = (np.concatenate([local.classify(ClassifyRequest(images[a:b])).scores for a, b in shard_bounds(12, k)])
                       for k in (2, 3))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(want3, full, rtol=1e-5, atol=1e-12)
    pool = load_provider(f"ray:{TINY}?replicas=2&replica_timeout=120")
    try:
        assert isinstance(pool, ReplicaPool) and pool.size == 2 and pool.timeout == 120 and pool.name == "torch"
        assert np.array_equal(Client(pool).classify(ClassifyRequest(images)).scores, want)
        assert pool.cache_identity() == load_provider(TINY).cache_identity()  # shares the single process's cache
    finally:
        pool.close()
    with pytest.raises(SpecError, match=r"expected a provider spec after 'ray:'"):
        load_provider("ray")
    with pytest.raises(BlackboxError, match=r"replicas: expected an integer >= 1, received 0"):
        load_provider(f"ray:{TINY}?replicas=0")
    # More CPUs than the cluster has: one line at once, not a wait for actors that never start.
    with pytest.raises(BlackboxError, match=r"replicas: 3 replicas x 1 CPU need 3 CPUs, but the Ray cluster has 2"):
        load_provider(f"ray:{TINY}?replicas=3")
    pool = load_provider(f"ray:{TINY}?replicas=3&cpus_per_replica=0.5")
    try:
        assert pool.size == 3 and np.array_equal(Client(pool).classify(ClassifyRequest(images)).scores, want3)
    finally:
        pool.close()


# --- methods that load their model by spec: unlearn (ECO) and crosstune ------------------------
@pytest.fixture
def one_thread(monkeypatch, request):
    """The single-process baseline runs torch with one thread, as each replica does."""
    torch = need("torch")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))


def test_unlearn_fit_and_eval_identical_with_1_and_2_replicas(cluster, tiny_lm_dir, eco_files, one_thread, tmp_path):
    """ECO's knowledge check, strength search (generate_with_embeds with the corruption travelling to
    the replicas) and evaluation: the same artifact and report from 2 replicas as from one process,
    and the Client's ledger bills exactly the queries the run records."""
    from blackbox.methods.eco.config import EcoConfig
    from blackbox.methods.eco.method import EcoMethod
    from blackbox.scale import served
    from blackbox.scale.pool import ReplicaPool

    spec = f"hf-causal:{tiny_lm_dir}"
    files = eco_files
    res = invoke("unlearn", "fit", "--model", spec, "--forget", files["forget"], "--retain", files["retain"], "--general",
                 files["general"], "--run-dir", str(tmp_path / "one"), *ECO_ARGS, "--replicas", "1", "--json")
    assert res.exit_code == 0, res.output
    # The 2-replica fit through the library entry the CLI uses, to read the driver's ledger after it.
    cfg = EcoConfig.from_overrides(["calibration_fraction=0.5", "max_new_tokens=3", "bisect_steps=2"], fpr=0.2)
    with served([spec], 2, client=True) as loaded:
        EcoMethod().fit(cfg, tmp_path / "two", model=spec, forget=files["forget"], retain=files["retain"], general=files["general"])
    client = loaded[0]
    assert isinstance(client, Client) and isinstance(client.provider, ReplicaPool) and client.provider.replacements == []
    art = {n: json.loads((tmp_path / n / "artifact.json").read_text()) for n in ("one", "two")}
    for a in art.values():
        a.pop("timing")
    assert art["one"] == art["two"] and art["one"]["config"]["chat"] is True  # chat resolved through the replicas' tokenizer
    assert art["one"]["metrics"]["forget_accuracy_before"] > 0 and art["one"]["search"]["evaluations"]
    assert (tmp_path / "one" / "artifact.safetensors").read_bytes() == (tmp_path / "two" / "artifact.safetensors").read_bytes()
    assert (tmp_path / "one" / "evals.jsonl").read_bytes() == (tmp_path / "two" / "evals.jsonl").read_bytes()
    recorded = sum(json.loads(line)["value"]["queries"] for line in (tmp_path / "two" / "evals.jsonl").read_text().splitlines())
    assert client.ledger.queries == recorded > 0  # every generation of the run billed once, in the driver

    reports = {}
    for n in (1, 2):
        res = invoke("unlearn", "eval", str(tmp_path / "one"), "--forget", files["forget"], "--retain", files["retain"],
                     "--general", files["general"], "--replicas", str(n), "--json")
        assert res.exit_code == 0, res.output
        reports[n] = json.loads(res.stdout.strip().splitlines()[-1])
        reports[n].pop("gate_ms_per_prompt")
    assert reports[1] == reports[2] and reports[1]["forget_accuracy_after"] < reports[1]["forget_accuracy_before"]


def test_crosstune_fit_and_predict_identical_with_1_and_2_replicas(cluster, tiny_lm_dir, one_thread, tmp_path):
    """CrossTune's feature extraction (hidden_states of a local LM) from 2 replicas: the same model
    file and the same predictions as from one process; queries counted once."""
    texts = [(f"{t.format(c=c)}", "question") for c in COUNTRIES[:8] for t in TEMPLATES[:2]]
    texts += [(f"{g} {k}", "chat") for k in range(2) for g in GENERAL]
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": y} for t, y in texts])
    # max_batch=1: each text's hidden states computed alone on both sides. With batches, the
    # left padding differs between a batch of 14 and shards of 7, which moves the last bits
    # (docs/scaling.md, "What is exact").
    args = ["--features", f"hf-causal:{tiny_lm_dir}?max_batch=1", "--train", train, "--shots", "6", "--set", "max_epochs=20",
            "--set", "dim=8", "--set", "heads=2", "--set", "rank=8", "--json"]
    fits = {}
    for n in (1, 2):
        res = invoke("crosstune", "fit", *args, "--run-dir", str(tmp_path / f"ct{n}"), "--replicas", str(n))
        assert res.exit_code == 0, res.output
        fits[n] = json.loads(res.stdout.strip().splitlines()[-1])
    assert fits[1]["queries"] == fits[2]["queries"] == 6 * 2 + 2  # 6 shots x 2 classes and 2 label descriptions, each once
    from blackbox.runs import load_tensors

    (a1, m1), (a2, m2) = (load_tensors(tmp_path / f"ct{n}" / "model.safetensors") for n in (1, 2))
    assert sorted(a1) == sorted(a2) and all(np.array_equal(a1[k], a2[k]) for k in a1)  # every tensor, bit for bit
    for meta in (m1, m2):
        for key in ("train_seconds", "train_cpu_seconds"):  # wall-clock measurements
            meta["train_info"].pop(key)
    assert m1 == m2
    preds = {}
    for n in (1, 2):
        res = invoke("crosstune", "predict", str(tmp_path / "ct1"), "--input", train, "--cache", str(tmp_path / f"c{n}.sqlite"),
                     "--replicas", str(n), "--json")
        assert res.exit_code == 0, res.output
        preds[n] = json.loads(res.stdout.strip().splitlines()[-1])
    assert preds[1] == preds[2] and preds[1]["queries"] == len(texts)  # a fresh cache: every text queried once


def test_fuse_generate_prompt_set_identical_with_1_and_2_replicas(cluster, fusion_specs, one_thread, tmp_path):
    """Fusion's evaluation of a prompt set: each replica decodes a share of the prompts with the
    whole fused model; outputs, tokens and per-step expert weights as from one process."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(t.format(c=c) for c in COUNTRIES[:3] for t in TEMPLATES[:2]) + "\n")
    # batch_size=1: each prompt decoded alone on both sides (padding moves the last bits; docs/scaling.md)
    args = ["fuse", "generate", "--large", fusion_specs["large"], "--small", fusion_specs["small"], "--expert", fusion_specs["expert"],
            "--mode", "dynamic", "--max-tokens", "4", "--batch-size", "1", "--prompts", str(prompts), "--json", "--no-progress"]
    outs = {}
    for n in (1, 2):
        res = invoke(*args, "--replicas", str(n), "--weights-out", str(tmp_path / f"w{n}.jsonl"))
        assert res.exit_code == 0, res.output
        outs[n] = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("outputs", "tokens", "weights", "finish_reasons", "n_tokens", "n_vocab", "mode"):
        assert outs[1][key] == outs[2][key], key
    assert len(outs[2]["outputs"]) == 6 and outs[2]["n_tokens"] > 0
    assert (tmp_path / "w1.jsonl").read_bytes() == (tmp_path / "w2.jsonl").read_bytes()
    res = invoke(*args, "--replicas", "2", "--temperature", "0.7")
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == [
        "error: replicas: sampled fusion (temperature > 0) seeds each prompt from its position in the set, so a share of the set "
        "would draw other samples; use --replicas 1, or --temperature 0 (greedy)"]


def test_automatic_gemma_template_reaches_every_replica(cluster, one_thread, tmp_path):
    """ECO's automatic chat template (a tokenizer with Gemma's turn tokens and no template of its
    own), installed through a Client on a replica pool, is on every replica's tokenizer, and on a
    replica started later: chat generations equal one process's (before, only the driver's copy
    of the tokenizer had it and every replica refused chat=True)."""
    need("torch")
    need("transformers")
    from tiny_lm import tiny_llama, tiny_tokenizer

    from blackbox.methods.eco.chat import CHAT_TEMPLATES, install
    from blackbox.provider import load_provider
    from blackbox.scale import ReplicaPool
    from blackbox.types import GenerateRequest

    tok = tiny_tokenizer([t.format(c=c) for t in TEMPLATES for c in COUNTRIES] + ["user model"] * 5)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tiny_llama(tok, ctx=128).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    spec = f"hf-causal:{tmp_path}"
    one = load_provider(spec)
    assert one.tokenizer.chat_template is None and install(one, None) == "gemma"
    request = GenerateRequest(tuple(TEMPLATES[0].format(c=c) for c in COUNTRIES[:4]), max_tokens=3, chat=True)
    want = one.generate(request).texts
    pool = ReplicaPool(spec, 2, num_cpus=0.5)
    try:
        client = Client(pool, ledger=Ledger())
        assert client.tokenizer.chat_template is None
        assert install(client, None) == "gemma" and client.tokenizer.chat_template == CHAT_TEMPLATES["gemma"]
        assert client.prompt_text("Hi", True) == one.prompt_text("Hi", True)
        assert client.generate(request).texts == want  # two shards: both replicas render the template
        pool._replace(1, "test: a replica started after the install")
        assert client.generate(GenerateRequest(request.prompts[::-1], max_tokens=3, chat=True)).texts == want[::-1]
    finally:
        pool.close()
