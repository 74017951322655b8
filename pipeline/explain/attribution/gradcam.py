"""Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization": the channels of a layer weighted by their mean gradient, ReLU, upsampled."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.explain.attribution.base import Attribution, as_float
from pipeline.model.layers import submodule
from pipeline.model.precision import as_input, forward


class GradCAM(Attribution):
    """ReLU(sum_k mean(dS_y/dA^k) A^k) at ``layer`` (``auto``: the last spatial layer), upsampled
    bilinearly to the input. The gradient stops at the layer: nothing below it is differentiated."""

    def __init__(self, model, *, layer: str = "auto", **kwargs):
        super().__init__(model, **kwargs)
        names = getattr(model, "spatial_layer_names", None)
        if layer in (None, "auto"):
            if not names:
                raise ConfigError("gradcam needs a layer name for this model (no spatial layers are declared)")
            layer = names[-1]
        self.layer = model.layer_name(layer) if hasattr(model, "layer_name") else str(layer)
        if names is not None and self.layer not in names:
            raise ConfigError(f"gradcam needs a spatial layer; {self.layer!r} comes after the flatten "
                              f"(choose one of: {', '.join(names)})")
        self.module = submodule(model, self.layer)

    def cams(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w) class activation maps at the layer's resolution."""
        device = next(iter(self.model.buffers())).device
        out = []
        captured = {}

        def keep(module, args, output):
            captured["a"] = output.requires_grad_(True) if not output.requires_grad else output

        handle = self.module.register_forward_hook(keep)
        try:
            for lo in range(0, len(images), self.batch_size):
                x = as_input(as_float(images[lo:lo + self.batch_size].to(device)), self.precision)
                target = targets[lo:lo + self.batch_size].to(device)
                score = forward(self.model, x, self.precision).gather(1, target[:, None]).sum()
                a = captured.pop("a")
                (grad,) = torch.autograd.grad(score, a)
                weights = grad.float().mean(dim=(2, 3), keepdim=True)
                out.append(F.relu((weights * a.detach().float()).sum(dim=1, keepdim=True)))
        finally:
            handle.remove()
        return torch.cat(out) if out else images.new_zeros((0, 1, 1, 1), dtype=torch.float32)

    def attribute(self, images, targets):
        cams = self.cams(images, targets)
        return F.interpolate(cams, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False).cpu()
