"""The image-optimisation engine and its transforms, on tiny models."""

import mlflow
import pytest
import torch
from conftest import tiny_classifier

from pipeline.track import tracking
from pipeline.errors import ConfigError
from pipeline.explain.engine.objectives import L2, ActivationNorm, ClassScore, FeatureMatch, Probe, TotalVariation
from pipeline.explain.engine.regime import Regime, build
from pipeline.explain.engine.render import item_seeds, optimize
from pipeline.explain.engine.steps import scheduled, step_rule
from pipeline.model.precision import frozen
from pipeline.explain.engine.transforms import REFERENCE_BLUR_KERNEL, Blur, Clip, GaussianBlur, Jitter, Quantize


@pytest.fixture(scope="module")
def model():
    net, _ = tiny_classifier(num_classes=4, mean_image=torch.full((3, 32, 32), 120.0))
    return frozen(net, "cpu")


def regime(steps, lr, rule="raw", transforms=(), constraints=(), **kwargs):
    return Regime(steps=steps, step=step_rule(rule, lr), transforms=list(transforms), constraints=list(constraints),
                  **kwargs)


def value(objective, x, index):
    return objective.evaluate(Probe(None, x, x, index)).total


def pixels(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


# --------------------------------------------------------------------------- transforms


def test_jitter_undo_is_exact_and_gradient_arrives_unrolled():
    x = pixels(2)
    jitter = Jitter(4)
    offsets = [(3, -2), (-4, 1)]
    assert torch.equal(Jitter.roll(Jitter.roll(x, offsets), offsets, undo=True), x)
    # autograd through the roll == the reference's roll / gradient / unroll
    w = torch.randn(2, 3, 32, 32)
    xg = x.clone().requires_grad_(True)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    drawn = jitter.offsets([torch.Generator().manual_seed(s) for s in (5, 6)])
    (grad,) = torch.autograd.grad((jitter(xg, gens) * w).sum(), xg)
    assert torch.equal(grad, Jitter.roll(w, drawn, undo=True))
    assert all(-4 <= v <= 4 for o in drawn for v in o)


def test_jitter_offsets_depend_only_on_the_image_generator():
    a = Jitter(8).offsets([torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    b = Jitter(8).offsets([torch.Generator().manual_seed(2)])
    assert a[1] == b[0]
    with pytest.raises(ConfigError, match="jitter"):
        Jitter(-1)


def test_reference_blur_kernel_and_center():
    assert torch.allclose(REFERENCE_BLUR_KERNEL.sum(), torch.tensor(1.0))
    delta = torch.zeros(1, 3, 7, 7)
    delta[0, :, 3, 3] = 200.0
    out = Blur()(delta)
    expected = torch.tensor([[1, 2, 1], [2, 188, 2], [1, 2, 1]], dtype=torch.float32)
    for c in range(3):
        assert torch.allclose(out[0, c, 2:5, 2:5], expected)
    assert out[0, :, :2].abs().sum() == 0
    # zero padding happens around the center (the reference blurs mean-subtracted images)
    center = torch.full((3, 7, 7), 100.0)
    assert torch.allclose(Blur(center=center)(center.expand(1, 3, 7, 7).clone()), center.expand(1, 3, 7, 7))
    assert torch.equal(Blur(every=3)(delta, step=1), delta)  # only every third step
    g = GaussianBlur(1.0)
    assert torch.allclose(g.kernel.sum(), torch.tensor(1.0)) and g.kernel.shape == (7, 7)
    with pytest.raises(ConfigError):
        Blur(every=0)
    with pytest.raises(ConfigError):
        GaussianBlur(0.0)


def test_clip_and_quantize_bounds():
    x = torch.tensor([-5.0, 0.4, 254.6, 300.0]).view(1, 1, 1, 4)
    assert torch.equal(Clip(0, 255)(x), torch.tensor([0.0, 0.4, 254.6, 255.0]).view(1, 1, 1, 4))
    low, high = torch.full((1, 1, 4), 10.0), torch.full((1, 1, 4), 20.0)
    assert Clip(low, high)(x).flatten().tolist() == [10.0, 10.0, 20.0, 20.0]
    assert Quantize()(Clip()(x)).flatten().tolist() == [0.0, 0.0, 255.0, 255.0]


def test_priors_and_the_algebra():
    x = pixels(2)
    index = torch.arange(2)
    assert torch.allclose(value(0.5 * L2(), x, index), 0.5 * (x ** 2).flatten(1).sum(1))
    centers = x + 1.0
    pulled = 2.0 * L2(centers, per_image=True)
    assert torch.allclose(value(pulled, x, index), torch.full((2,), 2.0 * x[0].numel()))
    assert torch.allclose(value(pulled, x[1:], torch.tensor([1])), torch.full((1,), 2.0 * x[0].numel()))  # by index
    flat = torch.full((1, 3, 8, 8), 7.0)
    assert value(TotalVariation(), flat, torch.arange(1)).item() == 0
    ramp = torch.arange(8.0).expand(1, 3, 8, 8)
    assert value(TotalVariation(), ramp, torch.arange(1)).item() == pytest.approx(3 * 7 * 7)
    combined = L2() - 0.5 * TotalVariation() + 2 * (-L2())
    terms = combined.evaluate(Probe(None, ramp, ramp, torch.arange(1))).terms
    assert list(terms) == ["l2", "tv", "l2_2"]  # every part logged under its own name
    assert value(combined, ramp, torch.arange(1)).item() == pytest.approx(-(ramp ** 2).sum().item() - 0.5 * 147)
    with pytest.raises(ConfigError):
        build(iterations=1, step="adam", lr=1.0, l2=-1.0)


def test_per_item_weights_follow_the_batch_positions():
    x = pixels(3)
    weights = torch.tensor([1.0, 2.0, 4.0])
    weighted = L2() - TotalVariation() * weights  # e.g. a prior whose strength depends on an item's layer
    expected = value(L2(), x, torch.arange(3)) - weights * value(TotalVariation(), x, torch.arange(3))
    assert torch.allclose(value(weighted, x, torch.arange(3)), expected)
    assert torch.allclose(value(weighted, x[1:], torch.tensor([1, 2])), expected[1:])  # looked up by index
    assert "per-item" in repr(weighted)


# --------------------------------------------------------------------------- engine


def test_loss_decreases_and_objectives_report_metrics(model):
    x = pixels(2)
    objective = ClassScore(torch.tensor([1, 2])) - 1e-6 * L2() - 1e-6 * TotalVariation()
    result = optimize(model, x, objective, regime(15, 2.0, "normalized", [Jitter(2)], [Clip()]))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 15 and losses[-1] < losses[0]
    assert {"class_score", "l2", "tv", "score", "target_prob", "active"} <= set(result.history[0])
    assert result.steps.tolist() == [15, 15] and not result.stopped.any()
    assert result.images.min() >= 0 and result.images.max() <= 255
    target = model(x, end="stage1.block1").detach()
    inverted = optimize(model, pixels(1, seed=3), FeatureMatch("stage1.block1", target[:1]), regime(20, 0.05, "adam"))
    assert inverted.history[-1]["feature_error"] > inverted.history[0]["feature_error"]  # -error, maximised
    dream = optimize(model, x[:1], ActivationNorm("stage2.block1"), regime(5, 1.0, "normalized"))
    assert dream.history[-1]["activation_norm"] > dream.history[0]["activation_norm"]


def test_each_image_stops_on_its_own(model):
    x = pixels(3)
    calls = []

    def stop(probe):  # image 1 is done at once, image 2 after its third update
        calls.append(probe.index.tolist())
        return torch.tensor([i == 1 or (i == 2 and len(calls) > 3) for i in probe.index.tolist()])

    result = optimize(model, x, ClassScore(torch.tensor([0, 1, 2])), regime(6, 1.0, "sign"), stop=stop)
    assert result.stopped.tolist() == [False, True, True]
    assert result.steps.tolist() == [6, 0, 3]
    assert torch.equal(result.images[1], x[1])  # a stopped image is never touched
    assert calls[0] == [0, 1, 2] and calls[1] == [0, 2] and calls[-1] == [0]  # and never evaluated again
    assert [h["active"] for h in result.history] == [3, 2, 2, 2, 1, 1, 1]


def test_batched_equals_one_at_a_time(model):
    x = pixels(3)
    targets = torch.tensor([3, 0, 1])
    seeds = [11, 12, 13]
    steps = regime(8, 3.0, "normalized", [Jitter(3)], [Clip(), Blur(every=2)])
    batched = optimize(model, x, ClassScore(targets) - 1e-5 * L2(), steps, seeds=seeds)
    for i in range(3):
        single = optimize(model, x[i:i + 1], ClassScore(targets[i:i + 1]) - 1e-5 * L2(), steps, seeds=seeds[i:i + 1])
        assert torch.allclose(single.images[0], batched.images[i], atol=1e-3)
    again = optimize(model, x, ClassScore(targets) - 1e-5 * L2(), steps, seeds=seeds)
    assert torch.equal(again.images, batched.images)  # deterministic on CPU


def test_step_rules(model):
    x = pixels(2)
    sign = optimize(model, x, ClassScore(torch.tensor([0, 1])), regime(1, 2.0, "sign"))
    moved = (sign.images - x).abs()
    assert bool((((moved - 2).abs() < 1e-4) | (moved < 1e-4)).all()) and float(moved.mean()) > 1.9
    norm = optimize(model, x, ClassScore(torch.tensor([0, 1])), regime(1, 5.0, "normalized"))
    assert torch.allclose((norm.images - x).flatten(1).norm(dim=1), torch.tensor([5.0, 5.0]), rtol=1e-4)


def test_cosine_schedule_shrinks_each_images_step_by_its_own_count(model):
    x = pixels(2)
    steps = []

    def stop(probe):  # image 1 stops after its first update; image 0 runs all 4
        steps.append(len(steps))
        return torch.tensor([i == 1 and len(steps) > 1 for i in probe.index.tolist()])

    result = optimize(model, x, ClassScore(torch.tensor([0, 1])), regime(4, 8.0, "sign", schedule="cosine"), stop=stop)
    assert result.steps.tolist() == [4, 1]
    first = (result.images[1] - x[1]).abs()  # count 0: factor 1, every pixel moved by the full 8 (or clipped)
    assert float(first.max()) == pytest.approx(8.0, abs=1e-4)
    unit = scheduled(lambda x, grad, index, count: x - 1.0, "cosine", 4)  # a rule that moves every value by 1
    moved = -unit(torch.zeros(4, 1), None, None, torch.tensor([0, 1, 2, 3]))[:, 0]
    assert torch.allclose(moved, torch.tensor([1.0, 0.8536, 0.5, 0.1464]), atol=1e-4)  # (1 + cos(pi t / 4)) / 2
    constant = optimize(model, x, ClassScore(torch.tensor([0, 1])), regime(3, 8.0, "adam"))
    again = optimize(model, x, ClassScore(torch.tensor([0, 1])), regime(3, 8.0, "adam", schedule="constant"))
    assert torch.equal(constant.images, again.images)  # constant is the update itself, bit for bit


@pytest.mark.parametrize("kwargs, message", [
    ({"lr_schedule": "linear"}, "unknown lr schedule"),
    ({"lr": 0.0}, "must be > 0"), ({"lr": -1.0}, "must be > 0"), ({"step": "newton"}, "unknown step rule"),
    ({"iterations": -1}, ">= 0"), ({"precision": "fp8"}, "unknown precision"), ({"blur": "box"}, "unknown blur"),
    ({"blur": "gaussian", "blur_sigma": 0}, "sigma"), ({"jitter": -2}, "jitter"),
])
def test_bad_settings_fail_clearly(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build(**{"iterations": 2, "step": "adam", "lr": 1.0, **kwargs})


def test_seeds_must_match_the_batch(model):
    with pytest.raises(ConfigError, match="seeds"):
        optimize(model, pixels(2), ClassScore(torch.tensor([0, 1])), regime(2, 1.0), seeds=[1])
    assert item_seeds(0, [3, 5]) == [3, 5] and item_seeds(2, [3]) != item_seeds(1, [3])


def test_regime_from_the_shared_preset_is_built_once_from_config():
    from omegaconf import OmegaConf

    from pipeline.explain.engine.regime import from_config
    from pipeline.job import compose_config

    for job in ("class_viz", "inversion", "deepdream"):
        section = compose_config(job)[job]
        built = from_config(section.regime, center=torch.zeros(3, 64, 64))
        assert built.steps == section.iterations and built.step.lr == section.lr and built.step.name == section.step
    bad = OmegaConf.merge(compose_config("class_viz").class_viz, {"lr": -3})
    with pytest.raises(ConfigError, match="must be > 0"):
        from_config(bad.regime)


def test_step_logger_sends_steps_and_snapshots_to_mlflow(model, tmp_path):
    tracking.use_store(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("steps")  # not whatever experiment an earlier test left selected
    with mlflow.start_run() as run, tracking.StepLogger(prefix="viz.", key="evolution", flush_every=2,
                                                        render=lambda x: x[0].permute(1, 2, 0).byte().numpy()) as log:
        optimize(model, pixels(2), ClassScore(torch.tensor([0, 1])), regime(5, 1.0, "sign", show_every=2), log=log)
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "viz.loss")] == [0, 1, 2, 3, 4]
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert len(images) >= 4  # snapshots at steps 0, 2, 4 and the final image (each a png + metadata)
