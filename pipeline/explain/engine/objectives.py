"""What image optimisation maximises, as algebra (after Lucent's ``optvis/objectives.py``).

An objective maps a ``Probe`` (the images being optimised, what the model sees of them, and the
batch positions they hold) to per-image values, shape (n,), to *maximise*. Objectives compose:
``ClassScore(t) - 5e-7 * L2(center=mean)`` is one objective whose parts are logged as separate
terms. Priors on the image (``L2``, ``TotalVariation``) read the image itself; model objectives
read what the model sees (the image after the input transforms). Every value is per image, so a
batch is n independent problems and items can stop on their own; ``probe.index`` holds the batch
positions of the still active images, so per-image data (targets, originals, target features) is
looked up by it. The one exception is ``Diversity``, a term over the batch (see its docstring).
Unit objectives (``Channel``, ``Neuron``, ``Direction``, ``Diversity``) are the feature
visualization terms of Olah et al. 2017 (job ``features``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from pipeline.errors import ConfigError


@dataclass
class Evaluation:
    """Named per-image terms whose sum is maximised, and extra per-image metrics to log."""

    terms: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        return sum(self.terms.values())


class Probe:
    """One step's view of the batch: the active images, the model's input, and one forward pass
    shared by every objective that needs it."""

    def __init__(self, model: nn.Module, image: torch.Tensor, model_input: torch.Tensor, index: torch.Tensor):
        self.model, self.image, self.input, self.index = model, image, model_input, index
        self._scores: torch.Tensor | None = None
        self._features: dict[int, torch.Tensor] = {}

    def scores(self) -> torch.Tensor:
        """Class scores (n, classes) in fp32."""
        if self._scores is None:
            self._scores = self.model(self.input).float()
        return self._scores

    def features(self, layers: Sequence[int | str]) -> dict[int, torch.Tensor]:
        """{layer index: activations} from one forward pass that stops after the deepest layer."""
        index = [self.model.layer_index(layer) for layer in layers]
        missing = [i for i in index if i not in self._features]
        if missing:
            self._features.update(self.model.features(self.input, missing))
        return {i: self._features[i] for i in index}


class Objective:
    """Base class: ``evaluate(probe) -> Evaluation``, with +, -, * (a number, or a tensor of per-item
    weights: ``objective * weights``) and unary - ."""

    name = "objective"

    def evaluate(self, probe: Probe) -> Evaluation:
        raise NotImplementedError

    def __add__(self, other: Objective) -> Objective:
        return Sum([self, other])

    def __sub__(self, other: Objective) -> Objective:
        return Sum([self, -1.0 * other])

    def __mul__(self, weight: float | torch.Tensor) -> Objective:
        return Scaled(self, weight)

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return Scaled(self, -1.0)


class Sum(Objective):
    def __init__(self, parts: Sequence[Objective]):
        self.parts = [q for p in parts for q in (p.parts if isinstance(p, Sum) else [p])]

    def evaluate(self, probe: Probe) -> Evaluation:
        terms, metrics = {}, {}
        for part in self.parts:
            e = part.evaluate(probe)
            for key, value in e.terms.items():
                terms[key if key not in terms else f"{key}_{len(terms)}"] = value
            metrics.update(e.metrics)
        return Evaluation(terms, metrics)

    def __repr__(self) -> str:
        return " + ".join(map(repr, self.parts))


class Scaled(Objective):
    """``weight * part``: one weight for every image, or a tensor of one weight per batch item, looked up
    by ``probe.index`` like per-image targets (e.g. a prior whose strength depends on the item's layer)."""

    def __init__(self, part: Objective, weight: float | torch.Tensor):
        if isinstance(part, Scaled):
            part, weight = part.part, part.weight * weight
        self.part = part
        self.weight = weight.float() if isinstance(weight, torch.Tensor) else float(weight)

    def evaluate(self, probe: Probe) -> Evaluation:
        e = self.part.evaluate(probe)
        weight = self.weight
        if isinstance(weight, torch.Tensor):
            weight = weight.to(probe.index.device)[probe.index]
        return Evaluation({k: weight * v for k, v in e.terms.items()}, e.metrics)

    def __repr__(self) -> str:
        weight = "per-item" if isinstance(self.weight, torch.Tensor) else f"{self.weight:g}"
        return f"{weight} * {self.part!r}"


# --------------------------------------------------------------------------- model objectives


class ClassScore(Objective):
    """The unnormalised class score S_y (Simonyan et al. 2014), one target class per image."""

    name = "class_score"

    def __init__(self, targets: torch.Tensor):
        self.targets = torch.as_tensor(targets, dtype=torch.long)

    def evaluate(self, probe: Probe) -> Evaluation:
        scores = probe.scores()
        target = self.targets[probe.index].to(scores.device)
        score = scores.gather(1, target[:, None])[:, 0]
        prob = scores.detach().softmax(1).gather(1, target[:, None])[:, 0]
        return Evaluation({self.name: score}, {"score": score.detach(), "target_prob": prob})

    def __repr__(self) -> str:
        return "ClassScore()"


class FeatureMatch(Objective):
    """Mahendran & Vedaldi 2015: -||phi(x) - phi0||^2 / ||phi0||^2 at a layer.

    ``layers`` is one layer for all images or one per image (reconstruction by depth in one
    batch); ``targets`` the features phi0 to match, a tensor (N, ...) or one tensor per image.
    ``normalize=False`` maximises the raw -||phi(x) - phi0||^2 instead, as the CS231n reference's
    ``invert_features`` does, whose fixed step size (lr 1e4) is on that scale.
    """

    name = "feature_error"

    def __init__(self, layers: int | str | Sequence[int | str], targets: torch.Tensor | Sequence[torch.Tensor],
                 normalize: bool = True):
        self.layers = layers
        self.targets = [t.detach() for t in targets]
        self.normalize = bool(normalize)

    def distances(self, probe: Probe) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: ||phi(x) - phi0||^2 and ||phi0||^2."""
        per_image = not isinstance(self.layers, (int, str))
        layer_of = [probe.model.layer_index(self.layers[i] if per_image else self.layers) for i in probe.index.tolist()]
        feats = probe.features(sorted(set(layer_of)))
        squared, norms = [], []
        for j, (i, layer) in enumerate(zip(probe.index.tolist(), layer_of)):
            phi, target = feats[layer][j].float(), self.targets[i].to(probe.input.device, torch.float32)
            squared.append(((phi - target) ** 2).sum())
            norms.append((target ** 2).sum())
        return torch.stack(squared), torch.stack(norms)

    def errors(self, probe: Probe) -> torch.Tensor:
        """The normalised feature error per image (>= 0), whichever loss is optimised."""
        squared, norms = self.distances(probe)
        return squared / norms.clamp_min(1e-12)

    def evaluate(self, probe: Probe) -> Evaluation:
        squared, norms = self.distances(probe)
        return Evaluation({self.name: -(squared / norms.clamp_min(1e-12) if self.normalize else squared)})

    def __repr__(self) -> str:
        return f"FeatureMatch({self.layers!r}{'' if self.normalize else ', normalize=False'})"


class ActivationNorm(Objective):
    """DeepDream: ||phi(x)||^2 / 2 at a layer, whose gradient is phi itself (the reference's
    ``dfeats = feats``)."""

    name = "activation"

    def __init__(self, layer: int | str):
        self.layer = layer

    def evaluate(self, probe: Probe) -> Evaluation:
        feats = next(iter(probe.features([self.layer]).values())).float()
        energy = 0.5 * (feats ** 2).flatten(1).sum(1)
        return Evaluation({self.name: energy}, {"activation_norm": feats.detach().flatten(1).norm(dim=1)})

    def __repr__(self) -> str:
        return f"ActivationNorm({self.layer!r})"


# --------------------------------------------------------------------------- unit objectives
# Olah, Mordvintsev & Schubert 2017, "Feature Visualization" (Distill), after Lucent's objectives.py:
# what one unit of a layer detects is the image that maximises it. ``channel`` may be one int for the
# whole batch or a per-image tensor (N,), looked up by ``probe.index``, so one batch renders many units.


def _layer(probe: Probe, layer: int | str) -> torch.Tensor:
    return next(iter(probe.features([layer]).values())).float()


def _per_image(value, probe: Probe, dtype=torch.long) -> torch.Tensor:
    """One value for all images, or the active images' entries of a per-image tensor (N, ...)."""
    value = torch.as_tensor(value, dtype=dtype)
    return value.expand(len(probe.index)) if value.dim() == 0 else value[probe.index.to(value.device)]


def _check_channels(feats: torch.Tensor, channels: torch.Tensor, what: str) -> None:
    if len(channels) and not (0 <= int(channels.min()) and int(channels.max()) < feats.shape[1]):
        raise ConfigError(f"{what}: channel {int(channels.max())} out of range 0..{feats.shape[1] - 1}")


class Channel(Objective):
    """A channel's mean activation over all positions (Olah et al. 2017: "channel"; Lucent's
    ``channel``); for a flat layer (N, C) the unit itself."""

    name = "channel"

    def __init__(self, layer: int | str, channel: int | torch.Tensor):
        self.layer, self.channel = layer, channel

    def evaluate(self, probe: Probe) -> Evaluation:
        feats = _layer(probe, self.layer)
        c = _per_image(self.channel, probe).to(feats.device)
        _check_channels(feats, c, repr(self))
        unit = feats[torch.arange(len(feats), device=feats.device), c]  # (n, H, W) or (n,)
        value = unit.flatten(1).mean(1) if unit.dim() > 1 else unit
        return Evaluation({self.name: value}, {"channel_activation": value.detach()})

    def __repr__(self) -> str:
        return f"Channel({self.layer!r})"


class Neuron(Objective):
    """One position of a channel, the centre ``(H // 2, W // 2)`` unless ``y``/``x`` say otherwise
    (Olah et al. 2017: "neuron"): a unit with one receptive field, so the picture is local."""

    name = "neuron"

    def __init__(self, layer: int | str, channel: int | torch.Tensor, x: int | None = None, y: int | None = None):
        self.layer, self.channel, self.x, self.y = layer, channel, x, y

    def evaluate(self, probe: Probe) -> Evaluation:
        feats = _layer(probe, self.layer)
        if feats.dim() != 4:
            raise ConfigError(f"{self!r}: layer {self.layer!r} has no positions (shape {tuple(feats.shape[1:])}); "
                              "use Channel for a flat layer")
        c = _per_image(self.channel, probe).to(feats.device)
        _check_channels(feats, c, repr(self))
        h, w = feats.shape[-2:]
        y, x = h // 2 if self.y is None else int(self.y), w // 2 if self.x is None else int(self.x)
        if not (0 <= y < h and 0 <= x < w):
            raise ConfigError(f"{self!r}: position (y={y}, x={x}) outside the {h}x{w} map")
        value = feats[torch.arange(len(feats), device=feats.device), c, y, x]
        return Evaluation({self.name: value}, {"neuron_activation": value.detach()})

    def __repr__(self) -> str:
        return f"Neuron({self.layer!r})"


class Direction(Objective):
    """Activations along a direction ``vector`` of channel space (Olah et al. 2017: "direction";
    Lucent's ``direction``), averaged over positions: the cosine between each position's activation
    vector and ``vector`` (``cosine=True``, Lucent's choice: scale-free, in [-1, 1]) or their dot product.
    ``vector``: (C,) for every image, or (N, C), one direction per image."""

    name = "direction"

    def __init__(self, layer: int | str, vector: torch.Tensor, cosine: bool = True):
        self.layer, self.vector, self.cosine = layer, torch.as_tensor(vector, dtype=torch.float32), bool(cosine)
        if self.vector.dim() not in (1, 2):
            raise ConfigError(f"direction vector must be (C,) or (N, C), got shape {tuple(self.vector.shape)}")

    def evaluate(self, probe: Probe) -> Evaluation:
        feats = _layer(probe, self.layer)
        v = self.vector if self.vector.dim() == 1 else self.vector[probe.index.to(self.vector.device)]
        v = v.to(feats.device).expand(len(feats), -1)
        if v.shape[1] != feats.shape[1]:
            raise ConfigError(f"{self!r}: a direction of {v.shape[1]} channels for a layer of {feats.shape[1]}")
        v = v.reshape(*v.shape, *[1] * (feats.dim() - 2))
        along = torch.cosine_similarity(feats, v, dim=1, eps=1e-8) if self.cosine else (feats * v).sum(1)
        value = along.flatten(1).mean(1) if along.dim() > 1 else along
        return Evaluation({self.name: value})

    def __repr__(self) -> str:
        return f"Direction({self.layer!r}{'' if self.cosine else ', cosine=False'})"


class Diversity(Objective):
    """Lucent's ``diversity`` (Olah et al. 2017, "Diversity"): images that share a goal should differ in
    style, measured by the Gram matrices G = F F^T of the layer's (C, positions) activations F.

    A *batch* term: image i's value is minus the mean cosine similarity of its Gram matrix to those of
    the other active images of its group (``groups``: a per-image label tensor (N,), indexed by
    ``probe.index``; None = the whole batch is one group), in [-1, 0] for ReLU features. Its gradient
    reaches every image of the group (each similarity appears in two images' values), so unlike the
    other objectives an image's result depends on the others: an image alone in its group (one image,
    or the others stopped) has value 0 and no gradient from this term. Lucid's total over the batch is
    the sum of these values times (n - 1) / n."""

    name = "diversity"

    def __init__(self, layer: int | str, groups: torch.Tensor | None = None):
        self.layer, self.groups = layer, groups

    def evaluate(self, probe: Probe) -> Evaluation:
        feats = _layer(probe, self.layer)
        flat = feats.flatten(2) if feats.dim() > 2 else feats[..., None]  # (n, C, positions)
        gram = (flat @ flat.transpose(1, 2)).flatten(1)
        gram = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
        similarity = gram @ gram.T  # (n, n) cosines
        n = len(feats)
        others = ~torch.eye(n, dtype=torch.bool, device=feats.device)
        if self.groups is not None:
            g = _per_image(self.groups, probe).to(feats.device)
            others &= g[:, None] == g[None, :]
        count = others.sum(1)
        value = -(similarity * others).sum(1) / count.clamp_min(1)
        return Evaluation({self.name: value}, {"gram_similarity": (-value).detach()})

    def __repr__(self) -> str:
        return f"Diversity({self.layer!r})"


# --------------------------------------------------------------------------- image priors


class L2(Objective):
    """``||x - center||^2``: with a minus sign, the reference's L2 decay (center = mean image) or, for
    fooling images, a pull toward the original image (``per_image``: one center per image)."""

    name = "l2"

    def __init__(self, center: torch.Tensor | None = None, per_image: bool = False):
        self.center, self.per_image = center, per_image

    def evaluate(self, probe: Probe) -> Evaluation:
        x = probe.image
        if self.center is not None:
            x = x - (self.center[probe.index] if self.per_image else self.center).to(x)
        return Evaluation({self.name: (x ** 2).flatten(1).sum(1)})

    def __repr__(self) -> str:
        return "L2()"


class TotalVariation(Objective):
    """``sum((dx^2 + dy^2)^(beta/2))`` (Mahendran & Vedaldi 2015, eq. 5); subtract it as a prior."""

    name = "tv"

    def __init__(self, beta: float = 2.0):
        self.beta = float(beta)

    def evaluate(self, probe: Probe) -> Evaluation:
        x = probe.image
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        squared = dx ** 2 + dy ** 2
        tv = squared if self.beta == 2.0 else (squared + 1e-8) ** (self.beta / 2)
        return Evaluation({self.name: tv.flatten(1).sum(1)})

    def __repr__(self) -> str:
        return "TotalVariation()"


def check_prior_weights(l2: float, tv: float) -> None:
    if l2 < 0 or tv < 0:
        raise ConfigError(f"prior weights must be >= 0, got l2={l2}, tv={tv}")


def with_priors(objective: Objective, *, l2: float = 0.0, tv: float = 0.0,
                center: torch.Tensor | None = None) -> Objective:
    """``objective - l2 * L2(center) - tv * TV()``, leaving out priors of weight 0."""
    check_prior_weights(l2, tv)
    if l2:
        objective = objective - l2 * L2(center)
    if tv:
        objective = objective - tv * TotalVariation()
    return objective
