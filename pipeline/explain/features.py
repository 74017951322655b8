"""Job ``features``: feature visualization (Olah, Mordvintsev & Schubert 2017, "Feature Visualization",
Distill; Erhan et al. 2009): for each stage of the model, pictures of what its channels detect.

For each chosen layer (``layers: stages``: the last layer at each resolution, i.e. the end of every
stage) the images that maximise ``channels`` of its units (``objectives.Channel``: a channel's mean
activation over positions, or ``Neuron``: its centre position), all units of a layer in one batch,
from noise around the mean image, in the Fourier / decorrelated-colour basis with random pad,
jitter, scale and rotation (``conf/optim/fourier.yaml``).

Which channels: ``select: top`` (default) takes those with the highest mean activation on val images,
the units the data uses most, so no picture is spent on a dead or almost never active channel (a
trained ReLU net has some; channel indices carry no meaning, so evenly spaced ones, ``select:
spaced``, are an arbitrary sample that can hit them). The same val pass gives each unit's largest
activation on a natural image; ``activation_ratio`` = the unit's activation on its saved 8-bit picture
/ that maximum says how far the visualization drives the unit beyond anything in val (> 1: further
than any val image does).

With ``samples > 1`` each channel gets several pictures, pushed apart by ``diversity`` x
``objectives.Diversity`` within the channel's group (Olah et al. 2017, "Diversity").
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

import torch
from omegaconf import DictConfig, ListConfig

from pipeline.data.selection import spread_over_classes
from pipeline.errors import ConfigError
from pipeline.explain.engine.objectives import Channel, Diversity, Neuron, Objective
from pipeline.explain.engine.regime import Regime, from_config
from pipeline.explain.engine.render import Result, StepLog, initial_images, item_seeds, optimize
from pipeline.explain.subject import load_subject
from pipeline.job import hydra_job
from pipeline.model.architectures import ImageClassifier
from pipeline.model.precision import as_input, autocast
from pipeline.track import figures, tracking
from pipeline.track.outputs import job_outputs, save_figure, save_metrics

log = logging.getLogger(__name__)

UNITS = ("channel", "neuron")
SELECTIONS = ("top", "spaced")


def choose_layers(spec, model: ImageClassifier, size: tuple[int, int]) -> list[int]:
    """``stages``: the last spatial layer at each output resolution (the end of each stage, deepest
    last); ``all``: every spatial layer; else one layer or a list (names or indices)."""
    if isinstance(spec, str) and spec.strip().lower() in ("stages", "all"):
        shapes = [(i, shape) for i, _, shape in model.layer_shapes(size) if len(shape) == 3]
        if spec.strip().lower() == "all":
            return [i for i, _ in shapes]
        last = {}
        for i, shape in shapes:
            last[tuple(shape[-2:])] = i  # later layers of the same resolution replace earlier ones
        return sorted(last.values())
    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    if not items:
        raise ConfigError("features.layers is empty")
    return list(dict.fromkeys(model.layer_index(layer) for layer in items))


def unit_values(feats: torch.Tensor, unit: str) -> torch.Tensor:
    """(N, C) per image and channel: what ``Channel`` (mean over positions) or ``Neuron`` (the centre
    position) maximises."""
    feats = feats.float()
    if feats.dim() == 2:
        if unit == "neuron":
            raise ConfigError("features.unit=neuron needs spatial layers; this one is flat (use unit=channel)")
        return feats
    if unit == "neuron":
        return feats[:, :, feats.shape[-2] // 2, feats.shape[-1] // 2]
    return feats.flatten(2).mean(2)


@torch.no_grad()
def val_statistics(model: ImageClassifier, images: torch.Tensor, layers: list[int], unit: str,
                   precision: str = "fp32", batch_size: int = 250) -> dict[int, torch.Tensor]:
    """{layer: (N, C) unit values} on pixel images (uint8 or float), one pass per batch up to the
    deepest layer."""
    device = model.mean_image.device
    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    for lo in range(0, len(images), batch_size):
        x = as_input(images[lo:lo + batch_size].to(device, torch.float32))
        with autocast(device, precision):
            feats = model.features(x, layers)
        for i in layers:
            out[i].append(unit_values(feats[i], unit).cpu())
    return {i: torch.cat(v) for i, v in out.items()}


def choose_channels(values: torch.Tensor, n: int, select: str) -> list[int]:
    """``n`` channels of a layer from its val unit values (N, C): ``top`` by mean activation (ties to
    the lower index), ``spaced`` evenly over the indices."""
    channels = values.shape[1]
    n = min(int(n), channels)
    if select == "top":
        mean = values.double().mean(0)
        order = sorted(range(channels), key=lambda c: (-float(mean[c]), c))
        return order[:n]
    if select == "spaced":
        return sorted(set(torch.linspace(0, channels - 1, n).round().long().tolist()))
    raise ConfigError(f"unknown features.select {select!r}; choose one of {', '.join(SELECTIONS)}")


def unit_objective(unit: str, layer: int, channels: torch.Tensor) -> Objective:
    if unit == "channel":
        return Channel(layer, channels)
    if unit == "neuron":
        return Neuron(layer, channels)
    raise ConfigError(f"unknown features.unit {unit!r}; choose one of {', '.join(UNITS)}")


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward, for an image that gets no gradient through it at all (every unit it feeds
    is off), passes the gradient on except where it would push an already negative input lower
    (Lucid's ``redirected_relu_grad``, Olah et al. 2017): a unit that is 0 on the start image, as most
    deep units are on noise, can then be switched on. Once any of them is on, the plain ReLU gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        plain = grad * (x > 0)
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        alive = plain.flatten(1).abs().amax(1) > 0  # per image
        return torch.where(alive.view(-1, *[1] * (x.dim() - 1)), plain, redirected)


@contextlib.contextmanager
def redirected_relus(model: torch.nn.Module) -> Iterator[None]:
    """Within this context every ``nn.ReLU`` of ``model`` computes the same forward with the redirected
    backward of ``_RedirectedReLU`` (in-place ReLUs run out of place meanwhile)."""
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    inplace = [m.inplace for m in relus]
    for m in relus:
        m.inplace = False
    handles = [m.register_forward_hook(lambda module, args, output: _RedirectedReLU.apply(args[0])) for m in relus]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in zip(relus, inplace):
            m.inplace = flag


def visualize_units(model: ImageClassifier, layer: int, channels: list[int], regime: Regime, *, seed: int,
                    init_std: float, unit: str = "channel", samples: int = 1, diversity: float = 0.0,
                    redirect_relu: bool = True, progress: bool | None = None, log: StepLog | None = None) -> Result:
    """``samples`` pictures of each channel of ``layer`` in one batch (channel-major: the samples of a
    channel are neighbours), maximising its unit under ``regime``; with ``diversity`` > 0 the samples
    of a channel are pushed apart (``Diversity`` within the channel's group); ``redirect_relu``: the
    ReLUs' redirected gradient (``redirected_relus``) while optimising."""
    if int(samples) < 1 or diversity < 0:
        raise ConfigError(f"need samples >= 1 and diversity >= 0, got {samples} and {diversity}")
    per_image = torch.tensor([c for c in channels for _ in range(int(samples))])
    seeds = item_seeds(seed, [c * int(samples) + s for c in channels for s in range(int(samples))])
    objective = unit_objective(unit, layer, per_image)
    if diversity and samples > 1:
        objective = objective + diversity * Diversity(layer, groups=per_image)
    init = initial_images(model.mean_image.detach().cpu(), seeds, init_std)
    with redirected_relus(model) if redirect_relu else contextlib.nullcontext():
        return optimize(model, init.to(model.mean_image.device), regime.objective(objective), regime, seeds=seeds,
                        progress=progress, desc=f"features {model.layer_names[layer]}", log=log)


def run(cfg: DictConfig) -> dict:
    c = cfg.features
    if c.unit not in UNITS:
        raise ConfigError(f"unknown features.unit {c.unit!r}; choose one of {', '.join(UNITS)}")
    if c.select not in SELECTIONS:
        raise ConfigError(f"unknown features.select {c.select!r}; choose one of {', '.join(SELECTIONS)}")
    if int(c.channels) < 1 or int(c.batch_size) < 1 or int(c.samples) < 1:
        raise ConfigError(f"features.channels, batch_size and samples must be >= 1, got {c.channels}, "
                          f"{c.batch_size} and {c.samples}")
    subject = load_subject(cfg, c.device, c.precision)
    model = subject.model
    regime = from_config(c.regime, center=model.mean_image.detach().cpu())  # fails before the run starts
    val_split = subject.data.split("val")
    val = val_split.images
    size = tuple(val.shape[-2:])
    layers = choose_layers(c.layers, model, size)
    if c.unit == "neuron":
        flat = [model.layer_names[i] for i in layers if not model.is_spatial(i)]
        if flat:
            raise ConfigError(f"features.unit=neuron needs spatial layers; {', '.join(flat)} are flat")
    k = len(val) if int(c.val_images) <= 0 else min(int(c.val_images), len(val))
    picked = torch.tensor(spread_over_classes(val_split.labels, k), dtype=torch.long)
    with job_outputs(cfg, "features", subject,
                     tags={"layers": ",".join(model.layer_names[i] for i in layers)}) as tmp:
        started = time.perf_counter()
        stats = val_statistics(model, val[picked], layers, c.unit, subject.precision)
        val_seconds = time.perf_counter() - started
        (tmp / "layers").mkdir()
        rows, overview, captions, ratios, per_layer = [], [], [], [], {}
        render_seconds, steps = 0.0, 0
        samples = int(c.samples)
        for layer in layers:
            name = model.layer_names[layer]
            channels = choose_channels(stats[layer], int(c.channels), c.select)
            per_batch = max(1, int(c.batch_size) // samples)
            started = time.perf_counter()
            images = []
            for lo in range(0, len(channels), per_batch):
                chunk = channels[lo:lo + per_batch]
                prefix = f"{name}." if lo == 0 else f"{name}.batch{lo // per_batch}."
                with tracking.StepLogger(prefix=prefix, key=f"{name}.evolution",
                                         render=lambda x: figures.grid(x[:32], scale=1, pad=2)) as steps_log:
                    result = visualize_units(model, layer, chunk, regime, seed=cfg.seed, init_std=c.init_std,
                                             unit=c.unit, samples=samples, diversity=float(c.diversity),
                                             redirect_relu=bool(c.redirect_relu), progress=cfg.progress,
                                             log=steps_log)
                images.append(result.images.cpu())
                steps += int(result.steps.max()) if len(result.steps) else 0
            render_seconds += time.perf_counter() - started
            saved = torch.cat(images).round().clamp(0, 255)  # exactly what the PNGs hold
            final = val_statistics(model, saved, [layer], c.unit, subject.precision)[layer]
            per_image = torch.tensor([ch for ch in channels for _ in range(samples)])
            reached = final[torch.arange(len(final)), per_image]
            val_max = stats[layer].max(0).values[per_image]
            ratio = reached / val_max.clamp_min(1e-6)
            live = val_max > 0
            ratios += ratio[live].tolist()
            per_layer[name] = {
                "layer_index": layer, "activation_ratio": float(ratio[live].mean()) if live.any() else 0.0,
                "min_activation_ratio": float(ratio[live].min()) if live.any() else 0.0,
                "final_activation": float(reached.mean()), "val_max_activation": float(val_max.mean()),
                "channels": len(channels)}
            tile_captions = [f"#{ch} {float(r):.1f}x" if m else f"#{ch} (dead)"
                             for ch, r, m in zip(per_image.tolist(), ratio, live)]
            figure = figures.grid(list(saved), tile_captions, columns=samples if samples > 1 else min(8, len(saved)),
                                  scale=2, font_size=10)
            save_figure(tmp, figure, f"layers/{layer:02d}_{name}")
            first = slice(None, None, samples)  # one picture per channel in the overview
            overview += list(saved[first])
            captions += [f"{name} {cap}" for cap in tile_captions[first]]
            rows.append(len(channels))
            log.info("%s: channels %s, activation %.2fx the val maximum (min %.2fx)", name, channels,
                     per_layer[name]["activation_ratio"], per_layer[name]["min_activation_ratio"])
        columns = max(rows)
        padded, padded_captions, at = [], [], 0
        for count in rows:  # one row per layer
            blank = torch.full_like(overview[0], 255.0)
            padded += overview[at:at + count] + [blank] * (columns - count)
            padded_captions += captions[at:at + count] + [""] * (columns - count)
            at += count
        save_figure(tmp, figures.grid(padded, padded_captions, columns=columns, scale=2, caption_lines=2,
                                      font_size=10), "overview", main=True)
        ratios_t = torch.tensor(ratios) if ratios else torch.zeros(1)
        metrics = {
            "mean_activation_ratio": float(ratios_t.mean()), "min_activation_ratio": float(ratios_t.min()),
            "beyond_val_rate": float((ratios_t > 1).float().mean()),
            "num_layers": len(layers), "num_channels": sum(rows), "val_images": k,
            "seconds": render_seconds, "val_seconds": val_seconds,
            "seconds_per_iteration": render_seconds / max(steps, 1),
            "layers": per_layer,
        }
        save_metrics(cfg, "features", metrics)
        log.info("%d channels of %d layers in %.1fs (%.3f s per step of a layer's batch): %.2fx the val maximum "
                 "on average, %.0f%% beyond it", metrics["num_channels"], len(layers), render_seconds,
                 metrics["seconds_per_iteration"], metrics["mean_activation_ratio"], 100 * metrics["beyond_val_rate"])
    return metrics


main = hydra_job("features", run)

if __name__ == "__main__":
    main()
