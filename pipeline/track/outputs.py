"""What a visualization job leaves behind, the same way for every job.

``job_outputs`` opens the job's MLflow run (params: the seed and the job's own config section;
tags: the model it explains) and a temporary folder that becomes ``results/<job>/`` only if the
job succeeds; ``save_figure`` and ``save_metrics`` write a figure / the metrics to both places.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from omegaconf import DictConfig
from PIL import Image

from pipeline.track import tracking
from pipeline.files import atomic_path, write_json
from pipeline.job import overrides

if TYPE_CHECKING:  # only for the type hint: outputs sit below the jobs, not above the subject
    from pipeline.explain.subject import Subject


@contextlib.contextmanager
def job_outputs(cfg: DictConfig, job: str, subject: Subject, tags: Mapping[str, str] | None = None) -> Iterator[Path]:
    import mlflow

    with tracking.start_run(cfg, job, dataset_sha256=subject.data.sha256, overrides=overrides(),
                            sections=("seed", job)), \
            atomic_path(Path(cfg.paths.results) / job, is_dir=True) as tmp:
        mlflow.set_tags({**subject.tags(), **(tags or {})})
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
    import mlflow

    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    mlflow.log_table({key: list(rows), **{c: [row.get(c) for row in rows.values()] for c in columns}},
                     artifact_file=name)
