"""Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks": how much the class
score drops when a patch of the image is covered, averaged over the patches covering each pixel."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from pipeline.explain.attribution.base import Attribution, as_float, baseline_like
from pipeline.explain.engine.transforms import GaussianBlur

BASELINES = ("mean", "blur")


def window_masks(height: int, width: int, patch: int, stride: int) -> torch.Tensor:
    """(windows, 1, H, W) 0/1 masks of every patch position (the last one flush with the border)."""
    if not 1 <= patch <= min(height, width) or stride < 1:
        raise ConfigError(f"occlusion needs 1 <= patch <= image side and stride >= 1, got {patch} and {stride}")
    tops = sorted({*range(0, height - patch + 1, stride), height - patch})
    lefts = sorted({*range(0, width - patch + 1, stride), width - patch})
    masks = torch.zeros(len(tops) * len(lefts), 1, height, width)
    for k, (t, left) in enumerate((t, left) for t in tops for left in lefts):
        masks[k, :, t:t + patch, left:left + patch] = 1.0
    return masks


class Occlusion(Attribution):
    """Each ``patch`` x ``patch`` window (every ``stride`` pixels) replaced by the ``baseline`` (``mean``:
    what the network sees as zero; ``blur``: a Gaussian blur of the image, ``blur_sigma``); the
    attribution of a pixel is the mean score drop of the windows that cover it. Every window of an
    image goes through the model in the same batched forward passes: no Python loop per patch."""

    def __init__(self, model, *, patch: int = 8, stride: int = 4, baseline: str = "mean", blur_sigma: float = 5.0,
                 **kwargs):
        super().__init__(model, **kwargs)
        if baseline not in BASELINES:
            raise ConfigError(f"unknown occlusion baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
        self.patch, self.stride, self.baseline, self.blur_sigma = int(patch), int(stride), baseline, float(blur_sigma)
        if self.baseline == "blur":
            GaussianBlur(self.blur_sigma)  # checks sigma now

    def attribute(self, images, targets):
        x = as_float(images).cpu()
        n, _, h, w = x.shape
        masks = window_masks(h, w, self.patch, self.stride)
        covered = masks.sum(0)  # (1, H, W) windows per pixel
        base = (GaussianBlur(self.blur_sigma).apply(x) if self.baseline == "blur"
                else baseline_like(self.model, x).expand_as(x))
        out = torch.empty(n, 1, h, w, dtype=x.dtype)
        per_image = max(1, self.batch_size // len(masks))  # images whose windows share a forward pass
        with torch.no_grad():
            for lo in range(0, n, per_image):
                xi, bi, ti = x[lo:lo + per_image], base[lo:lo + per_image], targets[lo:lo + per_image]
                k = len(xi)
                clean = self.scores(xi, ti)  # (k,)
                occluded = xi[:, None] * (1 - masks) + bi[:, None] * masks  # (k, windows, 3, H, W)
                scores = self.scores(occluded.flatten(0, 1), ti.repeat_interleave(len(masks)))
                drops = clean[:, None] - scores.view(k, len(masks))  # (k, windows)
                out[lo:lo + k] = torch.einsum("kn,nchw->kchw", drops, masks.to(drops)) / covered
        return out
