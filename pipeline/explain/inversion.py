"""Job ``inversion``: feature inversion (Mahendran & Vedaldi 2015; Yosinski et al. 2015).

Find, from noise, the image whose features at a layer match those of a given image, minimising
||phi(x) - phi0||^2 / ||phi0||^2 plus L2 and total-variation priors, with clipping (and optional
blur and jitter). Every requested layer is one image of the same batch, so one run gives the
reconstruction-by-depth figure: how much of the picture each layer still knows.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from pipeline.track import figures, tracking
from pipeline.errors import ConfigError
from pipeline.files import write_csv
from pipeline.data.images import center_square
from pipeline.job import hydra_job
from pipeline.model.architectures import ImageClassifier, reference_layer
from pipeline.explain.engine.objectives import FeatureMatch, Probe
from pipeline.explain.engine.regime import Regime, from_config
from pipeline.track.outputs import job_outputs, save_figure, save_metrics
from pipeline.explain.engine.render import Result, StepLog, item_seeds, optimize
from pipeline.explain.subject import load_subject

log = logging.getLogger(__name__)


def layer_list(spec, model: ImageClassifier) -> list[int]:
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(len(model.layer_names)))
    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    if not items:
        raise ConfigError("inversion.layers is empty")
    return sorted({model.layer_index(layer) for layer in items})


def named_layer(spec, model: ImageClassifier, reference: int) -> int:
    return model.layer_index(reference_layer(model, reference) if spec in (None, "auto") else spec)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for 0..255 pixels."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


LOSSES = ("normalized", "raw")


def invert(model: ImageClassifier, image: torch.Tensor, layers: list[int], regime: Regime, *, seed: int,
           init_std: float, loss: str = "normalized", progress: bool | None = None,
           log: StepLog | None = None) -> tuple[Result, list[float]]:
    """Reconstructions of ``image`` from each layer (one batch), and their final normalised feature errors.

    ``loss``: ``normalized`` (||phi - phi0||^2 / ||phi0||^2: one step size fits every layer) or ``raw``
    (the unnormalised sum the CS231n reference descends with its fixed step)."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown inversion loss {loss!r}; choose one of {', '.join(LOSSES)}")
    device = model.mean_image.device
    mean = model.mean_image.detach().cpu()
    with torch.no_grad():
        feats = model.features(image[None].to(device), layers)
    match = FeatureMatch(layers, [feats[i][0] for i in layers], normalize=loss == "normalized")
    generator = torch.Generator().manual_seed(seed)
    init = (mean + init_std * torch.randn((len(layers), *mean.shape), generator=generator)).clamp(0, 255)
    result = optimize(model, init.to(device), regime.objective(match), regime, seeds=item_seeds(seed, layers),
                      progress=progress, desc="inversion", log=log)
    with torch.no_grad():
        final = match.errors(Probe(model, result.images, result.images, torch.arange(len(layers), device=device)))
    return result, [float(e) for e in final]


def run(cfg: DictConfig) -> dict:
    import mlflow

    c = cfg.inversion
    if c.loss not in LOSSES:  # fail before any work
        raise ConfigError(f"unknown inversion.loss {c.loss!r}; choose one of {', '.join(LOSSES)}")
    subject = load_subject(cfg, c.device, c.precision)
    model = subject.model
    layers = layer_list(c.layers, model)
    shallow, deep = named_layer(c.shallow_layer, model, 3), named_layer(c.deep_layer, model, 6)
    layers = sorted(set(layers) | {shallow, deep})
    regime = from_config(c.regime, center=model.mean_image.detach().cpu())
    image, caption = subject.source_image(c.image, c.val_index, cfg.images)
    size = subject.data.image_size
    if tuple(image.shape[-2:]) != (size, size):
        image = center_square(image, size)
    with job_outputs(cfg, "inversion", subject) as tmp:
        started = time.perf_counter()
        with tracking.StepLogger(key="inversion_evolution",
                                 render=lambda x: figures.grid(list(x), scale=2, pad=2)) as steps_log:
            result, errors = invert(model, image, layers, regime, seed=cfg.seed, init_std=c.init_std, loss=c.loss,
                                    progress=cfg.progress, log=steps_log)
        seconds = time.perf_counter() - started
        recon = result.images.cpu().round().clamp(0, 255)
        quality = psnr(recon, image[None].expand_as(recon))
        metrics: dict[str, float] = {}
        names = [model.layer_names[i] for i in layers]
        for name, err, db in zip(names, errors, quality.tolist()):
            metrics[f"normalized_error_{name}"] = err
            metrics[f"psnr_{name}"] = db
        for label, index in (("shallow", shallow), ("deep", deep)):
            metrics[f"{label}_normalized_error"] = errors[layers.index(index)]
            metrics[f"{label}_psnr"] = float(quality[layers.index(index)])
        metrics["seconds_per_iteration"] = seconds / max(int(c.iterations), 1)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise ConfigError("the optimisation diverged (non-finite metrics); lower inversion.lr")
        for step, (name, err, db) in enumerate(zip(names, errors, quality.tolist())):  # the per-depth curve
            mlflow.log_metrics({"depth_normalized_error": err, "depth_psnr": db}, step=step)
        write_csv(Path(cfg.paths.plots) / "inversion_depth.csv", [  # DVC plot: PSNR by depth
            {"depth": step, "layer": f"{i} {name}", "psnr": db, "normalized_error": err}
            for step, (i, name, err, db) in enumerate(zip(layers, names, errors, quality.tolist()))])
        figures.save_png(image, tmp / "original.png")
        for i, name in enumerate(names):
            figures.save_png(recon[i], tmp / f"layer{layers[i]:02d}_{name}.png")
        captions = [f"original ({caption})"] + [
            f"{i} {name}: {db:.1f} dB, err {err:.3f}" for i, name, db, err in zip(layers, names, quality.tolist(), errors)]
        figure = figures.grid([image, *recon], captions, columns=len(layers) + 1, scale=3, caption_lines=2,
                              font_size=11)
        save_figure(tmp, figure, "by_depth", main=True)
        save_metrics(cfg, "inversion", metrics)
        log.info("inverted %d layers in %.1fs; shallow (%s) PSNR %.1f dB, error %.4f; deep (%s) PSNR %.1f dB, "
                 "error %.4f", len(layers), seconds, model.layer_names[shallow], metrics["shallow_psnr"],
                 metrics["shallow_normalized_error"], model.layer_names[deep], metrics["deep_psnr"],
                 metrics["deep_normalized_error"])
    return metrics


main = hydra_job("inversion", run)

if __name__ == "__main__":
    main()
