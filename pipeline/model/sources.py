"""Where the classifier under study comes from: the config's ``model`` group, honoured by every job.

``model.source`` says how its weights are obtained:

- ``train``: trained by the train stage, read from its checkpoint (``paths.classifier``), which must
  hold the configured architecture;
- ``fetch``: downloaded from ``model.url`` (the CS231n ``pretrained_model.h5``, or a ``classifier.pt``
  written by this pipeline), through ``pipeline.data.fetch`` (mirrors, credentials, resume);
- ``torchvision`` / ``module``: any torchvision classification architecture or a user's own
  ``nn.Module`` with a state dict (``pipeline.model.external``).

The train stage obtains the model this way and writes it to ``paths.classifier`` with its identity;
a visualization job reads that checkpoint when it holds the model the job's config names (the case
under ``dvc repro``), and otherwise obtains the named model itself, so ``python -m pipeline.saliency
model=cs231n model.source=fetch`` explains the CS231n model, not whatever was trained last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

from pipeline.data.cache import PreparedData
from pipeline.errors import ConfigError, DataError, one_line
from pipeline.model.architectures import ImageClassifier, build_model
from pipeline.model.external import build_external, fetch_cached
from pipeline.model.checkpoint import load_classifier, model_from_file, state_dict_sha256
from pipeline.model.mlflow_source import is_mlflow_uri, load_mlflow_model
from pipeline.redaction import redact
from pipeline.track.tracking import resolve_uri

SOURCES = ("train", "fetch", "torchvision", "module")
EXTERNAL = ("torchvision", "module")


def plain(model_cfg: Mapping) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)


def check_source(model_cfg: Mapping) -> str:
    source = model_cfg.get("source")
    if source not in SOURCES:
        raise ConfigError(f"unknown model.source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "fetch" and not model_cfg.get("url"):
        raise ConfigError(f"model.source=fetch needs model.url (model {model_cfg.get('arch')!r} has none)")
    return source


def identity(model_cfg: Mapping) -> dict:
    """What names a model choice (architecture, source, weights), credentials redacted: stored with the
    checkpoint, compared by the jobs, and shown in MLflow."""
    ident = plain(model_cfg)
    for key in ("url", "weights"):
        if isinstance(ident.get(key), str):
            ident[key] = redact(ident[key])
    return ident


def name(model_cfg: Mapping) -> str:
    """A short human name: ``resnet (trained)``, ``cs231n (pretrained_model.h5)``, ``torchvision resnet50``."""
    ident = identity(model_cfg)
    source = ident.get("source")
    if source == "train":
        return f"{ident.get('arch')} (trained)"
    if source == "fetch" and is_mlflow_uri(ident["url"]):
        return str(ident["url"])
    if source == "fetch":
        return f"{ident.get('arch')} ({_file_name(ident['url'])})"
    if source == "torchvision":
        return f"torchvision {ident.get('name')}"
    return f"module {ident.get('_target_')}"


def _file_name(url: str) -> str:
    return Path(str(url).split("?")[0].rstrip("/")).name or "weights"


def obtain(model_cfg: Mapping, data: PreparedData, *, cache_dir: str | os.PathLike,
           progress: bool | None = None, tracking_uri: str | None = None) -> tuple[ImageClassifier, dict]:
    """Build the model a config names from its source (never reading ``paths.classifier``):
    (model in eval mode on the CPU, its checkpoint architecture dict). A ``models:/`` or ``runs:/``
    URL is read from the MLflow store at ``tracking_uri``."""
    source = check_source(model_cfg)
    if source == "train":
        raise ConfigError("model.source=train: the model is trained by the train stage (dvc repro train)")
    if source == "fetch" and is_mlflow_uri(model_cfg["url"]):
        url = str(model_cfg["url"])
        state, meta = load_mlflow_model(url, tracking_uri or "sqlite:///mlflow.db", list(data.wnids))
        if meta.get("state_dict_sha256") not in (None, state_dict_sha256(state)):
            raise DataError(f"model.url={url}: the weights do not match the digest logged with them")
        try:
            model = rebuild(meta["arch"], list(data.wnids), state)
            model.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"model.url={url}: its weights do not fit the logged architecture {meta['arch']} "
                            f"({one_line(exc, 200)})") from None
        return model.eval(), dict(meta["arch"])
    if source == "fetch":
        target, _ = fetch_cached(str(model_cfg["url"]), cache_dir, sha256=model_cfg.get("sha256"), progress=progress)
        return model_from_file(target, model_cfg, data.mean_image, data.num_classes, data.wnids)
    model, meta = build_external(model_cfg, wnids=list(data.wnids), image_size=data.image_size,
                                 cache_dir=cache_dir, progress=progress)
    return model.eval(), dict(meta["arch"])


def rebuild(arch: Mapping, wnids: list[str], state_dict: Mapping[str, torch.Tensor]) -> ImageClassifier:
    """An untrained model of a checkpoint's architecture: ours, or a torchvision or user module."""
    if arch.get("arch") in EXTERNAL:
        size = int(state_dict["mean_image"].shape[-1]) if "mean_image" in state_dict else 64
        model, _ = build_external({**arch, "weights": None}, wnids=wnids, image_size=size, cache_dir=".")
        return model
    return build_model(arch)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ImageClassifier, dict]:
    """``pipeline.model.checkpoint.load_classifier`` for a checkpoint of any source."""
    return load_classifier(path, device=device, build=rebuild)


def _checkpoint_mismatch(model_cfg: Mapping, meta: Mapping, path: Path) -> str | None:
    """Why the checkpoint at ``path`` is not the model the config names (None when it is).

    A trained model is named by its architecture only (its options are training settings, which DVC
    tracks); a fetched or external one by its whole identity (architecture, URL, weights)."""
    stored = meta.get("model") or {"arch": meta.get("arch", {}).get("arch"), "source": meta.get("source")}
    if model_cfg.get("source") == "train":
        same = stored.get("source") == "train" and stored.get("arch") == model_cfg.get("arch")
    else:
        same = json.dumps(stored, sort_keys=True, default=str) == json.dumps(identity(model_cfg), sort_keys=True,
                                                                              default=str)
    if same:
        return None
    held = name(stored) if stored.get("source") in SOURCES and (stored.get("url") or stored.get("source") != "fetch") \
        else f"a {stored.get('arch')} model ({stored.get('source')})"
    return f"{path} holds {held}, but the config names {name(model_cfg)}"


def load_for_job(cfg, data: PreparedData, device: torch.device) -> tuple[ImageClassifier, dict]:
    """The model ``cfg.model`` names, for a job that explains it: (model on ``device``, metadata).

    The train stage's checkpoint when it holds that model; else, for fetched and external models,
    the model obtained from its source (cached under ``paths.checkpoints``); a trained model that the
    checkpoint does not hold is an error naming the command that trains it.
    """
    model_cfg = cfg.model
    source = check_source(model_cfg)
    path = Path(cfg.paths.classifier)
    reason = f"{path} does not exist"
    if path.is_file():
        model, meta = load_checkpoint(path, device=device)
        reason = _checkpoint_mismatch(model_cfg, meta, path)
        if reason is None:
            meta.setdefault("model", identity(model_cfg))
            return model, meta
    if source == "train":
        raise DataError(f"{reason}; train it first: dvc repro train (or python -m pipeline.train "
                        f"model={model_cfg.get('arch')}), or choose another model.source")
    model, arch = obtain(model_cfg, data, cache_dir=cfg.paths.checkpoints, progress=cfg.progress,
                         tracking_uri=resolve_uri(cfg.tracking.uri, cfg.paths.root))
    meta = {"arch": arch, "wnids": list(data.wnids), "class_names": list(data.class_names), "source": source,
            "model": identity(model_cfg), "state_dict_sha256": state_dict_sha256(model.state_dict())}
    return model.to(device).eval(), meta
