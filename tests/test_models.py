"""pipeline.models: the CS231n port against an independent numpy forward, and the shared layer API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.model.architectures import (CS231nNet, ImageClassifier, ResNet, UnknownLayerError, build_model,
                                         load_cs231n_h5)
from pipeline.model.listing import main

from cs231n_reference import random_weights, reference_forward, write_h5  # noqa: F401 (test_train uses them too)

h5py = pytest.importorskip("h5py")

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


# --------------------------------------------------------------------------- reference (tests/cs231n_reference.py)


def assert_close(actual: torch.Tensor, expected: np.ndarray):
    actual = actual.detach().double().numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def params():
    return random_weights()


@pytest.fixture(scope="module")
def h5_file(tmp_path_factory, params):
    return write_h5(tmp_path_factory.mktemp("h5") / "pretrained_model.h5", params)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)
    mean_image = rng.uniform(80, 160, (3, 64, 64)).astype(np.float32)
    return pixels, mean_image


@pytest.fixture(scope="module")
def cs231n(h5_file, images):
    model = CS231nNet(mean_image=images[1])
    model.load_state_dict(load_cs231n_h5(h5_file, mean_image=images[1]))
    return model.eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return ResNet(widths=(8, 16, 32), blocks=(1, 2, 1), stem_width=8).eval()


# --------------------------------------------------------------------------- CS231n port


@pytest.mark.parametrize("end", [3, 9, 10])
def test_cs231n_matches_numpy_reference(cs231n, images, params, end):
    pixels, mean_image = images
    expected = reference_forward(pixels, mean_image, params, end=end)
    with torch.no_grad():
        out = cs231n(torch.from_numpy(pixels), end=end)
    assert out.shape == expected.shape
    assert_close(out, expected)


def test_logits_are_default_forward(cs231n, images, params):
    x = torch.from_numpy(images[0])
    with torch.no_grad():
        assert torch.equal(cs231n(x), cs231n(x, end=10))
        assert torch.equal(cs231n(x), cs231n(x, end="fc11"))
    assert cs231n(x).shape == (2, 100)


def test_h5_without_mean_image_loads_non_strict(h5_file):
    model = CS231nNet()
    result = model.load_state_dict(load_cs231n_h5(h5_file), strict=False)
    assert result.missing_keys == ["mean_image"] and not result.unexpected_keys


def test_h5_transposed_affine_weights_accepted(tmp_path, params, cs231n, images):
    """The reference loader accepted (in, out) affine weights too."""
    path = write_h5(tmp_path / "t.h5", {**params, "W10": params["W10"].T.copy(), "W11": params["W11"].T.copy()})
    state = load_cs231n_h5(path, mean_image=images[1])
    for key, value in cs231n.state_dict().items():
        assert torch.equal(state[key], value), key


def test_h5_missing_dataset(tmp_path, params):
    path = write_h5(tmp_path / "pretrained_model.h5", {k: v for k, v in params.items() if k != "W3"})
    with pytest.raises(DataError, match=r"pretrained_model\.h5: missing dataset W3"):
        load_cs231n_h5(path)


def test_h5_wrong_shape(tmp_path, params):
    path = write_h5(tmp_path / "m.h5", {**params, "running_var4": np.ones(127, np.float32)})
    with pytest.raises(DataError, match=r"dataset running_var4 has shape \(127,\), expected \(128,\)"):
        load_cs231n_h5(path)


def test_h5_not_hdf5(tmp_path):
    path = tmp_path / "pretrained_model.h5"
    path.write_text("<html>not found</html>")
    with pytest.raises(DataError, match="cannot read as HDF5"):
        load_cs231n_h5(path)


# --------------------------------------------------------------------------- layer API


def test_forward_end_is_inclusive_and_names_match_indices(cs231n, images):
    x = torch.from_numpy(images[0])
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7", "conv8", "conv9", "fc10", "fc11"]
    assert cs231n.layer_names == names
    with torch.no_grad():
        a2 = cs231n(x, end=2)
        assert a2.shape == (2, 128, 16, 16)  # conv3 output: layer 2 is included
        manual = cs231n.conv3(cs231n.conv2(cs231n.conv1(cs231n.normalize(x))))
        assert torch.equal(a2, manual)
        for i, name in enumerate(names):
            assert cs231n.layer_index(name) == cs231n.layer_index(str(i)) == cs231n.layer_index(i - 11) == i
        assert torch.equal(cs231n.features(x, ["conv4"])[3], cs231n(x, end=3))
        assert torch.equal(cs231n(x, end="3"), cs231n(x, end=-8))


@pytest.mark.parametrize("bad", ["conv10", "fc", "", 11, -12, "11", 2.0, True])
def test_unknown_layer(cs231n, bad):
    with pytest.raises(UnknownLayerError) as info:
        cs231n.layer_index(bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, PipelineError)
    assert "conv1, conv2" in str(info.value) and "fc11" in str(info.value)
    with pytest.raises(ValueError):
        cs231n(torch.zeros(1, 3, 64, 64), end=bad)


def test_layer_shapes(cs231n, resnet):
    shapes = cs231n.layer_shapes()
    assert [s[:2] for s in shapes] == list(enumerate(cs231n.layer_names))
    assert shapes[8][2] == (1024, 2, 2) and shapes[9][2] == (512,) and shapes[10][2] == (100,)
    assert shapes[0][2] == (64, 32, 32)
    assert resnet.layer_names == ["stem", "stage1.block1", "stage2.block1", "stage2.block2",
                                  "stage3.block1", "pool", "fc"]
    assert [s[2] for s in resnet.layer_shapes()] == [
        (8, 64, 64), (8, 32, 32), (16, 16, 16), (16, 16, 16), (32, 8, 8), (32,), (100,)]
    assert [s[2] for s in resnet.layer_shapes(96)][:2] == [(8, 96, 96), (8, 48, 48)]


def test_layer_shapes_keeps_training_mode(resnet):
    resnet.train()
    try:
        resnet.layer_shapes()
        assert resnet.training
    finally:
        resnet.eval()


def test_spatial_layers(cs231n, resnet):
    assert cs231n.spatial_layer_names == [f"conv{i}" for i in range(1, 10)]
    assert cs231n.is_spatial("conv9") and not cs231n.is_spatial("fc10") and not cs231n.is_spatial(-1)
    assert resnet.is_spatial("stage3.block1") and not resnet.is_spatial("pool")
    for model in (cs231n, resnet):
        for i, _, shape in model.layer_shapes():
            assert model.is_spatial(i) == (len(shape) == 3)


def test_resnet_layers_are_submodule_paths(resnet):
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        a = resnet(x, end="stage2.block2")
        manual = resnet.stage2.block2(resnet.stage2.block1(resnet.stage1.block1(resnet.stem(resnet.normalize(x)))))
        assert torch.equal(a, manual)
        assert resnet(x).shape == (2, 100)
    assert "stage2.block1.conv1.weight" in resnet.state_dict()


def test_non_64_input_uses_per_channel_mean(cs231n, resnet, images):
    x = torch.rand(1, 3, 96, 96) * 255
    per_channel = torch.from_numpy(images[1]).mean(dim=(1, 2)).view(3, 1, 1)
    assert torch.allclose(cs231n.normalize(x), x - per_channel)
    with torch.no_grad():
        assert cs231n(x, end="conv9").shape == (1, 1024, 3, 3)
        assert resnet(x).shape == (1, 100)  # global pooling: any size
    x64 = torch.rand(1, 3, 64, 64) * 255
    assert torch.equal(cs231n.normalize(x64), x64 - cs231n.mean_image)


def test_resnet_normalize_divides_by_std():
    model = ResNet(widths=(8,), blocks=(1,), stem_width=8, input_std=(32.0, 64.0, 128.0),
                   mean_image=torch.full((3, 64, 64), 100.0))
    x = torch.full((1, 3, 64, 64), 164.0)
    assert torch.allclose(model.normalize(x)[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_input_gradient_flows(cs231n):
    """Saliency and fooling images need d(score)/d(pixels)."""
    x = (torch.rand(1, 3, 64, 64) * 255).requires_grad_()
    cs231n(x)[0, 3].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------- factory and CLI


def test_build_model_from_yaml_files():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.load(CONF / "resnet.yaml")
    model = build_model(cfg, mean_image=torch.ones(3, 64, 64))
    assert isinstance(model, ResNet) and isinstance(model, ImageClassifier)
    assert torch.equal(model.mean_image, torch.ones(3, 64, 64))
    assert model.layer_shapes()[-1][2] == (cfg.num_classes,)
    assert model.stage4.block1.conv1.out_channels == cfg.widths[-1]

    cfg = omegaconf.OmegaConf.load(CONF / "cs231n.yaml")
    assert cfg.url.endswith("/pretrained_model.h5") and cfg.source == "train"
    assert isinstance(build_model(cfg), CS231nNet)


def test_build_model_dict_and_overrides():
    model = build_model({"arch": "resnet", "widths": [8, 16], "blocks": [1, 1], "stem_width": 4,
                         "num_classes": 7, "source": "train", "url": None}, input_std=50.0)
    assert model.fc.out_features == 7 and torch.all(model.input_std == 50.0)
    assert build_model({"arch": "cs231n", "num_classes": 10}).fc11.out_features == 10


def test_unknown_arch_and_option():
    with pytest.raises(ConfigError, match="unknown model arch 'vgg'; known: cs231n, resnet"):
        build_model({"arch": "vgg"})
    with pytest.raises(ConfigError, match="no option.*widths"):
        build_model({"arch": "cs231n", "widths": [1]})


def test_cli_lists_layers(capsys):
    main(["cs231n"])
    out = capsys.readouterr().out
    assert "conv9" in out and "(1024, 2, 2)" in out and "fc11" in out and "(100,)" in out


# --------------------------------------------------------------------------- layers by hooks


def test_hooks_reach_named_layers_of_any_module_and_stop_early():
    import torchvision

    from pipeline.model.layers import UnknownLayerError as LayerError
    from pipeline.model.layers import activations

    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64)
    ran = []
    net.fc.register_forward_hook(lambda *args: ran.append("fc"))
    with torch.no_grad():
        out = activations(net, x, ["layer1", "layer3.0.relu"])
        assert out["layer1"].shape == (2, 64, 16, 16) and out["layer3.0.relu"].shape[1] == 256
        assert not ran  # the pass stopped after layer3.0: fc never ran
        full = activations(net, x, ["layer4", "fc"])
        assert torch.equal(full["fc"], net(x)) and ran
    with pytest.raises(LayerError, match="no layer 'layer9'"):
        activations(net, x, ["layer9"])


def test_autocast_after_a_layer_keeps_the_layers_before_it_in_fp32():
    from pipeline.model.layers import autocast_after

    net = ResNet(num_classes=5, widths=(8, 16), blocks=(1, 1), stem_width=8).eval()
    dtypes = {}
    for name in ("stem", "stage1.block1", "stage2.block1"):
        net.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: dtypes.__setitem__(name, out.dtype))
    with torch.no_grad(), autocast_after(net, "stem", "cpu"):
        net(torch.rand(1, 3, 32, 32) * 255)
    assert dtypes == {"stem": torch.float32, "stage1.block1": torch.bfloat16, "stage2.block1": torch.bfloat16}
    with torch.no_grad():
        assert net(torch.rand(1, 3, 32, 32)).dtype == torch.float32  # nothing left behind after the context
