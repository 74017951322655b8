"""Job ``saliency``: class saliency maps (Simonyan et al. 2014, sec. 3.1) with measured faithfulness.

For each configured view (a selection of val images) a figure of the images over the maps of
``saliency.method``. Then one evaluation, on a larger random sample, of that method and every method
of ``saliency.methods`` on the same images: deletion / insertion AUC beside a shared random pixel
order (Petsiuk et al. 2018), the cascading model-randomisation check (Adebayo et al. 2018),
infidelity and max-sensitivity (Yeh et al. 2019), speed. The primary method's row is the job's
headline; the whole table goes to MLflow, ``metrics/saliency.json`` and the report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from pipeline.track import figures
from pipeline.explain.attribution.base import Attribution
from pipeline.explain.attribution.registry import factory
from pipeline.explain.faithfulness import (auc, cascading_randomization, curves, infidelity, max_sensitivity,
                                           pixel_ranks, random_ranks)
from pipeline.job import hydra_job
from pipeline.track.outputs import job_outputs, save_figure, save_metrics, save_table
from pipeline.data.selection import select_images
from pipeline.explain.subject import Subject, load_subject
from pipeline.errors import ConfigError
from pipeline.files import write_csv

log = logging.getLogger(__name__)


def view_figure(subject: Subject, images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
                targets: torch.Tensor, maps: torch.Tensor, method: str, colormap: str = "inferno"):
    """Images (true / predicted class) over their heat maps (the explained class)."""
    predicted = probs.argmax(1)
    captions = [f"true: {subject.class_names[int(y)]} | pred: {subject.label(int(p), float(probs[i, p]))}"
                for i, (y, p) in enumerate(zip(labels, predicted))]
    captions += [f"{method}: {subject.class_names[int(t)]}" for t in targets]
    tiles = [*images, *[figures.heatmap(m, colormap=colormap) for m in maps]]
    return figures.grid(tiles, captions, columns=len(images), scale=3, caption_lines=3, font_size=11)


def evaluate_method(subject: Subject, method: Attribution, make_method, e: DictConfig, cfg: DictConfig,
                    images: torch.Tensor, targets: torch.Tensor, random: tuple[torch.Tensor, torch.Tensor],
                    options: dict, whole_cascade: bool = False) -> tuple[dict, dict]:
    """One row of the comparison table: faithfulness (deletion / insertion beside the random order),
    model randomisation (``make_method`` builds the method on the re-initialised models), infidelity
    and max-sensitivity, speed. Also returns the mean curves and the cascade (every layer with
    ``whole_cascade``), which the job records for its primary method."""
    started = time.perf_counter()
    maps = method.maps(images, targets)
    seconds = time.perf_counter() - started
    deletion, insertion = curves(subject.model, images, targets, pixel_ranks(maps), **options)
    row = {"deletion_auc": float(auc(deletion).mean()), "insertion_auc": float(auc(insertion).mean()),
           "random_deletion_auc": float(auc(random[0]).mean()), "random_insertion_auc": float(auc(random[1]).mean())}
    details = {"curves": {"deletion": deletion.mean(0), "insertion": insertion.mean(0),
                          "random_deletion": random[0].mean(0), "random_insertion": random[1].mean(0)},
               "cascade": []}
    k = min(int(e.sanity_images), len(images))
    if k:
        cascade = cascading_randomization(subject.model, subject.meta["arch"],
                                          lambda model: make_method(model).maps(images[:k], targets[:k]), seed=cfg.seed,
                                          ends_only=not whole_cascade)
        row["sanity_spearman_top_layer"] = cascade[0][1]  # only the class layer re-initialised
        row["sanity_spearman"] = cascade[-1][1]  # every layer re-initialised
        details["cascade"] = cascade
    k = min(int(e.robustness_images), len(images))
    if k:
        attributions = method.attribute(images[:k], targets[:k])
        row["infidelity"] = float(infidelity(method, images[:k], targets[:k], attributions, noise=e.infidelity_noise,
                                             samples=e.infidelity_samples, seed=cfg.seed).mean())
        row["max_sensitivity"] = float(max_sensitivity(method, images[:k], targets[:k], attributions,
                                                       radius=e.sensitivity_radius, samples=e.sensitivity_samples,
                                                       seed=cfg.seed).mean())
    row["images_per_second"] = len(images) / seconds
    return row, details


def compare_methods(subject: Subject, s: DictConfig, cfg: DictConfig, methods: dict, index: torch.Tensor,
                    targets: torch.Tensor, view: tuple) -> tuple[dict, dict, object]:
    """Every method on the same evaluation images (one shared random-order baseline): ({name: row},
    {name: curves and cascade}, the figure with one row of maps per method over the first view's images)."""
    e = s.evaluation
    images = subject.data.split("val").images[index].float()
    options = dict(steps=e.steps, blur_sigma=e.blur_sigma, batch_size=max(s.batch_size, 250), precision=s.precision)
    random = curves(subject.model, images, targets, random_ranks(len(images), images[0, 0].numel(), cfg.seed),
                    **options)
    table, details, rows = {}, {}, []
    _, view_images, labels, _, view_targets = view
    for name, (make_method, method) in methods.items():
        started = time.perf_counter()
        table[name], details[name] = evaluate_method(subject, method, make_method, e, cfg, images, targets, random,
                                                     options, whole_cascade=name == s.method)
        rows.append(method.maps(view_images, view_targets))
        log.info("%s: deletion AUC %.3f, insertion AUC %.3f, sanity Spearman %s, infidelity %s, max-sensitivity %s "
                 "(%.0f s)", name, table[name]["deletion_auc"], table[name]["insertion_auc"],
                 *(f"{table[name][k]:.3g}" if k in table[name] else "-"
                   for k in ("sanity_spearman", "infidelity", "max_sensitivity")), time.perf_counter() - started)
    tiles = [*view_images, *[figures.heatmap(m, colormap=s.colormap) for maps in rows for m in maps]]
    captions = [subject.class_names[int(y)] for y in labels] + [name for name in methods for _ in view_images]
    figure = figures.grid(tiles, captions, columns=len(view_images), scale=2, caption_lines=1, font_size=11)
    return table, details, figure


def headline(row: dict, details: dict, cfg: DictConfig) -> dict:
    """The primary method's row as the job's top-level metrics, its mean curves as MLflow step
    series and the DVC plot, and its whole randomisation cascade (``sanity_spearman_<layer>``)."""
    import mlflow

    metrics = dict(row)
    series = details["curves"]
    rows = []
    steps = len(series["deletion"]) - 1
    for k in range(steps + 1):  # plotted by the MLflow UI against the step (= k/steps removed)
        point = {name: float(curve[k]) for name, curve in series.items()}
        mlflow.log_metrics({f"curve_{name}": value for name, value in point.items()}, step=k)
        rows.append({"fraction": k / steps, **point})
    write_csv(Path(cfg.paths.plots) / "saliency_curves.csv", rows)  # DVC plot: dvc plots show
    for step, (layer, rho) in enumerate(details["cascade"]):
        mlflow.log_metric("sanity_spearman_cascade", rho, step=step)
        metrics[f"sanity_spearman_{layer}"] = rho
    return metrics


def run(cfg: DictConfig) -> dict:
    s = cfg.saliency
    if s.colormap not in figures.COLORMAPS:
        raise ConfigError(f"unknown saliency.colormap {s.colormap!r}; choose one of {', '.join(figures.COLORMAPS)}")
    subject = load_subject(cfg, s.device, s.precision)
    common = dict(precision=s.precision, batch_size=s.batch_size, seed=cfg.seed)
    make_method = factory(s.method, s.options, **common)
    method = make_method(subject.model)  # bad methods/options fail before any work, and are built once
    methods = {s.method: (make_method, method)}
    for name in s.methods:
        if name not in methods:
            make = factory(name, **common)
            methods[name] = (make, make(subject.model))
    val = subject.data.split("val")
    views = {}  # every selection and target is checked before the run starts
    for name, spec in s.views.items():
        if spec is None:  # a view switched off (an experiment replaces the default views)
            continue
        index = select_images(spec, subject.data, seed=cfg.seed, probabilities=subject.val_probabilities)
        images, labels = val.images[index].float(), val.labels[index]
        probs = subject.probabilities(images)
        views[name] = (index, images, labels, probs, subject.targets(s.target, labels, probs.argmax(1)))
    if not views:
        raise ConfigError("saliency.views has no view: name at least one (see conf/saliency.yaml)")
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
            figure = view_figure(subject, images, labels, probs, targets, maps, s.method, s.colormap)
            save_figure(tmp, figure, name, main=name == next(iter(views)))
            (tmp / f"{name}_indices.txt").write_text("\n".join(str(int(i)) for i in index) + "\n")
            log.info("view %r: val images %s", name, index.tolist())
        metrics = {}
        if evaluation:
            table, details, figure = compare_methods(subject, s, cfg, methods, *evaluation, next(iter(views.values())))
            metrics = headline(table[s.method], details[s.method], cfg)
            metrics["num_images"] = len(evaluation[0])
            if len(table) > 1:
                save_figure(tmp, figure, "methods")
                save_table(table, "methods.json")
                metrics["methods"] = table
        if deltas:  # |sum of attributions - (S(x) - S(baseline))| over the views' images
            metrics["convergence_delta"] = float(torch.cat(deltas).mean())
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
