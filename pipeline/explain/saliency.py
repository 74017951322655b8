"""Job ``saliency``: class saliency maps (Simonyan et al. 2014, sec. 3.1) with measured faithfulness.

For each configured view (a selection of val images) a figure of the images over their maps;
then, on a larger random sample, deletion / insertion AUC against a random pixel order (Petsiuk
et al. 2018) and the cascading model-randomisation check (Adebayo et al. 2018).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from pipeline.track import figures
from pipeline.explain.attribution.base import Attribution
from pipeline.explain.attribution.registry import factory
from pipeline.explain.faithfulness import (auc, cascading_randomization, curves, infidelity, max_sensitivity,
                                           pixel_ranks, random_ranks)
from pipeline.job import hydra_job
from pipeline.model.architectures import ImageClassifier
from pipeline.track.outputs import job_outputs, save_figure, save_metrics, save_table
from pipeline.data.selection import select_images
from pipeline.explain.subject import Subject, load_subject
from pipeline.files import write_csv

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


def faithfulness(subject: Subject, method: Attribution, make_method: Callable[[ImageClassifier], Attribution],
                 s: DictConfig, cfg: DictConfig, index: torch.Tensor, targets: torch.Tensor) -> dict:
    import mlflow

    e = s.evaluation
    images = subject.data.split("val").images[index].float()
    started = time.perf_counter()
    maps = method.maps(images, targets)
    seconds = time.perf_counter() - started
    options = dict(steps=e.steps, blur_sigma=e.blur_sigma, batch_size=max(s.batch_size, 250), precision=s.precision)
    deletion, insertion = curves(subject.model, images, targets, pixel_ranks(maps), **options)
    pixels = maps[0].numel()
    r_deletion, r_insertion = curves(subject.model, images, targets, random_ranks(len(images), pixels, cfg.seed),
                                     **options)
    rows = []
    for k in range(deletion.shape[1]):  # mean curves, plotted by the MLflow UI against the step (= k/steps removed)
        mlflow.log_metrics({"curve_deletion": float(deletion[:, k].mean()),
                            "curve_insertion": float(insertion[:, k].mean()),
                            "curve_random_deletion": float(r_deletion[:, k].mean()),
                            "curve_random_insertion": float(r_insertion[:, k].mean())}, step=k)
        rows.append({"fraction": k / (deletion.shape[1] - 1), "deletion": float(deletion[:, k].mean()),
                     "insertion": float(insertion[:, k].mean()), "random_deletion": float(r_deletion[:, k].mean()),
                     "random_insertion": float(r_insertion[:, k].mean())})
    write_csv(Path(cfg.paths.plots) / "saliency_curves.csv", rows)  # DVC plot: dvc plots show
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


def evaluate_method(subject: Subject, method: Attribution, make_method, c: DictConfig, cfg: DictConfig,
                    images: torch.Tensor, targets: torch.Tensor, random: tuple[torch.Tensor, torch.Tensor],
                    options: dict) -> dict:
    """One row of the comparison table: faithfulness (deletion / insertion beside the random order),
    model randomisation (``make_method`` builds the method on the re-initialised models), infidelity
    and max-sensitivity, speed."""
    started = time.perf_counter()
    maps = method.maps(images, targets)
    seconds = time.perf_counter() - started
    deletion, insertion = curves(subject.model, images, targets, pixel_ranks(maps), **options)
    row = {"deletion_auc": float(auc(deletion).mean()), "insertion_auc": float(auc(insertion).mean()),
           "random_deletion_auc": float(auc(random[0]).mean()), "random_insertion_auc": float(auc(random[1]).mean())}
    k = min(int(c.sanity_images), len(images))
    if k:
        cascade = cascading_randomization(subject.model, subject.meta["arch"],
                                          lambda model: make_method(model).maps(images[:k], targets[:k]), seed=cfg.seed)
        row["sanity_spearman_top_layer"] = cascade[0][1]  # only the class layer re-initialised
        row["sanity_spearman"] = cascade[-1][1]  # every layer re-initialised
    k = min(int(c.robustness_images), len(images))
    if k:
        attributions = method.attribute(images[:k], targets[:k])
        row["infidelity"] = float(infidelity(method, images[:k], targets[:k], attributions, noise=c.infidelity_noise,
                                             samples=c.infidelity_samples, seed=cfg.seed).mean())
        row["max_sensitivity"] = float(max_sensitivity(method, images[:k], targets[:k], attributions,
                                                       radius=c.sensitivity_radius, samples=c.sensitivity_samples,
                                                       seed=cfg.seed).mean())
    row["images_per_second"] = len(images) / seconds
    return row


def compare_methods(subject: Subject, s: DictConfig, cfg: DictConfig, index: torch.Tensor, targets: torch.Tensor,
                    view: tuple) -> tuple[dict, object]:
    """Every method of ``saliency.methods`` on the same images: ({name: row}, the figure with one row of
    maps per method over the first view's images)."""
    c = s.comparison
    n = min(int(c.n), len(index))
    images, targets = subject.data.split("val").images[index[:n]].float(), targets[:n]
    options = dict(steps=c.steps, blur_sigma=s.evaluation.blur_sigma, batch_size=max(s.batch_size, 250),
                   precision=s.precision)
    random = curves(subject.model, images, targets, random_ranks(n, images[0, 0].numel(), cfg.seed), **options)
    common = dict(precision=s.precision, batch_size=s.batch_size, seed=cfg.seed)
    table, rows = {}, []
    _, view_images, labels, _, view_targets = view
    for name in s.methods:
        make_method = factory(name, **common)
        method = make_method(subject.model)
        started = time.perf_counter()
        table[name] = evaluate_method(subject, method, make_method, c, cfg, images, targets, random, options)
        rows.append(method.maps(view_images, view_targets))
        log.info("%s: deletion AUC %.3f, insertion AUC %.3f, sanity Spearman %s, infidelity %s, max-sensitivity %s "
                 "(%.0f s)", name, table[name]["deletion_auc"], table[name]["insertion_auc"],
                 *(f"{table[name][k]:.3g}" if k in table[name] else "-"
                   for k in ("sanity_spearman", "infidelity", "max_sensitivity")), time.perf_counter() - started)
    tiles = [*view_images, *[figures.heatmap(m) for maps in rows for m in maps]]
    captions = [subject.class_names[int(y)] for y in labels] + [name for name in s.methods for _ in view_images]
    figure = figures.grid(tiles, captions, columns=len(view_images), scale=2, caption_lines=1, font_size=11)
    return table, figure


def run(cfg: DictConfig) -> dict:
    s = cfg.saliency
    subject = load_subject(cfg, s.device, s.precision)
    make_method = factory(s.method, s.options, precision=s.precision, batch_size=s.batch_size, seed=cfg.seed)
    method = make_method(subject.model)  # bad method/options fail before any work
    for name in s.methods:
        factory(name, precision=s.precision, batch_size=s.batch_size, seed=cfg.seed)(subject.model)
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
        deltas = []
        for name, (index, images, labels, probs, targets) in views.items():
            if hasattr(method, "convergence_delta"):  # integrated gradients: is the path integral converged?
                attributions = method.attribute(images, targets)
                deltas.append(method.convergence_delta(images, targets, attributions))
                maps = attributions.abs().amax(dim=1)
            else:
                maps = method.maps(images, targets)
            figure = view_figure(subject, images, labels, probs, targets, maps, s.method)
            save_figure(tmp, figure, name, main=name == next(iter(views)))
            (tmp / f"{name}_indices.txt").write_text("\n".join(str(int(i)) for i in index) + "\n")
            log.info("view %r: val images %s", name, index.tolist())
        metrics = faithfulness(subject, method, make_method, s, cfg, *evaluation) if evaluation else {}
        if deltas:  # |sum of attributions - (S(x) - S(baseline))| over the views' images
            metrics["convergence_delta"] = float(torch.cat(deltas).mean())
        if s.methods and evaluation:
            table, figure = compare_methods(subject, s, cfg, *evaluation, next(iter(views.values())))
            save_figure(tmp, figure, "methods")
            save_table(table, "methods.json")
            metrics["methods"] = table
        save_metrics(cfg, "saliency", metrics)
        if "deletion_auc" in metrics:
            log.info("deletion AUC %.3f (random %.3f), insertion AUC %.3f (random %.3f), sanity Spearman %s, "
                     "%.0f images/s", metrics["deletion_auc"], metrics["random_deletion_auc"],
                     metrics["insertion_auc"], metrics["random_insertion_auc"],
                     f"{metrics['sanity_spearman']:.3f}" if "sanity_spearman" in metrics else "skipped",
                     metrics["images_per_second"])
    return metrics


main = hydra_job("saliency", run)

if __name__ == "__main__":
    main()
