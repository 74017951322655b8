"""What image optimisation minimises: objectives on the model, regularisers on the image.

Every term is per image, shape (n,), so a batch is n independent problems and items can stop
on their own. ``index`` holds the batch positions of the images being evaluated (the still
active ones), so per-image data (targets, original images, target features) is looked up by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from pipeline.errors import ConfigError
from pipeline.model.architectures import ImageClassifier


@dataclass
class Evaluation:
    """Loss terms (summed and minimised), extra per-image metrics to log, the raw model output."""

    terms: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    output: torch.Tensor | None = None


# --------------------------------------------------------------------------- objectives


class ClassScore:
    """Raise the unnormalised class score S_y (Simonyan et al. 2014): loss = -S_y."""

    def __init__(self, targets: torch.Tensor):
        self.targets = torch.as_tensor(targets, dtype=torch.long)

    def __call__(self, model: ImageClassifier, x: torch.Tensor, index: torch.Tensor) -> Evaluation:
        scores = model(x).float()
        target = self.targets[index].to(scores.device)
        score = scores.gather(1, target[:, None])[:, 0]
        prob = scores.detach().softmax(1).gather(1, target[:, None])[:, 0]
        return Evaluation({"class_score": -score}, {"score": score.detach(), "target_prob": prob}, scores)


def activations(model: ImageClassifier, x: torch.Tensor, layers: set[int]) -> dict[int, torch.Tensor]:
    """Outputs of several layers (indices) from one forward pass."""
    out, h = {}, model.normalize(x)
    for i, layer in enumerate(model.layers()[: max(layers) + 1]):
        h = layer(h)
        if i in layers:
            out[i] = h
    return out


class FeatureMatch:
    """Mahendran & Vedaldi 2015: ||phi(x) - phi0||^2 / ||phi0||^2 at a layer.

    ``layers`` is one layer for all images or one per image (reconstruction by depth in one
    batch); ``targets`` the features phi0 to match, a tensor (N, ...) or one tensor per image.
    """

    def __init__(self, layers: int | str | Sequence[int | str], targets: torch.Tensor | Sequence[torch.Tensor]):
        self.layers = layers
        self.targets = [t.detach() for t in targets]

    def __call__(self, model: ImageClassifier, x: torch.Tensor, index: torch.Tensor) -> Evaluation:
        per_image = not isinstance(self.layers, (int, str))
        layer_of = [model.layer_index(self.layers[i] if per_image else self.layers) for i in index.tolist()]
        feats = activations(model, x, set(layer_of))
        errors = []
        for j, (i, layer) in enumerate(zip(index.tolist(), layer_of)):
            phi, target = feats[layer][j].float(), self.targets[i].to(x.device, torch.float32)
            errors.append(((phi - target) ** 2).sum() / (target ** 2).sum().clamp_min(1e-12))
        return Evaluation({"feature_error": torch.stack(errors)})


class ActivationNorm:
    """DeepDream: amplify a layer's activations; loss = -||phi(x)||^2 / 2, whose gradient is phi itself
    (the reference's ``dfeats = feats``)."""

    def __init__(self, layer: int | str):
        self.layer = layer

    def __call__(self, model: ImageClassifier, x: torch.Tensor, index: torch.Tensor) -> Evaluation:
        feats = model(x, end=self.layer).float()
        energy = 0.5 * (feats ** 2).flatten(1).sum(1)
        return Evaluation({"activation": -energy}, {"activation_norm": feats.detach().flatten(1).norm(dim=1)}, feats)


# --------------------------------------------------------------------------- regularisers


class L2:
    """``weight * ||x - center||^2``: the reference's L2 decay (center = mean image) or, for fooling
    images, a pull toward the original image (one center per image)."""

    name = "l2"

    def __init__(self, weight: float, center: torch.Tensor | None = None, per_image: bool = False):
        if weight < 0:
            raise ConfigError(f"l2 weight must be >= 0, got {weight}")
        self.weight, self.center, self.per_image = float(weight), center, per_image

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.center is not None:
            x = x - (self.center[index] if self.per_image else self.center).to(x)
        return self.weight * (x ** 2).flatten(1).sum(1)


class TotalVariation:
    """``weight * sum((dx^2 + dy^2)^(beta/2))`` (Mahendran & Vedaldi 2015, eq. 5)."""

    name = "tv"

    def __init__(self, weight: float, beta: float = 2.0):
        if weight < 0:
            raise ConfigError(f"tv weight must be >= 0, got {weight}")
        self.weight, self.beta = float(weight), float(beta)

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        squared = dx ** 2 + dy ** 2
        tv = squared if self.beta == 2.0 else (squared + 1e-8) ** (self.beta / 2)
        return self.weight * tv.flatten(1).sum(1)
