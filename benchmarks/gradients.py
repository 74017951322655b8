"""Benchmark the image-gradient jobs (saliency, fooling) on the real data and the trained model.

Prints, measured in this run on this machine:
- saliency images/s: batched vs one image at a time; the ratio to a bare torch forward+backward
  on the same batch (our overhead); Captum's ``Saliency`` on the same model and batch; and the
  bf16 option with the Spearman rank correlation of its maps to the fp32 maps;
- fooling: wall seconds for N images batched vs the reference's one-image-at-a-time loop;
- the quality metrics of both jobs with their default settings.

    python benchmarks/gradients.py [--images 500] [--fooling-images 100] [--batch-size 100]

Needs the prepare and train stages' outputs (dvc repro train) and, for the Captum column,
``pip install captum`` (the ``bench`` extra).

``--imagenet`` measures instead an ImageNet-size model through the same code (no data or trained
model needed): torchvision ResNet-50 wrapped by ``pipeline.model.external`` (random weights: the
timings do not depend on them), 64 px images resized to 224 px, saliency images/s at batch 16 fp32
against Captum's ``Saliency``, and class visualization of 10 classes x 100 iterations, on 64 px
images (resized) and directly at 224 px:

    python benchmarks/gradients.py --imagenet [--imagenet-batch 16] [--viz-classes 10] [--viz-iterations 100]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.explain.attribution.gradient import Saliency  # noqa: E402
from pipeline.explain.faithfulness import auc, cascading_randomization, curves, pixel_ranks, random_ranks, spearman  # noqa: E402
from pipeline.explain.fooling import make_fooling_images, random_other_classes  # noqa: E402
from pipeline.data.selection import select_images  # noqa: E402
from pipeline.job import compose_config  # noqa: E402
from pipeline.registry import JOBS  # noqa: E402
from pipeline.explain.subject import load_subject  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    """Minimum wall seconds of ``repeats`` calls after one warm-up call (least disturbed by noise)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def bare_forward_backward(model, x: torch.Tensor, y: torch.Tensor) -> None:
    """What a user would write with plain torch: the floor any saliency implementation pays."""
    x = x.clone().requires_grad_(True)
    model(x).gather(1, y[:, None]).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--single-images", type=int, default=100, help="images for the one-at-a-time loops")
    parser.add_argument("--fooling-images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--imagenet", action="store_true", help="benchmark a wrapped torchvision ResNet-50 instead")
    parser.add_argument("--imagenet-batch", type=int, default=16)
    parser.add_argument("--viz-classes", type=int, default=10)
    parser.add_argument("--viz-iterations", type=int, default=100)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.imagenet:
        imagenet(args)
        return
    cfg = compose_config("config")
    fooling_cfg = compose_config(JOBS["fooling"].config).fooling
    subject = load_subject(cfg, "auto", "fp32")
    model = subject.model
    print(f"model: {subject.meta['arch']['arch']} ({subject.meta.get('source')}, val accuracy "
          f"{subject.meta.get('val_accuracy', float('nan')):.4f}), device {subject.device}, "
          f"{torch.get_num_threads()} threads")
    val = subject.data.split("val")
    index = select_images({"select": "random", "n": args.images}, subject.data, seed=0)
    x, y = val.images[index].float(), val.labels[index]
    b = args.batch_size
    xb, yb = x[:b], y[:b]

    # ---------------------------------------------------------------- saliency speed
    ours = Saliency(model, batch_size=b)
    t_ours = best_of(lambda: ours.maps(xb, yb))
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # what a user's model looks like
    t_bare_nchw = best_of(lambda: bare_forward_backward(plain, xb, yb))
    t_bare = best_of(lambda: bare_forward_backward(model, xb.contiguous(memory_format=torch.channels_last), yb))
    ns = min(args.single_images, len(x))
    t_single = best_of(lambda: [ours.maps(x[i:i + 1], y[i:i + 1]) for i in range(ns)], repeats=1) / ns
    ours_bf16 = Saliency(model, precision="bf16", batch_size=b)
    t_bf16 = best_of(lambda: ours_bf16.maps(xb, yb))
    t_bf16_single = best_of(lambda: [ours_bf16.maps(x[i:i + 1], y[i:i + 1]) for i in range(ns)], repeats=1) / ns
    maps_fp32 = ours.maps(x, y)
    rho_bf16 = spearman(maps_fp32, ours_bf16.maps(x, y))
    try:
        from captum.attr import Saliency as CaptumSaliency

        captum = CaptumSaliency(plain)
        t_captum = best_of(lambda: captum.attribute(xb.clone().requires_grad_(True), target=yb, abs=True).amax(1))
        captum_maps = captum.attribute(xb.clone().requires_grad_(True), target=yb, abs=True).amax(1)
        captum_agrees = f"Spearman {float(spearman(captum_maps, maps_fp32[:b]).min()):.5f} (min over images)"
    except ImportError:
        t_captum, captum_agrees = float("nan"), None
    print(f"\nsaliency, batch {b} ({len(x)} val images for the maps' agreement):")
    print(f"  bare fwd+bwd fp32, NCHW model (what a user writes) {b / t_bare_nchw:7.1f} images/s")
    print(f"  bare fwd+bwd fp32, channels_last model + input      {b / t_bare:7.1f} images/s")
    print(f"  ours fp32 batched (channels_last)                   {b / t_ours:7.1f} images/s   overhead vs the "
          f"channels_last floor {t_ours / t_bare:.3f}x (target <= 1.15); vs the NCHW floor {t_ours / t_bare_nchw:.3f}x")
    print(f"  ours fp32 one at a time                             {1 / t_single:7.1f} images/s   batched speed-up "
          f"{t_single * b / t_ours:.2f}x")
    print(f"  Captum Saliency fp32 (NCHW model)                   {b / t_captum:7.1f} images/s   maps vs ours: "
          f"{captum_agrees}")
    print(f"  ours bf16 batched (fp32 for the layers at >= 1/2 input size) {b / t_bf16:7.1f} images/s   "
          f"vs Captum {t_captum / t_bf16:.2f}x (target >= 1.5)")
    print(f"  ours bf16 one at a time                             {1 / t_bf16_single:7.1f} images/s   batched speed-up "
          f"{t_bf16_single * b / t_bf16:.2f}x (target >= 2.5)")
    print(f"  bf16 maps vs fp32 maps, Spearman over {len(x)} images: mean {float(rho_bf16.mean()):.4f}, "
          f"min {float(rho_bf16.min()):.4f} (target >= 0.99)")

    # ---------------------------------------------------------------- saliency faithfulness
    deletion, insertion = curves(model, x, y, pixel_ranks(maps_fp32), batch_size=250)
    r_deletion, r_insertion = curves(model, x, y, random_ranks(len(x), maps_fp32[0].numel(), 0), batch_size=250)
    k = min(100, len(x))
    cascade = cascading_randomization(model, subject.meta["arch"], lambda m: Saliency(m, batch_size=b).maps(x[:k], y[:k]))
    print(f"\nsaliency faithfulness on {len(x)} val images (true class):")
    print(f"  deletion AUC  {float(auc(deletion).mean()):.4f}  vs random order {float(auc(r_deletion).mean()):.4f} "
          "(lower is better)")
    print(f"  insertion AUC {float(auc(insertion).mean()):.4f}  vs random order {float(auc(r_insertion).mean()):.4f} "
          "(higher is better)")
    print("  sanity check, Spearman(trained maps, cascading re-initialisation) on "
          f"{k} images: " + ", ".join(f"{name} {rho:.3f}" for name, rho in cascade) + " (target < 0.5 at the end)")

    # ---------------------------------------------------------------- fooling
    probs = subject.val_probabilities()
    pick = select_images({"select": "correct", "n": args.fooling_images}, subject.data, seed=0,
                         probabilities=lambda: probs)
    fx, fy = val.images[pick].float(), val.labels[pick]
    targets = random_other_classes(fy, subject.data.num_classes, seed=0)
    options = dict(max_iterations=fooling_cfg.max_iterations, lr=fooling_cfg.lr, step=fooling_cfg.step,
                   l2=fooling_cfg.l2, confidence=fooling_cfg.confidence, quantize=fooling_cfg.quantize,
                   precision=fooling_cfg.precision, progress=False)
    started = time.perf_counter()
    result = make_fooling_images(model, fx, targets, **options)
    t_batched = time.perf_counter() - started
    started = time.perf_counter()
    singles = [make_fooling_images(model, fx[i:i + 1], targets[i:i + 1], **options) for i in range(len(fx))]
    t_loop = time.perf_counter() - started
    same = all(int(s.steps[0]) == int(result.steps[i]) for i, s in enumerate(singles))
    started = time.perf_counter()
    for i in range(len(fx)):  # the reference notebook's loop: one image, fp32
        make_fooling_images(model, fx[i:i + 1], targets[i:i + 1], **{**options, "precision": "fp32"})
    t_loop_fp32 = time.perf_counter() - started
    ok = result.stopped
    diff = result.images - fx
    saved = result.images.round().clamp(0, 255)
    still = (subject.probabilities(saved).argmax(1) == targets) & ok
    its = result.steps[ok].tolist()
    print(f"\nfooling {len(fx)} correctly classified val images -> random other classes "
          f"({fooling_cfg.step} step, lr {fooling_cfg.lr}, {fooling_cfg.precision}, at most "
          f"{fooling_cfg.max_iterations} iterations; success judged by the fp32 model):")
    print(f"  batched {t_batched:7.2f} s   one at a time, same settings {t_loop:7.2f} s = {t_loop / t_batched:.2f}x "
          f"(target >= 3); one at a time in fp32 (the reference's loop) {t_loop_fp32:7.2f} s = "
          f"{t_loop_fp32 / t_batched:.2f}x; same iteration counts batched / alone: {same}")
    print(f"  success {float(ok.float().mean()):.3f} (target >= 0.99), after uint8 round trip "
          f"{float(still.float().mean()):.3f} (target >= 0.95)")
    if its:
        print(f"  iterations median {statistics.median(its):.0f}, max {max(its)}; perturbation median L2 "
              f"{statistics.median(diff[ok].flatten(1).norm(dim=1).tolist()):.1f}, median Linf "
              f"{statistics.median(diff[ok].flatten(1).abs().amax(1).tolist()):.2f} (target <= 8, 0..255 units)")


def imagenet(args) -> None:
    """Saliency and class visualization on torchvision ResNet-50 at 224 px (pipeline.model.external)."""
    from pipeline.explain.class_viz import visualize_classes
    from pipeline.explain.engine.regime import from_config
    from pipeline.model.external import WrappedClassifier, build_external
    from pipeline.model.precision import frozen

    torch.manual_seed(0)
    wnids = list(compose_config("config").data.subset_wnids)  # TinyImageNet-100-A's classes, in its order
    model, meta = build_external({"source": "torchvision", "name": "resnet50", "weights": None, "input_size": 224},
                                 wnids=wnids, image_size=64, cache_dir=REPO / "checkpoints" / "weights")
    model = frozen(model, "cpu")
    print(f"model: torchvision resnet50 with RANDOM weights (timing only; the weights do not change the cost), "
          f"{meta['num_outputs']} logits restricted to the dataset's {meta['restricted_to']} wnids; 64 px images "
          f"resized to {meta['input_size']} px; CPU, {torch.get_num_threads()} threads")
    b = args.imagenet_batch
    x = torch.rand(b, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    y = torch.arange(b) % len(wnids)

    ours = Saliency(model, batch_size=b)
    t_ours = best_of(lambda: ours.maps(x, y))
    t_bf16 = best_of(lambda: Saliency(model, precision="bf16", batch_size=b).maps(x, y))
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # what a user's model looks like
    t_bare = best_of(lambda: bare_forward_backward(plain, x, y))
    print(f"\nsaliency, resnet50 at 224 px, batch {b}, fp32:")
    print(f"  bare fwd+bwd fp32, NCHW model (what a user writes) {b / t_bare:7.2f} images/s")
    print(f"  ours fp32 (channels_last)                          {b / t_ours:7.2f} images/s   "
          f"speed vs the NCHW floor {t_bare / t_ours:.2f}x")
    try:
        from captum.attr import Saliency as CaptumSaliency

        captum = CaptumSaliency(plain)
        t_captum = best_of(lambda: captum.attribute(x.clone().requires_grad_(True), target=y, abs=True).amax(1))
        captum_maps = captum.attribute(x.clone().requires_grad_(True), target=y, abs=True).amax(1)
        agree = float(spearman(captum_maps, ours.maps(x, y)).min())
        print(f"  Captum Saliency fp32 (NCHW model)                  {b / t_captum:7.2f} images/s   "
              f"our speed / Captum {t_captum / t_ours:.2f}x; maps agree: Spearman min {agree:.5f}")
    except ImportError:
        t_captum = float("nan")
        print("  Captum Saliency: not installed (pip install -e '.[bench]')")
    print(f"  ours bf16 (fp32 for the layers at >= 1/2 input size) {b / t_bf16:5.2f} images/s   "
          f"vs Captum {t_captum / t_bf16:.2f}x")

    c = compose_config(JOBS["class_viz"].config, [f"class_viz.iterations={args.viz_iterations}",
                                                  "class_viz.show_every=0"]).class_viz
    classes = list(range(args.viz_classes))
    direct = frozen(WrappedClassifier(model.net, image_size=224, input_size=224, columns=model.columns), "cpu")
    print(f"\nclass visualization, {len(classes)} classes in one batch x {args.viz_iterations} iterations "
          f"({c.step}, lr {c.lr}, jitter {c.jitter}, blur {c.blur} every {c.blur_every}), fp32:")
    for label, m in (("64 px images, resized to 224 px (the pipeline's images)", model),
                     ("224 px images, no resize (image_size=224)", direct)):
        regime = from_config(c.regime, center=m.mean_image.detach().cpu())
        started = time.perf_counter()
        result = visualize_classes(m, classes, regime, seed=0, init_std=float(c.init_std), progress=False)
        seconds = time.perf_counter() - started
        print(f"  {label:58s} {seconds:7.1f} s = {seconds / args.viz_iterations:.2f} s/iteration "
              f"(images {tuple(result.images.shape[1:])})")


if __name__ == "__main__":
    main()
