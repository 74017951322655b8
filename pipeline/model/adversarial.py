"""Adversarial examples for training and measuring a robust classifier, in pixel units (0..255).

A robust classifier's input gradients are perceptually aligned: ascending a class score draws the
class instead of a texture (Santurkar et al. 2019, "Image Synthesis with a Single (Robust)
Classifier"; Engstrom et al. 2019, "Adversarial Robustness as a Prior for Learned Representations").
Training uses FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free"): one
extra gradient per step instead of PGD's k; ``steps > 1`` gives PGD-k (Madry et al. 2018). The
radius ``eps`` is in pixel units at the full image size; on smaller (progressively resized) images
an L2 radius shrinks with the side so that the per-pixel size of the perturbation stays the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from pipeline.errors import ConfigError

NORMS = ("l2", "linf")


def check_threat(threat: DictConfig) -> DictConfig:
    if threat.norm not in NORMS:
        raise ConfigError(f"train.adversarial.norm must be one of {', '.join(NORMS)}, got {threat.norm!r}")
    if not threat.eps > 0 or not threat.step_size > 0:
        raise ConfigError(f"train.adversarial.eps and step_size must be > 0, got {threat.eps}, {threat.step_size}")
    if int(threat.steps) < 1 or int(threat.eval_steps) < 1 or int(threat.eval_images) < 0:
        raise ConfigError("train.adversarial.steps and eval_steps must be >= 1 and eval_images >= 0")
    return threat


def radius_at(threat: DictConfig, size: int, full: int) -> float:
    """The radius on ``size``-px images: L2 scales with the side (same per-pixel RMS), Linf does not."""
    return float(threat.eps) * (size / full if threat.norm == "l2" else 1.0)


def _norms(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.ndim - 1)))


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The nearest point of the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _norms(delta)).clamp(max=1.0)


def random_start(like: torch.Tensor, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    """A random point of the ball: uniform per pixel (Linf), or a random direction at a uniform radius (L2)."""
    if norm == "linf":
        noise = (torch.rand(like.shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(like.shape, generator=generator)
        radius = torch.rand(like.shape[0], generator=generator).view(-1, 1, 1, 1) * eps
        noise = direction / _norms(direction) * radius
    return noise.to(like.device, like.dtype)


def ascent_step(grad: torch.Tensor, norm: str, size: float) -> torch.Tensor:
    """The steepest ascent step of length ``size`` in the ``norm``: sign (Linf) or unit gradient (L2)."""
    return size * (grad.sign() if norm == "linf" else grad / _norms(grad))


def attack(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *, norm: str, eps: float, steps: int,
           step_size: float, generator: torch.Generator | None = None, loss=F.cross_entropy,
           autocast=None) -> torch.Tensor:
    """Adversarial images for pixel ``images`` (0..255): ``steps`` ascent steps of ``step_size`` on
    ``loss``, from a random start when a ``generator`` is given, projected on the ball and clipped to
    valid pixels. Only the input gradient is computed (the weights' are not needed)."""
    delta = random_start(images, norm, eps, generator) if generator is not None else torch.zeros_like(images)
    delta = (images + delta).clamp(0, 255) - images
    for _ in range(steps):
        delta.requires_grad_(True)
        with autocast() if autocast is not None else torch.enable_grad():
            scores = model(images + delta)
        (grad,) = torch.autograd.grad(loss(scores.float(), target), delta)
        with torch.no_grad():
            delta = project(delta + ascent_step(grad, norm, step_size), norm, eps)
            delta = (images + delta).clamp(0, 255) - images
    return (images + delta).detach()


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, norm: str, eps: float,
                    steps: int, batch_size: int, device: torch.device, progress=None) -> float:
    """Top-1 accuracy under a PGD-``steps`` attack of radius ``eps`` (Madry's step 2.5 eps / steps, no
    random start: deterministic), fp32 in eval mode, on uint8 ``images``."""
    from tqdm import tqdm

    model.eval()
    correct = 0
    for lo in tqdm(range(0, len(images), batch_size), desc=f"PGD-{steps}", leave=False,
                   disable=None if progress is None else not progress):
        x = images[lo:lo + batch_size].to(device).float()
        y = labels[lo:lo + batch_size].to(device)
        adversarial = attack(model, x, y, norm=norm, eps=eps, steps=steps, step_size=2.5 * eps / steps)
        with torch.no_grad():
            correct += int((model(adversarial).argmax(1) == y).sum())
    return correct / max(len(images), 1)
