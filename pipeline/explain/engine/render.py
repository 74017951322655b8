"""The image-optimisation engine behind fooling images, class visualization, feature inversion
and DeepDream (after Lucent's ``optvis/render.py``): (image, objective, transforms) -> images.

One loop for all of them: a batch of pixel images (N, 3, H, W, 0..255), an objective from
``pipeline.objectives`` (per-image loss terms), regularisers on the image, differentiable input
transforms (jitter), constraints after each update (clip, blur), a step rule, and an optional
per-image stopping test. Images that meet it leave the batch (no further forward or backward
passes); ``Result.steps`` says how many updates each got. Per-step loss terms and snapshots
go to ``log`` (``pipeline.track.tracking.StepLogger`` sends them to MLflow).

Deterministic: randomness comes from one generator per image seeded from ``seeds``, and the
images do not interact, so an image's result does not depend on the batch it is in (up to
floating-point differences between batched and single-image kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
from tqdm import tqdm

from pipeline.errors import ConfigError
from pipeline.model.architectures import ImageClassifier
from pipeline.explain.engine.objectives import L2, Evaluation, TotalVariation
from pipeline.model.precision import as_input, autocast, check_precision
from pipeline.explain.engine.transforms import Blur, Clip, GaussianBlur, Jitter

BLURS = ("reference", "gaussian", "none")
STEP_RULES = ("raw", "normalized", "scaled", "sign", "adam")

Objective = Callable[[ImageClassifier, torch.Tensor, torch.Tensor], Evaluation]
Regularizer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Transform = Callable[[torch.Tensor, Sequence[torch.Generator]], torch.Tensor]
Constraint = Callable[[torch.Tensor, int], torch.Tensor]
StopTest = Callable[[Evaluation, torch.Tensor], torch.Tensor]


class StepLog(Protocol):
    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def images(self, step: int, images: torch.Tensor) -> None: ...


@dataclass
class Result:
    images: torch.Tensor  # (N, 3, H, W) final pixels
    steps: torch.Tensor  # (N,) updates applied to each image
    stopped: torch.Tensor  # (N,) bool: the stopping test passed
    history: list[dict[str, float]] = field(default_factory=list)  # per step, means over active images


def check_step(lr: float, step_rule: str, steps: int) -> None:
    if step_rule not in STEP_RULES:
        raise ConfigError(f"unknown step rule {step_rule!r}; choose one of {', '.join(STEP_RULES)}")
    if not lr > 0:
        raise ConfigError(f"step size (lr) must be > 0, got {lr}")
    if int(steps) < 0:
        raise ConfigError(f"number of steps must be >= 0, got {steps}")


class _Stepper:
    """x <- x - lr * direction(grad), with per-image state for Adam."""

    def __init__(self, rule: str, lr: float, like: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.rule, self.lr, self.betas, self.eps = rule, float(lr), betas, eps
        if rule == "adam":
            self.m, self.v = torch.zeros_like(like), torch.zeros_like(like)

    def __call__(self, x: torch.Tensor, grad: torch.Tensor, index: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        if self.rule == "raw":  # the reference: a fixed multiple of the raw gradient
            return x - self.lr * grad
        if self.rule == "normalized":  # a fixed L2 length per image, in pixel units
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            return x - self.lr * grad / norm.view(-1, 1, 1, 1)
        if self.rule == "scaled":  # mean |step| = lr pixels at any image size (DeepDream's own rule)
            scale = grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12)
            return x - self.lr * grad / scale.view(-1, 1, 1, 1)
        if self.rule == "sign":  # steepest descent in Linf: every pixel moves by lr (Goodfellow et al. 2015)
            return x - self.lr * grad.sign()
        b1, b2 = self.betas
        m = self.m[index] * b1 + (1 - b1) * grad
        v = self.v[index] * b2 + (1 - b2) * grad ** 2
        self.m[index], self.v[index] = m, v
        t = (count + 1).to(grad).view(-1, 1, 1, 1)
        return x - self.lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + self.eps)


def optimize(model: ImageClassifier, init: torch.Tensor, objective: Objective, *, steps: int, lr: float,
             step_rule: str = "raw", transforms: Sequence[Transform] = (), regularizers: Sequence[Regularizer] = (),
             constraints: Sequence[Constraint] = (), stop: StopTest | None = None,
             seeds: Sequence[int] | None = None, precision: str = "fp32", progress: bool | None = None,
             desc: str = "optimise", log: StepLog | None = None, show_every: int = 0) -> Result:
    """Minimise ``objective`` + ``regularizers`` over the pixels of ``init``, ``steps`` updates at most.

    With ``stop``, each image is tested before each update (and once after the last): those that
    pass are frozen. ``model`` should be frozen (``pipeline.model.precision.frozen``).
    """
    check_step(lr, step_rule, steps)
    check_precision(precision)
    x = init.detach().clone().float()
    n = len(x)
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise ConfigError(f"{len(seeds)} seeds for {n} images")
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    stepper = _Stepper(step_rule, lr, x)
    count = torch.zeros(n, dtype=torch.long, device=x.device)
    stopped = torch.zeros(n, dtype=torch.bool, device=x.device)
    history: list[dict[str, float]] = []
    last = steps if stop is not None else steps - 1  # with a stopping test, look once more after the last update
    bar = tqdm(range(last + 1), desc=desc, unit="step", leave=False, disable=None if progress is None else not progress)
    for t in bar:
        index = (~stopped).nonzero()[:, 0]
        if len(index) == 0:
            break
        if log is not None and show_every and t % show_every == 0:
            log.images(t, x)
        xa = x[index].requires_grad_(True)
        xin = xa
        for transform in transforms:
            xin = transform(xin, [generators[i] for i in index.tolist()])
        with autocast(x.device, precision):
            evaluation = objective(model, as_input(xin, precision), index)
        terms = dict(evaluation.terms)
        for reg in regularizers:
            terms[getattr(reg, "name", type(reg).__name__.lower())] = reg(xa, index)
        loss = sum(terms.values())
        record = {"loss": float(loss.detach().mean()), "active": float(len(index))}
        record.update({k: float(v.detach().float().mean()) for k, v in {**terms, **evaluation.metrics}.items()})
        moving = torch.ones(len(index), dtype=torch.bool, device=x.device)
        if stop is not None:
            done = stop(evaluation, index).to(x.device)
            stopped[index[done]] = True
            moving = ~done
            record["stopped"] = float(stopped.sum())
        history.append(record)
        if log is not None:
            log.metrics(t, record)
        bar.set_postfix(loss=f"{record['loss']:.4g}", active=int(moving.sum()))
        if t == steps or not bool(moving.any()):
            continue
        (grad,) = torch.autograd.grad(loss.sum(), xa)
        keep, grad = index[moving], grad[moving]
        with torch.no_grad():
            updated = stepper(xa.detach()[moving], grad, keep, count[keep])
            for constraint in constraints:
                updated = constraint(updated, t)
            x[keep] = updated
        count[keep] += 1
    bar.close()
    if log is not None and show_every:
        log.images(int(count.max()) if n else 0, x)
    return Result(images=x, steps=count, stopped=stopped, history=history)


def regime(c, mean_image: torch.Tensor) -> dict:
    """Transforms, constraints and regularisers from a job's config block (keys step, lr, iterations,
    blur, blur_every, blur_sigma, l2, tv, jitter), checked before any work; ``mean_image`` centres
    L2 and blur as in the reference."""
    check_step(c.lr, c.step, c.iterations)
    if c.blur not in BLURS:
        raise ConfigError(f"unknown blur {c.blur!r}; choose one of {', '.join(BLURS)}")
    blur = {"reference": lambda: Blur(every=c.blur_every, center=mean_image),
            "gaussian": lambda: GaussianBlur(c.blur_sigma, every=c.blur_every, center=mean_image),
            "none": lambda: None}[c.blur]()
    constraints = [Clip(0.0, 255.0), *([blur] if blur is not None else [])]  # the reference clips, then blurs
    regularizers = [L2(c.l2, center=mean_image)] + ([TotalVariation(c.tv)] if c.tv else [])
    return {"transforms": [Jitter(c.jitter)], "constraints": constraints, "regularizers": regularizers}
