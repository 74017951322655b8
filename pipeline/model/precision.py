"""Numeric precision and memory layout for gradient work on a trained classifier.

Models and images are kept channels_last (NHWC): oneDNN's convolutions on CPU run about 1.45x
faster that way than in the default NCHW layout, at identical precision. ``bf16`` adds autocast,
which runs the convolutions on AVX-512 BF16 (CPU) or tensor cores (GPU); gradients with respect
to the fp32 input image come back in fp32.
"""

from __future__ import annotations

import contextlib

import torch

from pipeline.errors import ConfigError
from pipeline.model.architectures import ImageClassifier
from pipeline.model.layers import autocast_after

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device | str, precision: str):
    if check_precision(precision) == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def frozen(model: ImageClassifier, device: torch.device | str, precision: str = "fp32") -> ImageClassifier:
    """The model in eval mode on ``device``, channels_last, with no parameter gradients (only image
    gradients are wanted)."""
    check_precision(precision)
    return model.to(device).eval().requires_grad_(False).to(memory_format=torch.channels_last)


def as_input(x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """The memory layout the frozen model expects."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.no_grad()
def probabilities(model: ImageClassifier, images: torch.Tensor, precision: str = "fp32",
                  batch_size: int = 500) -> torch.Tensor:
    """Softmax class probabilities (N, classes) on the CPU for pixel images (uint8 or float), in batches."""
    device = model.mean_image.device
    out = []
    for lo in range(0, len(images), batch_size):
        x = as_input(images[lo:lo + batch_size].to(device, torch.float32))
        with autocast(device, precision):
            out.append(model(x).float().softmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def fp32_layers(model: ImageClassifier, size: tuple[int, int]) -> int:
    """How many leading layers output maps of at least half the input size: the layers whose
    rounding errors would reach the input gradient's fine structure most directly."""
    key = (tuple(size), len(model.layer_names))
    cache = model.__dict__.setdefault("_fp32_layers", {})
    if key not in cache:
        shapes = model.layer_shapes(size)
        seen = model.input_size_for(size)[-1]  # a wrapped ImageNet model resizes first (pipeline.model.external)
        cache[key] = sum(1 for _, _, shape in shapes if len(shape) == 3 and 2 * shape[-1] >= seen)
    return cache[key]


def forward(model: ImageClassifier, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Class scores in fp32. For ``bf16``, the high-resolution first layers stay in fp32 and the
    rest runs under bf16 autocast: saliency maps then rank pixels like fp32 maps (Spearman > 0.99,
    benchmarks/gradients.py) at about twice the fp32 speed on CPU."""
    if check_precision(precision) == "fp32":
        return model(x).float()
    k = fp32_layers(model, tuple(x.shape[-2:]))
    with autocast_after(model, model.layer_names[k - 1] if k else None, x.device.type):
        return model(x).float()
