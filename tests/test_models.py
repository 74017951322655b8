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

h5py = pytest.importorskip("h5py")

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
CONVS = [(5, 2, 2, 64), (3, 1, 1, 64), (3, 2, 1, 128), (3, 1, 1, 128), (3, 2, 1, 256),
         (3, 1, 1, 256), (3, 2, 1, 512), (3, 1, 1, 512), (3, 2, 1, 1024)]
EPS = 1e-5


# --------------------------------------------------------------------------- reference


def random_weights(seed: int = 0, num_classes: int = 100) -> dict[str, np.ndarray]:
    """Random float32 parameters in the layout of the original pretrained_model.h5."""
    rng = np.random.default_rng(seed)
    p, cin = {}, 3

    def bn(i, n):
        p[f"gamma{i}"] = rng.uniform(0.5, 1.5, n)
        p[f"beta{i}"] = rng.normal(0, 0.2, n)
        p[f"running_mean{i}"] = rng.normal(0, 0.5, n)
        p[f"running_var{i}"] = rng.uniform(0.5, 2.0, n)

    for i, (k, _, _, f) in enumerate(CONVS, start=1):
        p[f"W{i}"] = rng.normal(0, np.sqrt(2 / (cin * k * k)), (f, cin, k, k))
        p[f"b{i}"] = rng.normal(0, 0.1, f)
        bn(i, f)
        cin = f
    p["W10"], p["b10"] = rng.normal(0, np.sqrt(2 / 4096), (512, 4096)), rng.normal(0, 0.1, 512)
    bn(10, 512)
    p["W11"], p["b11"] = rng.normal(0, np.sqrt(1 / 512), (num_classes, 512)), rng.normal(0, 0.1, num_classes)
    return {k: v.astype(np.float32) for k, v in p.items()}


def write_h5(path: Path, params: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in params.items():
            f.create_dataset(name, data=value)
    return path


def conv_ref(x, w, b, stride, pad):
    """Direct convolution (im2col by slicing), float64."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cols = np.empty((n, c, kh, kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
    return np.einsum("ncijhw,fcij->nfhw", cols, w, optimize=True) + b[None, :, None, None]


def bn_ref(x, p, i):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    g, be, m, v = (p[f"{k}{i}"].astype(np.float64).reshape(shape)
                   for k in ("gamma", "beta", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + EPS) * g + be


def reference_forward(pixels, mean_image, params, end=10):
    """The CS231n PretrainedCNN test-mode forward, written with numpy only; output of layer ``end``."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    a = pixels.astype(np.float64) - mean_image.astype(np.float64)
    for i in range(end + 1):
        i1 = i + 1
        if i < 9:
            _, stride, pad, _ = CONVS[i]
            a = np.maximum(bn_ref(conv_ref(a, p[f"W{i1}"], p[f"b{i1}"], stride, pad), p, i1), 0)
        elif i == 9:
            a = np.maximum(bn_ref(a.reshape(a.shape[0], -1) @ p["W10"].T + p["b10"], p, 10), 0)
        else:
            a = a @ p["W11"].T + p["b11"]
    return a


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
