"""Issue 17, item 2: exactness without the original weights.

Under ``experiment=cs231n_2016`` the jobs' trajectories equal those of the CS231n 2016 reference
functions ported to float64 numpy (``cs231n_reference.py``, from the reference text), on the CS231n
architecture with random weights, fed the same random draws (the initial noise and the jitter
offsets the pipeline drew): for every recorded step (the start, then X after each update, clip and
blur included), ||(pipeline pixels - mean) - reference X|| / ||reference X|| <= 1e-4, and <= 1e-3 of
the distance the reference X has moved since the start; the saliency maps equal. The pipeline runs
as the jobs run it: CPU, float32, the frozen channels_last model, the domain function with the
regime built from the composed config. Only ``<job>.iterations`` (6 updates) and
``<job>.show_every=1`` (to record every step) are overridden; every step size, L2 weight, blur,
jitter and clip is the experiment's.

The weights (``cs231n_reference.calibrated_weights``): batchnorm statistics from calibration images
and shifts of +-5 gamma (DeepDream: 6) keep every ReLU input away from 0, checked along each port trajectory
(``MIN_MARGIN``; float32 rounding moves them by ~2e-5 gamma), so float32 cannot take another ReLU
branch than float64 and the agreement is rounding, not luck. Some layers' output scales are set so
that the experiment's fixed step sizes move the image by a few per cent per step. The mean image is
random in 40..215: the pipeline's clamp of its start images to 0..255 is then a no-op (checked), and
as the mean image is not smooth, a roll or pad of pixels where the reference moves mean-subtracted
images shows at once.

Worst figures measured (relative to ||X||; to the distance moved): class visualization 1.7e-6;
1.8e-6 (with the jitter rolling the mean-subtracted image, as the reference does; rolling pixels:
0.95), inversion 8.8e-6; 4.5e-5, DeepDream 1.1e-7; 2.6e-6, fooling 2.5e-7; 1.0e-5 (7 updates),
saliency maps 1.0e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cs231n_reference as R
from pipeline.explain.attribution.registry import factory
from pipeline.explain.class_viz import visualize_classes
from pipeline.explain.deepdream import dream
from pipeline.explain.engine.regime import from_config
from pipeline.explain.engine.transforms import Jitter
from pipeline.explain.fooling import make_fooling_images
from pipeline.explain.inversion import invert
from pipeline.job import compose_config
from pipeline.model.architectures import CS231nNet
from pipeline.model.precision import frozen

TOL = 1e-4  # relative to ||reference X||, per step
MIN_MARGIN = 1e-3  # smallest |ReLU input| / gamma along a port trajectory (float32 moves it by ~2e-5)
MOVED_TOL = 1e-3  # relative to the distance the reference image has moved since the start
STEPS = 6  # updates compared (fooling: as many as it takes, at least 5)
TARGET_RANK = 10  # fooling: the class with the 10th highest score at the start, fooled in a few steps


# --------------------------------------------------------------------------- helpers


class Recorder:
    """A StepLog that keeps every snapshot: {step: pixels (N, 3, H, W) float64}."""

    def __init__(self):
        self.x: dict[int, torch.Tensor] = {}

    def images(self, step, images):
        self.x[step] = images.detach().double().clone()

    def metrics(self, step, values):
        pass


@pytest.fixture
def jitter_draws(monkeypatch):
    """Every (dy, dx) the pipeline's Jitter draws, one list entry per step (one offset per image)."""
    drawn = []
    offsets = Jitter.offsets

    def spy(self, generators):
        out = offsets(self, generators)
        drawn.append(out)
        return out

    monkeypatch.setattr(Jitter, "offsets", spy)
    return drawn


def port_offsets(drawn, image=0):
    """The reference's (ox, oy): ox rolls the last axis (W), oy the one before (H)."""
    return [(dx, dy) for (dy, dx) in (step[image] for step in drawn)]


def random_mean(rng, size=(64, 64)):
    return rng.uniform(40, 215, (3, *size)).astype(np.float32)


def random_image(rng, size=(64, 64)):
    """Integer pixels 0..255 with some structure (blocks plus noise), like a photo's."""
    h, w = size
    coarse = rng.uniform(0, 255, (3, (h + 7) // 8, (w + 7) // 8))
    image = np.kron(coarse, np.ones((1, 8, 8)))[:, :h, :w] + rng.normal(0, 40, (3, h, w))
    return np.clip(np.round(image), 0, 255).astype(np.float32)


def networks(params, mean):
    """The pipeline's model (loaded, frozen as the jobs freeze it) and the port's."""
    model = CS231nNet(mean_image=torch.from_numpy(mean))
    model.load_state_dict(R.state_dict(params, mean))
    return frozen(model, "cpu"), R.PretrainedCNN(params)


def calibration_images(rng, noise=(1.0, 3.0, 10.0), images=0, center=None):
    """Mean-subtracted 64x64 inputs for calibrated_weights: Gaussian noise at the scales ``noise``
    (two images each) and ``images`` random images minus ``center``."""
    batch = [s * rng.standard_normal((2, 3, 64, 64)) for s in noise]
    batch += [(random_image(rng) - center)[None].astype(np.float64) for _ in range(images)]
    return np.concatenate(batch)


def compare(pipeline: dict[int, torch.Tensor], reference: list[np.ndarray], center: np.ndarray, image: int = 0):
    """Per recorded step t (the start, then after each update): the error ||(x_t - center) - X_t|| relative
    to ||X_t|| (the criterion) and to how far the reference has moved, ||X_t - X_0|| (how much of the
    movement is reproduced); and the reference's step sizes ||X_t - X_t-1|| / ||X_t||."""
    assert sorted(pipeline) == list(range(len(reference))), (sorted(pipeline), len(reference))  # as many steps
    errors, moved, steps = [], [], []
    for t, X in enumerate(reference):
        diff = np.linalg.norm(pipeline[t][image].numpy() - center - X[0])
        errors.append(float(diff / np.linalg.norm(X[0])))
        if t:
            moved.append(float(diff / np.linalg.norm(X[0] - reference[0][0])))
            steps.append(float(np.linalg.norm(X[0] - reference[t - 1][0]) / np.linalg.norm(X[0])))
    return errors, moved, steps


def check(name, comparison, port, steps=STEPS, clipped=None):
    errors, moved, sizes = comparison
    report = (f"{name}: relative error per step {['%.1e' % e for e in errors]} (limit {TOL:g}), relative to the "
              f"distance moved {['%.1e' % e for e in moved]}; step sizes ||X_t - X_t-1|| / ||X_t|| "
              f"{['%.3f' % m for m in sizes]}; values clipped per step {clipped}; ReLU margins "
              f"{['%.0e' % m for m in port.margins]}")
    assert len(errors) >= steps + 1, report
    assert min(port.margins) > MIN_MARGIN, (f"{name}: a ReLU input came within {min(port.margins):.1e} gamma of 0: "
                                           f"float32 and float64 may take different branches; {report}")
    assert max(errors) <= TOL and max(moved) <= MOVED_TOL, report
    return report


def assert_init_is_reference_noise(x0: np.ndarray, mean: np.ndarray, std: float):
    """The pipeline's start: mean image + std * N(0, 1), as ``np.random.randn`` around the mean, unclamped."""
    assert 0 < x0.min() and x0.max() < 255  # the clamp to 0..255 changed nothing
    noise = (x0 - mean) / std
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05


# --------------------------------------------------------------------------- the trajectories


def test_class_visualization_follows_the_reference(jitter_draws):
    """create_class_visualization(target_y, model): lr 1e4, L2 1e-6, jitter 4, clip, blur every step."""
    rng = np.random.default_rng(17)
    mean = random_mean(rng)
    params = R.calibrated_weights(calibration_images(rng, noise=(1.0, 3.0, 10.0, 30.0)), seed=4, score_scale=1.0)
    model, port = networks(params, mean)
    cfg = compose_config("class_viz", ["experiment=cs231n_2016", f"class_viz.iterations={STEPS}",
                                       "class_viz.show_every=1"])
    c = cfg.class_viz
    target = 43
    log = Recorder()
    visualize_classes(model, [target], from_config(c.regime, center=model.mean_image.detach().cpu()),
                      seed=cfg.seed, init_std=c.init_std, progress=False, log=log)
    mean64 = mean.astype(np.float64)
    x0 = log.x[0][0].numpy()
    assert_init_is_reference_noise(x0, mean64, c.init_std)
    assert len(jitter_draws) == STEPS
    clipped = []
    _, trajectory = R.create_class_visualization(
        target, port, mean64, (x0 - mean64)[None], port_offsets(jitter_draws), clipped, learning_rate=c.lr,
        blur_every=c.blur_every, l2_reg=c.l2, max_jitter=c.jitter, num_iterations=c.iterations)
    comparison = compare(log.x, trajectory, mean64)
    print(check("class_viz", comparison, port, clipped=clipped))


def test_feature_inversion_follows_the_reference():
    """invert_features(feats, layer, model, **kwargs) with the shallow cell's kwargs (lr 5000, L2 1e-8,
    blur every 10 steps, the raw loss), at the shallow layer 3 and the deep layer 6 (one batch)."""
    rng = np.random.default_rng(18)
    mean = random_mean(rng)
    image = random_image(rng)
    layers = [3, 6]
    params = R.calibrated_weights(calibration_images(rng, noise=(1.0,), images=4, center=mean), seed=2,
                                  layer_scales={3: 0.03, 6: 0.1})
    model, port = networks(params, mean)
    cfg = compose_config("inversion", ["experiment=cs231n_2016", f"inversion.iterations={STEPS}",
                                       "inversion.show_every=1"])
    c = cfg.inversion
    assert [c.shallow_layer, c.deep_layer] == layers and c.loss == "raw" and c.jitter == 0
    log = Recorder()
    invert(model, torch.from_numpy(image), layers, from_config(c.regime, center=model.mean_image.detach().cpu()),
           seed=cfg.seed, init_std=c.init_std, loss=c.loss, progress=False, log=log)
    mean64 = mean.astype(np.float64)
    reports = []
    for k, layer in enumerate(layers):
        x0 = log.x[0][k].numpy()
        assert_init_is_reference_noise(x0, mean64, c.init_std)
        target_feats, _ = port.forward(R.preprocess(image[None], mean64), end=layer)  # the cell: img_pre, end=layer
        clipped = []
        _, trajectory = R.invert_features(target_feats, layer, port, mean64, (x0 - mean64)[None], clipped,
                                          learning_rate=c.lr, num_iterations=c.iterations, l2_reg=c.l2,
                                          blur_every=c.blur_every)
        comparison = compare(log.x, trajectory, mean64, image=k)
        reports.append(check(f"inversion layer {layer}", comparison, port, clipped=clipped))
    print("\n".join(reports))


def test_deepdream_follows_the_reference(jitter_draws):
    """deepdream(img_pre, 7, model, learning_rate=2000) on a 72x88 image (mean='pixel'): jitter 16,
    clip, no blur."""
    rng = np.random.default_rng(19)
    mean = random_mean(rng)
    size = (72, 88)
    image = random_image(rng, size)
    pixel32 = mean.mean(axis=(1, 2), keepdims=True)
    params = R.calibrated_weights(calibration_images(rng, noise=(), images=6, center=pixel32), seed=8, margin=6.0,
                                  layer_scales={7: 0.4})
    model, port = networks(params, mean)
    cfg = compose_config("deepdream", ["experiment=cs231n_2016", f"deepdream.iterations={STEPS}",
                                       "deepdream.show_every=1"])
    c = cfg.deepdream
    assert c.octaves == 1 and c.layer == 7
    log = Recorder()
    dream(model, torch.from_numpy(image), c.layer, from_config(c.regime, center=model.mean_image.detach().cpu()),
          octaves=c.octaves, octave_scale=c.octave_scale, seed=cfg.seed, progress=False, log=log)
    mean64 = mean.astype(np.float64)
    pixel = R.mean_pixel(mean64)
    assert len(jitter_draws) == STEPS
    clipped = []
    _, trajectory = R.deepdream(R.preprocess(image[None], mean64, "pixel"), c.layer, port, mean64,
                                port_offsets(jitter_draws), clipped, learning_rate=c.lr, max_jitter=c.jitter,
                                num_iterations=c.iterations)
    comparison = compare(log.x, trajectory, pixel)
    print(check("deepdream", comparison, port, clipped=clipped))


def test_fooling_follows_the_reference():
    """make_fooling_image(X, target_y, model): X += 200 dS_target/dX until argmax = target, no clip."""
    rng = np.random.default_rng(20)
    mean = random_mean(rng)
    image = random_image(rng)
    params = R.calibrated_weights(calibration_images(rng, noise=(), images=6, center=mean), seed=4, score_scale=10.0)
    model, port = networks(params, mean)
    cfg = compose_config("fooling", ["experiment=cs231n_2016", "fooling.show_every=1"])
    c = cfg.fooling
    mean64 = mean.astype(np.float64)
    X = R.preprocess(image[None], mean64)
    scores = port.loss(X)[0]
    target = int(np.argsort(scores)[-TARGET_RANK])
    assert scores.argmax() != target
    log = Recorder()
    result = make_fooling_images(model, torch.from_numpy(image)[None], torch.tensor([target]),
                                 max_iterations=c.max_iterations, lr=c.lr, step=c.step, l2=c.l2,
                                 confidence=c.confidence, quantize=c.quantize, clip=c.clip, precision=c.precision,
                                 progress=False, log=log, show_every=1)
    _, trajectory = R.make_fooling_image(X, target, port, lr=c.lr, max_iterations=c.max_iterations)
    comparison = compare(log.x, trajectory, mean64)
    print(check("fooling", comparison, port, steps=5))
    assert bool(result.stopped[0]) and int(result.steps[0]) == len(trajectory) - 1  # fooled after as many updates
    assert port.loss(trajectory[-1])[0].argmax() == target



def test_saliency_maps_equal_the_reference():
    """compute_saliency_maps(X, y, model): max over channels of |dS_y/dX|, test mode; the pipeline's maps
    from the experiment's saliency method (gradient) as the saliency job builds it."""
    rng = np.random.default_rng(21)
    mean = random_mean(rng)
    images = np.stack([random_image(rng) for _ in range(3)])
    params = R.calibrated_weights(calibration_images(rng, noise=(), images=6, center=mean), seed=5)
    model, port = networks(params, mean)
    cfg = compose_config("saliency", ["experiment=cs231n_2016"])
    s = cfg.saliency
    labels = rng.integers(0, 100, len(images))
    method = factory(s.method, s.options, precision=s.precision, batch_size=s.batch_size, seed=cfg.seed)(model)
    maps = method.maps(torch.from_numpy(images), torch.from_numpy(labels)).double().numpy()
    expected = R.compute_saliency_maps(R.preprocess(images, mean), labels, port)
    assert min(port.margins) > MIN_MARGIN
    errors = [float(np.linalg.norm(m - e) / np.linalg.norm(e)) for m, e in zip(maps, expected)]
    report = f"saliency maps: relative error per image {['%.1e' % e for e in errors]} (limit {TOL:g})"
    print(report)
    assert max(errors) <= TOL, report
