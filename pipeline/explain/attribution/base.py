"""What every gradient attribution method shares: batched gradients of the class score with respect to
the pixels, and the map a person looks at (max over colour channels of |attribution|).

Methods are batch-first, work on any ``ImageClassifier`` in pixel space, take the class to explain
per image, and differ only in which gradients they combine and how (``attribute``). Each lives in a
module of its own with a config in ``conf/attribution/<name>.yaml`` (``_target_`` + options), which
is all a new method needs (``pipeline.explain.attribution.load`` finds it by name).
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from pipeline.model.architectures import ImageClassifier
from pipeline.model.precision import as_input, check_precision, forward


class Attribution:
    def __init__(self, model: ImageClassifier, *, precision: str = "fp32", batch_size: int = 100, seed: int = 0):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.precision, self.batch_size = model, check_precision(precision), int(batch_size)
        self.seed = int(seed)  # for methods that draw noise

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

    @torch.no_grad()
    def scores(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """S_y per image (N,) on the CPU, in batches."""
        device = next(iter(self.model.buffers())).device
        out = []
        for lo in range(0, len(images), self.batch_size):
            x = as_input(as_float(images[lo:lo + self.batch_size].to(device)), self.precision)
            target = targets[lo:lo + self.batch_size].to(device)
            out.append(forward(self.model, x, self.precision).gather(1, target[:, None])[:, 0].cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-pixel attribution (N, 3, H, W), or (N, 1, H, W) for methods with one value per pixel."""
        raise NotImplementedError

    def maps(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Saliency maps (N, H, W): max over channels of |attribution|."""
        return self.attribute(images, targets).abs().amax(dim=1)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32; float images keep their precision (float64 for exact checks)."""
    return images if images.is_floating_point() else images.float()


def baseline_like(model: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
    """What the network sees as zero input (``mean_for``), broadcast to ``images``."""
    mean = model.mean_for(images.shape[-2:]).detach().cpu()
    return mean.to(as_float(images).dtype).expand(images.shape[1:])
