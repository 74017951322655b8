"""Job ``fooling``: fooling images (Szegedy et al. 2014; the CS231n ImageGradients notebook).

Correctly classified val images are pushed toward a target class by gradient ascent on its
score until the model predicts it (optionally with a confidence), each image stopping on its own.
Every result is then saved as a PNG, read back and classified again: a fooling image that only
works before rounding to 8 bits is not one a user can share.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from pipeline.track import figures, tracking
from pipeline.errors import ConfigError
from pipeline.files import write_csv
from pipeline.job import hydra_job
from pipeline.model.architectures import ImageClassifier
from pipeline.explain.engine.objectives import L2, ClassScore
from pipeline.track.outputs import job_outputs, save_figure, save_metrics
from pipeline.track.tracking import log_rows
from pipeline.explain.engine.regime import Regime
from pipeline.explain.engine.render import Result, StepLog, optimize
from pipeline.explain.engine.steps import step_rule
from pipeline.data.selection import select_images
from pipeline.explain.subject import Subject, load_subject
from pipeline.model.precision import as_input, forward
from pipeline.explain.engine.transforms import Clip, Quantize

log = logging.getLogger(__name__)


def make_fooling_images(model: ImageClassifier, images: torch.Tensor, targets: torch.Tensor, *,
                        max_iterations: int = 100, lr: float = 1.0, step: str = "sign", l2: float = 0.0,
                        confidence: float = 0.0, quantize: bool = True, clip: bool = True,
                        precision: str = "fp32", progress: bool | None = None,
                        log: StepLog | None = None, show_every: int = 0) -> Result:
    """Ascend S_target from ``images`` (float pixels) until argmax = target and P(target) >= confidence.

    ``step``: ``raw`` (x += lr * dS/dx, the reference), ``normalized`` (a step of L2 length lr in
    pixel units), ``sign`` (every pixel moves by lr: the smallest Linf change) or ``adam``; ``l2``
    pulls toward the original image. Pixels stay in 0..255 (``clip=False``: unbounded, as in the CS231n
    reference); with ``quantize`` they are rounded to integers after every step, so the image tested
    for success is exactly the 8-bit file saved.
    With ``precision="bf16"`` the ascent runs under bf16 autocast (about 1.7x faster on CPU) and
    every success is confirmed by the fp32 model before it counts.
    """
    if not 0.0 <= confidence < 1.0:
        raise ConfigError(f"confidence must be in [0, 1), got {confidence}")
    targets = torch.as_tensor(targets, dtype=torch.long)
    originals = images.detach().float()

    def passes(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = scores.detach().float().softmax(1)
        target = target.to(probs.device)
        return (probs.argmax(1) == target) & (probs.gather(1, target[:, None])[:, 0] >= confidence)

    regime = Regime(steps=max_iterations, step=step_rule(step, lr), precision=precision, show_every=show_every,
                    constraints=[*([Clip(0.0, 255.0)] if clip else []), *([Quantize()] if quantize else [])])

    def ascend(start: torch.Tensor, which: torch.Tensor, regime: Regime, log: StepLog | None = None) -> Result:
        objective = ClassScore(targets[which])
        if l2 > 0:
            objective = objective - l2 * L2(originals[which], per_image=True)
        return optimize(model, start, objective, regime, progress=progress, desc="fooling", log=log,
                        stop=lambda probe: passes(probe.scores(), targets[which][probe.index]))

    everything = torch.arange(len(originals))
    result = ascend(originals, everything, regime, log)
    if precision == "fp32":
        return result
    # A reduced-precision stop test can accept an image the fp32 model does not yet misclassify:
    # check in fp32, and continue those in fp32 (their updates count toward max_iterations).
    with torch.no_grad():
        agreed = passes(forward(model, as_input(result.images.to(model.mean_image.device)), "fp32"), targets)
    redo = (result.stopped & ~agreed.cpu()).nonzero()[:, 0]
    if len(redo):
        more = ascend(result.images[redo], redo, dataclasses.replace(regime, precision="fp32", show_every=0))
        result.images[redo] = more.images
        result.steps[redo] += more.steps
        result.stopped[redo] = more.stopped & (result.steps[redo] <= max_iterations)
    return result


def random_other_classes(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (labels + torch.randint(1, num_classes, labels.shape, generator=generator)) % num_classes


def png_round_trip(image: torch.Tensor, path: Path) -> torch.Tensor:
    """Save as an 8-bit PNG, read it back: the float pixels a user of the file would get."""
    figures.save_png(image, path)
    with Image.open(path) as f:
        return torch.from_numpy(np.asarray(f.convert("RGB"), dtype=np.float32).transpose(2, 0, 1).copy())


def difference_tile(original: torch.Tensor, fooling: torch.Tensor) -> tuple[np.ndarray, float]:
    """The difference stretched so its largest |value| spans half the range (grey = unchanged)."""
    diff = fooling - original
    top = float(diff.abs().max())
    gain = 127.0 / top if top > 0 else 1.0
    return figures.to_uint8_hwc(127.5 + diff * gain), gain


def merge_histories(histories: list[list[dict]]) -> list[dict]:
    """Per-step records of several batches as one: active-weighted means, summed counts."""
    merged = []
    for t in range(max((len(h) for h in histories), default=0)):
        records = [h[t] for h in histories if t < len(h)]
        active = sum(r["active"] for r in records)
        row = {"active": active, "stopped": sum(r.get("stopped", 0.0) for r in records)}
        for key in records[0]:
            if key not in row:
                row[key] = sum(r[key] * r["active"] for r in records) / active
        merged.append(row)
    return merged


def summary_figure(subject: Subject, rows: list[dict]):
    tiles, captions = [], []
    for r in rows:
        diff, gain = difference_tile(r["original"], r["fooling"])
        tiles += [r["original"], r["fooling"], diff]
        captions += [f"original: {subject.label(r['label'], r['p_label'])}",
                     f"fooling: {subject.label(r['target'], r['p_target'])}{'' if r['saved_fools'] else ' (PNG: not)'}",
                     f"difference x{gain:.0f}, Linf {r['linf']:.1f}"]
    return figures.grid(tiles, captions, columns=3, scale=3, caption_lines=2, font_size=11)


def run(cfg: DictConfig) -> dict:
    f = cfg.fooling
    Regime(steps=f.max_iterations, step=step_rule(f.step, f.lr), precision=f.precision)  # bad settings fail first
    if int(f.batch_size) < 1:
        raise ConfigError(f"fooling.batch_size must be >= 1, got {f.batch_size}")
    subject = load_subject(cfg, f.device, "fp32")  # success is judged by the model as users run it
    spec = dict(f.images)
    if spec.get("select") != "correct":
        raise ConfigError("fooling starts from correctly classified images: use fooling.images.select=correct")
    val = subject.data.split("val")
    index = select_images(spec, subject.data, seed=cfg.seed, probabilities=subject.val_probabilities)
    images, labels = val.images[index].float(), val.labels[index]
    if f.target == "random":
        targets = random_other_classes(labels, subject.data.num_classes, cfg.seed)
    else:
        targets = subject.targets(f.target, labels)
        if bool((targets == labels).any()):
            log.warning("%d images already belong to the target class; they count as fooled at step 0",
                        int((targets == labels).sum()))
    with job_outputs(cfg, "fooling", subject) as tmp:
        started = time.perf_counter()
        results = []
        for k, lo in enumerate(range(0, len(images), int(f.batch_size))):
            sl = slice(lo, lo + int(f.batch_size))
            snapshots = tracking.StepLogger(key="fooling_evolution", log_metrics=False,  # metrics: merged below
                                            render=lambda x, n=f.figure_examples: figures.grid(x[:n], scale=2))
            results.append(make_fooling_images(
                subject.model, images[sl], targets[sl], max_iterations=f.max_iterations, lr=f.lr, step=f.step,
                l2=f.l2, confidence=f.confidence, quantize=f.quantize, clip=f.clip, precision=f.precision,
                progress=cfg.progress,
                log=snapshots if k == 0 else None, show_every=f.show_every if k == 0 else 0))
        seconds = time.perf_counter() - started
        with tracking.StepLogger() as steps_log:
            for t, record in enumerate(merge_histories([r.history for r in results])):
                steps_log.metrics(t, record)
        fooling = torch.cat([r.images for r in results])
        iterations = torch.cat([r.steps for r in results])
        success = torch.cat([r.stopped for r in results])

        (tmp / "images").mkdir()
        saved = torch.stack([png_round_trip(im, tmp / "images" / f"val{int(i):04d}_to_{int(t):03d}.png")
                             for im, i, t in zip(fooling, index, targets)])
        p_float = subject.probabilities(fooling)
        p_saved = subject.probabilities(saved)
        saved_fools = (p_saved.argmax(1) == targets) & success
        diff = fooling - images
        l2 = diff.flatten(1).norm(dim=1)
        linf = diff.flatten(1).abs().amax(dim=1)
        ok = success.nonzero()[:, 0].tolist()
        metrics = {
            "success_rate": float(success.float().mean()),
            "quantized_success_rate": float(saved_fools.float().mean()),
            "median_iterations": float(statistics.median(iterations[ok].tolist())) if ok else float("nan"),
            "max_iterations": float(iterations[ok].max()) if ok else float("nan"),
            "median_l2": float(statistics.median(l2[ok].tolist())) if ok else float("nan"),
            "median_linf": float(statistics.median(linf[ok].tolist())) if ok else float("nan"),
            "num_images": len(images),
            "seconds": seconds,
        }
        p_orig = subject.val_probabilities()[index]  # computed for the selection already
        rows = [{"original": images[i], "fooling": fooling[i], "label": int(labels[i]), "target": int(targets[i]),
                 "p_label": float(p_orig[i, labels[i]]), "p_target": float(p_float[i, targets[i]]),
                 "saved_fools": bool(saved_fools[i]), "linf": float(linf[i])} for i in ok[: f.figure_examples]]
        if rows:
            save_figure(tmp, summary_figure(subject, rows), "summary", main=True)
        results = [{"val_index": int(index[i]), "label": subject.data.wnids[int(labels[i])],
                    "target": subject.data.wnids[int(targets[i])], "fooled": int(success[i]),
                    "png_fools": int(saved_fools[i]), "iterations": int(iterations[i]), "l2": f"{float(l2[i]):.3f}",
                    "linf": f"{float(linf[i]):.3f}"} for i in range(len(images))]
        write_csv(tmp / "results.csv", results)
        log_rows([{**row, "label_name": subject.class_names[int(labels[i])],
                   "target_name": subject.class_names[int(targets[i])], "l2": float(l2[i]), "linf": float(linf[i])}
                  for i, row in enumerate(results)], "results.json")  # the UI's table view; results.csv stays the output
        write_csv(Path(cfg.paths.plots) / "fooling_iterations.csv", [  # DVC plot: iterations each image needed
            {"image": k, "iterations": int(iterations[i]), "linf": float(linf[i]), "fooled": int(success[i])}
            for k, i in enumerate(sorted(range(len(images)), key=lambda i: int(iterations[i])))])
        save_metrics(cfg, "fooling", metrics)
        log.info("fooled %.1f%% (%.1f%% after PNG round trip) of %d images; median %s iterations, "
                 "median Linf %.2f, %.1fs", 100 * metrics["success_rate"], 100 * metrics["quantized_success_rate"],
                 len(images), metrics["median_iterations"], metrics["median_linf"], seconds)
    return metrics


main = hydra_job("fooling", run)

if __name__ == "__main__":
    main()
