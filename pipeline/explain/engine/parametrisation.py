"""Image parametrisations (after Lucent's ``optvis/param``): what the step rule moves, mapped to pixels.

Olah, Mordvintsev & Schubert 2017 ("Feature Visualization", Distill, section "Preconditioning and
Parameterization"): the same objective ascended in a different basis takes different steps, and
steepest ascent in pixel space favours high frequencies, which the network's gradient is full of.
Two changes of basis undo most of that:

- ``fourier``: optimise the image's 2-D spectrum, each frequency scaled by 1/|f| (natural images
  have a 1/f amplitude spectrum), so a step moves low frequencies as much as a natural image
  would and high frequencies little (Lucent's ``param/spatial.py`` ``fft_image``);
- ``decorrelate``: optimise colour in ImageNet's decorrelated colour space (the square root of its
  colour covariance, Lucent's ``param/color.py``), so luminance and colour get natural step sizes.

Both are invertible linear maps, so a job's pixel start images are encoded exactly, pixel-space
constraints (clip, blur, quantize) act on the decoded image, which is then re-encoded, and the
priors (L2, TV) still read pixels. Lucid's sigmoid is not used: it would change what 0..255,
the L2 prior and the constraints mean, and a clipped step is exact here.

Units: as in pixel space, ``lr`` is pixels. The spectrum scale and the colour matrix are normalised
so that a step of ``lr`` in every parameter (Adam's first steps, sign) changes the image by about
``lr`` pixels RMS, whatever the image size. (Lucid's Adam lr 0.05 on a 64x64 spectrum moves its
0..255 image by about 5.6 pixels RMS near mid-grey, where its sigmoid is steepest.)
"""

from __future__ import annotations

import math

import torch

from pipeline.errors import ConfigError

# sqrt of ImageNet's RGB covariance (columns: luminance, then two colour-opponent directions; Olah et
# al. 2017, Lucid's color_correlation_svd_sqrt), scaled so that a unit step in all three parameters
# changes a pixel by 1 RMS over its channels (Lucid scales the longest column to 1: 0.60x this).
COLOUR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR_CORRELATION = COLOUR_CORRELATION_SVD_SQRT / (COLOUR_CORRELATION_SVD_SQRT.norm() / math.sqrt(3.0))

GREY = 127.5  # the offset when no center (mean image) is known


def offset_for(center: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
    """The pixels zero parameters decode to: the mean image at its own size, else its per-channel
    mean (as ``ImageClassifier.mean_for``), else mid-grey."""
    if center is None:
        return torch.full((3, 1, 1), GREY)
    center = center.detach().float()
    return center if tuple(center.shape[-2:]) == tuple(size) else center.mean(dim=(-2, -1), keepdim=True)


def spectrum_scale(height: int, width: int, decay: float = 1.0) -> torch.Tensor:
    """(H, W // 2 + 1) amplitudes 1 / max(|f|, 1 / max(H, W)) ** decay over the rfft2 grid (Lucid's
    ``fft_image``), divided by their RMS over the full spectrum (x sqrt 2 for the Hermitian twin and the
    two real parameters of each coefficient), so an equal step in every parameter is ~1 pixel RMS."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    floor = 1.0 / max(height, width)

    def amplitude(fx: torch.Tensor) -> torch.Tensor:
        return 1.0 / torch.sqrt(fy ** 2 + fx[None, :] ** 2).clamp_min(floor) ** decay

    full = amplitude(torch.fft.fftfreq(width, dtype=torch.float64))
    half = amplitude(torch.fft.rfftfreq(width, dtype=torch.float64))
    return (half / math.sqrt(2.0 * float((full ** 2).mean()))).float()


class Codec:
    """One optimisation's map between parameters and (N, 3, H, W) pixel images of one size:
    ``decode`` (differentiable) and its exact inverse ``encode``."""

    identity = False

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelCodec(Codec):
    """The pixels are the parameters (the same tensor: the default path is today's, bit for bit)."""

    identity = True

    def encode(self, images):
        return images

    def decode(self, params):
        return params


class LinearCodec(Codec):
    """pixels = offset + colour @ irfft2(scale * params) per pixel; either part optional."""

    def __init__(self, offset: torch.Tensor, size: tuple[int, int], *, scale: torch.Tensor | None,
                 colour: torch.Tensor | None):
        self.offset, self.size, self.scale, self.colour = offset, size, scale, colour
        self.inverse = None if colour is None else torch.linalg.inv(colour.double()).float().to(colour.device)

    @staticmethod
    def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,njhw->nihw", matrix, x)

    def decode(self, params):
        x = params
        if self.scale is not None:
            x = torch.fft.irfft2(torch.view_as_complex(x) * self.scale, s=self.size, norm="ortho")
        if self.colour is not None:
            x = self._mix(self.colour, x)
        return x + self.offset

    def encode(self, images):
        x = images - self.offset
        if self.inverse is not None:
            x = self._mix(self.inverse, x)
        if self.scale is not None:
            x = torch.view_as_real(torch.fft.rfft2(x, norm="ortho") / self.scale).contiguous()
        return x


class Parametrisation:
    """What the step rule moves; ``start(images)`` gives the codec for one optimisation of images of
    that size. ``decorrelate``: colour in ImageNet's decorrelated space; ``center`` (the model's mean
    image) is what zero parameters decode to."""

    name = "parametrisation"

    def __init__(self, decorrelate: bool = False, center: torch.Tensor | None = None):
        self.decorrelate, self.center = bool(decorrelate), center

    def _colour(self, device) -> torch.Tensor | None:
        return COLOUR_CORRELATION.to(device) if self.decorrelate else None

    def start(self, images: torch.Tensor) -> Codec:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(decorrelate={self.decorrelate})"


class Pixel(Parametrisation):
    """The pixels themselves (the CS231n reference), or with ``decorrelate`` their decorrelated colour."""

    name = "pixel"

    def start(self, images):
        if not self.decorrelate:
            return PixelCodec()
        size = tuple(images.shape[-2:])
        return LinearCodec(offset_for(self.center, size).to(images.device), size, scale=None,
                           colour=self._colour(images.device))


class Fourier(Parametrisation):
    """The image's rfft2 spectrum (real and imaginary parts, (N, 3, H, W // 2 + 1, 2)), scaled by
    1 / |f| ** ``decay`` (Olah et al. 2017; Lucid's ``fft_image``)."""

    name = "fourier"

    def __init__(self, decorrelate: bool = False, center: torch.Tensor | None = None, decay: float = 1.0):
        super().__init__(decorrelate, center)
        if not decay >= 0:
            raise ConfigError(f"fourier_decay must be >= 0, got {decay}")
        self.decay = float(decay)

    def start(self, images):
        size = tuple(images.shape[-2:])
        return LinearCodec(offset_for(self.center, size).to(images.device), size,
                           scale=spectrum_scale(*size, self.decay).to(images.device),
                           colour=self._colour(images.device))

    def __repr__(self) -> str:
        return f"Fourier(decorrelate={self.decorrelate}, decay={self.decay:g})"


PARAMETRISATIONS: dict[str, type[Parametrisation]] = {p.name: p for p in (Pixel, Fourier)}


def parametrisation(name: str, *, decorrelate: bool = False, center: torch.Tensor | None = None,
                    decay: float = 1.0) -> Parametrisation:
    """The parametrisation a config names (``param: pixel | fourier``)."""
    if name not in PARAMETRISATIONS:
        raise ConfigError(f"unknown param {name!r}; choose one of {', '.join(PARAMETRISATIONS)}")
    if name == "fourier":
        return Fourier(decorrelate, center, decay)
    return Pixel(decorrelate, center)
