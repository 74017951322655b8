"""A classifier from an MLflow store: ``model.source=fetch model.url=models:/<name>/<version>`` (or
``models:/<name>@<alias>``, ``runs:/<run_id>/classifier``, ``models:/<model_id>``), as the train job
logs it (``pipeline.track.logged_models``). The model's metadata carries what a checkpoint carries
(architecture, wnids, class names, weights digest), so it is checked like one (in
``pipeline.model.sources``)."""

from __future__ import annotations

import tempfile

from pipeline.errors import ConfigError, DataError, one_line
from pipeline.redaction import redact

SCHEMES = ("models:/", "runs:/")


def is_mlflow_uri(url: object) -> bool:
    return isinstance(url, str) and url.startswith(SCHEMES)


def load_mlflow_model(uri: str, tracking_uri: str, wnids: list[str]) -> tuple[dict, dict]:
    """(state dict, pipeline metadata) of an MLflow model URI in the store at ``tracking_uri``; errors
    name the URI and what is wrong with it. The weights go back into this package's model of the logged
    architecture (``pipeline.model.sources``): a ``torch.export`` program has no layer hooks."""
    import mlflow
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory(prefix="mlflow-model-") as folder:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri)
            info = mlflow.models.Model.load(local)
            meta = dict((info.metadata or {}).get("pipeline") or {})
            model = mlflow.pytorch.load_model(local, map_location="cpu")
    except MlflowException as exc:
        raise ConfigError(f"model.url={uri}: not found in the MLflow store {redact(tracking_uri)} "
                          f"({one_line(exc.message, 200)})") from None
    if not meta.get("arch") or not meta.get("wnids"):
        raise DataError(f"model.url={uri}: an MLflow model without this pipeline's metadata (architecture, "
                        "wnids); log it with the train job (python -m pipeline.train)")
    if list(meta["wnids"]) != list(wnids):
        raise DataError(f"model.url={uri} was trained on other classes (or another class order) than the prepared data")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, meta

