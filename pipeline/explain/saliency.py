"""Job ``saliency``: class saliency maps (Simonyan et al. 2014, sec. 3.1) with measured faithfulness.

For each configured view (a selection of val images) a figure of the images over their maps;
then, on a larger random sample, deletion / insertion AUC against a random pixel order (Petsiuk
et al. 2018) and the cascading model-randomisation check (Adebayo et al. 2018).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from omegaconf import DictConfig

from pipeline.track import figures
from pipeline.explain.attribution.base import Attribution
from pipeline.explain.attribution.registry import factory
from pipeline.explain.faithfulness import auc, cascading_randomization, curves, pixel_ranks, random_ranks
from pipeline.job import hydra_job
from pipeline.model.architectures import ImageClassifier
from pipeline.track.outputs import job_outputs, save_figure, save_metrics
from pipeline.data.selection import select_images
from pipeline.explain.subject import Subject, load_subject

log = logging.getLogger(__name__)


def view_figure(subject: Subject, images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
                targets: torch.Tensor, maps: torch.Tensor, method: str):
    """Images (true / predicted class) over their heat maps (the explained class)."""
    predicted = probs.argmax(1)
    captions = [f"true: {subject.class_names[int(y)]} | pred: {subject.label(int(p), float(probs[i, p]))}"
                for i, (y, p) in enumerate(zip(labels, predicted))]
    captions += [f"{method}: {subject.class_names[int(t)]}" for t in targets]
    tiles = [*images, *[figures.heatmap(m) for m in maps]]
    return figures.grid(tiles, captions, columns=len(images), scale=3, caption_lines=3, font_size=11)


def faithfulness(subject: Subject, make_method: Callable[[ImageClassifier], Attribution], s: DictConfig,
                 cfg: DictConfig, index: torch.Tensor, targets: torch.Tensor) -> dict:
    import mlflow

    e = s.evaluation
    images = subject.data.split("val").images[index].float()
    started = time.perf_counter()
    maps = make_method(subject.model).maps(images, targets)
    seconds = time.perf_counter() - started
    options = dict(steps=e.steps, blur_sigma=e.blur_sigma, batch_size=max(s.batch_size, 250), precision=s.precision)
    deletion, insertion = curves(subject.model, images, targets, pixel_ranks(maps), **options)
    pixels = maps[0].numel()
    r_deletion, r_insertion = curves(subject.model, images, targets, random_ranks(len(images), pixels, cfg.seed),
                                     **options)
    for k in range(deletion.shape[1]):  # mean curves, plotted by the MLflow UI against the step (= k/steps removed)
        mlflow.log_metrics({"curve_deletion": float(deletion[:, k].mean()),
                            "curve_insertion": float(insertion[:, k].mean()),
                            "curve_random_deletion": float(r_deletion[:, k].mean()),
                            "curve_random_insertion": float(r_insertion[:, k].mean())}, step=k)
    metrics = {"deletion_auc": float(auc(deletion).mean()), "insertion_auc": float(auc(insertion).mean()),
               "random_deletion_auc": float(auc(r_deletion).mean()),
               "random_insertion_auc": float(auc(r_insertion).mean()),
               "images_per_second": len(images) / seconds, "num_images": len(images)}
    if e.sanity_images:
        k = min(int(e.sanity_images), len(images))
        cascade = cascading_randomization(
            subject.model, subject.meta["arch"],
            lambda model: make_method(model).maps(images[:k], targets[:k]), seed=cfg.seed)
        for step, (layer, rho) in enumerate(cascade):
            mlflow.log_metric("sanity_spearman_cascade", rho, step=step)
            metrics[f"sanity_spearman_{layer}"] = rho
        metrics["sanity_spearman"] = cascade[-1][1]  # all layers re-initialised
        metrics["sanity_spearman_top_layer"] = cascade[0][1]
    return metrics


def run(cfg: DictConfig) -> dict:
    s = cfg.saliency
    subject = load_subject(cfg, s.device, s.precision)
    make_method = factory(s.method, s.options, precision=s.precision, batch_size=s.batch_size, seed=cfg.seed)
    method = make_method(subject.model)  # bad method/options fail before any work
    val = subject.data.split("val")
    views = {}  # every selection and target is checked before the run starts
    for name, spec in s.views.items():
        index = select_images(spec, subject.data, seed=cfg.seed, probabilities=subject.val_probabilities)
        images, labels = val.images[index].float(), val.labels[index]
        probs = subject.probabilities(images)
        views[name] = (index, images, labels, probs, subject.targets(s.target, labels, probs.argmax(1)))
    evaluation = None
    if s.evaluation.n:
        index = select_images(s.evaluation, subject.data, seed=cfg.seed, probabilities=subject.val_probabilities)
        labels = val.labels[index]
        evaluation = (index, subject.targets(s.target, labels, subject.val_probabilities()[index].argmax(1)))
    with job_outputs(cfg, "saliency", subject) as tmp:
        for name, (index, images, labels, probs, targets) in views.items():
            maps = method.maps(images, targets)
            figure = view_figure(subject, images, labels, probs, targets, maps, s.method)
            save_figure(tmp, figure, name, main=name == next(iter(views)))
            (tmp / f"{name}_indices.txt").write_text("\n".join(str(int(i)) for i in index) + "\n")
            log.info("view %r: val images %s", name, index.tolist())
        metrics = faithfulness(subject, make_method, s, cfg, *evaluation) if evaluation else {}
        save_metrics(cfg, "saliency", metrics)
        if metrics:
            log.info("deletion AUC %.3f (random %.3f), insertion AUC %.3f (random %.3f), sanity Spearman %s, "
                     "%.0f images/s", metrics["deletion_auc"], metrics["random_deletion_auc"],
                     metrics["insertion_auc"], metrics["random_insertion_auc"],
                     f"{metrics['sanity_spearman']:.3f}" if "sanity_spearman" in metrics else "skipped",
                     metrics["images_per_second"])
    return metrics


main = hydra_job("saliency", run)

if __name__ == "__main__":
    main()
