"""Muon for convolution filters, nesterov SGD for everything else, in one optimizer.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) replaces each filter
bank's momentum by its nearest semi-orthogonal matrix (a few Newton-Schulz iterations), so
every direction of the update moves at the same speed instead of the few dominant ones. As in
Keller Jordan's CIFAR-10 speedrun (airbench94_muon), filters are renormalised to a fixed norm
before each step: they all feed batch norm, which ignores their scale, so the learning rate is
directly the angle a filter bank turns per step and weight decay has nothing left to do.
"""

from __future__ import annotations

import torch


def orthogonalize(g: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T (quintic Newton-Schulz, Jordan et al.'s coefficients).

    Each iteration multiplies x by a polynomial of its Gram matrix x x^T, so the whole iteration
    runs on small (rows x rows) matrices and touches the wide x only twice: half the work for
    the 384 x 3456 banks of the last stage. bf16 matmuls: the iteration only needs singular
    values pushed near 1, not exactness.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16)
    x = x / (x.norm() + 1e-7)  # top singular value <= 1
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    gram = x @ x.T
    poly = None  # x_k = poly @ x_0; gram_k = x_k x_k^T (all polynomials in gram_0: they commute)
    for k in range(steps):
        step = b * gram + c * gram @ gram
        step.diagonal().add_(a)
        poly = step if poly is None else step @ poly
        if k < steps - 1:
            gram = step @ gram @ step
    x = poly @ x
    return (x.T if tall else x).to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Param groups with ``muon=True`` (4-D filters followed by batch norm) take Muon steps;
    the others (biases, BN, the classifier head) nesterov-momentum SGD with weight decay.

    A group's learning rate is ``lr * lr_scale`` so one schedule drives both kinds.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 3):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"MuonSGD needs lr > 0, 0 <= momentum < 1, weight_decay >= 0; got {lr}, "
                             f"{momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      muon=False, lr_scale=1.0, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, momentum = group["lr"] * group["lr_scale"], group["momentum"]
            grads = [p.grad for p in params]
            if not group["muon"] and group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            for p, g in zip(params, grads):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(g)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, momentum)  # one call per group: dozens of small tensors
            torch._foreach_add_(bufs, grads)
            updates = list(torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs)
            if group["muon"]:
                for i, p in enumerate(params):
                    rows = p.shape[0]
                    flat = updates[i].reshape(rows, -1)
                    update = orthogonalize(flat, group["ns_steps"]).view_as(p)
                    updates[i] = update * max(1.0, rows / flat.shape[1]) ** 0.5  # tall banks: same step size
                    p.mul_(rows ** 0.5 / p.norm().clamp_min(1e-12))
            torch._foreach_add_(params, updates, alpha=-lr)
