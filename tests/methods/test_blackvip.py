"""BlackVIP on a tiny local black box: estimator wiring, batching, label maps, resume, CLI, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from needs import need  # noqa: E402  (tests/needs.py: skip, or fail under BLACKBOX_REQUIRE_MODELS=1)

torch = need("torch", hint="pip install torch==2.13.0")
need("sklearn", hint="pip install scikit-learn")

from blackbox.errors import BlackboxError, CapabilityError, ConfigError, ObjectiveError, RunError  # noqa: E402
from blackbox.methods.blackvip.config import BlackVIPConfig  # noqa: E402
from blackbox.methods.blackvip.data import ImageSet, few_shot_split, load_dataset, load_folder  # noqa: E402
from blackbox.methods.blackvip.method import BlackVIP  # noqa: E402
from blackbox.methods.blackvip.outputs import fixed_map, frequency_map, mapped_log_probs  # noqa: E402
from blackbox.methods.blackvip.prompts import Coordinator  # noqa: E402
from blackbox.provider import Provider  # noqa: E402
from blackbox.testing import tiny_image_classifier  # noqa: E402
from blackbox.types import Capability  # noqa: E402
from blackbox.providers.torch_provider import TorchProvider  # noqa: E402

SPEC = "torch:blackbox.testing:tiny_image_classifier"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Small convolutions on a busy 2-core machine: several threads per process were measured
    # up to 100x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_dataset("digits")


class CountingProvider(TorchProvider):
    """The tiny classifier, recording the size of every call."""

    def __init__(self) -> None:
        super().__init__(tiny_image_classifier(), n_classes=20, batch_size=1024)
        self.call_sizes: list[int] = []

    def classify(self, request):  # type: ignore[override]
        self.call_sizes.append(len(request.inputs))
        return super().classify(request)


def _cfg(**kw) -> BlackVIPConfig:
    base = dict(shots=4, n_test=100, encoder="pixels", budget=2000, a=0.001, init_scale=0.1, batch_size=8, q=2, eval_every=0, checkpoint_every=2,
                head_every=3, remap_every=3, code_dim=8, trigger_dim=4, channels=4)
    base.update(kw)
    return BlackVIPConfig(**base)


def test_coordinator_shapes_and_parameter_count():
    m = Coordinator(code_dim=8, trigger_dim=4, channels=4, side=32)
    theta = torch.as_tensor(m.init(0), dtype=torch.float32)
    assert theta.numel() == m.dim == m.describe()["trainable_parameters"]
    out = m.prompts(theta, torch.zeros(5, 8))
    assert out.shape == (5, 32, 32, 3)
    assert float(out.abs().max()) <= 1.0
    # Input-dependent: different codes give different prompts.
    a, b = m.prompts(theta, torch.zeros(1, 8)), m.prompts(theta, torch.ones(1, 8))
    assert not torch.allclose(a, b)


def test_step_evaluates_every_probe_in_one_call_and_counts_queries(digits, tmp_path):
    p = CountingProvider()
    run = BlackVIP(p, digits, _cfg(output="map", remap_every=0), tmp_path / "r")
    res = run.fit(max_steps=3)
    n_train = len(run.train_idx)
    # Setup: un-prompted passes over the train images (counted) and the test images
    # (evaluation), then the initially prompted train images the map is fitted to (counted).
    assert p.call_sizes[:3] == [n_train, len(run.test_idx), n_train]
    # Each step: 2q probes x batch images in a single call.
    assert p.call_sizes[3:6] == [2 * 2 * 8] * 3
    assert res.queries == 2 * n_train + 3 * 2 * 2 * 8
    assert res.steps == 3


def test_one_sided_uses_q_plus_one_probes(digits, tmp_path):
    p = CountingProvider()
    BlackVIP(p, digits, _cfg(output="map", remap_every=0, two_sided=False, q=3), tmp_path / "r").fit(max_steps=2)
    assert p.call_sizes[3:5] == [(3 + 1) * 8] * 2


def test_budget_is_never_exceeded(digits, tmp_path):
    run = BlackVIP(CountingProvider(), digits, _cfg(budget=500), tmp_path / "r")
    res = run.fit()
    # It stops only when the next step (with a head refit, if one is due) would not fit.
    assert 500 - (2 * 2 * 8 + len(run.train_idx)) < res.queries <= 500


def test_split_calls_give_identical_training(digits, tmp_path):
    a = BlackVIP(CountingProvider(), digits, _cfg(), tmp_path / "a").fit(max_steps=4)
    p = CountingProvider()
    b_run = BlackVIP(p, digits, _cfg(provider_batch=8), tmp_path / "b")
    b = b_run.fit(max_steps=4)
    assert max(p.call_sizes) == 8
    ta = BlackVIP.load(tmp_path / "a", provider=CountingProvider(), data=digits).theta
    assert np.array_equal(ta, b_run.theta)
    assert a.test_accuracy == b.test_accuracy


def test_resume_is_identical(digits, tmp_path):
    cfg = _cfg(budget=900)
    full = BlackVIP(CountingProvider(), digits, cfg, tmp_path / "full")
    r_full = full.fit()
    part = BlackVIP(CountingProvider(), digits, cfg, tmp_path / "part")
    part.fit(max_steps=3)  # stops after a checkpoint-sized chunk, like a kill after step 3
    resumed = BlackVIP(CountingProvider(), digits, cfg, tmp_path / "part")
    r_res = resumed.fit()
    assert np.array_equal(full.theta, resumed.theta)
    assert r_full.queries == r_res.queries and r_full.test_accuracy == r_res.test_accuracy
    h1 = (tmp_path / "full" / "history.jsonl").read_text()
    h2 = (tmp_path / "part" / "history.jsonl").read_text()
    assert h1 == h2


def test_training_lowers_the_loss_on_a_learnable_task(tmp_path):
    # Two classes the tiny black box cannot tell apart without a prompt: a dark and a bright
    # image; with identity outputs, a full prompt can push each towards its class.
    rng = np.random.default_rng(0)
    x = np.concatenate([np.full((20, 32, 32, 3), 0.3), np.full((20, 32, 32, 3), 0.7)]).astype(np.float32)
    x += rng.uniform(-0.05, 0.05, x.shape).astype(np.float32)
    data = ImageSet(x, np.repeat([0, 1], 20), ("dark", "bright"))
    model = tiny_image_classifier(n_classes=2, seed=3)
    prov = TorchProvider(model, n_classes=2)
    cfg = _cfg(shots=8, n_test=0, prompt="full", prompt_res=2, output="identity", a=0, c=0.05, budget=3000, batch_size=8, q=4)
    run = BlackVIP(prov, data, cfg, tmp_path / "r")
    run.fit()
    hist = [json.loads(l) for l in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    first, last = np.mean([h["loss"] for h in hist[:3]]), np.mean([h["loss"] for h in hist[-3:]])
    assert last < first - 0.05


def test_frequency_map_picks_the_most_predicted_class_and_many_to_one():
    probs = np.full((6, 5), 0.01)
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs[:3, 3] = 0.9  # class 0 -> source 3
    probs[3:, 1] = 0.9  # class 1 -> source 1
    M = frequency_map(probs, labels, 2)
    assert M[0, 3] == 1 and M[1, 1] == 1 and M.sum() == 2
    M2 = frequency_map(probs, labels, 2, per_class=2)
    assert M2.sum(axis=1).tolist() == [2, 2] and M2.sum(axis=0).max() == 1
    lp = mapped_log_probs(probs, M2)
    assert np.allclose(np.exp(lp).sum(axis=1), 1.0)
    with pytest.raises(ConfigError, match="map_per_class"):
        frequency_map(probs, labels, 2, per_class=3)


def test_fixed_map_must_cover_every_class():
    M = fixed_map({"a": [0, "y"], "b": 2}, ["a", "b"], ["x", "y", "z"], 3)
    assert M.tolist() == [[1, 1, 0], [0, 0, 1]]
    with pytest.raises(ConfigError, match=r"label_map.*missing \['b'\]"):
        fixed_map({"a": [0]}, ["a", "b"], None, 3)
    with pytest.raises(ConfigError, match="source indices"):
        fixed_map({"a": [7], "b": [0]}, ["a", "b"], None, 3)


def test_head_output_beats_chance_on_digits(digits, tmp_path):
    run = BlackVIP(CountingProvider(), digits, _cfg(prompt="none", output="head", shots=10, n_test=300), tmp_path / "r")
    res = run.fit()
    assert res.steps == 0 and res.linear_head_accuracy > 0.3  # chance is 0.1


def test_bad_inputs(digits, tmp_path):
    with pytest.raises(ConfigError, match="shots"):
        few_shot_split(digits, 500, 0, 0)
    with pytest.raises(ConfigError, match="prompt: expected one of"):
        BlackVIPConfig(prompt="frame")
    with pytest.raises(ConfigError, match="eps"):
        BlackVIPConfig.from_overrides({"eps": "-1"})
    with pytest.raises(ConfigError, match="--set: expected a key among .*, received 'epsilon'"):
        BlackVIPConfig.from_overrides({"epsilon": "1"})
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        load_folder(tmp_path / "empty")
    from PIL import Image

    (tmp_path / "one" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cat" / "a.png")
    with pytest.raises(ConfigError, match="at least 2 classes"):
        load_folder(tmp_path / "one")

    class TextOnly(Provider):
        name = "text-only"
        declared_capabilities = frozenset({Capability.TEXT})

    with pytest.raises(CapabilityError, match="probs"):
        BlackVIP(TextOnly(), digits, _cfg(), tmp_path / "x")
    # The black box checks the image shape it accepts.
    shaped = TorchProvider(tiny_image_classifier(), input_shape=(64, 64, 3), n_classes=20)
    with pytest.raises(BlackboxError, match="shape"):
        BlackVIP(shaped, digits, _cfg(), tmp_path / "y").fit(max_steps=1)
    run = BlackVIP(CountingProvider(), digits, _cfg(), tmp_path / "z")
    with pytest.raises(ObjectiveError, match="NaN"):
        run._prompted(np.full(run.module.dim, np.nan), digits.images[:2], np.zeros((2, 8)))
    # A different configuration in an existing run dir is refused, and the dir is untouched.
    BlackVIP(CountingProvider(), digits, _cfg(), tmp_path / "w").fit(max_steps=1)
    before = (tmp_path / "w" / "config.json").read_text()
    with pytest.raises(RunError, match="differs"):
        BlackVIP(CountingProvider(), digits, _cfg(eps=0.25), tmp_path / "w").fit(max_steps=1)
    assert (tmp_path / "w" / "config.json").read_text() == before


def test_clip_style_provider_wiring(digits, tmp_path):
    from blackbox.providers.clip_zero_shot import ClipZeroShotProvider

    g = torch.Generator().manual_seed(0)
    image_encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 6))
    for p_ in image_encoder.parameters():
        p_.data = torch.randn(p_.shape, generator=g)

    def text_encoder(texts):
        return torch.stack([torch.randn(6, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts])

    prov = ClipZeroShotProvider(image_encoder, text_encoder, digits.classes, size=32, logit_scale=10.0)
    from blackbox.types import ClassifyRequest

    x = digits.images[:3]
    probs = prov.classify(ClassifyRequest(inputs=x)).scores
    logits = prov.classify(ClassifyRequest(inputs=x, output="logits")).scores
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1)
    assert np.abs(logits).max() <= 10.0 + 1e-5  # logit_scale x cosine
    run = BlackVIP(prov, digits, _cfg(output="identity"), tmp_path / "clip")
    res = run.fit(max_steps=2)
    assert res.steps == 2 and 0 <= res.test_accuracy <= 1


@pytest.mark.subprocess
def test_cli_train_eval_predict(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny convolutions: extra threads only contend
    def run_cli(*args):
        return cli(*args, check=True, timeout=300).stdout

    rd = tmp_path / "run"
    out = run_cli("blackvip", "train", "--provider", SPEC, "--dataset", "digits", "--shots", "4", "--budget", "600",
                  "--run-dir", str(rd), "--set", "encoder=pixels", "--set", "batch_size=8", "--set", "q=2",
                  "--set", "n_test=100", "--set", "eval_every=5", "--json")
    res = json.loads(out.strip().splitlines()[-1])
    for key in ("zero_shot_accuracy", "linear_head_accuracy", "test_accuracy", "queries", "wall_seconds", "run_dir"):
        assert key in res
    assert res["queries"] <= 600
    assert (rd / "prompts.png").stat().st_size > 0 and (rd / "learning_curve.png").stat().st_size > 0
    ev = json.loads(run_cli("blackvip", "eval", str(rd), "--json").strip().splitlines()[-1])
    assert ev["test_accuracy"] == res["test_accuracy"]
    from PIL import Image

    Image.fromarray((load_dataset("digits").images[0] * 255).astype(np.uint8)).save(tmp_path / "d.png")
    pred = json.loads(run_cli("blackvip", "predict", str(rd), str(tmp_path / "d.png"), "--json").strip().splitlines()[-1])
    assert pred["predictions"][0]["label"] in [str(i) for i in range(10)]
