"""The trained classifier as one self-contained file, whatever its source.

``models/classifier.pt`` holds the architecture config, the weights (the mean image is a
buffer, so preprocessing travels with them) and the class list. Visualizations call
``load_classifier`` and never care whether the model was trained here or fetched.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Mapping

import torch

from pipeline.errors import ConfigError, DataError, one_line
from pipeline.files import atomic_path
from pipeline.model.architectures import SOURCE_KEYS, ImageClassifier, build_model, load_cs231n_h5

log = logging.getLogger(__name__)

FORMAT = 1
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def architecture(model_cfg: Mapping) -> dict:
    """The part of a model config that rebuilds the network (no weight-source keys)."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    return {k: v for k, v in plain.items() if k == "arch" or k not in SOURCE_KEYS}


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A digest of the weights themselves (names, dtypes, shapes and bytes, in key order), so a
    flipped bit or a swapped tensor is caught when the checkpoint is loaded."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_classifier(path: str | os.PathLike, model: ImageClassifier, arch: Mapping, *, wnids: list[str],
                    class_names: list[str], source: str, extra: Mapping | None = None) -> str:
    """Write the checkpoint atomically; returns its weights' digest (``state_dict_sha256``)."""
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "arch": dict(arch),
        "state_dict": state_dict,
        "state_dict_sha256": state_dict_sha256(state_dict),
        "wnids": list(wnids),
        "class_names": list(class_names),
        "source": source,
        **(dict(extra) if extra else {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return payload["state_dict_sha256"]


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu",
                    build: Callable[[Mapping, list, Mapping], ImageClassifier] | None = None
                    ) -> tuple[ImageClassifier, dict]:
    """(model in eval mode on ``device``, the checkpoint's metadata). ``build(arch, wnids, state_dict)``
    makes the untrained model to load the weights into (default: this package's architectures;
    ``pipeline.model.sources.load_checkpoint`` adds torchvision and user modules)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no classifier here (run the train stage: dvc repro train)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-checkpoint files
        raise DataError(f"{path}: not a classifier checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{path}: not a classifier checkpoint of format {FORMAT}")
    missing = [key for key in ("arch", "state_dict", "wnids") if key not in payload]
    if missing or not isinstance(payload["arch"], Mapping) or not isinstance(payload["state_dict"], Mapping):
        raise DataError(f"{path}: checkpoint lacks {', '.join(missing) or 'a valid arch / state_dict'}; "
                        "rerun the train stage (dvc repro train)")
    expected = payload.get("state_dict_sha256")
    if expected is None:
        log.warning("%s carries no weight digest (written before digests were stored); it cannot be verified", path)
    elif state_dict_sha256(payload["state_dict"]) != expected:
        raise DataError(f"{path}: the weights do not match the digest stored with them (the file is corrupt); "
                        "rerun the train stage (dvc repro train)")
    try:
        model = (build or (lambda arch, wnids, state: build_model(arch)))(payload["arch"], payload["wnids"],
                                                                          payload["state_dict"])
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: weights do not fit the architecture {dict(payload['arch'])} "
                        f"({one_line(exc, 200)})") from None
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


def model_from_file(path: str | os.PathLike, model_cfg: Mapping, mean_image: torch.Tensor,
                    num_classes: int, wnids: list[str]) -> tuple[ImageClassifier, dict]:
    """Load fetched weights: the original CS231n ``pretrained_model.h5`` or one of our checkpoints."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head == HDF5_MAGIC:
        if model_cfg.get("arch") != "cs231n":
            raise ConfigError(f"{path} is an HDF5 file (the CS231n pretrained model); use model=cs231n")
        arch = architecture(model_cfg)
        arch["num_classes"] = num_classes
        model = build_model(arch, mean_image=mean_image)
        model.load_state_dict(load_cs231n_h5(path, num_classes=num_classes, mean_image=mean_image))
        return model.eval(), arch
    model, meta = load_classifier(path)
    if meta["wnids"] != list(wnids):
        raise DataError(f"{path} was trained on other classes (or another class order) than the prepared data")
    return model, meta["arch"]
