"""Job ``inversion``: feature inversion (Mahendran & Vedaldi 2015; Yosinski et al. 2015).

Find, from the mean image (or noise), the image whose features at a layer match those of a given image, minimising
||phi(x) - phi0||^2 / ||phi0||^2 plus L2 and total-variation priors, with clipping (and optional
blur and jitter). Every (image, layer) pair is one item of the same batch, so one run gives the
reconstruction-by-depth figure over several val images (mean and worst PSNR per layer): how much
of the picture each layer still knows. The TV weight can grow with the layer's stride
(``tv_scaling: stride2``): a layer that keeps one feature position per pixel (the stem) needs
almost no prior, one that keeps one per 4x4 pixels needs 16x more.
"""

from __future__ import annotations

import dataclasses
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
from pipeline.data.selection import spread_over_classes
from pipeline.job import hydra_job
from pipeline.model.architectures import ImageClassifier, reference_layer
from pipeline.explain.engine.objectives import FeatureMatch, Probe, TotalVariation
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
TV_SCALINGS = ("none", "stride2")


def layer_strides(model: ImageClassifier, layers: list[int], size: int) -> list[float]:
    """Input pixels per feature position along a side: 1 for a full-resolution layer, 4 for one at 1/4
    size; flat layers (pool, fc) count as the coarsest spatial layer."""
    shapes = {i: shape for i, _, shape in model.layer_shapes(size)}
    spatial = [size / shapes[i][-1] for i in shapes if len(shapes[i]) == 3]
    coarsest = max(spatial) if spatial else float(size)
    return [size / shapes[i][-1] if len(shapes[i]) == 3 else coarsest for i in layers]


def invert(model: ImageClassifier, image: torch.Tensor, layers: list[int], regime: Regime, *, seed: int,
           init_std: float, loss: str = "normalized", progress: bool | None = None,
           log: StepLog | None = None, tv_weights: list[float] | None = None) -> tuple[Result, list[float]]:
    """Reconstructions of ``image`` (3, H, W), or of each of a batch of images (N, 3, H, W), from each
    layer, all in one batch (image-major: item ``k * len(layers) + j`` is image k from layer j), and
    their final normalised feature errors.

    ``loss``: ``normalized`` (||phi - phi0||^2 / ||phi0||^2: one step size fits every layer) or ``raw``
    (the unnormalised sum the CS231n reference descends with its fixed step). ``tv_weights``: one TV
    weight per layer, replacing the regime's single ``tv``. Each item's noise and seed depend only on
    (image position, layer), so a batch gives what one image at a time gives."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown inversion loss {loss!r}; choose one of {', '.join(LOSSES)}")
    images = image[None] if image.dim() == 3 else image
    device = model.mean_image.device
    mean = model.mean_image.detach().cpu()
    with torch.no_grad():
        feats = model.features(images.to(device), layers)
    item_layers = [i for _ in range(len(images)) for i in layers]
    match = FeatureMatch(item_layers, [feats[i][k] for k in range(len(images)) for i in layers],
                         normalize=loss == "normalized")
    inits, seeds = [], []
    for k in range(len(images)):  # image 0 draws exactly what the single-image job always drew
        generator = torch.Generator().manual_seed(int(seed) + k)
        inits.append(mean + init_std * torch.randn((len(layers), *mean.shape), generator=generator))
        seeds += item_seeds(int(seed) + k, layers)
    init = torch.cat(inits).clamp(0, 255)
    if tv_weights is not None:
        objective = dataclasses.replace(regime, tv=0.0).objective(match)
        if any(tv_weights):
            weights = torch.tensor([float(w) for _ in range(len(images)) for w in tv_weights])
            objective = objective - TotalVariation() * weights  # one weight per item: its layer's
    else:
        objective = regime.objective(match)
    result = optimize(model, init.to(device), objective, regime, seeds=seeds, progress=progress,
                      desc="inversion", log=log)
    with torch.no_grad():
        final = match.errors(Probe(model, result.images, result.images, torch.arange(len(init), device=device)))
    return result, [float(e) for e in final]


def source_images(subject, c, limits) -> tuple[torch.Tensor, list[str], list[int]]:
    """(N, 3, H, W) images, captions and val indices (empty for a file / URL): ``inversion.image`` if
    given, else ``inversion.val_index`` if set (one val image), else ``inversion.images`` (a count of val
    images spread evenly over the classes, or a list of val indices)."""
    if c.image or c.get("val_index") is not None:
        image, caption = subject.source_image(c.image, c.get("val_index"), limits)
        size = subject.data.image_size
        if tuple(image.shape[-2:]) != (size, size):
            image = center_square(image, size)
        return image[None], [caption], ([] if c.image else [int(c.val_index)])
    spec = c.get("images", 1)
    if isinstance(spec, (list, tuple, ListConfig)):
        indices = [int(i) for i in spec]
    else:
        if int(spec) < 1:
            raise ConfigError(f"inversion.images must be >= 1 (or a list of val indices), got {spec}")
        val = subject.data.split("val")
        indices = spread_over_classes(val.labels, int(spec))
        if len(indices) < int(spec):
            log.warning("inversion.images=%s but the val split has %d images: using all", spec, len(indices))
    if not indices:
        raise ConfigError("inversion.images is empty")
    pairs = [subject.val_image(i) for i in indices]
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs], indices


def run(cfg: DictConfig) -> dict:
    import mlflow

    c = cfg.inversion
    if c.loss not in LOSSES:  # fail before any work
        raise ConfigError(f"unknown inversion.loss {c.loss!r}; choose one of {', '.join(LOSSES)}")
    scaling = str(c.get("tv_scaling", "none"))
    if scaling not in TV_SCALINGS:
        raise ConfigError(f"unknown inversion.tv_scaling {scaling!r}; choose one of {', '.join(TV_SCALINGS)}")
    subject = load_subject(cfg, c.device, c.precision)
    model = subject.model
    layers = layer_list(c.layers, model)
    shallow, deep = named_layer(c.shallow_layer, model, 3), named_layer(c.deep_layer, model, 6)
    layers = sorted(set(layers) | {0, shallow, deep})  # 0: the stem, reported as stem_*
    regime = from_config(c.regime, center=model.mean_image.detach().cpu())
    images, captions, indices = source_images(subject, c, cfg.images)
    strides = layer_strides(model, layers, subject.data.image_size)
    tv_weights = [float(c.tv) * s ** 2 for s in strides] if scaling == "stride2" else None
    n, m = len(images), len(layers)
    with job_outputs(cfg, "inversion", subject) as tmp:
        started = time.perf_counter()
        with tracking.StepLogger(key="inversion_evolution",
                                 render=lambda x: figures.grid(list(x[:m * min(n, 4)]), columns=m, scale=2,
                                                               pad=2)) as steps_log:
            result, flat_errors = invert(model, images, layers, regime, seed=cfg.seed, init_std=c.init_std,
                                         loss=c.loss, progress=cfg.progress, log=steps_log, tv_weights=tv_weights)
        seconds = time.perf_counter() - started
        recon = result.images.cpu().round().clamp(0, 255).view(n, m, *images.shape[1:])
        quality = psnr(recon.flatten(0, 1), images.repeat_interleave(m, 0)).view(n, m)  # (image, layer)
        errors = torch.tensor(flat_errors).view(n, m)
        names = [model.layer_names[i] for i in layers]
        metrics: dict[str, float] = {"num_images": float(n)}
        for j, name in enumerate(names):
            metrics[f"normalized_error_{name}"] = float(errors[:, j].mean())
            metrics[f"psnr_{name}"] = float(quality[:, j].mean())
            metrics[f"psnr_min_{name}"] = float(quality[:, j].min())
        for label, index in (("shallow", shallow), ("deep", deep), ("stem", 0)):
            j = layers.index(index)
            metrics[f"{label}_normalized_error"] = float(errors[:, j].mean())
            metrics[f"{label}_psnr"] = metrics[f"{label}_psnr_mean"] = float(quality[:, j].mean())
            metrics[f"{label}_psnr_min"] = float(quality[:, j].min())
        metrics["seconds_per_iteration"] = seconds / max(int(c.iterations), 1)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise ConfigError("the optimisation diverged (non-finite metrics); lower inversion.lr")
        for step, name in enumerate(names):  # the per-depth curve
            mlflow.log_metrics({"depth_normalized_error": float(errors[:, step].mean()),
                                "depth_psnr": float(quality[:, step].mean()),
                                "depth_psnr_min": float(quality[:, step].min())}, step=step)
        mlflow.log_params({"inversion_val_indices": ",".join(map(str, indices)) or "file"})
        write_csv(Path(cfg.paths.plots) / "inversion_depth.csv", [  # DVC plot: PSNR by depth
            {"depth": step, "layer": f"{i} {name}", "psnr": float(quality[:, step].mean()),
             "psnr_min": float(quality[:, step].min()), "normalized_error": float(errors[:, step].mean())}
            for step, (i, name) in enumerate(zip(layers, names))])
        for k in range(n):
            prefix = "" if n == 1 else f"image{k:02d}_"
            figures.save_png(images[k], tmp / f"{prefix}original.png")
            for j, name in enumerate(names):
                figures.save_png(recon[k, j], tmp / f"{prefix}layer{layers[j]:02d}_{name}.png")
        shown = sorted({round(k * (n - 1) / 3) for k in range(4)}) if n > 4 else list(range(n))  # rows: <= 4 images
        tiles, labels = [], []
        for k in shown:
            tiles += [images[k], *recon[k]]
            labels += [f"original ({captions[k]})"] + [f"{i} {name}: {float(quality[k, j]):.1f} dB"
                                                        for j, (i, name) in enumerate(zip(layers, names))]
        summary = [f"mean over {n}: " + ", ".join(f"{name} {metrics[f'psnr_{name}']:.1f}" for name in names)]
        figure = figures.grid(tiles, labels, columns=m + 1, scale=3, caption_lines=2, font_size=11)
        save_figure(tmp, figure, "by_depth", main=True)
        save_metrics(cfg, "inversion", metrics)
        log.info("inverted %d images x %d layers in %.1fs; %s; shallow (%s) PSNR mean %.1f dB, min %.1f; deep (%s) "
                 "PSNR mean %.1f dB", n, m, seconds, summary[0], model.layer_names[shallow],
                 metrics["shallow_psnr_mean"], metrics["shallow_psnr_min"], model.layer_names[deep],
                 metrics["deep_psnr_mean"])
    return metrics


main = hydra_job("inversion", run)

if __name__ == "__main__":
    main()
