"""Composable image transforms for image optimisation (after Lucent's ``optvis/transform.py``).

Everything is batch-first pixel space, (N, 3, H, W) floats in 0..255. Two kinds:

- *input transforms* (``Pad``, ``Jitter``, ``RandomScale``, ``RandomRotate``, ``Crop``):
  differentiable, applied to the image before the objective on every step. Autograd brings the
  gradient back through them, so "roll, step, unroll" of the CS231n reference is exactly "step on
  the gradient of the rolled image". Random ones make the image work under small translations,
  scalings and rotations, which keeps optimisation from exploiting pixel-exact high-frequency
  patterns ("transformation robustness", Olah et al. 2017; Lucid's standard_transforms).
- *constraints* (``Clip``, ``Blur``, ``GaussianBlur``, ``Quantize``): applied to the image after
  each update, outside autograd, optionally only every ``every`` steps.

Randomness comes from one ``torch.Generator`` per image, each transform drawing in list order, so
an image gets the same jitter, scale and angle whether it is optimised alone or in a batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.explain.engine.parametrisation import offset_for

# The CS231n reference's gentle blur regulariser (image_utils.blur_image): 3x3, per channel.
REFERENCE_BLUR_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 188.0, 2.0], [1.0, 2.0, 1.0]]) / 200.0


def _check_every(every: int) -> int:
    if int(every) < 1:
        raise ConfigError(f"'every' must be >= 1 step, got {every}")
    return int(every)


# --------------------------------------------------------------------------- input transforms


class Jitter:
    """Roll each image by a random offset in [-max_shift, max_shift] pixels (Yosinski et al. 2015).

    With ``center`` (the model's mean image), what rolls is the image minus it, as in the CS231n
    reference, which rolls the mean-subtracted image: the network sees the content moved and the
    mean in place, not the mean image's own edges wrapped into the picture (about 4 pixels RMS and
    up to 23 at the seam for the TinyImageNet mean image at a 4-pixel roll)."""

    def __init__(self, max_shift: int, center: torch.Tensor | None = None):
        if int(max_shift) < 0:
            raise ConfigError(f"jitter must be >= 0 pixels, got {max_shift}")
        self.max_shift = int(max_shift)
        self.center = center

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
        if self.center is None:
            return self.roll(x, self.offsets(generators))
        center = offset_for(self.center, tuple(x.shape[-2:])).to(x)
        return self.roll(x - center, self.offsets(generators)) + center

    def __repr__(self) -> str:
        return f"Jitter({self.max_shift}{'' if self.center is None else ', center'})"


def _fill(fill: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(fill, dtype=like.dtype, device=like.device)


class Pad:
    """Pad each side by ``width`` pixels of ``fill`` (e.g. the model's mean colour), or by ``reflect`` /
    ``replicate``, so that jitter, scaling and rotation bring that border into view rather than
    wrapping the image around (Lucid's ``pad``); a ``Crop`` of the same width after them gives the
    model its own input size back."""

    MODES = ("constant", "reflect", "replicate")

    def __init__(self, width: int, mode: str = "constant", fill: float | torch.Tensor = 127.5):
        if int(width) < 0:
            raise ConfigError(f"pad must be >= 0 pixels, got {width}")
        if mode not in self.MODES:
            raise ConfigError(f"unknown pad mode {mode!r}; choose one of {', '.join(self.MODES)}")
        self.width, self.mode, self.fill = int(width), mode, fill

    def __call__(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        w = self.width
        if w == 0:
            return x
        if self.mode != "constant":
            return F.pad(x, (w, w, w, w), mode=self.mode)
        fill = _fill(self.fill, x)
        return F.pad(x - fill, (w, w, w, w)) + fill

    def __repr__(self) -> str:
        return f"Pad({self.width}, {self.mode})"


class Crop:
    """Cut ``width`` pixels from each side (undoes ``Pad``'s size)."""

    def __init__(self, width: int):
        if int(width) < 0:
            raise ConfigError(f"crop must be >= 0 pixels, got {width}")
        self.width = int(width)

    def __call__(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        w = self.width
        return x[..., w:x.shape[-2] - w, w:x.shape[-1] - w] if w else x

    def __repr__(self) -> str:
        return f"Crop({self.width})"


class _RandomAffine:
    """Resample each image with its own 2x3 affine map (``F.affine_grid`` / ``grid_sample``,
    bilinear); what comes from outside the image is ``fill``. One draw per image from ``choices``."""

    def __init__(self, choices: Sequence[float], fill: float | torch.Tensor = 127.5):
        self.choices = [float(c) for c in choices]
        if not self.choices:
            raise ConfigError(f"{type(self).__name__} needs at least one value to draw from")
        self.fill = fill

    def draws(self, generators: Sequence[torch.Generator]) -> list[float]:
        """One value per image, drawn with that image's generator."""
        k = len(self.choices)
        return [self.choices[int(torch.randint(k, (1,), generator=g))] for g in generators]

    def theta(self, value: float, height: int, width: int) -> list[list[float]]:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = torch.tensor([self.theta(v, h, w) for v in self.draws(generators)], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
        fill = _fill(self.fill, x)
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


class RandomScale(_RandomAffine):
    """Zoom each image about its centre by a factor drawn from ``scales`` (Lucid's ``random_scale``,
    at a fixed output size, so a batch stays one tensor)."""

    def __init__(self, scales: Sequence[float], fill: float | torch.Tensor = 127.5):
        super().__init__(scales, fill)
        bad = [s for s in self.choices if not (s > 0 and math.isfinite(s))]
        if bad:
            raise ConfigError(f"scales must be > 0, got {bad[0]:g}")

    def theta(self, scale, height, width):
        return [[1.0 / scale, 0.0, 0.0], [0.0, 1.0 / scale, 0.0]]

    def __repr__(self) -> str:
        return f"RandomScale({self.choices})"


class RandomRotate(_RandomAffine):
    """Rotate each image about its centre by an angle in degrees (counter-clockwise as displayed)
    drawn from ``angles`` (Lucid's ``random_rotate``)."""

    def __init__(self, angles: Sequence[float], fill: float | torch.Tensor = 127.5):
        super().__init__(angles, fill)
        bad = [a for a in self.choices if not math.isfinite(a)]
        if bad:
            raise ConfigError(f"angles must be finite degrees, got {bad[0]}")

    def theta(self, angle, height, width):
        a = math.radians(angle)  # in pixel units, then to affine_grid's [-1, 1] coordinates of each axis
        c, s = math.cos(a), math.sin(a)
        return [[c, -s * height / width, 0.0], [s * width / height, c, 0.0]]

    def __repr__(self) -> str:
        return f"RandomRotate({self.choices})"


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
