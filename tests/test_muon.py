"""Muon on conv filters + SGD on the rest (pipeline/muon.py)."""

import pytest
import torch

from pipeline.model.muon import MuonSGD, orthogonalize


@pytest.mark.parametrize("shape", [(24, 27), (96, 48), (64, 576)])
def test_orthogonalize_flattens_the_spectrum(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 10  # one dominant direction, as in momentum: singular values 1-2 orders apart
    s = torch.linalg.svdvals(orthogonalize(g, steps=5).float())
    assert s.max() < 1.3 and s.min() > 0.5  # all directions move at about the same speed
    u, _, v = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(orthogonalize(g).flatten(), (u @ v).flatten(), dim=0) > 0.95


@pytest.mark.parametrize("shape", [(48, 432), (384, 192)])
def test_orthogonalize_matches_the_plain_newton_schulz_iteration(shape):
    """The Gram-matrix form is the same polynomial as x <- a x + (b A + c A^2) x, A = x x^T."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = g / g.norm()
    x = x.T if x.shape[0] > x.shape[1] else x
    for _ in range(3):
        gram = x @ x.T
        x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
    plain = x.T if shape[0] > shape[1] else x
    ours = orthogonalize(g.float()).double()
    assert ours.shape == g.shape
    # bf16 rounding only (the plain iteration in bf16 is off by up to 5% of the largest entry too)
    assert torch.nn.functional.cosine_similarity(ours.flatten(), plain.flatten(), dim=0) > 0.9995
    assert (ours - plain).abs().max() < 0.08 * plain.abs().max()


def test_muon_keeps_filter_norms_and_sgd_groups_match_torch_sgd():
    torch.manual_seed(0)
    conv, bias = torch.randn(16, 8, 3, 3, requires_grad=True), torch.randn(16, requires_grad=True)
    fc = torch.randn(10, 16, requires_grad=True)
    twin_bias, twin_fc = bias.detach().clone().requires_grad_(), fc.detach().clone().requires_grad_()
    opt = MuonSGD([{"params": [conv], "muon": True, "lr_scale": 0.5}, {"params": [bias]},
                   {"params": [fc], "weight_decay": 1e-3}], lr=0.1, momentum=0.9)
    ref = torch.optim.SGD([{"params": [twin_bias]}, {"params": [twin_fc], "weight_decay": 1e-3}], lr=0.1,
                          momentum=0.9, nesterov=True)
    for step in range(3):
        grads = [torch.randn_like(t) for t in (conv, bias, fc)]
        for t, g in zip((conv, bias, fc), grads):
            t.grad = g
        for t, g in zip((twin_bias, twin_fc), grads[1:]):
            t.grad = g.clone()
        before = conv.detach().clone()
        opt.step()
        ref.step()
        assert float(conv.detach().norm()) == pytest.approx(16 ** 0.5, rel=0.05)  # renormalised, then one step of ~lr
        angle = torch.arccos(torch.nn.functional.cosine_similarity(before.flatten(), conv.detach().flatten(), dim=0))
        if step:  # the angle a filter bank turns is the learning rate (0.1 * 0.5), up to Newton-Schulz slack
            assert 0.02 < float(angle) < 0.08
    assert torch.equal(bias, twin_bias) and torch.allclose(fc, twin_fc)


def test_muon_rejects_bad_settings():
    with pytest.raises(ValueError, match="lr > 0"):
        MuonSGD([torch.zeros(2, requires_grad=True)], lr=-1.0)
