"""Adversarial examples and the robust training recipe (pipeline/model/adversarial.py, train=robust)."""

import json

import pytest
import torch
from conftest import tiny_classifier
from omegaconf import OmegaConf
from test_train import job_cfg, prepared  # noqa: F401  (the module's synthetic dataset fixture)

from pipeline.errors import ConfigError
from pipeline.model import adversarial, train
from pipeline.model.checkpoint import load_classifier


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_and_random_start_stay_in_the_ball(norm):
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(6, 3, 8, 8, generator=g) * 50
    projected = adversarial.project(delta, norm, 10.0)
    size = projected.flatten(1).norm(dim=1) if norm == "l2" else projected.flatten(1).abs().amax(1)
    assert (size <= 10.0 + 1e-4).all() and torch.allclose(size, torch.full((6,), 10.0), atol=1e-4)
    small = delta * 1e-3  # inside the ball: unchanged
    assert torch.allclose(adversarial.project(small, norm, 10.0), small)
    start = adversarial.random_start(delta, norm, 10.0, torch.Generator().manual_seed(1))
    size = start.flatten(1).norm(dim=1) if norm == "l2" else start.flatten(1).abs().amax(1)
    assert (size <= 10.0 + 1e-4).all() and (size > 0).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_attack_raises_the_loss_within_the_radius_and_valid_pixels(norm):
    model, _ = tiny_classifier(num_classes=4)
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255
    labels = model(images).argmax(1)
    eps = 300.0 if norm == "l2" else 4.0
    adv = adversarial.attack(model, images, labels, norm=norm, eps=eps, steps=5, step_size=2.5 * eps / 5)
    delta = adv - images
    size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
    assert (size <= eps * (1 + 1e-4)).all() and adv.min() >= 0 and adv.max() <= 255
    clean = torch.nn.functional.cross_entropy(model(images), labels, reduction="none")
    attacked = torch.nn.functional.cross_entropy(model(adv), labels, reduction="none")
    assert (attacked > clean).all()
    assert not any(p.grad is not None for p in model.parameters())  # only the input gradient was taken
    # A random start is reproducible from its generator.
    a, b = (adversarial.attack(model, images, labels, norm=norm, eps=eps, steps=1, step_size=1.25 * eps,
                               generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b)


def test_l2_radius_shrinks_with_progressive_resizing():
    threat = OmegaConf.create({"norm": "l2", "eps": 255.0})
    assert adversarial.radius_at(threat, 32, 64) == 127.5 and adversarial.radius_at(threat, 64, 64) == 255.0
    threat.norm = "linf"
    assert adversarial.radius_at(threat, 32, 64) == 255.0


def test_robust_training_reports_pgd_accuracy_and_is_deterministic(prepared, tmp_path):  # noqa: F811
    overrides = ("train=robust", "train.adversarial.eval_images=8", "train.adversarial.eval_steps=3")
    metrics = train.run(job_cfg(prepared, tmp_path / "a", *overrides))
    assert 0 <= metrics["pgd_accuracy"] <= 1 and metrics["pgd_images"] == 8 and metrics["pgd_steps"] == 3
    assert json.loads((tmp_path / "a" / "metrics" / "train.json").read_text())["pgd_eps"] == 255.0
    train.run(job_cfg(prepared, tmp_path / "b", *overrides))
    a, b = (torch.load(tmp_path / d / "models" / "classifier.pt")["state_dict"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    standard = torch.load(_standard(prepared, tmp_path))["state_dict"]
    assert not all(torch.equal(a[k], standard[k]) for k in a)  # the attack changed what was learnt
    model, _ = load_classifier(tmp_path / "a" / "models" / "classifier.pt")
    assert model.num_classes == 4


def test_robust_experiment_registers_its_own_model(prepared, tmp_path):  # noqa: F811
    """experiment=robust registers under its own name, so models:/tinyimagenet-classifier stays the standard model."""
    import mlflow

    train.run(job_cfg(prepared, tmp_path, "experiment=robust", "train.adversarial.eval_images=4",
                      "train.adversarial.eval_steps=1"))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert [m.name for m in client.search_registered_models()] == ["tinyimagenet-classifier-robust"]
    run = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
    assert run.data.tags["model_uri"] == "models:/tinyimagenet-classifier-robust/1"
    assert run.data.tags["experiment"] == "robust"


def _standard(prepared, tmp_path):  # noqa: F811
    train.run(job_cfg(prepared, tmp_path / "standard"))
    return tmp_path / "standard" / "models" / "classifier.pt"


@pytest.mark.parametrize("override", ["train.adversarial.norm=l1", "train.adversarial.eps=-1",
                                      "train.adversarial.steps=0"])
def test_bad_threats_are_config_errors(prepared, tmp_path, override):  # noqa: F811
    with pytest.raises(ConfigError, match="adversarial"):
        train.run(job_cfg(prepared, tmp_path, "train=robust", override))
