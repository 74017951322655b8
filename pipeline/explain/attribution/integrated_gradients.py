"""Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks"."""

import torch

from pipeline.errors import ConfigError
from pipeline.explain.attribution.base import Attribution, as_float, baseline_like

BASELINES = ("mean", "black")


class IntegratedGradients(Attribution):
    """(x - x') times the mean gradient on the straight path from the baseline x' (``mean``: the
    model's mean image; ``black``: zeros) to x, ``steps`` points (midpoint rule)."""

    def __init__(self, model, *, steps: int = 32, baseline: str = "mean", **kwargs):
        super().__init__(model, **kwargs)
        if int(steps) < 1:
            raise ConfigError(f"integrated_gradients needs steps >= 1, got {steps}")
        if baseline not in BASELINES:
            raise ConfigError(f"unknown integrated_gradients baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
        self.steps, self.baseline = int(steps), baseline

    def baseline_for(self, x: torch.Tensor) -> torch.Tensor:
        return baseline_like(self.model, x) if self.baseline == "mean" else torch.zeros_like(x)

    @torch.no_grad()
    def convergence_delta(self, images: torch.Tensor, targets: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
        """|sum of the attributions - (S(x) - S(baseline))| per image: 0 for the exact integral, so it
        says whether ``steps`` is enough (Sundararajan et al.'s completeness axiom)."""
        x = as_float(images)
        gap = self.scores(x, targets) - self.scores(self.baseline_for(x).expand_as(x), targets)
        return (attributions.flatten(1).sum(1).to(gap) - gap).abs()

    def attribute(self, images, targets):
        x = as_float(images)
        base = self.baseline_for(x)
        total = torch.zeros_like(x)
        for k in range(self.steps):
            alpha = (k + 0.5) / self.steps
            total += self.gradients(base + alpha * (x - base), targets).cpu()
        return (x - base) * total / self.steps
