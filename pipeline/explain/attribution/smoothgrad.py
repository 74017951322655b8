"""Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"."""

import torch

from pipeline.errors import ConfigError
from pipeline.explain.attribution.base import Attribution, as_float


class SmoothGrad(Attribution):
    """The gradient averaged over ``samples`` copies with Gaussian noise of ``noise`` x 255."""

    def __init__(self, model, *, samples: int = 25, noise: float = 0.15, **kwargs):
        super().__init__(model, **kwargs)
        if int(samples) < 1 or noise < 0:
            raise ConfigError(f"smoothgrad needs samples >= 1 and noise >= 0, got {samples} and {noise}")
        self.samples, self.noise = int(samples), float(noise)

    def attribute(self, images, targets):
        generator = torch.Generator().manual_seed(self.seed)
        x = as_float(images)
        total = torch.zeros_like(x)
        for _ in range(self.samples):
            noise = torch.randn(x.shape, generator=generator).to(x.dtype) * (self.noise * 255.0)
            total += self.gradients(x + noise, targets).cpu()
        return total / self.samples
