"""The image-optimisation engine behind fooling images, class visualization, feature inversion
and DeepDream (after Lucent's ``optvis/render.py``): (start images, objective, regime) -> images.

One loop for all of them: a batch of pixel images (N, 3, H, W, 0..255), an objective from
``objectives`` (per-image values to maximise, priors included), and a ``Regime`` (steps, step
rule, parametrisation, differentiable input transforms such as jitter, constraints after each
update such as clip and blur, precision), plus an optional per-image stopping test. Images that
meet it leave the batch (no further forward or backward passes); ``Result.steps`` says how many
updates each got. Per-step terms and snapshots go to ``log`` (``pipeline.track.tracking.StepLogger``
sends them to MLflow).

The step rule moves the regime's parameters (pixels, or a Fourier / decorrelated-colour basis,
``parametrisation``), encoded from the start images; the objective and the constraints see the
decoded pixels, and a constrained image is encoded again (exact: the maps are linear and invertible).

Deterministic: randomness comes from one generator per image seeded from ``seeds``
(``item_seeds``), and the images do not interact, so an image's result does not depend on the
batch it is in (up to floating-point differences between batched and single-image kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch
from torch import nn
from tqdm import tqdm

from pipeline.errors import ConfigError
from pipeline.explain.engine.objectives import Objective, Probe
from pipeline.explain.engine.steps import scheduled
from pipeline.model.precision import as_input, autocast

if TYPE_CHECKING:  # built by the jobs (pipeline.explain.engine.regime), only read here
    from pipeline.explain.engine.regime import Regime

StopTest = Callable[[Probe], torch.Tensor]  # (n,) bool: these active images are done

SEED_STRIDE = 100_003  # item seeds: seed * SEED_STRIDE + item, distinct across seeds for any item < the stride


def item_seeds(seed: int, items: Sequence[int]) -> list[int]:
    """One seed per item (a class, a layer, an octave), so an item's randomness does not depend on
    which other items share its batch."""
    return [int(seed) * SEED_STRIDE + int(k) for k in items]


def initial_images(mean_image: torch.Tensor, seeds: list[int], std: float) -> torch.Tensor:
    """Mean image + noise, one image per seed (an item's own seed: the same start in any batch)."""
    if std < 0:
        raise ConfigError(f"init_std must be >= 0, got {std}")
    noise = [torch.randn(mean_image.shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return (mean_image + std * torch.stack(noise)).clamp(0, 255)


class StepLog(Protocol):
    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def images(self, step: int, images: torch.Tensor) -> None: ...


@dataclass
class Result:
    images: torch.Tensor  # (N, 3, H, W) final pixels
    steps: torch.Tensor  # (N,) updates applied to each image
    stopped: torch.Tensor  # (N,) bool: the stopping test passed
    history: list[dict[str, float]] = field(default_factory=list)  # per step, means over active images


def optimize(model: nn.Module, init: torch.Tensor, objective: Objective, regime: Regime, *,
             seeds: Sequence[int] | None = None, stop: StopTest | None = None, progress: bool | None = None,
             desc: str = "optimise", log: StepLog | None = None, step_offset: int = 0) -> Result:
    """Maximise ``objective`` over the images starting at ``init`` (pixels), ``regime.steps`` updates
    at most, in the regime's parametrisation.

    With ``stop``, each image is tested before each update (and once after the last): those that
    pass are frozen. ``model`` should be frozen (``pipeline.model.precision.frozen``). ``step_offset``
    continues the step count of ``log`` (DeepDream's octaves).
    """
    steps, precision, show_every = int(regime.steps), regime.precision, regime.show_every
    x = init.detach().clone().float()
    codec = regime.parametrisation.start(x)
    params = codec.encode(x)  # pixel space: x itself
    n = len(x)
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise ConfigError(f"{len(seeds)} seeds for {n} images")
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    update = scheduled(regime.step.start(params), regime.schedule, steps)
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
            log.images(step_offset + t, x)
        pa = params[index].requires_grad_(True)
        xa = codec.decode(pa)
        xin = xa
        for transform in regime.transforms:
            xin = transform(xin, [generators[i] for i in index.tolist()])
        probe = Probe(model, xa, as_input(xin, precision), index)
        with autocast(x.device, precision):
            evaluation = objective.evaluate(probe)
        loss = -evaluation.total
        record = {"loss": float(loss.detach().mean()), "active": float(len(index))}
        record.update({k: float(v.detach().float().mean()) for k, v in {**evaluation.terms, **evaluation.metrics}.items()})
        moving = torch.ones(len(index), dtype=torch.bool, device=x.device)
        if stop is not None:
            done = stop(probe).to(x.device)
            stopped[index[done]] = True
            moving = ~done
            record["stopped"] = float(stopped.sum())
        history.append(record)
        if log is not None:
            log.metrics(step_offset + t, record)
        bar.set_postfix(loss=f"{record['loss']:.4g}", active=int(moving.sum()))
        if t == steps or not bool(moving.any()):
            continue
        (grad,) = torch.autograd.grad(loss.sum(), pa)
        keep, grad = index[moving], grad[moving]
        with torch.no_grad():
            updated = update(pa.detach()[moving], grad, keep, count[keep])
            pixels = codec.decode(updated)  # constraints are defined on pixels
            for constraint in regime.constraints:
                pixels = constraint(pixels, t)
            x[keep] = pixels  # in pixel space ``params`` is ``x``: done
            if not codec.identity:  # encode the constrained pixels again (exact: the maps are invertible)
                params[keep] = codec.encode(pixels) if regime.constraints else updated
        count[keep] += 1
    bar.close()
    if log is not None and show_every:
        log.images(step_offset + (int(count.max()) if n else 0), x)
    return Result(images=x, steps=count, stopped=stopped, history=history)
