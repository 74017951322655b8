"""What a visualization job leaves behind, the same way for every job.

``job_outputs`` opens the job's MLflow run (params: the seed and the job's own config section;
tags: the model it explains, and the MLflow model version it is when the train job logged it; inputs:
the dataset and that model) and a temporary folder that becomes ``results/<job>/`` only if the
job succeeds; ``save_figure`` and ``save_metrics`` write a figure / the metrics to both places.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from omegaconf import DictConfig
from PIL import Image

from pipeline.track import datasets, logged_models, tracking
from pipeline.files import atomic_path, write_json
from pipeline.job import overrides, run_name

if TYPE_CHECKING:  # only for the type hint: outputs sit below the jobs, not above the subject
    from pipeline.explain.subject import Subject


@contextlib.contextmanager
def job_outputs(cfg: DictConfig, job: str, subject: Subject, tags: Mapping[str, str] | None = None) -> Iterator[Path]:
    import mlflow

    with tracking.start_run(cfg, job, dataset_sha256=subject.data.sha256, overrides=overrides(),
                            name=run_name(cfg, job), sections=("seed", job)) as run, \
            atomic_path(Path(cfg.paths.results) / job, is_dir=True) as tmp:
        link = logged_models.find_logged_model(str(subject.meta.get("state_dict_sha256", "")),
                                               cfg.tracking.get("registered_model"))
        models = ()
        if link:
            reference = logged_models.reference_in_experiment(link, run.info.experiment_id)
            models = (link["model_id"], reference)
        mlflow.set_tags({**subject.tags(), **link, **(tags or {})})
        datasets.log_dataset(cfg.data, subject.data, context="eval", model_ids=models)
        yield tmp


def save_figure(folder: Path, figure: Image.Image, name: str, main: bool = False) -> None:
    """``<folder>/<name>.png`` and the MLflow artifact ``<name>.png``; ``main`` marks the figure that
    ``python -m pipeline.compare`` puts side by side for the runs of a sweep."""
    import mlflow

    figure.save(folder / f"{name}.png")
    tracking.log_image(figure, name)
    if main:
        mlflow.set_tag("main_figure", f"{name}.png")


def flat(metrics: Mapping, prefix: str = "") -> dict[str, float]:
    """Nested metrics as MLflow keys: {"methods": {"gradcam": {"deletion_auc": x}}} -> {"methods.gradcam.deletion_auc": x}."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = float(value)
    return out


def save_metrics(cfg: DictConfig, job: str, metrics: Mapping) -> None:
    """MLflow metrics of the run and ``metrics/<job>.json`` (the DVC metrics file, nested where the job
    nests them)."""
    import mlflow

    mlflow.log_metrics(flat(metrics))
    headline = sorted(k for k, v in metrics.items() if not isinstance(v, Mapping))
    mlflow.set_tag("final_metrics", ",".join(headline))  # which metrics compare/report show
    write_json(Path(cfg.paths.metrics) / f"{job}.json", dict(metrics))


def save_table(rows: Mapping[str, Mapping[str, float]], name: str, key: str = "method") -> None:
    """{row name: {column: value}} as an MLflow table (``mlflow.log_table``): one row per entry."""
    tracking.log_rows([{key: row, **values} for row, values in rows.items()], name)
