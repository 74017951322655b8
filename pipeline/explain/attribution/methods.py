"""Gradient attribution: which pixels the class score is most sensitive to.

``Saliency`` is Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional Networks", sec. 3.1:
the gradient of the unnormalised class score S_y with respect to the image; the map is the max over
colour channels of its absolute value. The variants share that machinery and differ only in
which gradients they average and what they multiply them by. All are batch-first, work on any
``ImageClassifier`` in pixel space, and take the class to explain per image.
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from pipeline.model.architectures import ImageClassifier
from pipeline.model.precision import as_input, check_precision, forward


class Saliency:
    """Simonyan et al. 2014, sec. 3.1: dS_y/dx."""

    def __init__(self, model: ImageClassifier, *, precision: str = "fp32", batch_size: int = 100):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.precision, self.batch_size = model, check_precision(precision), int(batch_size)

    def gradients(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """dS_y/dx for pixel images (N, 3, H, W; uint8 -> float32, float dtypes kept), one class per image."""
        device = next(iter(self.model.buffers())).device
        out = []
        for lo in range(0, len(images), self.batch_size):
            x = as_input(as_float(images[lo:lo + self.batch_size].to(device)), self.precision).requires_grad_(True)
            target = targets[lo:lo + self.batch_size].to(device)
            score = forward(self.model, x, self.precision).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, x)
            out.append(grad.contiguous())
        return torch.cat(out) if out else images.new_zeros(images.shape, dtype=torch.float32)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-pixel, per-channel attribution (N, 3, H, W)."""
        return self.gradients(images, targets)

    def maps(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Saliency maps (N, H, W): max over channels of |attribution|."""
        return self.attribute(images, targets).abs().amax(dim=1)


class SmoothGrad(Saliency):
    """Smilkov et al. 2017: average the gradient over copies with Gaussian noise of ``noise`` x 255."""

    def __init__(self, model: ImageClassifier, *, samples: int = 25, noise: float = 0.15, seed: int = 0, **kwargs):
        super().__init__(model, **kwargs)
        if int(samples) < 1 or noise < 0:
            raise ConfigError(f"smoothgrad needs samples >= 1 and noise >= 0, got {samples} and {noise}")
        self.samples, self.noise, self.seed = int(samples), float(noise), int(seed)

    def attribute(self, images, targets):
        generator = torch.Generator().manual_seed(self.seed)
        x = as_float(images)
        total = torch.zeros_like(x)
        for _ in range(self.samples):
            noise = torch.randn(x.shape, generator=generator).to(x.dtype) * (self.noise * 255.0)
            total += self.gradients(x + noise, targets).cpu()
        return total / self.samples


class GradientXInput(Saliency):
    """Shrikumar et al. 2016: gradient times (image - baseline); baseline = the model's mean image,
    i.e. the input the network sees as zero."""

    def attribute(self, images, targets):
        grad = self.gradients(images, targets).cpu()
        return grad * (as_float(images) - baseline_like(self.model, images))


class IntegratedGradients(Saliency):
    """Sundararajan et al. 2017: (x - x') times the mean gradient on the straight path from the
    baseline x' (``mean``: the model's mean image; ``black``: zeros) to x, ``steps`` points (midpoint rule)."""

    def __init__(self, model: ImageClassifier, *, steps: int = 32, baseline: str = "mean", **kwargs):
        super().__init__(model, **kwargs)
        if int(steps) < 1:
            raise ConfigError(f"integrated_gradients needs steps >= 1, got {steps}")
        if baseline not in ("mean", "black"):
            raise ConfigError(f"unknown integrated_gradients baseline {baseline!r}; choose mean or black")
        self.steps, self.baseline = int(steps), baseline

    def attribute(self, images, targets):
        x = as_float(images)
        base = baseline_like(self.model, x) if self.baseline == "mean" else torch.zeros_like(x)
        total = torch.zeros_like(x)
        for k in range(self.steps):
            alpha = (k + 0.5) / self.steps
            total += self.gradients(base + alpha * (x - base), targets).cpu()
        return (x - base) * total / self.steps


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32; float images keep their precision (float64 for exact checks)."""
    return images if images.is_floating_point() else images.float()


def baseline_like(model: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
    """The model's mean image (its per-channel mean for other sizes), broadcast to ``images``."""
    mean = model.mean_for(images.shape[-2:]).detach().cpu()
    return mean.to(as_float(images).dtype).expand(images.shape[1:])


METHODS: dict[str, type[Saliency]] = {
    "gradient": Saliency,
    "smoothgrad": SmoothGrad,
    "gradient_x_input": GradientXInput,
    "integrated_gradients": IntegratedGradients,
}


def make_method(name: str, model: ImageClassifier, **options) -> Saliency:
    if name not in METHODS:
        raise ConfigError(f"unknown saliency method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](model, **options)
