"""The classifier as an MLflow model: logged (and registered) by the train job, found again by every job
that explains it, so the UI links a visualization run to the model version it looked at.

The link is the weights' digest (``state_dict_sha256``, stored in every checkpoint): the train job tags
the logged model with it; a visualization job reading ``models/classifier.pt`` looks the digest up.
Nothing is written into the checkpoint, so DVC's output does not depend on the state of the store.

MLflow's UI lists on a run page only the models of the run's own experiment, and each job has its
experiment; so each visualization experiment gets one *reference* to the classifier (an external
MLflow model: no files, tags naming the registered version and the logged model), which its runs
record as their input beside the logged model itself.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Mapping

import numpy as np
import torch

from pipeline.errors import one_line

log = logging.getLogger(__name__)

ARTIFACT = "classifier"
DIGEST_TAG = "weights_sha256"


def requirements() -> list[str]:
    """What ``mlflow.pyfunc.load_model`` needs besides this package (pinned to what logged it), given
    explicitly: MLflow would otherwise load the model in a subprocess to guess them."""
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}"]


def log_classifier(model: torch.nn.Module, meta: Mapping, example: torch.Tensor,
                   registered_name: str | None) -> dict[str, str]:
    """Log ``model`` as the MLflow model ``classifier`` of the active run: input float32 pixels 0..255
    (N, 3, H, W), output class scores (N, classes); ``meta`` (architecture, wnids, class names, weights
    digest) goes into the model's metadata, which is what ``models:/`` sources read back.
    Registers it as a new version of ``registered_name`` when given. Returns the tags it set.

    Saved as a ``torch.export`` program (MLflow's ``pt2``) so that anyone can load it with MLflow and
    torch alone; only a model that cannot be exported is pickled."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    cpu = copy.deepcopy(model).float().cpu().eval()
    inputs = example.float().cpu().numpy()
    with torch.no_grad():
        outputs = cpu(torch.from_numpy(inputs)).numpy()
    digest = str(meta.get("state_dict_sha256", ""))

    def save(serialization_format: str):
        return mlflow.pytorch.log_model(
            cpu, name=ARTIFACT, signature=infer_signature(inputs, outputs), input_example=inputs,
            registered_model_name=registered_name or None, pip_requirements=requirements(),
            metadata={"pipeline": json_safe(meta)}, tags={DIGEST_TAG: digest, "arch": str(meta["arch"].get("arch"))},
            await_registration_for=0, serialization_format=serialization_format)

    try:
        info = save("pt2")  # torch.export's graph: loads without this package and without unpickling code
    except Exception as exc:  # a model torch.export cannot trace (data-dependent control flow in a user's module)
        log.warning("torch.export failed (%s); logging the classifier pickled instead", one_line(exc, 200))
        info = save("pickle")
    tags = {"model_id": info.model_id, "logged_model_uri": info.model_uri}
    if registered_name:
        tags.update(version_tags(registered_name, info.registered_model_version))
    mlflow.set_tags(tags)
    return tags


def version_tags(registered_name: str, version) -> dict[str, str]:
    return {"registered_model": registered_name, "model_version": str(version),
            "model_uri": f"models:/{registered_name}/{version}"}


def json_safe(meta: Mapping) -> dict:
    """The checkpoint metadata MLflow can store in its MLmodel YAML (plain types only)."""
    keep = ("arch", "wnids", "class_names", "source", "model", "state_dict_sha256", "val_accuracy", "dataset_sha256")
    return {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in meta.items() if k in keep}


REFERENCE_TAG = "reference_of"  # on a reference: the model_id of the logged classifier it stands for


def find_logged_model(digest: str, registered_name: str | None) -> dict[str, str]:
    """The newest MLflow model in the store whose weights have ``digest``, as run tags (``model_id``,
    and ``model_version`` / ``model_uri`` when it is a version of ``registered_name``); {} when this
    model was never logged (e.g. fetched by a visualization job directly)."""
    import mlflow

    if not digest or digest == "unknown":
        return {}
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    if not experiments:
        return {}
    found = [m for m in mlflow.search_logged_models(
        experiment_ids=experiments, filter_string=f"tags.{DIGEST_TAG} = '{digest}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], output_format="list")
        if REFERENCE_TAG not in m.tags]
    if not found:
        return {}
    model = found[0]
    tags = {"model_id": model.model_id, "logged_model_uri": model.model_uri}
    if registered_name:
        client = mlflow.MlflowClient()
        versions = [v for v in client.search_model_versions(f"name = '{registered_name}'")
                    if model.model_id in (getattr(v, "model_id", None), str(v.source).removeprefix("models:/"))]
        if versions:
            tags.update(version_tags(registered_name, max(int(v.version) for v in versions)))
    return tags


def reference_in_experiment(link: Mapping[str, str], experiment_id: str) -> str:
    """The id of this experiment's reference to the logged model ``link`` names (``find_logged_model``'s
    tags), created on first use: what the run page's Logged models panel can show."""
    import mlflow

    existing = mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"tags.{REFERENCE_TAG} = '{link['model_id']}'",
        max_results=1, output_format="list")
    if existing:
        return existing[0].model_id
    original = mlflow.get_logged_model(link["model_id"])
    tags = {REFERENCE_TAG: link["model_id"], DIGEST_TAG: original.tags.get(DIGEST_TAG, ""),
            **{k: v for k, v in link.items() if k in ("registered_model", "model_version", "model_uri",
                                                       "logged_model_uri")}}
    if "model_version" in link:  # what the UI's Registered models column and panel read
        tags["mlflow.modelVersions"] = json.dumps([{"name": link["registered_model"],
                                                    "version": int(link["model_version"])}])
    reference = mlflow.create_external_model(name=original.name, source_run_id=original.source_run_id, tags=tags,
                                             model_type="reference", experiment_id=experiment_id)
    return reference.model_id
