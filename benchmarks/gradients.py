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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    main()
