"""Attribution methods side by side on the trained classifier: ours vs Captum, per image, one batch.

Prints, for each method at batch 64 on val images: images/s for ours (fp32 and bf16) and for Captum's
implementation of the same method on the same model and images, and the ratio; Grad-CAM against a
plain forward+backward; occlusion of all 100 val images of one class (8x8 patch, stride 4) against
one forward pass over all the occluded images. Needs the train stage's model and Captum
(``pip install -e ".[bench]"``).

    python benchmarks/attribution.py [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.explain.attribution.registry import factory  # noqa: E402
from pipeline.explain.faithfulness import spearman  # noqa: E402
from pipeline.explain.subject import load_subject  # noqa: E402
from pipeline.job import compose_config  # noqa: E402
from pipeline.model.precision import as_input  # noqa: E402


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def captum_methods(model, mean: torch.Tensor, layer: str) -> dict:
    import captum.attr as ca

    module = model.get_submodule(layer)

    def gradcam(x, t):
        cam = ca.LayerGradCam(model, module).attribute(x, target=t, relu_attributions=True)
        return ca.LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear")

    return {
        "gradient": lambda x, t: ca.Saliency(model).attribute(x, target=t, abs=False),
        "gradcam": gradcam,
        "guided_backprop": lambda x, t: ca.GuidedBackprop(model).attribute(x, target=t),
        "guided_gradcam": lambda x, t: ca.GuidedGradCam(model, module).attribute(x, target=t,
                                                                                 interpolate_mode="bilinear"),
        "integrated_gradients": lambda x, t: ca.IntegratedGradients(model).attribute(
            x, baselines=mean.expand_as(x), target=t, n_steps=32, method="riemann_middle"),
        "noise_tunnel": lambda x, t: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, nt_type="smoothgrad_sq", nt_samples=25, stdevs=0.15 * 255, target=t, abs=False),
        "occlusion": lambda x, t: ca.Occlusion(model).attribute(
            x, target=t, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=mean.expand_as(x)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="best of this many timed calls")
    parser.add_argument("--slow-images", type=int, default=8, help="images for the methods with many passes each")
    args = parser.parse_args()
    cfg = compose_config("saliency")
    subject = load_subject(cfg, "auto", "fp32")
    model = subject.model
    val = subject.data.split("val")
    x, t = val.images[: args.batch].float(), val.labels[: args.batch]
    layer = model.spatial_layer_names[-1]
    theirs = captum_methods(model, model.mean_image.detach(), layer)
    options = {"occlusion": {"stride": 4}}
    slow = {"integrated_gradients", "noise_tunnel", "occlusion"}
    print(f"model {subject.meta['arch']['arch']} (val accuracy {subject.meta.get('val_accuracy', float('nan')):.4f}), "
          f"{torch.get_num_threads()} threads, batch {args.batch} ({args.slow_images} images for {', '.join(sorted(slow))}), "
          f"Grad-CAM layer {layer}")
    print(f"{'method':<22}{'ours fp32':>12}{'ours bf16':>12}{'Captum':>12}{'ours vs Captum':>15}"
          f"{'bf16 maps vs fp32 (Spearman mean / min)':>42}   images/s")
    for name in ["gradient", "gradcam", "guided_backprop", "guided_gradcam", "integrated_gradients", "noise_tunnel",
                 "occlusion"]:
        n = args.slow_images if name in slow else args.batch
        xb, tb = x[:n], t[:n]
        rate, maps = {}, {}
        for precision in ("fp32", "bf16"):
            method = factory(name, options.get(name, {}), precision=precision, batch_size=max(args.batch, 100))(model)
            rate[precision] = n / seconds(lambda: method.attribute(xb, tb), args.repeats)
            maps[precision] = method.maps(xb, tb)
        rate["captum"] = n / seconds(lambda: theirs[name](xb.clone(), tb), args.repeats)
        rho = spearman(maps["fp32"], maps["bf16"])
        print(f"{name:<22}{rate['fp32']:12.1f}{rate['bf16']:12.1f}{rate['captum']:12.1f}"
              f"{rate['fp32'] / rate['captum']:14.2f}x{float(rho.mean()):>30.4f} / {float(rho.min()):.4f}")

    bare = seconds(lambda: model(as_input(x.clone().requires_grad_(True))).gather(1, t[:, None]).sum().backward(),
                   args.repeats)
    cam = factory("gradcam", precision="fp32", batch_size=args.batch)(model)
    t_cam = seconds(lambda: cam.attribute(x, t), args.repeats)
    print(f"\nGrad-CAM {t_cam * 1000 / args.batch:.2f} ms/image vs a plain forward+backward to the input "
          f"{bare * 1000 / args.batch:.2f} ms/image: {t_cam / bare:.2f}x (target <= 1.1)")

    k = int(val.labels[0])
    cls = (val.labels == k).nonzero()[:, 0]
    images, targets = val.images[cls].float(), val.labels[cls]
    occlusion = factory("occlusion", {"patch": 8, "stride": 4}, precision="fp32", batch_size=256)(model)
    started = time.perf_counter()
    occlusion.attribute(images, targets)
    t_occ = time.perf_counter() - started
    windows = 15 * 15
    flat = images[:4, None].expand(-1, windows, -1, -1, -1).reshape(-1, *images.shape[1:])  # a forward's worth

    def forward_all():
        with torch.no_grad():
            for lo in range(0, len(flat), 256):
                model(as_input(flat[lo:lo + 256]))

    t_fwd = seconds(forward_all, 1) * len(images) / 4
    print(f"occlusion, {len(images)} val images of class {subject.class_names[k]!r}, 8x8 patch, stride 4 "
          f"({windows} windows each): {t_occ:.1f} s vs one forward pass over all {len(images) * windows} occluded "
          f"images {t_fwd:.1f} s = {t_occ / t_fwd:.2f}x (target <= 2)")


if __name__ == "__main__":
    main()
