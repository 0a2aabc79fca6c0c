"""The ``hf-image`` provider against a loopback endpoint in the Hugging Face Inference API's
format (tests/providers/hf_image_server.py): top-k answers with NaN for the rest, retries of
only the failed images, the Client's cache, concurrency, clear errors, and BlackVIP trained
through it (a tiny classifier here; the real EfficientNet-Lite0 in the slow test)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hf_image_server import decode_image, make_app, serve  # noqa: E402
from needs import need  # noqa: E402

need("PIL", "uvicorn", hint="pip install 'blackbox-adapt[vision,serve]'")

from blackbox.client import Client  # noqa: E402
from blackbox.errors import ConfigError, ProviderError  # noqa: E402
from blackbox.provider import load_provider  # noqa: E402
from blackbox.providers.hf_image_api import HFImageProvider, encode_png, unique_labels  # noqa: E402
from blackbox.types import ClassifyRequest  # noqa: E402

LABELS = [f"class {i}" for i in range(12)]


def tiny_classify(x: np.ndarray) -> np.ndarray:
    """12 classes from mean colour and brightness patterns (deterministic, any image size)."""
    f = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), x[:, ::2].mean(axis=(1, 2)), x[:, :, ::2].mean(axis=(1, 2))], axis=1)
    W = np.random.default_rng(0).standard_normal((f.shape[1], len(LABELS))) * 8
    z = f @ W
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 16, 16, 3)).astype(np.float32)


def test_top_k_scores_match_the_server_model_with_nan_elsewhere():
    x = images(6)
    with serve(make_app(tiny_classify, LABELS, top_k=3)) as url:
        res = HFImageProvider(url, LABELS, concurrency=4).classify(ClassifyRequest(inputs=x))
        # with top_k set, the JSON body asks for that k instead of the server default
        res5 = HFImageProvider(url, LABELS, top_k=5).classify(ClassifyRequest(inputs=x))
    assert res.scores.shape == (6, 12) and res.usage.queries == 6
    assert (np.isfinite(res.scores).sum(axis=1) == 3).all() and (np.isfinite(res5.scores).sum(axis=1) == 5).all()
    # exactly the model's probabilities on the 8-bit image the server decoded
    want = tiny_classify(np.stack([decode_image(encode_png(im)) for im in x]))
    for row, w in zip(res.scores, want):
        top = np.argsort(-w)[:3]
        assert set(np.flatnonzero(np.isfinite(row))) == set(top)
        np.testing.assert_allclose(row[top], w[top], rtol=1e-6)


def test_failed_requests_are_retried_alone_and_results_are_unchanged():
    x = images(10, 1)
    with serve(make_app(tiny_classify, LABELS)) as url:
        clean = HFImageProvider(url, LABELS).classify(ClassifyRequest(inputs=x)).scores
    app = make_app(tiny_classify, LABELS, fail_every=4)
    with serve(app) as url:
        got = Client(HFImageProvider(url, LABELS, concurrency=3)).classify(ClassifyRequest(inputs=x))
    np.testing.assert_array_equal(got.scores, clean)
    # every 4th request failed with 503 and only those images were sent again
    assert app.state["failed"] >= 2 and app.state["requests"] == 10 + app.state["failed"]


def test_client_cache_answers_repeats_without_requests(tmp_path):
    x = images(5, 2)
    app = make_app(tiny_classify, LABELS)
    with serve(app) as url:
        client = Client(HFImageProvider(url, LABELS), cache=tmp_path / "c.sqlite")
        a = client.classify(ClassifyRequest(inputs=x)).scores
        n = app.state["requests"]
        b = client.classify(ClassifyRequest(inputs=x))
    assert n == 5 and app.state["requests"] == 5 and b.usage.cached
    np.testing.assert_array_equal(a, b.scores)


def test_concurrency_8_is_at_least_3x_faster_than_sequential_with_20ms_service():
    x = images(64, 3)
    ratios = []
    with serve(make_app(tiny_classify, LABELS, delay=0.02)) as url:
        seq, par = HFImageProvider(url, LABELS, concurrency=1), HFImageProvider(url, LABELS, concurrency=8)
        for p in (seq, par):
            p.classify(ClassifyRequest(inputs=x[:8]))  # connect outside the timing
        # Wall-clock ratios on a shared 2-core machine: the best of up to 3 alternating tries
        # (the scores must be identical in every try).
        for _ in range(3):
            out, wall = {}, {}
            for c, p in ((1, seq), (8, par)):
                t = time.perf_counter()
                out[c] = p.classify(ClassifyRequest(inputs=x)).scores
                wall[c] = time.perf_counter() - t
            np.testing.assert_array_equal(out[1], out[8])
            assert wall[1] >= 64 * 0.02
            ratios.append(wall[1] / wall[8])
            if ratios[-1] >= 3.0:
                break
    assert max(ratios) >= 3.0, ratios


def test_errors_are_one_clear_line():
    with pytest.raises(ConfigError, match="url: expected an http"):
        HFImageProvider("ftp://x", LABELS)
    with pytest.raises(ConfigError, match="labels: expected distinct labels"):
        HFImageProvider("http://127.0.0.1:1/", ["a", "a"])
    with pytest.raises(ConfigError, match="concurrency: expected an integer >= 1"):
        load_provider("hf-image:http://127.0.0.1:1/?labels=a,b&concurrency=0")
    assert unique_labels(["crane", "x", "crane"]) == ["crane", "x", "crane (2)"]
    assert len(load_provider("hf-image:http://127.0.0.1:1/?top_k=5").labels) == 1000
    with serve(make_app(tiny_classify, LABELS)) as url:
        with pytest.raises(ProviderError, match="labels: expected the server's labels"):
            HFImageProvider(url, LABELS[:-1] + ["other"], top_k=12).classify(ClassifyRequest(inputs=images(1)))


def test_blackvip_trains_through_the_endpoint_like_a_local_provider(tmp_path):
    from blackbox.methods.blackvip.config import BlackVIPConfig
    from blackbox.methods.blackvip.data import load_dataset
    from blackbox.methods.blackvip.method import BlackVIP

    digits = load_dataset("digits")
    cfg = BlackVIPConfig(shots=4, n_test=40, encoder="pixels", budget=700, batch_size=8, q=1, eval_every=0, head_every=2,
                         code_dim=4, trigger_dim=4, channels=4, checkpoint_every=100)
    with serve(make_app(tiny_classify, LABELS, top_k=4)) as url:
        run = BlackVIP(HFImageProvider(url, LABELS, concurrency=8), digits, cfg, tmp_path / "run")
        res = run.fit()
    assert res.queries <= 700 and res.steps >= 2 and 0 <= res.test_accuracy <= 1
    assert res.extras["white_box"] is False and "selected_step" in res.extras
