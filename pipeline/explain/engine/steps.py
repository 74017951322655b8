"""Step rules: how an image moves given its gradient, x <- x - lr * direction(grad).

``start(like)`` returns the update function for one optimisation (stateful rules such as Adam
keep per-image state there, indexed by batch position, so images can stop on their own). ``x`` is
whatever the parametrisation optimises: (N, 3, H, W) pixels or, e.g., (N, 3, H, W', 2) spectra.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pipeline.errors import ConfigError

Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # x, grad, index, count


def per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n,) per-image values shaped to broadcast against ``like`` (n, ...)."""
    return values.view(-1, *[1] * (like.dim() - 1))


class StepRule:
    name = "step"

    def __init__(self, lr: float):
        if not lr > 0:
            raise ConfigError(f"step size (lr) must be > 0, got {lr}")
        self.lr = float(lr)

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        """The (stateless) change subtracted from the image."""
        raise NotImplementedError

    def start(self, like: torch.Tensor) -> Update:
        return lambda x, grad, index, count: x - self.step(grad)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr:g})"


class Raw(StepRule):
    """The reference: a fixed multiple of the raw gradient."""

    name = "raw"

    def step(self, grad):
        return self.lr * grad


class Normalized(StepRule):
    """A fixed L2 length per image, in pixel units."""

    name = "normalized"

    def step(self, grad):
        return self.lr * grad / per_image(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


class Scaled(StepRule):
    """Mean |step| = lr pixels at any image size (DeepDream's own rule)."""

    name = "scaled"

    def step(self, grad):
        return self.lr * grad / per_image(grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12), grad)


class Sign(StepRule):
    """Steepest descent in Linf: every pixel moves by lr (Goodfellow et al. 2015)."""

    name = "sign"

    def step(self, grad):
        return self.lr * grad.sign()


class Adam(StepRule):
    """Adam (Kingma & Ba 2015) with per-image moments and bias correction by each image's own count."""

    name = "adam"

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(lr)
        self.betas, self.eps = betas, eps

    def start(self, like):
        m, v = torch.zeros_like(like), torch.zeros_like(like)
        b1, b2 = self.betas

        def update(x, grad, index, count):
            mi = m[index] * b1 + (1 - b1) * grad
            vi = v[index] * b2 + (1 - b2) * grad ** 2
            m[index], v[index] = mi, vi
            t = per_image((count + 1).to(grad), grad)
            return x - self.lr * (mi / (1 - b1 ** t)) / ((vi / (1 - b2 ** t)).sqrt() + self.eps)

        return update


STEP_RULES: dict[str, type[StepRule]] = {rule.name: rule for rule in (Raw, Normalized, Scaled, Sign, Adam)}


SCHEDULES = ("constant", "cosine")


def check_schedule(name: str) -> None:
    if name not in SCHEDULES:
        raise ConfigError(f"unknown lr schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def scheduled(update: Update, schedule: str, steps: int) -> Update:
    """``update`` with each image's step scaled by the schedule at that image's own count: ``cosine``
    decays it from 1 to 0 over ``steps`` (Loshchilov & Hutter 2017), for problems with one exact
    answer such as feature inversion, where a large early step finds it and small late ones settle it.
    Stateful rules keep their state as without a schedule (Adam's moments see the same gradients)."""
    check_schedule(schedule)
    if schedule == "constant":
        return update

    def apply(x, grad, index, count):
        factor = 0.5 * (1 + torch.cos(math.pi * count.to(x.dtype) / max(int(steps), 1)))
        return x + per_image(factor, x) * (update(x, grad, index, count) - x)

    return apply


def step_rule(name: str, lr: float) -> StepRule:
    if name not in STEP_RULES:
        raise ConfigError(f"unknown step rule {name!r}; choose one of {', '.join(STEP_RULES)}")
    return STEP_RULES[name](lr)
