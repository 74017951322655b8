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

from pipeline.model.architectures import ARCHITECTURES, ImageClassifier, build_model
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


def reinitialized(model: ImageClassifier, arch: dict) -> ImageClassifier:
    """A freshly initialised copy: the architecture's own init for this package's models, each module's
    ``reset_parameters`` (torch's defaults, BN statistics included) for torchvision and user modules."""
    if arch.get("arch") in ARCHITECTURES:
        return build_model(arch, mean_image=model.mean_image.detach().cpu()).to(model.mean_image.device)
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return fresh


def cascading_randomization(model: ImageClassifier, arch: dict, maps_of: Callable[[ImageClassifier], torch.Tensor],
                            *, seed: int = 0, ends_only: bool = False) -> list[tuple[str, float]]:
    """Adebayo et al. 2018: [(layer, mean Spearman vs the trained maps)] as layers from the top down
    get their freshly initialised weights (and BN statistics) back, cumulatively.

    ``ends_only``: maps only after the first step (the top layer re-initialised) and the last (every
    layer), the two a comparison table reports: the same values for 3 map computations instead of
    one per layer, which matters for methods with many passes per image (occlusion)."""
    trained = maps_of(model)
    torch.manual_seed(seed)
    fresh = reinitialized(model, arch)
    randomized = copy.deepcopy(model)
    results = []
    names = list(reversed(model.layer_names))
    for step, name in enumerate(names):
        randomized.get_submodule(name).load_state_dict(fresh.get_submodule(name).state_dict())
        if ends_only and 0 < step < len(names) - 1:
            continue
        randomized.requires_grad_(False).eval()
        results.append((name, float(spearman(trained, maps_of(randomized)).mean())))
    return results


# --------------------------------------------------------------------------- Yeh et al. 2019


def infidelity(method, images: torch.Tensor, targets: torch.Tensor, attributions: torch.Tensor, *,
               noise: float = 0.05, samples: int = 16, seed: int = 0) -> torch.Tensor:
    """Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations", eq. 2, per image, with
    Gaussian perturbations I (std ``noise`` x 255) and Captum's normalisation: the attributions are
    first scaled by the beta that fits best, so methods in different units compare:
    min_beta E[(beta * I.attr - (S(x) - S(x - I)))^2]. Lower is more faithful."""
    x = images.float().cpu()
    generator = torch.Generator().manual_seed(seed)
    perturbation = torch.randn((len(x), samples, *x.shape[1:]), generator=generator) * (noise * 255.0)
    clean = method.scores(x, targets)
    moved = method.scores((x[:, None] - perturbation).flatten(0, 1), targets.repeat_interleave(samples))
    drop = clean[:, None] - moved.view(len(x), samples)
    dot = (perturbation * attributions.float().cpu()[:, None]).flatten(2).sum(2)
    beta = (dot * drop).mean(1) / (dot * dot).mean(1).clamp_min(1e-30)
    return ((beta[:, None] * dot - drop) ** 2).mean(1)


def max_sensitivity(method, images: torch.Tensor, targets: torch.Tensor, attributions: torch.Tensor, *,
                    radius: float = 0.02, samples: int = 4, seed: int = 0) -> torch.Tensor:
    """Yeh et al. 2019, eq. 4, per image: the largest change of the attributions, relative to their
    norm, over ``samples`` uniform perturbations in the L-inf ball of ``radius`` x 255. Lower is more
    robust."""
    x = images.float().cpu()
    generator = torch.Generator().manual_seed(seed)
    delta = (torch.rand((len(x), samples, *x.shape[1:]), generator=generator) * 2 - 1) * (radius * 255.0)
    moved = method.attribute((x[:, None] + delta).flatten(0, 1), targets.repeat_interleave(samples)).float().cpu()
    base = attributions.float().cpu()
    change = (moved.view(len(x), samples, *base.shape[1:]) - base[:, None]).flatten(2).norm(dim=2)
    return (change / base.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None]).amax(1)
