"""Benchmark the image-generation jobs (class_viz, inversion, deepdream) on the trained model.

Prints, measured in this run on this machine, with the jobs' default configs:
- class_viz: seconds for all classes batched vs one class at a time (the reference's loop;
  timed on --single-classes classes and scaled to all), and the quality metrics;
- the engine's overhead: seconds per step of class_viz's optimisation (jitter, L2, blur, clip,
  logging off) vs a bare torch forward+backward+update loop on the same batch;
- the Fourier parametrisation's cost: seconds per iteration of class_viz=fourier (Fourier basis,
  decorrelated colour, pad / jitter / random scale / random rotate) vs the pixel default, same batch
  and iterations, interleaved and the fastest of --repeats each (``fourier_seconds_per_iteration_ratio``);
- inversion: seconds per iteration and the per-layer normalised error / PSNR;
- deepdream: seconds per iteration at 256 px with 3 octaves, activation norm before / after.

    python benchmarks/generation.py [--single-classes 10] [--iterations 200] [--only fourier]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.explain.class_viz import shifted, visualize_classes  # noqa: E402
from pipeline.explain.deepdream import activation_norm, dream, dream_layer  # noqa: E402
from pipeline.data.images import fit_max_side  # noqa: E402
from pipeline.explain.inversion import invert, layer_list, named_layer, psnr  # noqa: E402
from pipeline.explain.engine.regime import from_config  # noqa: E402
from pipeline.explain.engine.render import initial_images, item_seeds  # noqa: E402
from pipeline.job import compose_config  # noqa: E402
from pipeline.registry import JOBS  # noqa: E402
from pipeline.explain.subject import load_subject  # noqa: E402


def job_settings(name: str, section: str | None = "same", **changes):
    """The job's primary config as it sees it (Hydra's compose), or its section ``name`` with ``changes``."""
    cfg = compose_config(JOBS[name].config if name in JOBS else name)
    return cfg if section is None else OmegaConf.merge(cfg[name], changes)


def regime(section, model):
    return from_config(section.regime, center=model.mean_image.detach().cpu())


def seconds_per_iteration(model, classes, section, steps: int) -> float:
    section = OmegaConf.merge(section, {"iterations": steps})
    started = time.perf_counter()
    visualize_classes(model, classes, regime(section, model), seed=0, init_std=section.init_std, progress=False)
    return (time.perf_counter() - started) / steps


def bare_loop(model, x: torch.Tensor, targets: torch.Tensor, steps: int, lr: float) -> None:
    """The floor: forward, backward to the image, a plain step; nothing else."""
    x = x.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        score = model(x).gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
        x = (x + lr * grad).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--single-classes", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--overhead-steps", type=int, default=20)
    parser.add_argument("--fourier-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["class_viz", "fourier", "inversion", "deepdream"], default=None,
                        help="run one section (class_viz includes the engine overhead)")
    args = parser.parse_args()
    run = lambda name: args.only in (None, name)  # noqa: E731
    cfg = job_settings("config", section=None)
    subject = load_subject(cfg, "auto", "fp32")
    model = subject.model
    print(f"model: {subject.meta['arch']['arch']} ({subject.meta.get('source')}, val accuracy "
          f"{subject.meta.get('val_accuracy', float('nan')):.4f}), device {subject.device}, "
          f"{torch.get_num_threads()} threads")

    c = job_settings("class_viz", iterations=args.iterations, show_every=0)
    classes = list(range(subject.data.num_classes))
    if run("class_viz"):
        class_viz_section(args, subject, model, c, classes)
    if run("fourier"):
        fourier_section(args, model, c, classes)
    if run("inversion"):
        inversion_section(subject, model)
    if run("deepdream"):
        deepdream_section(subject, model)


def fourier_section(args, model, c, classes) -> None:
    """Seconds per iteration, Fourier + decorrelated colour + random transforms vs pixel space."""
    cfg = compose_config(JOBS["class_viz"].config, ["class_viz=fourier"])
    f = OmegaConf.merge(cfg.class_viz, {"show_every": 0})
    bare_fourier = OmegaConf.merge(c, {"param": "fourier", "decorrelate": True})  # the basis alone, pixel's transforms
    n = args.fourier_steps
    seconds_per_iteration(model, classes, c, 2)  # warm-up
    times: dict[str, list[float]] = {"pixel": [], "fourier": [], "basis": []}
    for _ in range(args.repeats):  # interleaved: a busy machine slows all three alike
        for name, section in (("pixel", c), ("fourier", f), ("basis", bare_fourier)):
            times[name].append(seconds_per_iteration(model, classes, section, n))
    best = {name: min(t) for name, t in times.items()}
    print(f"\nFourier parametrisation, batch {len(classes)}, {n} iterations, fastest of {args.repeats}:")
    print(f"  pixel (class_viz default: jitter {c.jitter}, blur {c.blur} every {c.blur_every}) "
          f"{best['pixel']:.3f} s/iteration")
    print(f"  fourier (class_viz=fourier: decorrelate {f.decorrelate}, pad {f.pad}, jitter {f.jitter}, "
          f"{len(f.scales)} scales, {len(f.angles)} angles, blur {f.blur}) {best['fourier']:.3f} s/iteration")
    print(f"  the basis alone (param=fourier decorrelate=true, pixel's transforms and blur) {best['basis']:.3f} "
          f"s/iteration = {best['basis'] / best['pixel']:.3f}x")
    print(f"fourier_seconds_per_iteration_ratio {best['fourier'] / best['pixel']:.3f} (target <= 1.3)")


def class_viz_section(args, subject, model, c, classes) -> None:
    # ---------------------------------------------------------------- class_viz
    started = time.perf_counter()
    images = visualize_classes(model, classes, regime(c, model), seed=0, init_std=c.init_std,
                               progress=False).images.cpu()
    t_batched = time.perf_counter() - started
    singles = classes[: args.single_classes]
    started = time.perf_counter()
    for k in singles:
        visualize_classes(model, [k], regime(c, model), seed=0, init_std=c.init_std, progress=False)
    t_single = (time.perf_counter() - started) / len(singles) * len(classes)
    target = torch.tensor(classes)
    saved = images.round().clamp(0, 255)
    probs = subject.probabilities(images).gather(1, target[:, None])[:, 0]
    top1 = (subject.probabilities(images).argmax(1) == target).float().mean()
    q_top1 = (subject.probabilities(saved).argmax(1) == target).float().mean()
    s_top1 = (subject.probabilities(shifted(saved, int(c.shift), 0)).argmax(1) == target).float().mean()
    print(f"\nclass_viz, {len(classes)} classes x {c.iterations} iterations ({c.step}, lr {c.lr}, jitter {c.jitter}, "
          f"blur {c.blur} every {c.blur_every}, l2 {c.l2}):")
    print(f"  batched {t_batched:7.1f} s (target <= 180)   one class at a time {t_single:7.1f} s "
          f"(timed on {len(singles)} classes, scaled)   speed-up {t_single / t_batched:.2f}x (target >= 2.5)")
    print(f"  target probability mean {float(probs.mean()):.4f} (target >= 0.99), min {float(probs.min()):.4f}; "
          f"top-1 = target {float(top1):.3f} (target >= 0.99), after uint8 {float(q_top1):.3f} (target >= 0.95), "
          f"shifted {c.shift} px {float(s_top1):.3f}")

    # ---------------------------------------------------------------- engine overhead
    n = args.overhead_steps
    x0 = initial_images(model.mean_image.cpu(), item_seeds(0, classes), float(c.init_std))
    c_short = OmegaConf.merge(c, {"iterations": n})
    started = time.perf_counter()
    visualize_classes(model, classes, regime(c_short, model), seed=0, init_std=c.init_std, progress=False)
    t_engine = time.perf_counter() - started
    started = time.perf_counter()
    bare_loop(model, x0, target, n, 1.0)
    t_bare = time.perf_counter() - started
    print(f"\nengine overhead, batch {len(classes)}: {t_engine / n * 1000:.1f} ms/step vs bare forward+backward "
          f"{t_bare / n * 1000:.1f} ms/step = {t_engine / t_bare:.3f}x (target <= 1.2)")


def inversion_section(subject, model) -> None:
    # ---------------------------------------------------------------- inversion
    inv = job_settings("inversion", show_every=0)
    layers = layer_list(inv.layers, model)
    shallow, deep = named_layer(inv.shallow_layer, model, 3), named_layer(inv.deep_layer, model, 6)
    val = subject.data.split("val")
    index = 0 if inv.val_index is None else int(inv.val_index)  # null: the job inverts many images; time one
    image = val.images[index].float()
    started = time.perf_counter()
    result, errors = invert(model, image, layers, regime(inv, model), seed=0, init_std=inv.init_std, progress=False)
    t_inv = time.perf_counter() - started
    quality = psnr(result.images.cpu().round().clamp(0, 255), image[None].expand(len(layers), -1, -1, -1))
    print(f"\ninversion of val image {index}, {len(layers)} layers in one batch, {inv.iterations} iterations: "
          f"{t_inv / inv.iterations:.3f} s/iteration")
    for i, err, db in zip(layers, errors, quality.tolist()):
        mark = " <- shallow (reference layer 3)" if i == shallow else " <- deep (reference layer 6)" if i == deep else ""
        print(f"  {i:2d} {model.layer_names[i]:<15} normalised error {err:.4f}  PSNR {db:5.2f} dB{mark}")
    print("  targets: shallow PSNR >= 20 dB, normalised error <= 0.05")


def deepdream_section(subject, model) -> None:
    # ---------------------------------------------------------------- deepdream
    dd = job_settings("deepdream", show_every=0)
    val = subject.data.split("val")
    layer = dream_layer(dd.layer, model)
    picture = fit_max_side(val.images[int(dd.val_index)].float(), dd.max_side)
    before = activation_norm(model, picture, layer)
    started = time.perf_counter()
    dreamed = dream(model, picture, layer, regime(dd, model), octaves=dd.octaves, octave_scale=dd.octave_scale,
                    seed=0, progress=False)
    t_dd = time.perf_counter() - started
    after = activation_norm(model, dreamed.round().clamp(0, 255), layer)
    print(f"\ndeepdream on {model.layer_names[layer]}, {picture.shape[2]}x{picture.shape[1]} px, {dd.octaves} octaves x "
          f"{dd.iterations} iterations: {t_dd / (dd.octaves * dd.iterations):.3f} s/iteration, activation norm "
          f"{before:.1f} -> {after:.1f}")


if __name__ == "__main__":
    main()
