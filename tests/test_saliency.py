"""Saliency maps: exact gradients, batching, variants, faithfulness measures and the job."""

import json
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import REPO, job_config, tiny_classifier

from pipeline.explain import saliency
from pipeline.explain.attribution.gradient import Saliency
from pipeline.explain.attribution.gradient_x_input import GradientXInput
from pipeline.explain.attribution.integrated_gradients import IntegratedGradients
from pipeline.explain.attribution.registry import available, factory
from pipeline.explain.attribution.smoothgrad import SmoothGrad
from pipeline.errors import ConfigError
from pipeline.explain.faithfulness import auc, cascading_randomization, curves, pixel_ranks, spearman
from pipeline.model.precision import frozen


@pytest.fixture(scope="module")
def model64():
    net, arch = tiny_classifier(num_classes=4, mean_image=torch.rand(3, 16, 16) * 255)
    return frozen(net.double(), "cpu"), arch


def images(n=4, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 255


def test_saliency_equals_finite_differences(model64):
    model, _ = model64
    x, targets = images(2), torch.tensor([1, 3])
    grad = Saliency(model).gradients(x, targets)
    eps = 1e-4
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        i, c, h, w = (int(torch.randint(n, (1,), generator=gen)) for n in (2, 3, 16, 16))
        plus, minus = x.clone(), x.clone()
        plus[i, c, h, w] += eps
        minus[i, c, h, w] -= eps
        fd = (model(plus)[i, targets[i]] - model(minus)[i, targets[i]]) / (2 * eps)
        assert float(grad[i, c, h, w]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
    maps = Saliency(model).maps(x, targets)
    assert maps.shape == (2, 16, 16) and torch.equal(maps, grad.abs().amax(1))


def test_batched_equals_one_at_a_time(model64):
    model, _ = model64
    x, targets = images(5).float(), torch.tensor([0, 1, 2, 3, 0])
    net = frozen(model.float(), "cpu")
    batched = Saliency(net, batch_size=5).maps(x, targets)
    single = torch.cat([Saliency(net).maps(x[i:i + 1], targets[i:i + 1]) for i in range(5)])
    assert torch.allclose(batched, single, rtol=1e-4, atol=1e-6)
    chunked = Saliency(net, batch_size=2).maps(x, targets)
    assert torch.allclose(batched, chunked, rtol=1e-4, atol=1e-6)
    model.double()


def test_variants(model64):
    model, _ = model64
    x, targets = images(3), torch.tensor([2, 0, 1])
    grad = Saliency(model).gradients(x, targets)
    assert torch.allclose(GradientXInput(model).attribute(x, targets), grad * (x - model.mean_image))
    assert torch.allclose(SmoothGrad(model, samples=3, noise=0.0).attribute(x, targets), grad)
    # integrated gradients are complete: they add up to S(x) - S(baseline)
    ig = IntegratedGradients(model, steps=256).attribute(x, targets)
    scores = model(x).gather(1, targets[:, None])[:, 0]
    base = model(model.mean_image.expand_as(x).clone()).gather(1, targets[:, None])[:, 0]
    assert torch.allclose(ig.flatten(1).sum(1), scores - base, rtol=0.02, atol=0.02 * float((scores - base).abs().max()))
    with pytest.raises(ConfigError, match="unknown saliency method 'magic'"):
        factory("magic")
    with pytest.raises(ConfigError, match="samples >= 1"):
        factory("smoothgrad", {"samples": 0})(model)


def test_every_method_config_builds_its_method(model64):
    model, _ = model64
    assert {"gradient", "smoothgrad", "gradient_x_input", "integrated_gradients"} <= set(available())
    x, targets = images(2), torch.tensor([1, 0])
    for name in available():
        method = factory(name, {"samples": 2} if name == "smoothgrad" else {}, batch_size=1, seed=3)(model)
        assert method.maps(x, targets).shape == (2, *x.shape[-2:]), name
    custom = factory({"_target_": "pipeline.explain.attribution.smoothgrad.SmoothGrad", "samples": 1, "noise": 0.0})
    assert torch.allclose(custom(model).attribute(x, targets), Saliency(model).gradients(x, targets))


def test_bf16_maps_rank_like_fp32(model64):
    model, _ = model64
    net = frozen(model.float(), "cpu", "bf16")
    x, targets = images(3).float(), torch.tensor([0, 1, 2])
    fp32 = Saliency(frozen(model, "cpu")).maps(x, targets)
    bf16 = Saliency(net, precision="bf16").maps(x, targets)
    assert float(spearman(fp32, bf16).min()) > 0.9
    model.to(memory_format=torch.contiguous_format).double()


def test_faithfulness_pieces(model64):
    model, arch = model64
    net = frozen(model.float(), "cpu")
    maps = torch.tensor([[[3.0, 1.0], [4.0, 2.0]]])
    assert pixel_ranks(maps).tolist() == [[1, 3, 0, 2]]
    a = torch.rand(2, 50)
    assert torch.allclose(spearman(a, a), torch.ones(2)) and torch.allclose(spearman(a, -a), -torch.ones(2))
    assert torch.allclose(auc(torch.full((2, 9), 0.3)), torch.full((2,), 0.3))
    assert float(auc(torch.linspace(0, 1, 5)[None])) == pytest.approx(0.5)
    x, targets = images(2).float(), torch.tensor([0, 1])
    deletion, insertion = curves(net, x, targets, pixel_ranks(Saliency(net).maps(x, targets)), steps=4, blur_sigma=1.0)
    probs = net(x).softmax(1).gather(1, targets[:, None])[:, 0]
    assert deletion.shape == (2, 5) and torch.allclose(deletion[:, 0], probs, atol=1e-5)
    assert torch.allclose(insertion[:, -1], probs, atol=1e-5)  # everything inserted = the image
    gone = net(net.mean_image.expand_as(x).clone()).softmax(1).gather(1, targets[:, None])[:, 0]
    assert torch.allclose(deletion[:, -1], gone, atol=1e-5)  # everything deleted = the mean image
    cascade = cascading_randomization(net, arch, lambda m: Saliency(m).maps(x, targets))
    assert [name for name, _ in cascade] == list(reversed(net.layer_names))
    assert all(-1 - 1e-5 <= rho <= 1 + 1e-5 for _, rho in cascade), cascade
    ends = cascading_randomization(net, arch, lambda m: Saliency(m).maps(x, targets), ends_only=True)
    assert ends == [cascade[0], cascade[-1]]  # the comparison's two columns, without the layers between
    model.double()


# --------------------------------------------------------------------------- job


SMALL = ["saliency.views.confident.min_confidence=0.0", "saliency.views.confident.n=2",
         "saliency.evaluation.n=8", "saliency.evaluation.steps=4", "saliency.evaluation.sanity_images=4"]


def test_job_writes_figures_metrics_and_mlflow_run(subject_files, tmp_path):
    metrics = saliency.run(job_config("saliency", subject_files, tmp_path, *SMALL))
    saved = json.loads((tmp_path / "metrics" / "saliency.json").read_text())
    table = saved.pop("methods")
    assert saved == pytest.approx({k: v for k, v in metrics.items() if k != "methods"})
    assert {"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "sanity_spearman",
            "images_per_second"} <= set(saved)
    # one evaluation: every default method, every column, one shared random baseline; the headline is
    # the primary method's row
    assert set(table) == {"gradient", "gradcam", "guided_backprop", "occlusion"}
    assert {k: saved[k] for k in table["gradient"] if k != "images_per_second"} == \
        pytest.approx({k: v for k, v in table["gradient"].items() if k != "images_per_second"})
    assert saved["num_images"] == 8 and "sanity_spearman_fc" in saved
    columns = {"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "sanity_spearman",
               "sanity_spearman_top_layer", "infidelity", "max_sensitivity", "images_per_second"}
    assert all(set(row) == columns for row in table.values())
    assert len({row["random_deletion_auc"] for row in table.values()}) == 1
    curves = (tmp_path / "plots" / "saliency_curves.csv").read_text().splitlines()  # the DVC plot
    assert curves[0] == "fraction,deletion,insertion,random_deletion,random_insertion" and len(curves) == 6
    for name, row in table.items():
        assert row == pytest.approx(metrics["methods"][name])
    out = tmp_path / "results" / "saliency"
    assert {p.name for p in out.iterdir()} == {"random.png", "confident.png", "random_indices.txt",
                                               "confident_indices.txt", "methods.png"}
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("saliency").experiment_id])[0]
    assert run.data.params["saliency.method"] == "gradient" and "train.lr" not in run.data.params
    assert run.data.tags["model_arch"] == "resnet" and run.data.tags["dataset_sha256"]
    assert len(client.get_metric_history(run.info.run_id, "curve_deletion")) == 5
    assert {"random.png", "confident.png", "methods.png", "methods.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.data.metrics["methods.gradcam.infidelity"] == pytest.approx(table["gradcam"]["infidelity"])
    assert "methods" not in run.data.tags["final_metrics"].split(",")


def test_job_variants_and_named_classes(subject_files, tmp_path):
    metrics = saliency.run(job_config("saliency", subject_files, tmp_path, *SMALL, "saliency.method=smoothgrad",
                                      "+saliency.options.samples=2", "saliency.target=bullfrog",
                                      "saliency.evaluation.sanity_images=0", "saliency.precision=bf16",
                                      "+saliency.views.frogs={select: class, class: bullfrog, n: 2}"))
    assert "sanity_spearman" not in metrics and (tmp_path / "results" / "saliency" / "frogs.png").is_file()
    assert list(metrics["methods"]) == ["smoothgrad", "gradient", "gradcam", "guided_backprop", "occlusion"]  # primary first


@pytest.mark.parametrize("override, message", [
    ("saliency.target=bulfrog", "unknown class 'bulfrog'; did you mean 'bullfrog'"),
    ("saliency.views.random.n=1000", "only 24"),
    ("+saliency.views.mine={select: indices, indices: [3, 99]}", "index 99 out of range 0..23"),
    ("saliency.method=magic", "unknown saliency method"),
    ("saliency.views.random.select=best", "unknown image selection"),
    ("saliency.precision=fp16", "unknown precision"),
])
def test_bad_inputs_fail_clearly_and_write_nothing(subject_files, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        saliency.run(job_config("saliency", subject_files, tmp_path, *SMALL, override))
    assert not (tmp_path / "results").exists() and not (tmp_path / "metrics").exists()


def test_cli_error_is_one_line(subject_files, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.saliency", f"paths.prepared={subject_files['prepared']}",
         f"paths.classifier={subject_files['classifier']}", f"paths.results={tmp_path}/results",
         f"paths.metrics={tmp_path}/metrics", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
         "saliency.target=zebra", f"hydra.run.dir={tmp_path}/hydra"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "saliency: error: unknown class 'zebra'" in result.stderr
    assert "Traceback" not in result.stderr


def test_job_logs_the_integrated_gradients_convergence_delta(subject_files, tmp_path):
    metrics = saliency.run(job_config("saliency", subject_files, tmp_path, *SMALL, "saliency.method=integrated_gradients",
                                      "+saliency.options.steps=4", "saliency.evaluation.n=null"))
    assert metrics["convergence_delta"] >= 0
    more = saliency.run(job_config("saliency", subject_files, tmp_path / "more", *SMALL,
                                  "saliency.method=integrated_gradients", "+saliency.options.steps=64",
                                  "saliency.evaluation.n=null"))
    assert more["convergence_delta"] < metrics["convergence_delta"]  # more steps, a closer integral


@pytest.mark.parametrize("method", ["gradcam", "guided_backprop", "occlusion"])
def test_job_runs_every_new_method_by_name(subject_files, tmp_path, method):
    metrics = saliency.run(job_config("saliency", subject_files, tmp_path, *SMALL, f"saliency.method={method}",
                                      "saliency.evaluation.sanity_images=2"))
    assert 0 <= metrics["deletion_auc"] <= 1 and "sanity_spearman" in metrics
    assert (tmp_path / "results" / "saliency" / "random.png").is_file()
