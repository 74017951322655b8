"""Composable image transforms for image optimisation (after Lucent's ``optvis/transform.py``).

Everything is batch-first pixel space, (N, 3, H, W) floats in 0..255. Two kinds:

- *input transforms* (``Jitter``): differentiable, applied to the image before the objective on
  every step. Autograd brings the gradient back through the roll, so "roll, step, unroll" of the
  CS231n reference is exactly "step on the gradient of the rolled image".
- *constraints* (``Clip``, ``Blur``, ``GaussianBlur``): applied to the image after each update,
  outside autograd, optionally only every ``every`` steps.

Randomness comes from one ``torch.Generator`` per image, so an image gets the same jitter whether
it is optimised alone or in a batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError

# The CS231n reference's gentle blur regulariser (image_utils.blur_image): 3x3, per channel.
REFERENCE_BLUR_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 188.0, 2.0], [1.0, 2.0, 1.0]]) / 200.0


def _check_every(every: int) -> int:
    if int(every) < 1:
        raise ConfigError(f"'every' must be >= 1 step, got {every}")
    return int(every)


# --------------------------------------------------------------------------- input transforms


class Jitter:
    """Roll each image by a random offset in [-max_shift, max_shift] pixels (Yosinski et al. 2015)."""

    def __init__(self, max_shift: int):
        if int(max_shift) < 0:
            raise ConfigError(f"jitter must be >= 0 pixels, got {max_shift}")
        self.max_shift = int(max_shift)

    def offsets(self, generators: Sequence[torch.Generator]) -> list[tuple[int, int]]:
        """(dy, dx) per image, one draw from each image's generator."""
        m = self.max_shift
        return [tuple(int(v) for v in torch.randint(-m, m + 1, (2,), generator=g)) for g in generators]

    @staticmethod
    def roll(x: torch.Tensor, offsets: Sequence[tuple[int, int]], undo: bool = False) -> torch.Tensor:
        sign = -1 if undo else 1
        return torch.stack([torch.roll(x[i], (sign * dy, sign * dx), dims=(-2, -1))
                            for i, (dy, dx) in enumerate(offsets)])

    def __call__(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if self.max_shift == 0:
            return x
        return self.roll(x, self.offsets(generators))

    def __repr__(self) -> str:
        return f"Jitter({self.max_shift})"


# --------------------------------------------------------------------------- constraints


class Clip:
    """Clamp pixels to [low, high] (scalars or tensors broadcastable to the image)."""

    def __init__(self, low: float | torch.Tensor = 0.0, high: float | torch.Tensor = 255.0):
        self.low, self.high = low, high

    def __call__(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        low = self.low if isinstance(self.low, torch.Tensor) else torch.tensor(self.low)
        high = self.high if isinstance(self.high, torch.Tensor) else torch.tensor(self.high)
        return torch.maximum(torch.minimum(x, high.to(x)), low.to(x))

    def __repr__(self) -> str:
        return "Clip()"


class Quantize:
    """Round pixels to integers, so the image being optimised is always one an 8-bit PNG can hold."""

    def __call__(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        return torch.round(x)

    def __repr__(self) -> str:
        return "Quantize()"


class Blur:
    """Convolve each channel with ``kernel`` (default: the reference's 3x3) every ``every`` steps.

    ``center`` (e.g. the model's mean image) is subtracted first and added back, so the zero
    padding at the border means "the mean", as in the reference, which blurs mean-subtracted images.
    """

    def __init__(self, kernel: torch.Tensor | None = None, every: int = 1, center: torch.Tensor | None = None):
        kernel = REFERENCE_BLUR_KERNEL if kernel is None else torch.as_tensor(kernel, dtype=torch.float32)
        if kernel.dim() != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ConfigError(f"blur kernel must be a 2-D odd-sized matrix, got shape {tuple(kernel.shape)}")
        self.kernel, self.every, self.center = kernel, _check_every(every), center

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight = self.kernel.to(x)[None, None].expand(c, 1, *self.kernel.shape)
        pad = (self.kernel.shape[0] // 2, self.kernel.shape[1] // 2)
        if self.center is None:
            return F.conv2d(x, weight, padding=pad, groups=c)
        center = self.center.to(x)
        return F.conv2d(x - center, weight, padding=pad, groups=c) + center

    def __call__(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        return self.apply(x) if step % self.every == 0 else x

    def __repr__(self) -> str:
        return f"Blur({tuple(self.kernel.shape)}, every={self.every})"


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian, radius ceil(3 sigma)."""
    if sigma <= 0:
        raise ConfigError(f"blur sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


class GaussianBlur(Blur):
    """Gaussian blur (Yosinski et al. 2015's regulariser) every ``every`` steps."""

    def __init__(self, sigma: float, every: int = 1, center: torch.Tensor | None = None):
        super().__init__(gaussian_kernel(sigma), every=every, center=center)
        self.sigma = sigma

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma}, every={self.every})"
