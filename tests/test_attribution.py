"""Every attribution method against Captum, the reference library, on the same model, images and
settings (fp64, so differences are the methods', not rounding)."""

import pytest
import torch
from conftest import tiny_classifier

from pipeline.errors import ConfigError
from pipeline.explain.attribution.gradcam import GradCAM
from pipeline.explain.attribution.gradient import Saliency
from pipeline.explain.attribution.guided_backprop import GuidedBackprop
from pipeline.explain.attribution.guided_gradcam import GuidedGradCAM
from pipeline.explain.attribution.integrated_gradients import IntegratedGradients
from pipeline.explain.attribution.noise_tunnel import NoiseTunnel
from pipeline.explain.attribution.occlusion import Occlusion, window_masks
from pipeline.explain.attribution.registry import factory
from pipeline.model.precision import frozen

captum = pytest.importorskip("captum.attr")
SIZE = 32


@pytest.fixture(scope="module")
def model():
    net, _ = tiny_classifier(num_classes=5, mean_image=torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 255)
    return frozen(net.double(), "cpu")


@pytest.fixture(scope="module")
def batch():
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    return x, torch.tensor([0, 3, 1, 4])


def close(ours, theirs, rtol=1e-4):
    scale = theirs.abs().max().clamp_min(1e-12)
    assert float((ours - theirs).abs().max() / scale) <= rtol, float((ours - theirs).abs().max() / scale)


def test_gradient_equals_captum_saliency(model, batch):
    x, t = batch
    close(Saliency(model).attribute(x, t), captum.Saliency(model).attribute(x.clone(), target=t, abs=False))


def test_gradcam_equals_captum_at_any_named_layer(model, batch):
    x, t = batch
    for layer in ("stage1.block1", "stage2.block1"):
        ours = GradCAM(model, layer=layer, batch_size=3).attribute(x, t)
        cam = captum.LayerGradCam(model, model.get_submodule(layer)).attribute(x.clone(), target=t,
                                                                               relu_attributions=True)
        close(ours, captum.LayerAttribution.interpolate(cam, (SIZE, SIZE), interpolate_mode="bilinear"))
    assert GradCAM(model).layer == model.spatial_layer_names[-1]
    with pytest.raises(ConfigError, match="spatial layer"):
        GradCAM(model, layer="fc")


def test_guided_backprop_and_guided_gradcam_equal_captum(model, batch):
    x, t = batch
    close(GuidedBackprop(model).attribute(x, t), captum.GuidedBackprop(model).attribute(x.clone(), target=t))
    layer = model.spatial_layer_names[-1]
    theirs = captum.GuidedGradCam(model, model.get_submodule(layer)).attribute(x.clone(), target=t,
                                                                              interpolate_mode="bilinear")
    close(GuidedGradCAM(model, layer=layer).attribute(x, t), theirs)
    # the hooks are gone afterwards: the plain gradient is unchanged
    close(Saliency(model).attribute(x, t), captum.Saliency(model).attribute(x.clone(), target=t, abs=False))


@pytest.mark.parametrize("baseline", ["mean", "blur"])
def test_occlusion_equals_captum_and_runs_windows_batched(model, batch, baseline):
    x, t = batch
    method = Occlusion(model, patch=8, stride=4, baseline=baseline, blur_sigma=2.0, batch_size=64)
    ours = method.attribute(x, t)
    if baseline == "mean":
        base = model.mean_image.detach()[None].expand_as(x)
    else:
        from pipeline.explain.engine.transforms import GaussianBlur
        base = GaussianBlur(2.0).apply(x)
    theirs = captum.Occlusion(model).attribute(x.clone(), target=t, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4),
                                               baselines=base)
    close(ours.expand_as(theirs), theirs)
    masks = window_masks(SIZE, SIZE, 8, 4)
    assert len(masks) == 49 and bool((masks.sum(0) >= 1).all())
    with pytest.raises(ConfigError):
        Occlusion(model, baseline="noise")


@pytest.mark.parametrize("aggregation", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_equals_captum_with_the_same_draws(model, batch, aggregation):
    x, t = batch
    ours = NoiseTunnel(model, method="gradient", aggregation=aggregation, samples=3, noise=0.1, seed=7).attribute(x, t)
    torch.manual_seed(7)
    theirs = captum.NoiseTunnel(captum.Saliency(model)).attribute(
        x.clone(), nt_type=aggregation, nt_samples=3, stdevs=0.1 * 255, target=t, abs=False)
    close(ours, theirs)


def test_noise_tunnel_wraps_any_method_and_without_noise_is_the_method(model, batch):
    x, t = batch
    plain = GradCAM(model).attribute(x, t)
    close(NoiseTunnel(model, method="gradcam", samples=2, noise=0.0).attribute(x, t), plain)
    assert float(NoiseTunnel(model, method="gradcam", aggregation="vargrad", samples=2, noise=0.0)
                 .attribute(x, t).abs().max()) < 1e-9 * float(plain.abs().max() ** 2)
    with pytest.raises(ConfigError, match="aggregation"):
        NoiseTunnel(model, aggregation="median")


def test_integrated_gradients_equal_captum_and_report_their_delta(model, batch):
    x, t = batch
    method = IntegratedGradients(model, steps=16)
    ours = method.attribute(x, t)
    base = model.mean_image.detach()[None].expand_as(x).clone()
    theirs, delta = captum.IntegratedGradients(model).attribute(
        x.clone(), baselines=base, target=t, n_steps=16, method="riemann_middle", return_convergence_delta=True)
    close(ours, theirs)
    close(method.convergence_delta(x, t, ours), delta.abs(), rtol=1e-3)


def test_every_configured_method_builds_and_maps_by_name(model, batch):
    x, t = batch
    for name in ("gradcam", "guided_backprop", "guided_gradcam", "occlusion", "noise_tunnel"):
        method = factory(name, {"samples": 2} if name == "noise_tunnel" else {})(model)
        assert method.maps(x[:2], t[:2]).shape == (2, SIZE, SIZE), name


METHODS = ("gradient", "gradcam", "guided_backprop", "guided_gradcam", "occlusion", "noise_tunnel", "smoothgrad",
           "gradient_x_input", "integrated_gradients")


@pytest.mark.parametrize("name", METHODS)
def test_batching_does_not_change_any_method(model, batch, name):
    """The bound Captum is held to (1e-4 relative) also holds between our batch sizes: one image per
    call vs all images in one call (noise draws are per image, so the stochastic methods agree too)."""
    x, t = batch
    options = {"samples": 3} if name in ("noise_tunnel", "smoothgrad") else {"steps": 8} \
        if name == "integrated_gradients" else {}
    whole = factory(name, options, batch_size=64, seed=0)(model).attribute(x, t)
    ones = factory(name, options, batch_size=1, seed=0)(model).attribute(x, t)
    close(ones, whole, rtol=1e-4)
