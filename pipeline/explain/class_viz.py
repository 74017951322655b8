"""Job ``class_viz``: class model visualization (Simonyan et al. 2014, sec. 2; Yosinski et al. 2015).

From noise around the mean image, ascend the unnormalised score of each class under jitter,
L2 decay, blur and clipping; all requested classes are optimised as one batch. Each image is
then checked as a user would see it: its target probability as computed, after saving as an
8-bit PNG, and after shifting it a few pixels (an image that only works pixel-exact encodes a
brittle pattern rather than the class).
"""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig, ListConfig

from pipeline.track import figures, tracking
from pipeline.errors import ConfigError
from pipeline.job import hydra_job
from pipeline.model.architectures import ImageClassifier
from pipeline.model.precision import probabilities
from pipeline.explain.engine.objectives import ClassScore
from pipeline.track.outputs import job_outputs, save_figure, save_metrics
from pipeline.explain.engine.regime import Regime, from_config
from pipeline.explain.engine.render import Result, StepLog, initial_images, item_seeds, optimize
from pipeline.explain.subject import Subject, load_subject

log = logging.getLogger(__name__)

def target_classes(spec, subject: Subject) -> list[int]:
    """``all`` | one class | a list, as class indices (names checked, did-you-mean on typos)."""
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(subject.data.num_classes))
    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    if not items:
        raise ConfigError("class_viz.classes is empty")
    return [subject.data.class_index(c) for c in items]


def visualize_classes(model: ImageClassifier, classes: list[int], regime: Regime, *, seed: int, init_std: float,
                      progress: bool | None = None, log: StepLog | None = None) -> Result:
    """One image per class from noise, all classes in one batch: maximise S_y under ``regime``."""
    seeds = item_seeds(seed, classes)
    init = initial_images(model.mean_image.detach().cpu(), seeds, init_std)
    objective = regime.objective(ClassScore(torch.tensor(classes)))
    return optimize(model, init.to(model.mean_image.device), objective, regime, seeds=seeds, progress=progress,
                    desc="class_viz", log=log)


def shifted(images: torch.Tensor, pixels: int, seed: int) -> torch.Tensor:
    """Each image rolled by ``pixels`` in a random diagonal direction."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (len(images), 2), generator=generator) * 2 - 1
    return torch.stack([torch.roll(im, (int(sy) * pixels, int(sx) * pixels), dims=(-2, -1))
                        for im, (sy, sx) in zip(images, signs)])


def run(cfg: DictConfig) -> dict:
    c = cfg.class_viz
    if int(c.batch_size) < 1:
        raise ConfigError(f"class_viz.batch_size must be >= 1, got {c.batch_size}")
    subject = load_subject(cfg, c.device, c.precision)
    classes = target_classes(c.classes, subject)
    regime = from_config(c.regime, center=subject.model.mean_image.detach().cpu())  # fails before the run starts
    judge = subject.judge(c.judge) if c.get("judge") else None
    with job_outputs(cfg, "class_viz", subject) as tmp:
        started = time.perf_counter()
        images = []
        for lo in range(0, len(classes), int(c.batch_size)):
            chunk = classes[lo:lo + int(c.batch_size)]
            with tracking.StepLogger(prefix="" if lo == 0 else f"batch{lo // int(c.batch_size)}.",
                                     key="class_viz_evolution",
                                     render=lambda x: figures.grid(x[:36], scale=1, pad=2)) as steps_log:
                images.append(visualize_classes(subject.model, chunk, regime, seed=cfg.seed, init_std=c.init_std,
                                                progress=cfg.progress, log=steps_log).images.cpu())
        seconds = time.perf_counter() - started
        images = torch.cat(images)
        target = torch.tensor(classes)
        saved = images.round().clamp(0, 255)  # exactly what the PNGs below hold
        moved = shifted(saved, int(c.shift), cfg.seed)
        p = {name: subject.probabilities(x) for name, x in (("float", images), ("saved", saved), ("shifted", moved))}
        prob = p["float"].gather(1, target[:, None])[:, 0]
        metrics = {
            "mean_target_prob": float(prob.mean()), "min_target_prob": float(prob.min()),
            "top1_rate": float((p["float"].argmax(1) == target).float().mean()),
            "quantized_top1_rate": float((p["saved"].argmax(1) == target).float().mean()),
            "shifted_top1_rate": float((p["shifted"].argmax(1) == target).float().mean()),
            "num_classes": len(classes), "seconds": seconds,
        }
        if judge is not None:  # cross-model recognition: does an independent classifier see the class too?
            judge_model, meta = judge
            seen = probabilities(judge_model, saved, subject.precision)
            metrics["cross_model_top1"] = float((seen.argmax(1) == target).float().mean())
            metrics["cross_model_target_prob"] = float(seen.gather(1, target[:, None]).mean())
            import mlflow

            mlflow.set_tags({"judge": str(c.judge), "judge_weights_sha256": str(meta.get("state_dict_sha256"))})
            log.info("an independent classifier (%s) sees the target class in %.1f%% of them", c.judge,
                     100 * metrics["cross_model_top1"])
        (tmp / "classes").mkdir()
        for k, image in zip(classes, saved):
            figures.save_png(image, tmp / "classes" / f"{k:03d}_{subject.data.wnids[k]}.png")
        captions = [f"{subject.class_names[k]} ({float(q):.2f})" for k, q in zip(classes, prob)]
        figure = figures.grid(list(saved), captions, columns=min(10, len(classes)), scale=2, caption_lines=2,
                              font_size=10)
        save_figure(tmp, figure, "grid", main=True)
        save_metrics(cfg, "class_viz", metrics)
        log.info("%d classes in %.1fs: mean target probability %.3f (min %.3f), top-1 %.1f%%, after PNG %.1f%%, "
                 "shifted %d px %.1f%%", len(classes), seconds, metrics["mean_target_prob"],
                 metrics["min_target_prob"], 100 * metrics["top1_rate"], 100 * metrics["quantized_top1_rate"],
                 int(c.shift), 100 * metrics["shifted_top1_rate"])
    return metrics


main = hydra_job("class_viz", run)

if __name__ == "__main__":
    main()
