"""Layers by name on any ``nn.Module``: forward hooks on ``named_modules()``.

``activations`` runs one forward pass and returns the outputs of the named submodules, stopping
the pass as soon as the last of them has run, so asking for an early layer costs only the forward
up to it (as the CS231n reference's ``forward(X, end=k)``). ``autocast_after`` switches a forward
to bf16 autocast once a named layer has run. Neither needs the model to be written here: any
classifier whose layers are submodules (torchvision's, a user's own) works the same way.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from pipeline.errors import PipelineError


class UnknownLayerError(PipelineError, ValueError):
    """A layer name or index that the model does not have."""


class _Seen(Exception):
    """Raised by the last hook to end the forward pass early."""


def submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise UnknownLayerError(f"{type(model).__name__} has no layer {name!r}") from None


def activations(model: nn.Module, x: torch.Tensor, names: Sequence[str],
                forward: Callable[[torch.Tensor], object] | None = None) -> dict[str, torch.Tensor]:
    """{name: output of submodule ``name``} for input ``x``, from one (truncated) forward pass.

    ``forward`` replaces ``model(x)`` as the pass to run (e.g. a wrapper that preprocesses).
    """
    wanted = list(dict.fromkeys(names))
    out: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, args, output):
            out[name] = output
            if len(out) == len(wanted):
                raise _Seen

        return record

    handles = [submodule(model, name).register_forward_hook(hook(name)) for name in wanted]
    try:
        (forward or model)(x)
    except _Seen:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in wanted if name not in out]
    if missing:
        raise UnknownLayerError(f"layer(s) {', '.join(missing)} of {type(model).__name__} did not run in its forward pass")
    return out


@contextlib.contextmanager
def autocast_after(model: nn.Module, name: str | None, device_type: str) -> Iterator[None]:
    """Within this context, a forward pass of ``model`` runs under bf16 autocast from the end of
    layer ``name`` on (from the start when ``name`` is None)."""
    with contextlib.ExitStack() as stack:
        if name is None:
            stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
            yield
            return

        def enter(module, args, output):
            stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))

        handle = submodule(model, name).register_forward_hook(enter)
        stack.callback(handle.remove)
        yield
