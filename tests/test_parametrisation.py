"""Parametrisations (pixel, Fourier, decorrelated colour) and the random input transforms, on tiny models."""

import json
import math

import pytest
import torch
from conftest import job_config, tiny_classifier
from omegaconf import OmegaConf

from pipeline.errors import ConfigError
from pipeline.explain import class_viz
from pipeline.explain.engine.objectives import ClassScore, L2
from pipeline.explain.engine.parametrisation import (COLOUR_CORRELATION, Fourier, Pixel, PixelCodec, parametrisation,
                                                     spectrum_scale)
from pipeline.explain.engine.regime import Regime, build, from_config
from pipeline.explain.engine.render import optimize
from pipeline.explain.engine.steps import step_rule
from pipeline.explain.engine.transforms import Blur, Clip, Crop, Jitter, Pad, Quantize, RandomRotate, RandomScale
from pipeline.job import compose_config
from pipeline.model.precision import frozen
from pipeline.schema import check_types


@pytest.fixture(scope="module")
def model():
    net, _ = tiny_classifier(num_classes=4, mean_image=torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
                             * 100 + 80)
    return frozen(net, "cpu")


def pixels(n=3, size=(32, 32), seed=0):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed)) * 255


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


CENTER = torch.full((3, 32, 32), 110.0)
KINDS = [Pixel(True, CENTER), Fourier(False, CENTER), Fourier(True, CENTER), Fourier(True, None, decay=1.5)]


# --------------------------------------------------------------------------- parametrisations


def test_pixel_space_is_the_image_itself():
    x = pixels()
    codec = Pixel().start(x)
    assert isinstance(codec, PixelCodec) and codec.encode(x) is x and codec.decode(x) is x


@pytest.mark.parametrize("kind", KINDS, ids=repr)
@pytest.mark.parametrize("size", [(32, 32), (31, 41)])
def test_encode_inverts_decode(kind, size):
    x = pixels(2, size)
    codec = kind.start(x)
    params = codec.encode(x)
    assert torch.allclose(codec.decode(params), x, atol=2e-3)
    zero = codec.decode(torch.zeros_like(params))  # zero parameters: the offset (mean image, its colour, or grey)
    expected = CENTER if kind.center is not None and size == (32, 32) else (
        CENTER.mean((1, 2), keepdim=True) if kind.center is not None else torch.full((3, 1, 1), 127.5))
    assert torch.allclose(zero, expected.expand_as(zero), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS, ids=repr)
def test_a_step_of_lr_in_every_parameter_is_about_lr_pixels(kind):
    x = pixels(4, (48, 64))
    codec = kind.start(x)
    params = codec.encode(x)
    signs = torch.randn(params.shape, generator=torch.Generator().manual_seed(2)).sign()
    moved = codec.decode(params + 2.0 * signs) - x
    assert float(moved.pow(2).mean().sqrt()) == pytest.approx(2.0, rel=0.15)


def test_fourier_scale_is_one_over_frequency():
    scale = spectrum_scale(32, 32)
    assert scale.shape == (32, 17)
    assert float(scale[0, 1] / scale[0, 2]) == pytest.approx(2.0)
    assert float(scale[2, 0] / scale[8, 0]) == pytest.approx(4.0)
    assert float(scale[0, 0]) == float(scale[0, 1])  # the floor at 1 / size keeps DC finite
    steeper = spectrum_scale(32, 32, decay=2.0)
    assert float(steeper[0, 1] / steeper[0, 2]) == pytest.approx(4.0)
    # a unit change of a low-frequency coefficient moves the image more than one of a high frequency
    codec = Fourier(center=CENTER).start(pixels(1))
    low, high = torch.zeros(1, 3, 32, 17, 2), torch.zeros(1, 3, 32, 17, 2)
    low[0, 0, 1, 1, 0], high[0, 0, 12, 12, 0] = 1.0, 1.0
    assert (codec.decode(low) - CENTER).abs().max() > 5 * (codec.decode(high) - CENTER).abs().max()


def test_decorrelated_colour_moves_luminance_most():
    luminance = COLOUR_CORRELATION[:, 0]
    assert bool((luminance > 0).all()) and float(luminance.norm()) > 3 * float(COLOUR_CORRELATION[:, 2].norm())
    codec = Pixel(True).start(pixels(1))
    params = torch.zeros(1, 3, 32, 32)
    params[:, 0] = 1.0
    step = codec.decode(params) - 127.5
    assert torch.allclose(step[0, :, 0, 0], luminance)


def test_bad_parametrisations_fail_clearly():
    with pytest.raises(ConfigError, match="unknown param 'wavelet'"):
        parametrisation("wavelet")
    with pytest.raises(ConfigError, match="fourier_decay"):
        build(iterations=1, step="adam", lr=1.0, param="fourier", fourier_decay=-1.0)


# --------------------------------------------------------------------------- transforms


def test_pad_and_crop():
    x = pixels(2)
    fill = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1)
    padded = Pad(3, fill=fill)(x, gens(0, 1))
    assert padded.shape == (2, 3, 38, 38) and torch.allclose(Crop(3)(padded, gens(0, 1)), x, atol=1e-4)
    assert torch.equal(padded[:, :, 0, 0], fill.view(1, 3).expand(2, 3))
    assert torch.equal(Pad(2, mode="reflect")(x, [])[..., 2, 2:-2], x[..., 0, :])
    with pytest.raises(ConfigError, match="pad must be >= 0"):
        Pad(-1)
    with pytest.raises(ConfigError, match="unknown pad mode"):
        Pad(1, mode="wrap")


def test_scale_and_rotate_resample_about_the_centre():
    x = pixels(1)
    assert torch.allclose(RandomScale([1.0])(x, gens(0)), x, atol=1e-3)
    assert torch.allclose(RandomRotate([0.0])(x, gens(0)), x, atol=1e-3)
    assert torch.allclose(RandomRotate([90.0])(x, gens(0)), torch.rot90(x, 1, (-2, -1)), atol=1e-3)  # counter-clockwise
    zoomed = RandomScale([2.0])(x, gens(0))  # x2 about the centre: the middle 16x16 fills the image
    assert torch.allclose(zoomed[..., ::2, ::2].mean(), x[..., 8:24, 8:24].mean(), rtol=0.05)
    shrunk = RandomScale([0.5], fill=7.0)(x, gens(0))
    assert torch.allclose(shrunk[..., :7, :], torch.tensor(7.0)) and shrunk.shape == x.shape  # outside: fill
    wide = pixels(1, (20, 40))
    turned = RandomRotate([180.0])(wide, gens(0))  # non-square: rotation in pixels, not in [-1, 1] coordinates
    assert torch.allclose(turned, torch.flip(wide, (-2, -1)), atol=1e-3)


def test_random_draws_depend_only_on_each_images_generator():
    scale, rotate = RandomScale([0.9, 1.0, 1.1]), RandomRotate([-10, 0, 10, 20])
    many = [scale.draws(gens(s))[0] for s in range(20)]
    assert len(set(many)) == 3 and set(many) <= {0.9, 1.0, 1.1}
    assert scale.draws(gens(3, 4, 5))[1] == scale.draws(gens(4))[0]
    x = pixels(3)
    batched = rotate(x, gens(3, 4, 5))
    assert torch.allclose(rotate(x[1:2], gens(4))[0], batched[1], atol=1e-4)
    # composed, jitter still draws first and exactly as before
    regime = build(iterations=1, step="adam", lr=1.0, jitter=4, pad=2, scales=[0.9, 1.1], angles=[5, -5])
    assert [type(t) for t in regime.transforms] == [Pad, Jitter, RandomScale, RandomRotate, Crop]
    assert regime.transforms[1].offsets(gens(7, 8)) == Jitter(4).offsets(gens(7, 8))


def test_gradients_flow_through_the_transforms():
    x = pixels(2).requires_grad_(True)
    chain = [Pad(3), Jitter(2), RandomScale([0.9, 1.1]), RandomRotate([-10, 10]), Crop(3)]
    y = x
    for t in chain:
        y = t(y, gens(1, 2))
    assert y.shape == x.shape
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert float(grad.abs().sum()) > 0 and bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("kwargs, message", [
    ({"scales": [1.0, -0.5]}, "scales must be > 0, got -0.5"), ({"scales": [0]}, "scales must be > 0"),
    ({"angles": [float("nan")]}, "angles must be finite"), ({"pad": -1}, "pad must be >= 0"),
    ({"param": "wavelet"}, "unknown param"),
])
def test_bad_transform_settings_fail_clearly(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build(**{"iterations": 2, "step": "adam", "lr": 1.0, **kwargs})


# --------------------------------------------------------------------------- the engine


def fourier_regime(steps=6, rule="adam", lr=3.0, center=None, **kw):
    options = dict(param="fourier", decorrelate=True, pad=2, jitter=2, scales=[0.9, 0.95, 1.05, 1.1],
                   angles=[-8, -4, 4, 8], blur="reference", blur_every=2)
    return build(iterations=steps, step=rule, lr=lr, center=center, **{**options, **kw})


def test_fourier_batched_equals_one_at_a_time(model):
    x = pixels(3)
    targets = torch.tensor([3, 0, 1])
    seeds = [11, 12, 13]
    regime = fourier_regime(center=model.mean_image.cpu())
    objective = ClassScore(targets) - 1e-5 * L2(model.mean_image.cpu())
    batched = optimize(model, x, objective, regime, seeds=seeds)
    assert not torch.allclose(batched.images, x, atol=1.0)  # it moved
    for i in range(3):
        single = optimize(model, x[i:i + 1], ClassScore(targets[i:i + 1]) - 1e-5 * L2(model.mean_image.cpu()), regime,
                          seeds=seeds[i:i + 1])
        difference = (single.images[0] - batched.images[i]).abs().max()
        assert difference < 1e-2, difference
    again = optimize(model, x, objective, regime, seeds=seeds)
    assert torch.equal(again.images, batched.images)


@pytest.mark.parametrize("rule, lr", [("adam", 2.0), ("normalized", 300.0), ("scaled", 2.0), ("sign", 1.0),
                                      ("raw", 1e4)])
def test_fourier_ascends_and_constraints_hold_in_pixels(model, rule, lr):
    x, targets = pixels(2), torch.tensor([1, 2])
    result = optimize(model, x, ClassScore(targets), fourier_regime(12, rule, lr, blur="none"))
    with torch.no_grad():
        before, after = (model(im).gather(1, targets[:, None]) for im in (x, result.images))
    assert bool((after > before + 0.02).all()), (before, after)
    assert result.images.min() >= 0 and result.images.max() <= 255  # clipped in pixel space, exactly
    assert result.steps.tolist() == [12, 12]


def test_fourier_images_stop_on_their_own(model):
    x = pixels(3)
    calls = []

    def stop(probe):  # image 1 is done at once, image 2 after its second update
        calls.append(probe.index.tolist())
        return torch.tensor([i == 1 or (i == 2 and len(calls) > 2) for i in probe.index.tolist()])

    regime = fourier_regime(5, center=CENTER)
    result = optimize(model, x, ClassScore(torch.tensor([0, 1, 2])), regime, stop=stop)
    assert result.stopped.tolist() == [False, True, True] and result.steps.tolist() == [5, 0, 2]
    assert torch.equal(result.images[1], x[1])  # never touched: not even encoded and decoded
    # the one still running continues as it would alone (its Adam moments are its own)
    alone = optimize(model, x[:1], ClassScore(torch.tensor([0])), regime)
    assert torch.allclose(alone.images[0], result.images[0], atol=1e-2)


def test_fourier_on_another_image_size_and_quantized(model):
    x = pixels(1, (40, 56))
    regime = Regime(steps=4, step=step_rule("sign", 1.0), constraints=[Clip(), Blur(center=None)],
                    parametrisation=Fourier(True, CENTER))  # the center does not fit: its mean colour is the offset
    result = optimize(model, x, ClassScore(torch.tensor([2])), regime)
    assert result.images.shape == x.shape and result.history[-1]["score"] > result.history[0]["score"]
    rounded = optimize(model, x.round(), ClassScore(torch.tensor([2])),
                       Regime(steps=3, step=step_rule("sign", 2.0), constraints=[Clip(), Quantize()],
                              parametrisation=Fourier(False, CENTER)))
    assert torch.equal(rounded.images, rounded.images.round())


def test_jitter_rolls_the_image_minus_the_mean_as_the_reference_does():
    """The CS231n reference rolls the mean-subtracted image: the mean image itself stays in place."""
    center = torch.rand(3, 8, 8) * 255
    jitter = Jitter(3, center=center)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    assert torch.allclose(jitter(center.expand(2, 3, 8, 8), generators), center.expand(2, 3, 8, 8))
    x = center + torch.randn(2, 3, 8, 8)
    offsets = Jitter(3).offsets([torch.Generator().manual_seed(s) for s in (1, 2)])
    moved = jitter(x, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.allclose(moved - center, Jitter.roll(x - center, offsets), atol=1e-5)


def test_the_pixel_regime_is_what_it_was(model):
    """The new options at their defaults build today's regime: the same transforms, constraints and images."""
    center = model.mean_image.cpu()
    new = build(iterations=5, step="adam", lr=3.0, jitter=3, blur="reference", blur_every=2, l2=1e-6, center=center)
    old = Regime(steps=5, step=step_rule("adam", 3.0), transforms=[Jitter(3, center=center)],
                 constraints=[Clip(0.0, 255.0), Blur(every=2, center=center)], l2=1e-6, center=center)
    assert type(new.parametrisation) is Pixel and not new.parametrisation.decorrelate
    assert [type(t) for t in new.transforms] == [Jitter]
    x, target = pixels(2), torch.tensor([0, 3])
    a = optimize(model, x, new.objective(ClassScore(target)), new, seeds=[4, 5])
    b = optimize(model, x, old.objective(ClassScore(target)), old, seeds=[4, 5])
    assert torch.equal(a.images, b.images)


# --------------------------------------------------------------------------- presets


def test_presets_compose_and_build():
    center = torch.zeros(3, 64, 64)
    default = compose_config("class_viz").class_viz
    assert (default.param, default.decorrelate, default.pad, list(default.scales), list(default.angles)) == (
        "pixel", False, 0, [], [])
    for job, overrides in (("class_viz", ["class_viz=fourier"]), ("class_viz", ["optim@class_viz=fourier"]),
                           ("inversion", ["optim@inversion=fourier"]), ("deepdream", ["optim@deepdream=fourier"])):
        section = compose_config(job, overrides)[job]
        regime = from_config(section.regime, center=center)
        assert isinstance(regime.parametrisation, Fourier) and regime.parametrisation.decorrelate, (job, overrides)
        assert section.iterations == compose_config(job)[job].iterations  # only the basis (and transforms) change
    viz = compose_config("class_viz", ["class_viz=fourier"]).class_viz
    assert (viz.blur, viz.step, viz.iterations, viz.lr) == ("none", "adam", 200, 3.0)
    regime = from_config(viz.regime, center=center)
    assert [type(t) for t in regime.transforms] == [Pad, Jitter, RandomScale, RandomRotate, Crop]
    assert math.isclose(regime.parametrisation.decay, 1.5)
    inverting = from_config(compose_config("inversion", ["optim@inversion=fourier"]).inversion.regime, center=center)
    assert inverting.transforms == [] and [type(c) for c in inverting.constraints] == [Clip]  # no blur, no transforms
    bad = OmegaConf.merge(viz, {"scales": [1.0, -2.0]})
    with pytest.raises(ConfigError, match="scales must be > 0"):
        from_config(bad.regime, center=center)


def test_types_of_the_new_keys_are_checked():
    schema = compose_config("class_viz", ["class_viz=fourier"])
    check_types(compose_config("class_viz", ["class_viz=fourier", "class_viz.pad=2", "class_viz.decorrelate=false",
                                             "class_viz.scales=[1.1]", "class_viz.fourier_decay=1"]), schema)
    for override, message in (("class_viz.pad=1.5", "class_viz.pad=1.5: expected an integer"),
                              ("class_viz.decorrelate=2", "expected true or false")):
        with pytest.raises(ConfigError, match=message):
            check_types(compose_config("class_viz", ["class_viz=fourier", override]), schema)


def test_class_viz_job_with_the_fourier_preset(subject_files, tmp_path):
    metrics = class_viz.run(job_config("class_viz", subject_files, tmp_path, "class_viz=fourier",
                                       "class_viz.iterations=3", "class_viz.show_every=0"))
    saved = json.loads((tmp_path / "metrics" / "class_viz.json").read_text())
    assert saved == pytest.approx(metrics) and saved["num_classes"] == 4
    assert (tmp_path / "results" / "class_viz" / "grid.png").is_file()
