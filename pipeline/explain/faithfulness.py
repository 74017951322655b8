"""Does a saliency map say something about the model? Two tests from the literature.

- Deletion / insertion (Petsiuk, Das & Saenko 2018, "RISE", sec. 4.1): remove pixels from the
  image in saliency order (most salient first) and track the class probability; or insert them
  into a blurred copy. A faithful map makes the deletion curve fall fast (low area under it)
  and the insertion curve rise fast (high area). A random pixel order is the baseline.
- Model randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", sec. 3): re-initialise
  the weights layer by layer from the top (cascading) and compare the maps with the trained
  model's by Spearman rank correlation. Maps that stay the same do not depend on what the model
  learned.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from pipeline.model.architectures import ImageClassifier, build_model
from pipeline.model.precision import probabilities
from pipeline.explain.engine.transforms import GaussianBlur


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) maps -> (N, H*W) rank of each pixel, 0 = most salient (ties broken by position)."""
    order = maps.flatten(1).float().argsort(dim=1, descending=True, stable=True)
    return order.argsort(dim=1)


def random_ranks(n: int, pixels: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(pixels, generator=generator) for _ in range(n)])


def _probabilities(model: ImageClassifier, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                   precision: str) -> torch.Tensor:
    """Probability of each image's target class."""
    return probabilities(model, images, precision, batch_size).gather(1, targets.cpu()[:, None])[:, 0]


def curves(model: ImageClassifier, images: torch.Tensor, targets: torch.Tensor, ranks: torch.Tensor, *,
           steps: int = 16, blur_sigma: float = 5.0, batch_size: int = 250,
           precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(deletion, insertion) probability curves, each (N, steps + 1), for pixels taken in ``ranks`` order.

    Deleted pixels become the model's mean image (what the network sees as zero input); insertion
    starts from a Gaussian-blurred copy of the image, as in RISE.
    """
    x = images.float().cpu()
    n, _, h, w = x.shape
    removed = model.mean_for((h, w)).detach().cpu().expand_as(x)
    blurred = GaussianBlur(blur_sigma).apply(x)
    deletion, insertion = [], []
    for k in range(steps + 1):
        count = round(k * h * w / steps)
        mask = (ranks < count).view(n, 1, h, w).float()
        deletion.append(_probabilities(model, x * (1 - mask) + removed * mask, targets, batch_size, precision))
        insertion.append(_probabilities(model, blurred * (1 - mask) + x * mask, targets, batch_size, precision))
    return torch.stack(deletion, 1), torch.stack(insertion, 1)


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under curves sampled at evenly spaced fractions 0..1 (trapezoid rule), per row."""
    steps = curve.shape[-1] - 1
    return (curve.sum(-1) - (curve[..., 0] + curve[..., -1]) / 2) / steps


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of two (N, ...) tensors."""
    ra = a.flatten(1).float().argsort(1).argsort(1).float()
    rb = b.flatten(1).float().argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


def cascading_randomization(model: ImageClassifier, arch: dict, maps_of: Callable[[ImageClassifier], torch.Tensor],
                            *, seed: int = 0) -> list[tuple[str, float]]:
    """Adebayo et al. 2018: [(layer, mean Spearman vs the trained maps)] as layers from the top down
    get their freshly initialised weights (and BN statistics) back, cumulatively."""
    trained = maps_of(model)
    torch.manual_seed(seed)
    fresh = build_model(arch, mean_image=model.mean_image.detach().cpu()).to(model.mean_image.device)
    randomized = copy.deepcopy(model)
    results = []
    for name in reversed(model.layer_names):
        randomized.get_submodule(name).load_state_dict(fresh.get_submodule(name).state_dict())
        randomized.requires_grad_(False).eval()
        results.append((name, float(spearman(trained, maps_of(randomized)).mean())))
    return results
