"""Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net": the gradient with
every ReLU passing back only positive gradients."""

from __future__ import annotations

import contextlib

import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.explain.attribution.base import Attribution


@contextlib.contextmanager
def guided_relus(model: nn.Module):
    """Within this context, each ``nn.ReLU`` of ``model`` passes back ReLU(its input gradient)."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ConfigError(f"guided backprop needs nn.ReLU modules; {type(model).__name__} has none")
    handles = [m.register_full_backward_hook(lambda module, grad_in, grad_out: tuple(
        None if g is None else F.relu(g) for g in grad_in)) for m in relus]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class GuidedBackprop(Attribution):
    def attribute(self, images, targets):
        with guided_relus(self.model):
            return self.gradients(images, targets).cpu()
