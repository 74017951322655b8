"""How an image is optimised, apart from what for: parametrisation, steps, step rule, input
transforms, constraints, image priors, precision. Built once per job from a ``conf/optim/`` preset with
``hydra.utils.instantiate`` (``_target_: pipeline.explain.engine.regime.build``); the engine and
the jobs' domain functions then take the built ``Regime``, never a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from pipeline.errors import ConfigError
from pipeline.explain.building import instantiate
from pipeline.explain.engine.objectives import Objective, check_prior_weights, with_priors
from pipeline.explain.engine.parametrisation import GREY, Parametrisation, Pixel, parametrisation
from pipeline.explain.engine.steps import StepRule, check_schedule, step_rule
from pipeline.explain.engine.transforms import Blur, Clip, Crop, GaussianBlur, Jitter, Pad, RandomRotate, RandomScale
from pipeline.model.precision import check_precision

Transform = Callable[[torch.Tensor, Sequence[torch.Generator]], torch.Tensor]  # differentiable, before the model
Constraint = Callable[[torch.Tensor, int], torch.Tensor]  # after each update, outside autograd

BLURS = ("reference", "gaussian", "none")


@dataclass
class Regime:
    steps: int
    step: StepRule
    transforms: list[Transform] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    l2: float = 0.0  # weight of the L2 prior around ``center``
    tv: float = 0.0  # weight of the total-variation prior
    center: torch.Tensor | None = None  # what L2 pulls toward and blur pads with (the model's mean image)
    precision: str = "fp32"
    show_every: int = 0  # image snapshots to the step log every k steps (0 = none)
    parametrisation: Parametrisation = field(default_factory=Pixel)  # what the step rule moves
    schedule: str = "constant"  # the step size over the steps: constant | cosine (engine/steps.py)

    def __post_init__(self):
        if int(self.steps) < 0:
            raise ConfigError(f"number of steps must be >= 0, got {self.steps}")
        check_schedule(self.schedule)
        check_precision(self.precision)
        check_prior_weights(self.l2, self.tv)

    def objective(self, objective: Objective) -> Objective:
        """``objective`` with this regime's image priors."""
        return with_priors(objective, l2=self.l2, tv=self.tv, center=self.center)


def build(*, iterations: int, step: str, lr: float, jitter: int = 0, blur: str = "none", blur_every: int = 1,
          blur_sigma: float = 0.5, l2: float = 0.0, tv: float = 0.0, precision: str = "fp32", show_every: int = 0,
          param: str = "pixel", decorrelate: bool = False, fourier_decay: float = 1.0, pad: int = 0,
          scales: Sequence[float] = (), angles: Sequence[float] = (), lr_schedule: str = "constant",
          center: torch.Tensor | None = None) -> Regime:
    """The regime of the CS231n reference and its successors: the image in pixel space or a Fourier /
    decorrelated-colour basis (Olah et al. 2017); before the model pad, jitter, random scale and random
    rotation, then crop back to size; after each update clip to 0..255, then blur (every ``blur_every``
    steps), as the reference does. With none of the new options this is the pixel regime as it was."""
    if blur not in BLURS:
        raise ConfigError(f"unknown blur {blur!r}; choose one of {', '.join(BLURS)}")
    constraints: list[Constraint] = [Clip(0.0, 255.0)]
    if blur == "reference":
        constraints.append(Blur(every=blur_every, center=center))
    elif blur == "gaussian":
        constraints.append(GaussianBlur(blur_sigma, every=blur_every, center=center))
    fill = GREY if center is None else center.detach().float().mean(dim=(-2, -1), keepdim=True)  # the mean colour
    transforms: list[Transform] = []
    if int(pad) < 0:
        raise ConfigError(f"pad must be >= 0 pixels, got {pad}")
    if pad:
        transforms.append(Pad(pad, fill=fill))
    if jitter:
        transforms.append(Jitter(jitter, center=center))
    if scales:
        transforms.append(RandomScale(list(scales), fill=fill))
    if angles:
        transforms.append(RandomRotate(list(angles), fill=fill))
    if pad:
        transforms.append(Crop(pad))
    return Regime(steps=int(iterations), step=step_rule(step, lr), transforms=transforms,
                  constraints=constraints, l2=float(l2), tv=float(tv), center=center, precision=precision,
                  show_every=int(show_every), schedule=str(lr_schedule),
                  parametrisation=parametrisation(param, decorrelate=decorrelate, center=center, decay=fourier_decay))


def from_config(node, **runtime) -> Regime:
    """Instantiate a job section's ``regime`` node (``_target_`` + its options), adding what only exists
    at run time (the model's mean image as ``center``)."""
    return instantiate(node, what="the optimisation regime", **runtime)
