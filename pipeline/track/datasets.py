"""The dataset as MLflow sees it: one entry (name, sha256 digest, source URL, split sizes, classes) that
every run of the same data shares, so the Datasets panel of the UI links prepare, train and every
visualization that used it, and a run on other data shows a different digest."""

from __future__ import annotations

import json
from typing import Mapping

from pipeline.redaction import redact


def dataset_entry(name: str, sha256: str, url: str, stats: Mapping[str, int], image_size: int):
    """An ``mlflow.data`` dataset of metadata only (the images stay in the DVC cache): the MLflow digest
    is the zip's sha256 cut to 16 hex digits (MLflow allows 36); the profile holds the whole of it."""
    from mlflow.data.meta_dataset import MetaDataset

    class TinyImageNet(MetaDataset):
        @property
        def profile(self) -> dict:
            return {"sha256": sha256, "num_classes": int(stats.get("num_classes", 0)),
                    "image_size": int(image_size), **{f"num_{split}": int(stats[f"num_{split}"])
                                                      for split in ("train", "val", "test") if f"num_{split}" in stats}}

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    return TinyImageNet(source(url), name=name, digest=sha256[:16])


def source(url: str):
    """Where the zip came from, credentials redacted: an HTTP source for http(s) URLs, else a local one."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    clean = redact(str(url))
    if not clean.startswith(("http://", "https://")):
        try:
            from mlflow.data.dataset_source_registry import resolve_dataset_source

            return resolve_dataset_source(clean)
        except Exception:  # a path MLflow cannot classify: still record it
            pass
    return HTTPDatasetSource(clean)


def log_dataset(data_cfg: Mapping, prepared, context: str, model_ids: tuple[str, ...] = ()) -> None:
    """``mlflow.log_input`` of the prepared data (``pipeline.data.cache.PreparedData``) in the active run;
    with ``model_ids`` the run also records the MLflow models it used as inputs."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    meta = prepared.meta
    entry = dataset_entry(str(meta.get("dataset") or data_cfg.get("subset_name") or "dataset"), prepared.sha256,
                          str(data_cfg.get("url", "")), meta.get("stats", {}), prepared.image_size)
    mlflow.log_input(entry, context=context)
    for model_id in model_ids:  # one call each: mlflow.log_inputs(models=...) is for Databricks stores only
        mlflow.log_input(model=LoggedModelInput(model_id))
