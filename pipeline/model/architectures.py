"""Image classifiers with one interface for every visualization.

Each model takes images in pixel space (float, 0..255, N x 3 x H x W) and owns its
preprocessing, so saliency maps, fooling images and DeepDream all work on pixels. Layers
are addressed by index or readable name, and ``forward(x, end=layer)`` stops after that
layer (inclusive), like the CS231n reference ``PretrainedCNN.forward(X, end=k)``.

``python -m pipeline.models [arch]`` lists the layers and their output shapes (``pipeline.model.layers``).
"""

from __future__ import annotations

import inspect
import operator
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError, DataError
from pipeline.model.layers import UnknownLayerError, activations


# --------------------------------------------------------------------------- interface


class ImageClassifier(nn.Module):
    """Base class: pixel-space input, named layers, forward that can stop early.

    Subclasses register their layers as submodules whose dotted paths are the layer names
    (``self.layer_names``), each layer taking the previous layer's output, and set
    ``self.num_spatial`` to how many leading layers output N x C x H x W maps.
    """

    layer_names: list[str]
    num_spatial: int

    def __init__(self, num_classes: int, mean_image: torch.Tensor | np.ndarray | None = None):
        super().__init__()
        self.num_classes = int(num_classes)
        mean = torch.zeros(3, 64, 64) if mean_image is None else torch.as_tensor(mean_image)
        if mean.dim() != 3 or mean.shape[0] != 3:
            raise ConfigError(f"mean_image must have shape (3, H, W), got {tuple(mean.shape)}")
        # The training-set mean image: saved with the weights because the inputs depend on it.
        self.register_buffer("mean_image", mean.detach().to(torch.float32).clone())

    # -- preprocessing

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> network input: subtract the mean image.

        The mean image only fits inputs of its own size; other sizes (DeepDream on a large
        photo) get its per-channel mean instead, so the convolutional layers work on any size.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected pixel images of shape (N, 3, H, W), got {tuple(x.shape)}")
        return x - self.mean_for(x.shape[-2:])

    def mean_for(self, size: Sequence[int]) -> torch.Tensor:
        """The pixels the network sees as zero input at image size ``size`` (H, W): the mean image,
        or its per-channel mean (3, 1, 1) for other sizes."""
        mean = self.mean_image
        return mean if tuple(size) == tuple(mean.shape[-2:]) else mean.mean(dim=(1, 2), keepdim=True)

    def input_size_for(self, size: Sequence[int]) -> tuple[int, int]:
        """The size (H, W) the first layer sees for pixel images of ``size``: the same, unless the
        preprocessing resizes (a wrapped ImageNet model, ``pipeline.model.external``)."""
        return tuple(size)

    # -- layers

    def layers(self) -> list[nn.Module]:
        return [self.get_submodule(name) for name in self.layer_names]

    def layer_index(self, layer: int | str) -> int:
        """Index of ``layer``: an int (negative counts from the end), its string form, or a name."""
        n = len(self.layer_names)
        if isinstance(layer, str):
            if layer in self.layer_names:
                return self.layer_names.index(layer)
            try:
                layer = int(layer.strip())
            except ValueError:
                raise self._unknown(layer) from None
        if isinstance(layer, bool):
            raise self._unknown(layer)
        try:
            i = operator.index(layer)
        except TypeError:
            raise self._unknown(layer) from None
        if not -n <= i < n:
            raise self._unknown(layer)
        return i % n

    def layer_name(self, layer: int | str) -> str:
        return self.layer_names[self.layer_index(layer)]

    def is_spatial(self, layer: int | str) -> bool:
        """Whether the layer outputs feature maps (before the flatten / global pool)."""
        return self.layer_index(layer) < self.num_spatial

    @property
    def spatial_layer_names(self) -> list[str]:
        return self.layer_names[: self.num_spatial]

    def _unknown(self, layer) -> UnknownLayerError:
        n = len(self.layer_names)
        return UnknownLayerError(
            f"unknown layer {layer!r} for {type(self).__name__}; use an index 0..{n - 1} "
            f"(or -{n}..-1) or one of: {', '.join(self.layer_names)}"
        )

    # -- forward

    def forward(self, x: torch.Tensor, end: int | str | None = None) -> torch.Tensor:
        """Class scores (N, num_classes), or the output of layer ``end`` (inclusive)."""
        if end is not None:  # hooks stop the pass after that layer
            index = self.layer_index(end)
            return self.features(x, [index])[index]
        x = self.normalize(x)
        for layer in self.layers():
            x = layer(x)
        return x

    def features(self, x: torch.Tensor, layers: Sequence[int | str]) -> dict[int, torch.Tensor]:
        """{layer index: activations} of several layers for pixel images ``x``, from one forward pass
        that stops after the deepest of them."""
        index = {self.layer_index(layer): None for layer in layers}
        out = activations(self, x, [self.layer_names[i] for i in index])
        return {i: out[self.layer_names[i]] for i in index}

    @torch.no_grad()
    def layer_shapes(self, input_size: int | Sequence[int] = (64, 64)) -> list[tuple[int, str, tuple[int, ...]]]:
        """(index, name, output shape without batch) for every layer, from one dummy image."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        was_training = self.training
        self.eval()  # BatchNorm1d refuses a batch of one in training mode
        try:
            out = activations(self, torch.zeros(1, 3, h, w, device=self.mean_image.device), self.layer_names)
            return [(i, name, tuple(out[name].shape[1:])) for i, name in enumerate(self.layer_names)]
        finally:
            self.train(was_training)


# --------------------------------------------------------------------------- CS231n


class ConvBNReLU(nn.Module):
    """conv -> spatial batchnorm -> ReLU, as ``conv_bn_relu_forward`` in CS231n."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, pad: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, bias=True)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class AffineBNReLU(nn.Module):
    """flatten -> affine -> batchnorm -> ReLU, as ``affine_bn_relu_forward`` in CS231n."""

    def __init__(self, din: int, dout: int):
        super().__init__()
        self.fc = nn.Linear(din, dout)
        self.bn = nn.BatchNorm1d(dout, eps=1e-5)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.fc(torch.flatten(x, 1))))


class CS231nNet(ImageClassifier):
    """Port of the CS231n 2016 assignment-3 ``PretrainedCNN`` for 64x64 TinyImageNet.

    Layers 0..8 (conv1..conv9) are conv-BN-ReLU, 9 (fc10) affine-BN-ReLU on the flattened
    1024x2x2 map, 10 (fc11) the affine class scores. Input: pixels minus the mean image.
    """

    # (kernel, stride, pad, filters) of conv1..conv9
    CONVS = [(5, 2, 2, 64), (3, 1, 1, 64), (3, 2, 1, 128), (3, 1, 1, 128), (3, 2, 1, 256),
             (3, 1, 1, 256), (3, 2, 1, 512), (3, 1, 1, 512), (3, 2, 1, 1024)]
    HIDDEN = 512

    def __init__(self, num_classes: int = 100, mean_image=None):
        super().__init__(num_classes, mean_image)
        cin = 3
        for i, (k, s, p, f) in enumerate(self.CONVS, start=1):
            self.add_module(f"conv{i}", ConvBNReLU(cin, f, k, s, p))
            cin = f
        self.fc10 = AffineBNReLU(cin * 2 * 2, self.HIDDEN)  # 64x64 input -> 1024x2x2
        self.fc11 = nn.Linear(self.HIDDEN, self.num_classes)
        self.layer_names = [f"conv{i}" for i in range(1, 10)] + ["fc10", "fc11"]
        self.num_spatial = 9


def _cs231n_h5_names(num_classes: int = 100) -> dict[str, str]:
    """h5 dataset name -> CS231nNet state_dict key."""
    names = {}
    for i in range(1, 11):
        block = f"conv{i}" if i <= 9 else "fc10"
        lin = "conv" if i <= 9 else "fc"
        names.update({
            f"W{i}": f"{block}.{lin}.weight", f"b{i}": f"{block}.{lin}.bias",
            f"gamma{i}": f"{block}.bn.weight", f"beta{i}": f"{block}.bn.bias",
            f"running_mean{i}": f"{block}.bn.running_mean", f"running_var{i}": f"{block}.bn.running_var",
        })
    names.update({"W11": "fc11.weight", "b11": "fc11.bias"})
    return names


def load_cs231n_h5(path: str | os.PathLike, num_classes: int = 100,
                   mean_image: torch.Tensor | np.ndarray | None = None) -> OrderedDict[str, torch.Tensor]:
    """State dict for ``CS231nNet`` from the original ``pretrained_model.h5``.

    Affine weights are expected as (out, in) like torch; the transposed (in, out) layout is
    also accepted, as the reference loader did. The h5 holds no mean image: pass
    ``mean_image`` to get a complete state dict, else load with ``strict=False``.
    """
    try:
        import h5py  # optional dependency (the ``fetch`` extra)
    except ImportError:
        raise ConfigError("reading pretrained_model.h5 needs h5py: pip install -e '.[fetch]'") from None

    path = os.fspath(path)
    expected = CS231nNet(num_classes).state_dict()
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as HDF5 ({exc})") from None
    with f:
        for name, key in _cs231n_h5_names(num_classes).items():
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise DataError(f"{path}: missing dataset {name}")
            value = np.asarray(f[name], dtype=np.float32)
            want = tuple(expected[key].shape)
            if value.shape != want and value.ndim == 2 and value.T.shape == want:
                value = value.T
            if value.shape != want:
                raise DataError(f"{path}: dataset {name} has shape {value.shape}, expected {want}")
            state[key] = torch.from_numpy(np.ascontiguousarray(value))
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    if mean_image is not None:
        state["mean_image"] = torch.as_tensor(mean_image, dtype=torch.float32).clone()
    return OrderedDict((k, state[k]) for k in expected if k in state)


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (1x1 projection when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # modules, so hooks (guided backprop) can reach them

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(ImageClassifier):
    """A small ResNet for 64x64 images: 3x3 stem at full resolution, then stages that each
    halve the resolution (64 -> 32 -> 16 -> 8 -> 4 by default), global average pool, linear.

    Layers: ``stem``, ``stage{s}.block{b}`` (1-based), ``pool`` (flattened, with dropout
    while training), ``fc``. Input: (pixels - mean image) / input_std.
    """

    def __init__(self, num_classes: int = 100, mean_image=None,
                 widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2),
                 stem_width: int = 32, stem_stride: int = 1, dropout: float = 0.0,
                 input_std: float | Sequence[float] = 64.0, zero_init_residual: bool = True):
        super().__init__(num_classes, mean_image)
        widths, blocks = list(widths), list(blocks)
        if not widths or len(widths) != len(blocks) or min(widths + blocks) < 1:
            raise ConfigError(f"ResNet needs as many widths as blocks per stage, all >= 1; "
                              f"got widths={widths}, blocks={blocks}")
        std = torch.as_tensor(input_std, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1).clone()
        self.register_buffer("input_std", std)

        self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(stem_width), nn.ReLU())
        self.layer_names = ["stem"]
        cin = stem_width
        for s, (width, depth) in enumerate(zip(widths, blocks), start=1):
            stage = nn.Sequential(OrderedDict(
                (f"block{b}", BasicBlock(cin if b == 1 else width, width, 2 if b == 1 else 1))
                for b in range(1, depth + 1)))
            self.add_module(f"stage{s}", stage)
            self.layer_names += [f"stage{s}.block{b}" for b in range(1, depth + 1)]
            cin = width
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.fc = nn.Linear(cin, self.num_classes)
        self.layer_names += ["pool", "fc"]
        self.num_spatial = len(self.layer_names) - 2
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each block starts as identity: trains faster and more stably
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def normalize(self, x):
        return super().normalize(x) / self.input_std


# --------------------------------------------------------------------------- factory

ARCHITECTURES: dict[str, type[ImageClassifier]] = {"cs231n": CS231nNet, "resnet": ResNet}
# Keys of conf/model/*.yaml that say where weights come from, not how the net is built.
SOURCE_KEYS = frozenset({"arch", "source", "url", "sha256"})


def _plain(value):
    """DictConfig/ListConfig -> dict/tuple, without importing omegaconf."""
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(value[k]) for k in value}
    if isinstance(value, Sequence):
        return tuple(_plain(v) for v in value)
    return value


def build_model(cfg: Mapping, mean_image: torch.Tensor | np.ndarray | None = None, **overrides) -> ImageClassifier:
    """Build the model described by ``conf/model/<name>.yaml`` (``arch`` + its options).

    ``overrides`` replace config options (e.g. ``input_std`` measured on the data).
    """
    arch = cfg.get("arch")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown model arch {arch!r}; known: {', '.join(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    options = {k: _plain(cfg[k]) for k in cfg if k not in SOURCE_KEYS}
    options.update(overrides)
    allowed = [p for p in inspect.signature(cls).parameters if p != "mean_image"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"model arch {arch!r} has no option(s) {', '.join(unknown)}; "
                          f"options: {', '.join(allowed)}")
    return cls(mean_image=mean_image, **options)


# The CS231n notebooks pick layers of PretrainedCNN by index: shallow inversion 3, deep inversion 6,
# DeepDream 7. Other architectures get the layer at the same place in the resolution hierarchy:
# 3 = the last layer at 1/4 of the input size, 6 / 7 = the first / last layer at 1/16.
REFERENCE_LAYERS = {3: (4, "last"), 6: (16, "first"), 7: (16, "last")}


def reference_layer(model: ImageClassifier, reference: int, input_size: int = 64) -> str:
    """Name of ``model``'s counterpart of the reference's layer ``reference`` (3, 6 or 7).

    Falls back to the spatial layer with the nearest output size when none has exactly that size.
    """
    if reference not in REFERENCE_LAYERS:
        raise ConfigError(f"no reference layer {reference}; known: {', '.join(map(str, REFERENCE_LAYERS))}")
    factor, which = REFERENCE_LAYERS[reference]
    target = model.input_size_for((input_size, input_size))[-1] / factor  # the resolution the layers really see
    spatial = [(name, shape[-1]) for _, name, shape in model.layer_shapes(input_size) if len(shape) == 3]
    best = min(abs(size - target) for _, size in spatial)
    names = [name for name, size in spatial if abs(size - target) == best]
    return names[-1] if which == "last" else names[0]
