"""Fooling images: per-image stopping, batching, the PNG round trip, the job and its errors."""

import json

import mlflow
import pytest
import torch
from conftest import job_config, tiny_classifier
from PIL import Image

from pipeline.explain import fooling
from pipeline.errors import ConfigError
from pipeline.model.precision import frozen


@pytest.fixture(scope="module")
def model():
    net, _ = tiny_classifier(num_classes=4, mean_image=torch.full((3, 32, 32), 120.0))
    return frozen(net, "cpu")


def images(n=4, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).float()


def test_each_image_stops_when_fooled(model):
    x = images(4)
    predicted = model(x).argmax(1)
    targets = (predicted + 1) % 4
    result = fooling.make_fooling_images(model, x, targets, max_iterations=200, lr=2.0)
    assert result.stopped.all()
    final = model(result.images).argmax(1)
    assert torch.equal(final, targets)
    assert len(set(result.steps.tolist())) > 1 or result.steps.min() > 0
    # one step earlier each image was not yet fooled: re-run with one step less
    for i in range(4):
        k = int(result.steps[i])
        earlier = fooling.make_fooling_images(model, x[i:i + 1], targets[i:i + 1], max_iterations=k - 1, lr=2.0)
        assert not earlier.stopped.any()
    assert torch.equal(result.images, result.images.round())  # quantised: exactly what a PNG holds
    assert result.images.min() >= 0 and result.images.max() <= 255


def test_target_class_already_predicted_needs_no_step(model):
    x = images(2)
    result = fooling.make_fooling_images(model, x, model(x).argmax(1), max_iterations=10)
    assert result.steps.tolist() == [0, 0] and torch.equal(result.images, x)


def test_batched_equals_one_at_a_time(model):
    x = images(3, seed=1)
    targets = (model(x).argmax(1) + 2) % 4
    for step in ("sign", "normalized", "raw"):
        options = dict(max_iterations=30, lr=1.0 if step != "raw" else 1e4, step=step, quantize=step == "sign")
        batched = fooling.make_fooling_images(model, x, targets, **options)
        for i in range(3):
            single = fooling.make_fooling_images(model, x[i:i + 1], targets[i:i + 1], **options)
            assert int(single.steps[0]) == int(batched.steps[i])
            assert torch.allclose(single.images[0], batched.images[i], atol=1e-3)


def test_confidence_and_l2_options(model):
    x = images(2)
    targets = (model(x).argmax(1) + 1) % 4
    confident = fooling.make_fooling_images(model, x, targets, max_iterations=300, lr=2.0, confidence=0.9)
    probs = model(confident.images).softmax(1).gather(1, targets[:, None])[:, 0]
    assert bool((probs[confident.stopped] >= 0.9).all())
    with pytest.raises(ConfigError, match="confidence"):
        fooling.make_fooling_images(model, x, targets, confidence=1.5)
    pulled = fooling.make_fooling_images(model, x, targets, max_iterations=5, lr=3.0, step="normalized", l2=10.0,
                                         quantize=False)
    assert "l2" in pulled.history[0]


def test_random_targets_are_other_classes():
    labels = torch.arange(100) % 7
    targets = fooling.random_other_classes(labels, 7, seed=3)
    assert not bool((targets == labels).any()) and set(targets.tolist()) == set(range(7))
    assert torch.equal(targets, fooling.random_other_classes(labels, 7, seed=3))


def test_merge_histories_weights_by_active_images():
    merged = fooling.merge_histories([[{"active": 3.0, "loss": 1.0, "stopped": 0.0}],
                                      [{"active": 1.0, "loss": 5.0, "stopped": 1.0},
                                       {"active": 1.0, "loss": 4.0, "stopped": 1.0}]])
    assert merged[0] == {"active": 4.0, "stopped": 1.0, "loss": 2.0} and merged[1]["loss"] == 4.0


# --------------------------------------------------------------------------- job


SMALL = ["fooling.images.n=null", "fooling.max_iterations=200", "fooling.lr=2.0", "fooling.batch_size=2",
         "fooling.show_every=5"]


def test_job_outputs_metrics_pngs_and_mlflow(subject_files, tmp_path):
    metrics = fooling.run(job_config("fooling", subject_files, tmp_path, *SMALL))
    saved = json.loads((tmp_path / "metrics" / "fooling.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {"success_rate", "quantized_success_rate", "median_iterations", "max_iterations", "median_l2",
            "median_linf", "num_images"} <= set(saved)
    assert saved["success_rate"] > 0.5 and saved["quantized_success_rate"] == saved["success_rate"]  # quantised steps
    out = tmp_path / "results" / "fooling"
    pngs = sorted((out / "images").iterdir())
    assert len(pngs) == saved["num_images"] and (out / "summary.png").is_file()
    with Image.open(pngs[0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("val_index,label,target") and len(rows) == saved["num_images"] + 1
    plot = (tmp_path / "plots" / "fooling_iterations.csv").read_text().splitlines()  # the DVC plot, sorted
    iterations = [int(line.split(",")[1]) for line in plot[1:]]
    assert plot[0] == "image,iterations,linf,fooled" and iterations == sorted(iterations)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("fooling").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "target_prob")
    assert history and history[0].step == 0 and run.data.params["fooling.step"] == "sign"
    assert "summary.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("override, message", [
    ("fooling.lr=-1", "step size \\(lr\\) must be > 0"),
    ("fooling.target=salamandr", "did you mean"),
    ("fooling.target=7", "class index 7 out of range 0..3"),
    ("fooling.images.n=500", "only"),
    ("fooling.images.select=random", "correctly classified"),
    ("fooling.step=newton", "unknown step rule"),
])
def test_bad_inputs_fail_clearly_and_write_nothing(subject_files, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        fooling.run(job_config("fooling", subject_files, tmp_path, *SMALL, override))
    assert not (tmp_path / "results").exists() and not (tmp_path / "metrics").exists()


def test_bf16_successes_are_confirmed_in_fp32(model):
    x = images(4)
    targets = (model(x).argmax(1) + 1) % 4
    result = fooling.make_fooling_images(model, x, targets, max_iterations=200, lr=2.0, precision="bf16")
    fp32 = model(result.images).argmax(1)
    assert result.stopped.any() and bool((fp32[result.stopped] == targets[result.stopped]).all())
