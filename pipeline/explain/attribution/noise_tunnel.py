"""Noise over any attribution method (Captum's ``NoiseTunnel`` semantics): SmoothGrad (Smilkov et al.
2017), SmoothGrad-squared and VarGrad (Adebayo et al. 2018) of the attributions of noisy copies."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from pipeline.explain.attribution.base import Attribution, as_float
from pipeline.explain.attribution.registry import factory

AGGREGATIONS = ("smoothgrad", "smoothgrad_sq", "vargrad")


class NoiseTunnel(Attribution):
    """``samples`` copies of each image with Gaussian noise of std ``noise`` x 255, attributed by
    ``method`` (an attribution config name or mapping), combined as the mean (``smoothgrad``), the
    mean of squares (``smoothgrad_sq``) or their variance (``vargrad``). Noise is drawn as Captum
    draws it (copies of an image consecutive, one normal draw for all), from a generator seeded with
    ``seed``."""

    def __init__(self, model, *, method="gradient", aggregation: str = "smoothgrad", samples: int = 25,
                 noise: float = 0.15, **kwargs):
        super().__init__(model, **kwargs)
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown noise tunnel aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        if int(samples) < 1 or noise < 0:
            raise ConfigError(f"noise tunnel needs samples >= 1 and noise >= 0, got {samples} and {noise}")
        self.aggregation, self.samples, self.noise = aggregation, int(samples), float(noise)
        self.inner = factory(method, precision=self.precision, batch_size=self.batch_size, seed=self.seed)(model)

    def attribute(self, images, targets):
        x = as_float(images).cpu()
        generator = torch.Generator().manual_seed(self.seed)
        copies = x.repeat_interleave(self.samples, dim=0)
        noisy = copies + torch.normal(0.0, self.noise * 255.0, copies.shape, generator=generator).to(x.dtype)
        attr = self.inner.attribute(noisy, targets.repeat_interleave(self.samples)).cpu()
        attr = attr.view(len(x), self.samples, *attr.shape[1:])
        mean, mean_sq = attr.mean(1), (attr ** 2).mean(1)
        return {"smoothgrad": mean, "smoothgrad_sq": mean_sq, "vargrad": mean_sq - mean * mean}[self.aggregation]
