"""Any classifier through the pipeline (pipeline/model/external.py): torchvision architectures and a
user's own nn.Module, randomly initialised and small; weights only over loopback."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import synthetic
from conftest import Route
from pipeline.errors import ConfigError, DataError
from pipeline.explain.attribution.gradcam import GradCAM
from pipeline.explain.attribution.gradient import Saliency
from pipeline.explain.attribution.guided_backprop import GuidedBackprop
from pipeline.explain.class_viz import visualize_classes
from pipeline.explain.engine.regime import build as build_regime
from pipeline.model import external
from pipeline.model.architectures import reference_layer
from pipeline.model.external import WrappedClassifier, build_external, imagenet_columns, imagenet_wnids
from pipeline.model.precision import frozen

REPO = Path(__file__).resolve().parents[1]
WNIDS = synthetic.WNIDS[:4]  # real ILSVRC-2012 wnids (goldfish, fire salamander, bullfrog, tailed frog)


class TinyNet(nn.Module):
    """A user's own classifier: blocks in a Sequential and a ModuleList, a shared activation (runs twice:
    no layer), an output changed in place by the forward (no layer), a module it never runs (no layer)."""

    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList([nn.Conv2d(width, width, 3, stride=2, padding=1) for _ in range(2)])
        self.act = nn.ReLU()
        self.norm = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)
        self.unused = nn.Linear(1, 1)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = self.act(block(x))
        x = self.norm(x).relu_()
        return self.head(self.pool(x).flatten(1))


def tiny_cfg(**extra):
    return {"source": "module", "_target_": "test_external_models.TinyNet", "options": {"num_classes": 4},
            "weights": None, "input_size": None, **extra}


def pixels(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """torchvision resnet18, random init, 1000 outputs restricted to 4 wnids; 32 px images seen at 96 px."""
    torch.manual_seed(0)
    model, meta = build_external({"source": "torchvision", "name": "resnet18", "weights": None, "input_size": 96},
                                 wnids=WNIDS, image_size=32, cache_dir=tmp_path_factory.mktemp("cache"))
    return model, meta


# --------------------------------------------------------------------------- ImageNet classes


def test_imagenet_table_is_the_standard_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(set(wnids))
    assert (wnids[0], wnids[1], wnids[999]) == ("n01440764", "n01443537", "n15075141")  # tench, goldfish, toilet tissue
    assert imagenet_columns(synthetic.WNIDS).tolist() == [1, 25, 30, 32, 50]


def test_the_100_dataset_classes_are_imagenet_classes():
    from omegaconf import OmegaConf

    subset = list(OmegaConf.load(REPO / "conf/data/tiny-imagenet-100-A.yaml").subset_wnids)
    columns = imagenet_columns(subset)
    assert len(columns) == 100 and len(set(columns.tolist())) == 100
    assert [imagenet_wnids()[i] for i in columns] == subset


def test_unknown_wnid_is_named():
    with pytest.raises(ConfigError, match="n09999999"):
        imagenet_columns(["n01443537", "n09999999", "n00000001"])
    with pytest.raises(ConfigError, match="n09999999.*ImageNet-1k"):
        build_external(tiny_cfg(options={"num_classes": 1000}), wnids=["n01443537", "n09999999"], image_size=32,
                       cache_dir="unused")


# --------------------------------------------------------------------------- torchvision models


def test_resnet_layers_and_metadata(resnet):
    model, meta = resnet
    assert model.layer_names == ["conv1", "bn1", "relu", "maxpool", "layer1.0", "layer1.1", "layer2.0", "layer2.1",
                                 "layer3.0", "layer3.1", "layer4.0", "layer4.1", "avgpool", "fc"]
    assert model.num_spatial == 12  # avgpool's 1x1 output is no map
    assert model.num_classes == 4 and not model.training
    assert meta["arch"] == {"arch": "torchvision", "source": "torchvision", "name": "resnet18", "options": {},
                            "input_size": 96, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert (meta["num_outputs"], meta["restricted_to"], meta["input_size"], meta["weights"]) == (1000, 4, 96, None)


def test_1000_logits_restricted_to_the_dataset_wnids(resnet):
    model, _ = resnet
    x = pixels(3)
    with torch.no_grad():
        full = model.net(model.normalize(x))
        restricted = model(x)
    assert full.shape == (3, 1000) and restricted.shape == (3, 4)
    assert torch.equal(restricted, full[:, [imagenet_wnids().index(w) for w in WNIDS]])


def test_resize_rule_and_mean_image(resnet):
    model, _ = resnet
    assert model.mean_image.shape == (3, 32, 32)
    assert torch.allclose(model.mean_image[:, 0, 0], torch.tensor([0.485, 0.456, 0.406]) * 255)
    assert model.normalize(model.mean_image[None]).abs().max() < 1e-5  # the mean colour is the zero input
    assert model.layer_shapes(32)[0] == (0, "conv1", (64, 48, 48))  # dataset size: resized to 96
    assert model.layer_shapes(40)[0] == (0, "conv1", (64, 20, 20))  # any other size: as it is
    assert model.input_size_for((32, 32)) == (96, 96) and model.input_size_for((40, 40)) == (40, 40)
    # the reference's layers 3 / 6 / 7 at 1/4 and 1/16 of what the layers see (96 px), not of 32 px
    assert [reference_layer(model, r, 32) for r in (3, 6, 7)] == ["layer1.1", "layer3.0", "layer3.1"]


def test_features_by_name_via_hooks(resnet):
    model, _ = resnet
    x = pixels(2)
    feats = model.features(x, ["layer2.0", "fc"])
    assert feats[model.layer_index("layer2.0")].shape == (2, 128, 12, 12)
    assert feats[model.layer_index("fc")].shape == (2, 1000)  # the layer itself: all 1000 logits
    net = model.net
    with torch.no_grad():
        expected = net.layer1[0](net.maxpool(net.relu(net.bn1(net.conv1(model.normalize(x))))))
        assert torch.allclose(model(x, end="layer1.0"), expected, atol=1e-5)
    assert model.get_submodule("layer3.1") is net.layer3[1] is model.get_submodule("net.layer3.1")


def test_saliency_gradcam_guided_backprop_on_the_wrapped_model(resnet):
    model, _ = resnet
    model = frozen(model, "cpu")
    x, y = pixels(2), torch.tensor([0, 3])
    maps = Saliency(model, batch_size=2).maps(x, y)
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and (maps > 0).float().mean() > 0.5
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr).gather(1, y[:, None]).sum(), xr)  # through the resize
    assert torch.allclose(maps, grad.abs().amax(1), rtol=1e-4, atol=1e-8)
    bf16 = Saliency(model, precision="bf16", batch_size=2).maps(x, y)  # autocast from a layer found by name
    assert bf16.shape == (2, 32, 32) and torch.isfinite(bf16).all()
    assert GradCAM(model, batch_size=2).layer == "layer4.1"
    assert GuidedBackprop(model, batch_size=2).maps(x, y).shape == (2, 32, 32)  # in-place ReLUs switched off


def test_one_class_visualization_step(resnet):
    model, _ = resnet
    model = frozen(model, "cpu")
    regime = build_regime(iterations=1, step="adam", lr=1.0, jitter=2, blur="reference", l2=1e-4,
                          center=model.mean_image)
    result = visualize_classes(model, [0, 2], regime, seed=0, init_std=10.0, progress=False)
    assert result.images.shape == (2, 3, 32, 32) and result.steps.tolist() == [1, 1]
    assert torch.isfinite(result.images).all() and 0 <= result.images.min() and result.images.max() <= 255


def test_another_family_mobilenet():
    torch.manual_seed(0)
    model, meta = build_external({"source": "torchvision", "name": "mobilenet_v3_small", "weights": None,
                                  "input_size": 64}, wnids=WNIDS, image_size=32, cache_dir="unused")
    assert model.layer_names == [f"features.{i}" for i in range(13)] + ["avgpool"] + [
        f"classifier.{i}" for i in range(4)]
    assert model.num_spatial == 13 and meta["restricted_to"] == 4
    assert model.features(pixels(1), ["features.3"])[3].shape[-1] == 8  # 64 px seen: 1/8 after features.3
    assert Saliency(frozen(model, "cpu")).maps(pixels(2), torch.tensor([1, 2])).shape == (2, 32, 32)


def test_torchvision_options_give_one_output_per_class():
    torch.manual_seed(0)
    model, meta = build_external({"source": "torchvision", "name": "mobilenet_v3_small", "weights": None,
                                  "options": {"num_classes": 4}, "input_size": None}, wnids=WNIDS, image_size=32,
                                 cache_dir="unused")
    assert meta["num_outputs"] == 4 and meta["restricted_to"] is None and model.columns is None
    assert model(pixels(2)).shape == (2, 4)


def test_composed_config_builds(tmp_path):
    from pipeline.job import compose_config

    cfg = compose_config("config", ["model=torchvision", "model.name=mobilenet_v3_small", "model.weights=null",
                                    "model.input_size=64", "+model.options.dropout=0.1"])
    model, meta = build_external(cfg.model, wnids=WNIDS, image_size=32, cache_dir=tmp_path)
    assert meta["arch"]["options"] == {"dropout": 0.1} and model.input_size == 64
    cfg = compose_config("config", ["model=module", "model._target_=test_external_models.TinyNet",
                                    "+model.options.num_classes=4"])
    model, meta = build_external(cfg.model, wnids=WNIDS, image_size=32, cache_dir=tmp_path)
    assert meta["arch"]["_target_"] == "test_external_models.TinyNet" and model.input_size is None


def test_unknown_torchvision_name_suggests_near_matches():
    with pytest.raises(ConfigError, match="resnet50") as info:
        build_external({"source": "torchvision", "name": "resnet5O", "weights": None}, wnids=WNIDS, image_size=32,
                       cache_dir="unused")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="external model source"):
        build_external({"source": "train"}, wnids=WNIDS, image_size=32, cache_dir="unused")


def test_weights_names_resolve_to_torchvision_urls_fetched_by_our_fetch(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_fetch(url, dest, *, sha256=None, progress=None):  # no network: the wrong bytes arrive
        calls.append((url, Path(dest)))
        Path(dest).write_bytes(b"not the weights")
        return hashlib.sha256(b"not the weights").hexdigest()

    monkeypatch.setattr(external, "fetch", fake_fetch)
    cfg = {"source": "torchvision", "name": "mobilenet_v3_small", "weights": "DEFAULT"}
    with pytest.raises(DataError, match="does not match"):  # torch.hub's sha256 prefix in the file name
        build_external(cfg, wnids=WNIDS, image_size=32, cache_dir=tmp_path)
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    assert calls == [(url, calls[0][1])] and calls[0][1].parent == tmp_path
    assert calls[0][1].name.endswith(Path(url).name)
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_external({**cfg, "weights": "IMAGENET1K_V9"}, wnids=WNIDS, image_size=32, cache_dir=tmp_path)


# --------------------------------------------------------------------------- a user's own module


def test_user_module_layers_and_no_resize():
    torch.manual_seed(0)
    model, meta = build_external(tiny_cfg(), wnids=WNIDS, image_size=32, cache_dir="unused")
    assert isinstance(model, WrappedClassifier) and isinstance(model.net, TinyNet)
    assert model.layer_names == ["stem.0", "stem.1", "stem.2", "blocks.0", "blocks.1", "pool", "head"]
    assert model.num_spatial == 5 and meta["restricted_to"] is None and meta["input_size"] is None
    assert model.layer_shapes(32)[3] == (3, "blocks.0", (8, 16, 16))
    assert not model.net.stem[2].inplace  # hooks hand out outputs that nothing overwrites


def state_dict_bytes(**options) -> tuple[bytes, dict]:
    torch.manual_seed(1)
    state = TinyNet(**options).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


def test_state_dict_over_loopback_is_cached_and_redacted(http_server, tmp_path):
    body, state = state_dict_bytes()
    route = http_server.add("/weights/tiny.pt", Route(body))
    url = f"{http_server.url}/weights/tiny.pt?token=s3cret"
    digest = hashlib.sha256(body).hexdigest()
    model, meta = build_external(tiny_cfg(weights=url, sha256=digest), wnids=WNIDS, image_size=32, cache_dir=tmp_path)
    assert torch.equal(model.net.head.weight, state["head.weight"])
    assert meta["weights_sha256"] == digest and "s3cret" not in str(meta) and "tiny.pt" in meta["weights"]
    again, _ = build_external(tiny_cfg(weights=url), wnids=WNIDS, image_size=32, cache_dir=tmp_path)
    assert len(route.requests) == 1  # the cached file is re-used
    assert torch.equal(again.net.head.weight, state["head.weight"])
    local = next(tmp_path.glob("*tiny.pt"))
    from_file, meta = build_external(tiny_cfg(weights=str(local)), wnids=WNIDS, image_size=32, cache_dir="unused")
    assert meta["weights"] == local.name and torch.equal(from_file.net.head.weight, state["head.weight"])


def test_state_dict_that_does_not_fit(http_server, tmp_path):
    body, _ = state_dict_bytes(width=16)
    http_server.add("/wide.pt", Route(body))
    with pytest.raises(DataError, match=r"wide\.pt.*does not fit.*shape mismatch") as info:
        build_external(tiny_cfg(weights=f"{http_server.url}/wide.pt"), wnids=WNIDS, image_size=32, cache_dir=tmp_path)
    assert "\n" not in str(info.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a torch file")
    with pytest.raises(DataError, match="junk.pt: cannot read"):
        build_external(tiny_cfg(weights=str(junk)), wnids=WNIDS, image_size=32, cache_dir=tmp_path)
    with pytest.raises(DataError, match="does not match model.sha256"):
        build_external(tiny_cfg(weights=str(junk), sha256="0" * 64), wnids=WNIDS, image_size=32, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="is not a file"):
        build_external(tiny_cfg(weights=str(tmp_path / "missing.pt")), wnids=WNIDS, image_size=32, cache_dir=tmp_path)


def test_output_width_and_import_errors():
    with pytest.raises(ConfigError, match="7 outputs but the dataset has 4 classes"):
        build_external(tiny_cfg(options={"num_classes": 7}), wnids=WNIDS, image_size=32, cache_dir="unused")
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_external(tiny_cfg(_target_="test_external_models.NoSuchNet"), wnids=WNIDS, image_size=32,
                       cache_dir="unused")
    with pytest.raises(ConfigError, match="options"):
        build_external(tiny_cfg(options={"depth": 3}), wnids=WNIDS, image_size=32, cache_dir="unused")
