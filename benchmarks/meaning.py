"""Do the pictures mean something? Cross-model recognition and inversion, standard vs robust classifier.

A class visualization that reaches probability 1.00 on its own model may still be a texture only that
model responds to. Its *meaning* is measured by an independent judge: the top-1 rate at which another
classifier assigns the images their target class (chance: 1 / classes). The judges are the two
models of this benchmark, each for the other: the robust model judges the standard model's images,
the standard model judges the robust model's. Each setting runs ``--seeds`` times (seeds 0, 1, ...: other
start noise and transforms), so a rate is a mean over 100 x seeds pictures and ``*_min`` is the worst
seed. Every figure comes from the pipeline's own jobs with their default configs (``python -m pipeline.class_viz``, ``pipeline.inversion``), run here with
``class_viz.judge`` and logged to MLflow like any run (tag ``benchmark=meaning``):

- ``pixel_cross_model_top1`` / ``fourier_cross_model_top1``: the standard model's class_viz images in
  pixel space (the default) and with ``class_viz=fourier`` (Fourier basis, decorrelated colour,
  random transforms), same iterations, judged by the robust model; ``fourier_seconds_per_iteration_ratio``
  is the ratio of those two runs' times (same batch, same iterations);
- ``robust_cross_model_top1``: the robust model's class_viz images (default config) judged by the
  standard model; ``robust_val_accuracy`` / ``robust_pgd_accuracy``: its clean val top-1 and PGD-20
  top-1 at the training radius (from its train run);
- ``standard_deep_psnr`` / ``robust_deep_psnr``: the inversion job's mean PSNR at the deep layer (the
  counterpart of the reference's layer 6) over ``--images`` val images spread over the classes, its
  default settings otherwise, on each model; ``deep_psnr_gap`` is robust minus standard;
- ``deep_psnr_by_tv``: the same deep-layer inversion on both models at shared TV weights (the image
  prior's strength, from none to 4x the default's), so the gap is not one setting's: ``deep_psnr_gap_prior_free``
  (no prior: what the representation alone gives back), ``deep_psnr_gap_best`` (each model at its best
  weight of the grid), ``deep_psnr_gap_min`` (the smallest gap over the weights); per weight also the
  worst image's gap and on how many of the images the robust model's inversion is the better one;
  ``deep_psnr_gap_best_heldout``: each model at the weight it did best with, on as many other val images
  (halfway between those, ``heldout_val_indices``), so the choice is not tuned to the images it is scored on;
  and ``deep_psnr_by_tv_heldout`` (both models per weight on those images); ``deep_psnr_gap_both_sets``:
  the gap per weight over both sets of images.

The robust model is trained first when ``--robust`` does not exist (``python -m pipeline.train
experiment=robust``, about 50 min on 2 cores; ``--train OVERRIDE``, repeatable: another recipe). Writes ``metrics/meaning.json`` and ``docs/meaning.png``.

    python benchmarks/meaning.py [--robust checkpoints/robust/classifier.pt] [--classes all]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.data.cache import load_prepared  # noqa: E402
from pipeline.data.selection import spread_over_classes  # noqa: E402
from pipeline.files import atomic_path, write_json  # noqa: E402
from pipeline.job import compose_config  # noqa: E402
from pipeline.registry import JOBS  # noqa: E402
from pipeline.track import figures  # noqa: E402


def train_robust(path: Path, overrides: list[str]) -> None:
    """The robust classifier, trained by the pipeline's own train job next to ``path`` (``overrides``:
    another recipe, e.g. ``train.adversarial.steps=2``)."""
    home = path.parent
    command = [sys.executable, "-m", "pipeline.train", "experiment=robust", f"paths.classifier={path}",
               f"paths.metrics={home}/metrics", f"paths.plots={home}/plots", f"paths.checkpoints={home}", *overrides]
    print("training the robust classifier:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def run_job(name: str, out: Path, *overrides: str, reuse: bool = False) -> dict:
    """The job ``name`` as ``python -m pipeline.<name> overrides`` would run it, writing under ``out``
    (``reuse``: a run whose metrics are already there is not run again)."""
    done = out / "metrics" / f"{name}.json"
    if reuse and done.is_file():
        print(f"  {name} {' '.join(overrides)}: reusing {done}", flush=True)
        return json.loads(done.read_text())
    cfg = compose_config(JOBS[name].config, [f"paths.results={out}/results", f"paths.metrics={out}/metrics",
                                             f"paths.plots={out}/plots", "+tracking.tags.benchmark=meaning",
                                             "progress=false", *overrides])
    started = time.perf_counter()
    metrics = importlib.import_module(JOBS[name].module).run(cfg)
    print(f"  {name} {' '.join(overrides)}: {time.perf_counter() - started:.0f} s", flush=True)
    return metrics


TV_WEIGHTS = (0.0, 5e-10, 2e-9, 8e-9, 3.2e-8)  # TV at the deep layer: none, the shallow layer's, ..., the default's x4


def deep_psnr_by_tv(out: Path, overrides: tuple[str, ...], images: int | list[int], weights=TV_WEIGHTS,
                    reuse: bool = False) -> list[list[float]]:
    """Deep-layer PSNR of each of ``images`` val images (a count spread over the classes, or val indices;
    rows) at each TV weight (the image prior's strength), the inversion job's settings otherwise: every
    weight in one batch (the job's ``invert``, one item per image and weight). How much of a
    reconstruction the representation gives and how much the prior: at weight 0 the representation
    alone (as Engstrom et al. 2019 invert robust models)."""
    done = out / "deep_psnr_by_tv.json"
    count = len(images) if isinstance(images, list) else images
    if reuse and done.is_file():
        saved = json.loads(done.read_text())
        same_images = len(saved["psnr_per_image"]) == count and (
            not isinstance(images, list) or saved.get("val_indices") == images)
        if saved["tv"] == list(weights) and same_images:  # else: measure again
            print(f"  deep layer by TV weight {' '.join(overrides)}: reusing {done}", flush=True)
            return saved["psnr_per_image"]
    from pipeline.explain.engine.regime import from_config
    from pipeline.explain.inversion import invert, named_layer, psnr, source_images
    from pipeline.explain.subject import load_subject

    spec = f"[{','.join(str(i) for i in images)}]" if isinstance(images, list) else images
    cfg = compose_config("inversion", [*overrides, "inversion.val_index=null", f"inversion.images={spec}"])
    c = cfg.inversion
    subject = load_subject(cfg, c.device, c.precision)
    model = subject.model
    deep = named_layer(c.deep_layer, model, 6)
    pictures, _, indices = source_images(subject, c, cfg.images)
    started = time.perf_counter()
    result, _ = invert(model, pictures, [deep] * len(weights), from_config(c.regime, center=model.mean_image.detach().cpu()),
                       seed=cfg.seed, init_std=c.init_std, loss=c.loss, progress=False, tv_weights=list(weights))
    recon = result.images.cpu().round().clamp(0, 255)
    quality = psnr(recon, pictures.repeat_interleave(len(weights), 0)).view(len(pictures), len(weights))
    write_json(done, {"tv": list(weights), "psnr": [float(q) for q in quality.mean(0)],
                      "psnr_min": [float(q) for q in quality.min(0).values], "psnr_per_image": quality.tolist(),
                      "layer": model.layer_names[deep], "val_indices": indices})
    print(f"  deep layer by TV weight {' '.join(overrides)}: {time.perf_counter() - started:.0f} s", flush=True)
    return quality.tolist()


def between(labels: torch.Tensor, n: int) -> list[int]:
    """``n`` val indices halfway between the ``n`` the inversion job spreads over the classes: other images,
    mostly of other classes, to check a TV weight chosen on those (``spread_over_classes(labels, n)`` is
    every other one of ``spread_over_classes(labels, 2 n)``; these are the rest)."""
    return spread_over_classes(labels, 2 * min(int(n), len(labels) // 2))[1::2]


def mean_metrics(runs: list[dict]) -> dict:
    """The runs' metrics averaged over seeds, and ``cross_model_top1_min``: the worst seed's."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    mean = {k: sum(float(r[k]) for r in runs) / len(runs) for k in keys}
    if "cross_model_top1" in mean:
        mean["cross_model_top1_min"] = min(float(r["cross_model_top1"]) for r in runs)
    return mean


def side_by_side(runs: dict[str, Path], path: Path, names: list[str], classes: int = 10) -> None:
    """One figure: the first ``classes`` class visualizations of each run, a row per run."""
    rows = []
    for title, folder in runs.items():
        files = sorted((folder / "results" / "class_viz" / "classes").glob("*.png"))[:classes]
        rows.append(figures.grid([Image.open(f).convert("RGB") for f in files],
                                 [names[int(f.stem.split("_", 1)[0])] for f in files], columns=classes, scale=2))
    font = figures.load_font(14)
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height + 20 for r in rows)), "white")
    from PIL import ImageDraw

    draw, y = ImageDraw.Draw(canvas), 0
    for (title, _), row in zip(runs.items(), rows):
        draw.text((6, y + 2), title, fill="black", font=font)
        canvas.paste(row, (0, y + 20))
        y += row.height + 20
    with atomic_path(path) as tmp:  # 256 colours, as the README gallery: a small committed file
        canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            tmp, format="PNG", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--robust", type=Path, default=REPO / "checkpoints" / "robust" / "classifier.pt")
    parser.add_argument("--standard", type=Path, default=REPO / "models" / "classifier.pt")
    parser.add_argument("--classes", default="all", help="class_viz.classes (all = the dataset's 100)")
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints" / "meaning")
    parser.add_argument("--metrics", type=Path, default=REPO / "metrics" / "meaning.json")
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "meaning.png")
    parser.add_argument("--images", type=int, default=16, help="val images inverted (spread over the classes)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="class_viz runs per setting, seeds 0..N-1 (N x 100 images; figures are means, *_min the worst seed)")
    parser.add_argument("--reuse", action="store_true", help="keep the runs already under --out (same code only)")
    parser.add_argument("--train", action="append", default=[], metavar="OVERRIDE",
                        help="an override for training the robust model when --robust is missing (repeatable), "
                             "e.g. --train train.adversarial.eps=510 --train train.adversarial.steps=2")
    parser.add_argument("--only", choices=["class_viz"], help="stop after the class visualizations (no metrics file)")
    args = parser.parse_args()
    robust, standard = args.robust.resolve(), args.standard.resolve()
    if not standard.is_file():
        sys.exit(f"{standard}: no standard classifier (run dvc repro train first)")
    if not robust.is_file():
        train_robust(robust, args.train)
    robust_train = json.loads((robust.parent / "metrics" / "train.json").read_text())

    on_standard = (f"paths.classifier={standard}",)
    on_robust = (f"paths.classifier={robust}", "experiment=robust")
    classes = f"class_viz.classes={args.classes}"
    job = functools.partial(run_job, reuse=args.reuse)
    print("class visualizations, each judged by the other model:", flush=True)
    settings = {  # name: (model overrides, class_viz overrides, judge)
        "pixel": (on_standard, (), robust),
        "fourier": (on_standard, ("class_viz=fourier",), robust),
        "robust": (on_robust, (), standard),
        "robust_fourier": (on_robust, ("class_viz=fourier",), standard),
    }
    viz = {name: [job("class_viz", args.out / (name if seed == 0 else f"{name}_seed{seed}"), *model, classes, *extra,
                      f"class_viz.judge={judge}", f"seed={seed}") for seed in range(args.seeds)]
           for name, (model, extra, judge) in settings.items()}
    pixel, fourier, robust_viz, robust_fourier = (mean_metrics(viz[name]) for name in settings)
    if args.only == "class_viz":
        return
    print("inversion on each model:", flush=True)
    inversion = ("inversion.val_index=null", f"inversion.images={args.images}", "inversion.layers=[0]")  # + shallow and deep: always
    inv_standard = job("inversion", args.out / "inversion_standard", *on_standard, *inversion)
    inv_robust = job("inversion", args.out / "inversion_robust", *on_robust, *inversion)
    print("deep-layer inversion at shared image priors (TV weights):", flush=True)
    per_image = {name: torch.tensor(deep_psnr_by_tv(args.out / f"inversion_{name}", model, args.images, reuse=args.reuse))
                 for name, model in (("standard", on_standard), ("robust", on_robust))}  # (image, weight)
    standard_by_tv, robust_by_tv = per_image["standard"].mean(0).tolist(), per_image["robust"].mean(0).tolist()
    image_gaps = per_image["robust"] - per_image["standard"]
    gaps = image_gaps.mean(0).tolist()
    print("the same on as many other val images (each model's best weight above, checked):", flush=True)
    data = load_prepared(compose_config("config").paths.prepared)
    other_images = between(data.split("val").labels, args.images)
    other_per_image = {name: torch.tensor(deep_psnr_by_tv(args.out / f"inversion_{name}_heldout", model, other_images,
                                                          reuse=args.reuse))
                       for name, model in (("standard", on_standard), ("robust", on_robust))}
    heldout = {name: rows.mean(0).tolist() for name, rows in other_per_image.items()}
    both_sets = torch.cat([image_gaps, other_per_image["robust"] - other_per_image["standard"]]).mean(0).tolist()
    best = {name: max(range(len(TV_WEIGHTS)), key=by_tv.__getitem__)
            for name, by_tv in (("standard", standard_by_tv), ("robust", robust_by_tv))}

    result = {
        "pixel_cross_model_top1": pixel["cross_model_top1"],
        "fourier_cross_model_top1": fourier["cross_model_top1"],
        "robust_cross_model_top1": robust_viz["cross_model_top1"],
        "robust_fourier_cross_model_top1": robust_fourier["cross_model_top1"],
        "pixel_mean_target_prob": pixel["mean_target_prob"],
        "fourier_mean_target_prob": fourier["mean_target_prob"],
        "robust_mean_target_prob": robust_viz["mean_target_prob"],
        "fourier_seconds_per_iteration_ratio": fourier["seconds"] / pixel["seconds"],
        "robust_val_accuracy": robust_train["val_accuracy"],
        "robust_pgd_accuracy": robust_train["pgd_accuracy"],
        "robust_pgd_eps": robust_train["pgd_eps"],
        "robust_train_minutes": robust_train["train_minutes"],
        "standard_deep_psnr": inv_standard["deep_psnr"],
        "robust_deep_psnr": inv_robust["deep_psnr"],
        "standard_shallow_psnr": inv_standard["shallow_psnr"],
        "robust_shallow_psnr": inv_robust["shallow_psnr"],
        "deep_psnr_gap": inv_robust["deep_psnr"] - inv_standard["deep_psnr"],
        "deep_psnr_gap_prior_free": gaps[TV_WEIGHTS.index(0.0)],
        "deep_psnr_gap_best": max(robust_by_tv) - max(standard_by_tv),  # each model at its best weight
        "deep_psnr_gap_min": min(gaps),  # over the shared weights
        "deep_psnr_gap_best_heldout": heldout["robust"][best["robust"]] - heldout["standard"][best["standard"]],
        "deep_psnr_by_tv_heldout": {f"{w:g}": {"standard": s, "robust": r, "gap": r - s}
                                    for w, s, r in zip(TV_WEIGHTS, heldout["standard"], heldout["robust"])},
        "heldout_val_indices": other_images,
        "deep_psnr_gap_both_sets": {f"{w:g}": gap for w, gap in zip(TV_WEIGHTS, both_sets)},  # 2 x --images images
        "deep_psnr_by_tv": {f"{w:g}": {"standard": s, "robust": r, "gap": gap, "gap_worst_image": float(g.min()),
                                       "robust_better_images": int((g > 0).sum())}
                            for w, s, r, gap, g in zip(TV_WEIGHTS, standard_by_tv, robust_by_tv, gaps, image_gaps.T)},
        "pixel_cross_model_top1_min": pixel["cross_model_top1_min"],
        "fourier_cross_model_top1_min": fourier["cross_model_top1_min"],
        "robust_cross_model_top1_min": robust_viz["cross_model_top1_min"],
        "fourier_to_pixel_ratio": fourier["cross_model_top1"] / max(pixel["cross_model_top1"], 1e-9),
        "fourier_to_pixel_ratio_min": min(f["cross_model_top1"] / max(p["cross_model_top1"], 1e-9)
                                          for p, f in zip(viz["pixel"], viz["fourier"])),  # the worst seed's
        "num_seeds": args.seeds,
        "num_classes": int(pixel["num_classes"]),
        "num_images": inv_standard["num_images"],
    }
    write_json(args.metrics, result)
    names = data.class_names
    side_by_side({"standard model, pixel space (default)": args.out / "pixel",
                            "standard model, class_viz=fourier": args.out / "fourier",
                            "robust model, pixel space (default)": args.out / "robust",
                            "robust model, class_viz=fourier": args.out / "robust_fourier"}, args.figure, names)
    chance = 1 / result["num_classes"]
    print(f"\ncross-model top-1 (chance {chance:.3f}), {result['num_classes']} classes x {args.seeds} seeds "
          f"(mean; worst seed in brackets):")
    print(f"  standard, pixel   {result['pixel_cross_model_top1']:.3f} [{result['pixel_cross_model_top1_min']:.2f}] (target probability on its own model "
          f"{result['pixel_mean_target_prob']:.4f})")
    print(f"  standard, fourier {result['fourier_cross_model_top1']:.3f} = "
          f"{result['fourier_to_pixel_ratio']:.1f}x pixel (target >= 3x),"
          f" {result['fourier_to_pixel_ratio_min']:.1f}x for the worst seed,"
          f" target probability {result['fourier_mean_target_prob']:.4f} (target >= 0.99), "
          f"{result['fourier_seconds_per_iteration_ratio']:.2f}x the time per iteration (target <= 1.3)")
    print(f"  robust, pixel     {result['robust_cross_model_top1']:.3f} (target >= 0.20); fourier "
          f"{result['robust_fourier_cross_model_top1']:.3f}")
    print(f"robust model: clean val top-1 {result['robust_val_accuracy']:.4f} (target >= 0.45), PGD-20 top-1 "
          f"{result['robust_pgd_accuracy']:.4f} at L2 {result['robust_pgd_eps']:g} (pixel units), trained in "
          f"{result['robust_train_minutes']:.1f} min")
    print(f"deep-layer inversion PSNR: standard {result['standard_deep_psnr']:.2f} dB, robust "
          f"{result['robust_deep_psnr']:.2f} dB at the job's defaults: {result['deep_psnr_gap']:+.2f} dB (target: +3 dB)")
    print("  at shared TV weights (tv_scaling none): " + ", ".join(
        f"{w}: {v['standard']:.2f} / {v['robust']:.2f} ({v['gap']:+.2f})" for w, v in result["deep_psnr_by_tv"].items()))
    print(f"  no prior {result['deep_psnr_gap_prior_free']:+.2f} dB; each at its best weight "
          f"{result['deep_psnr_gap_best']:+.2f} dB; smallest over the weights {result['deep_psnr_gap_min']:+.2f} dB")
    print(f"  on {len(other_images)} other val images, each at the weight chosen above "
          f"({TV_WEIGHTS[best['standard']]:g} / {TV_WEIGHTS[best['robust']]:g}): "
          f"{result['deep_psnr_gap_best_heldout']:+.2f} dB; per weight: " + ", ".join(
              f"{w}: {v['gap']:+.2f}" for w, v in result["deep_psnr_by_tv_heldout"].items()))
    print(f"  over both sets ({2 * len(other_images)} images) per weight: " + ", ".join(
        f"{w}: {gap:+.2f}" for w, gap in result["deep_psnr_gap_both_sets"].items()))
    print(f"wrote {args.metrics} and {args.figure}")


if __name__ == "__main__":
    main()
