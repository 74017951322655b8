"""Job ``deepdream``: amplify what a layer sees (Mordvintsev, Olah & Tyka 2015, "Inceptionism").

Gradient ascent on ||phi(x)||^2 / 2 at one spatial layer (the gradient at the layer is the
activation itself, as in the CS231n reference), with random jitter and clipping, over octaves:
the image is dreamed at a small scale first and the added detail carried up to the next scale,
which grows structures larger than the layer's receptive field. Works at any image size
because the convolutional layers do.
"""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig

from pipeline.track import figures, tracking
from pipeline.errors import ConfigError
from pipeline.data.images import fit_max_side, resize
from pipeline.job import hydra_job
from pipeline.model.architectures import ImageClassifier, reference_layer
from pipeline.explain.engine.objectives import ActivationNorm
from pipeline.track.outputs import job_outputs, save_figure, save_metrics
from pipeline.explain.engine.regime import Regime, from_config
from pipeline.explain.engine.render import item_seeds, optimize
from pipeline.explain.subject import load_subject

log = logging.getLogger(__name__)

MIN_SIDE = 32  # below this the deeper layers of a 64x64 classifier have (almost) no spatial extent


def dream_layer(spec, model: ImageClassifier) -> int:
    layer = model.layer_index(reference_layer(model, 7) if spec in (None, "auto") else spec)
    if not model.is_spatial(layer):
        raise ConfigError(f"layer {model.layer_names[layer]!r} comes after the flatten and has no spatial "
                          f"extent to dream on; choose one of: {', '.join(model.spatial_layer_names)}")
    return layer


def octave_sizes(height: int, width: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Image sizes from the smallest octave to the full size."""
    if int(octaves) < 1 or scale <= 1.0:
        raise ConfigError(f"need octaves >= 1 and octave_scale > 1, got {octaves} and {scale}")
    sizes = [(round(height / scale ** k), round(width / scale ** k)) for k in reversed(range(int(octaves)))]
    if min(sizes[0]) < MIN_SIDE:
        raise ConfigError(f"the smallest octave would be {sizes[0][0]}x{sizes[0][1]} pixels (< {MIN_SIDE}); "
                          "use fewer octaves, a smaller octave_scale or a larger max_side")
    return sizes


def dream(model: ImageClassifier, image: torch.Tensor, layer: int, regime: Regime, *, octaves: int,
          octave_scale: float, seed: int, progress: bool | None = None, log=None) -> torch.Tensor:
    """DeepDream of one (3, H, W) pixel image; returns the dreamed image at full size."""
    device = model.mean_image.device
    sizes = octave_sizes(image.shape[1], image.shape[2], octaves, octave_scale)
    objective = regime.objective(ActivationNorm(layer))
    detail = None
    for k, (size, octave_seed) in enumerate(zip(sizes, item_seeds(seed, range(len(sizes))))):
        base = resize(image, size)
        start = base if detail is None else (base + resize(detail, size)).clamp(0, 255)
        result = optimize(model, start[None].to(device), objective, regime, seeds=[octave_seed], progress=progress,
                          desc=f"deepdream octave {k + 1}/{len(sizes)}", log=log, step_offset=k * regime.steps)
        dreamed = result.images[0].cpu()
        detail = dreamed - base
    return dreamed


@torch.no_grad()
def activation_norm(model: ImageClassifier, image: torch.Tensor, layer: int) -> float:
    return float(model.features(image[None].to(model.mean_image.device), [layer])[layer].float().norm())


def run(cfg: DictConfig) -> dict:
    c = cfg.deepdream
    subject = load_subject(cfg, c.device, c.precision)
    model = subject.model
    regime = from_config(c.regime, center=model.mean_image.detach().cpu())
    layer = dream_layer(c.layer, model)
    image, caption = subject.source_image(c.image, c.val_index, cfg.images)
    image = fit_max_side(image, c.max_side)
    octave_sizes(image.shape[1], image.shape[2], c.octaves, c.octave_scale)
    with job_outputs(cfg, "deepdream", subject, tags={"layer": model.layer_names[layer]}) as tmp:
        before = activation_norm(model, image, layer)
        started = time.perf_counter()
        with tracking.StepLogger(key="deepdream_frames", render=lambda x: figures.to_uint8_hwc(x[0])) as frames:
            dreamed = dream(model, image, layer, regime, octaves=c.octaves, octave_scale=c.octave_scale,
                            seed=cfg.seed, progress=cfg.progress, log=frames)
        seconds = time.perf_counter() - started
        saved = dreamed.round().clamp(0, 255)
        after = activation_norm(model, saved, layer)
        metrics = {"activation_norm_before": before, "activation_norm_after": after,
                   "seconds_per_iteration": seconds / (int(c.octaves) * max(int(c.iterations), 1)),
                   "height": image.shape[1], "width": image.shape[2]}
        figures.save_png(image, tmp / "input.png")
        figures.save_png(saved, tmp / "dream.png")
        figure = figures.grid([image, saved], [f"input ({caption})", f"dream: {model.layer_names[layer]}"],
                              columns=2, scale=1, font_size=12)
        save_figure(tmp, figure, "comparison", main=True)
        tracking.log_image(figures.to_uint8_hwc(saved), "dream")
        save_metrics(cfg, "deepdream", metrics)
        log.info("dreamed on %s at %dx%d: activation norm %.1f -> %.1f, %.3f s/iteration",
                 model.layer_names[layer], image.shape[1], image.shape[2], before, after,
                 metrics["seconds_per_iteration"])
    return metrics


main = hydra_job("deepdream", run)

if __name__ == "__main__":
    main()
