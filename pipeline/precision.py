"""Numeric precision for gradient work on a trained classifier: fp32, or bf16 autocast + channels_last.

bf16 autocast runs the convolutions on AVX-512 BF16 (CPU) or tensor cores (GPU); gradients with
respect to the fp32 input image come back in fp32.
"""

from __future__ import annotations

import contextlib

import torch

from pipeline.errors import ConfigError
from pipeline.models import ImageClassifier

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
    """The model in eval mode on ``device`` with no parameter gradients (only image gradients are
    wanted), in channels_last memory layout for bf16."""
    model = model.to(device).eval().requires_grad_(False)
    if check_precision(precision) == "bf16":
        model = model.to(memory_format=torch.channels_last)
    return model


def as_input(x: torch.Tensor, precision: str) -> torch.Tensor:
    """The memory layout the frozen model expects."""
    return x.contiguous(memory_format=torch.channels_last) if precision == "bf16" and x.dim() == 4 else x
