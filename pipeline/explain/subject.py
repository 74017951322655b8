"""The classifier under study and the data it is explained on, as every visualization job loads them.

The model is the one the config's ``model`` group names (``pipeline.model.sources``): under
``dvc repro`` the train stage's ``models/classifier.pt``; its class list must match the prepared data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from pipeline.model.checkpoint import pick_device
from pipeline.model.sources import load_checkpoint, load_for_job, name
from pipeline.data.cache import PreparedData, load_prepared
from pipeline.data.images import image_name, read_image
from pipeline.errors import ConfigError, DataError
from pipeline.model.architectures import ImageClassifier
from pipeline.model.precision import check_precision, frozen, probabilities


@dataclass
class Subject:
    model: ImageClassifier  # frozen, on ``device``
    meta: dict  # the checkpoint's metadata: arch, wnids, class names, source, val_accuracy
    data: PreparedData
    device: torch.device
    precision: str
    _val_probabilities: torch.Tensor | None = field(default=None, repr=False)

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    def tags(self) -> dict[str, str]:
        """What an MLflow run should say about the model it explains: which one (``model``, its source and
        URL with credentials redacted, its weight digest), how good it is, and where it ran."""
        ident = self.meta.get("model") or {}
        tags = {"model": name(ident) if ident else str(self.meta["arch"].get("arch")),
                "model_arch": str(self.meta["arch"].get("arch")), "model_source": str(self.meta.get("source")),
                "model_weights_sha256": str(self.meta.get("state_dict_sha256", "unknown")),
                "model_val_accuracy": f"{self.meta.get('val_accuracy', float('nan')):.4f}", "device": str(self.device),
                "precision": self.precision}
        for key in ("url", "weights"):
            if ident.get(key):
                tags[f"model_{key}"] = str(ident[key])  # already redacted (pipeline.model.sources.identity)
        return tags

    def probabilities(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Softmax class probabilities (N, classes) on the CPU for pixel images (uint8 or float)."""
        return probabilities(self.model, images, self.precision, batch_size)

    def val_probabilities(self) -> torch.Tensor:
        """Probabilities for the whole val split, computed once."""
        if self._val_probabilities is None:
            self._val_probabilities = self.probabilities(self.data.split("val").images)
        return self._val_probabilities

    def targets(self, spec, labels: torch.Tensor, predicted: torch.Tensor | None = None) -> torch.Tensor:
        """Class per image from a config value: ``label`` (or ``true``), ``predicted``, or one class
        (index, wnid, name)."""
        if spec is True or spec in ("true", "label"):
            return labels.clone()
        if spec == "predicted":
            if predicted is None:
                raise ConfigError("target=predicted needs the model's predictions")
            return predicted.clone()
        if spec is None or spec is False:
            raise ConfigError("target must be label, predicted, or a class (index, wnid or name)")
        return torch.full_like(labels, self.data.class_index(spec))

    def val_image(self, index: int) -> tuple[torch.Tensor, str]:
        """Val image ``index`` as float pixels (3, H, W), with a caption naming its class."""
        val = self.data.split("val")
        i = int(index)
        if not 0 <= i < len(val):
            raise ConfigError(f"val_index {i} out of range 0..{len(val) - 1}")
        return val.images[i].float(), f"val {i}: {self.class_names[int(val.labels[i])]}"

    def source_image(self, source: str | None, val_index: int, limits: Mapping | None = None
                     ) -> tuple[torch.Tensor, str]:
        """(3, H, W) float pixels and a caption: the file or URL ``source`` when given, else val image
        ``val_index``. ``limits``: ``max_bytes`` / ``max_pixels`` for the untrusted file (conf ``images``)."""
        if source:
            return read_image(str(source), **dict(limits or {})), image_name(str(source))
        return self.val_image(val_index)

    def judge(self, path: str) -> tuple[ImageClassifier, dict]:
        """An independent classifier (any ``classifier.pt``) over the same classes, frozen next to the model:
        whether *it* sees a class in a picture made for this model is a measure of the picture's meaning."""
        model, meta = load_checkpoint(path, self.device)
        if list(meta.get("wnids", [])) != list(self.data.wnids):
            raise DataError(f"{path} was trained on other classes than {self.data.root}; it cannot judge these")
        return frozen(model, self.device, self.precision), meta

    def label(self, index: int, probability: float | None = None) -> str:
        name = self.class_names[int(index)]
        return name if probability is None else f"{name} ({probability:.2f})"


def load_subject(cfg, device: str = "auto", precision: str = "fp32") -> Subject:
    check_precision(precision)
    data = load_prepared(cfg.paths.prepared)
    dev = pick_device(device)
    model, meta = load_for_job(cfg, data, dev)
    if list(meta.get("wnids", [])) != list(data.wnids):
        raise DataError(f"{cfg.paths.classifier} was trained on other classes than {cfg.paths.prepared}; "
                        "rerun the train stage (dvc repro train)")
    return Subject(frozen(model, dev, precision), meta, data, dev, precision)

