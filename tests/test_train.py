"""The train job on tiny synthetic data: outputs, determinism, resume after a kill, fetch, bad configs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import synthetic
import torch
from conftest import REPO, Route
from hydra import compose, initialize_config_dir
from PIL import Image

from pipeline.data import cache as data

from pipeline.model import train
from pipeline.explain import saliency
from pipeline.model.checkpoint import load_classifier
from pipeline.errors import ConfigError, DataError
from pipeline.job import CONF_DIR

TINY_MODEL = ["model.widths=[8,16]", "model.blocks=[1,1]", "model.stem_width=8"]
TINY = [*TINY_MODEL, "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=16", "train.resize.start=48",
        "train.resize.full_size_epochs=1", "train.threads=1"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthetic.make_zip(root / "d.zip", num_classes=4, train_per_class=12, val_per_class=4)
    data.prepare(root / "d.zip", root / "prepared", workers=1, progress=False)
    return root / "prepared"


def job_cfg(prepared, out, *overrides):
    other_model = {"model=cs231n", "model=torchvision", "experiment=cs231n_2016"} & set(overrides)
    tiny = [o for o in TINY if o not in TINY_MODEL] if other_model else TINY
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"paths.prepared={prepared}", f"paths.metrics={out}/metrics", f"paths.plots={out}/plots",
            f"paths.classifier={out}/models/classifier.pt", f"paths.checkpoints={out}/checkpoints",
            f"tracking.uri=sqlite:///{out}/mlflow.db", "progress=false", *tiny, *overrides])


def test_train_writes_model_metrics_curves_and_reports(prepared, tmp_path):
    metrics = train.run(job_cfg(prepared, tmp_path))
    saved = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {"val_accuracy", "val_top5", "train_minutes", "images_per_second"} <= set(saved)
    assert 0 <= saved["val_accuracy"] <= saved["val_top5"] <= 1 and saved["epochs"] == 2
    rows = list(csv.DictReader(open(tmp_path / "plots" / "train.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["image_size"]) for r in rows] == [48, 64]
    model, meta = load_classifier(tmp_path / "models" / "classifier.pt")
    assert meta["source"] == "train" and meta["class_names"][0] == "goldfish" and model.num_classes == 4
    assert not (tmp_path / "checkpoints" / "train_last.pt").exists()  # only killed runs leave one to resume
    val = data.load_prepared(prepared).split("val")
    scores = train.predict(model, val.images, batch_size=16, device=torch.device("cpu"), precision="bf16",
                           channels_last=True, tta_flip=True)
    assert train.evaluate(scores, val.labels)["accuracy"] == pytest.approx(saved["val_accuracy"])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert run.data.tags["model_source"] == "train"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_top_pairs.json", "per_class_accuracy.json", "config.yaml", "confusion_matrix.png"} <= artifacts
    picture = np.asarray(Image.open(client.download_artifacts(run.info.run_id, "confusion_matrix.png", str(tmp_path))))
    assert picture.shape == (4 * 4, 4 * 4, 3)  # 4 classes, 4 px a cell
    table = mlflow.load_table("per_class_accuracy.json", run_ids=[run.info.run_id])
    assert len(table) == 4 and set(table["class"]) == set(meta["class_names"])
    # the MLflow model: logged, registered, tagged with the weights' digest the checkpoint carries
    assert run.info.run_name == "train resnet 2 epochs"  # what ran; overrides given outside Hydra are not seen
    version = client.get_model_version("tinyimagenet-classifier", run.data.tags["model_version"])
    assert version.run_id == run.info.run_id and version.source == f"models:/{run.data.tags['model_id']}"
    logged = client.get_logged_model(run.data.tags["model_id"])
    assert logged.tags["weights_sha256"] == meta["state_dict_sha256"]
    loaded = mlflow.pytorch.load_model(f"models:/tinyimagenet-classifier/{version.version}")
    assert torch.equal(loaded(val.images[:2].float()), model(val.images[:2].float()))
    # the dataset: name, the zip's digest, split sizes
    (entry,) = run.inputs.dataset_inputs
    assert entry.dataset.name == "tiny-imagenet-100-A" and entry.dataset.digest == meta_digest(prepared)
    assert json.loads(entry.dataset.profile)["num_val"] == 16


def test_confusion_pictures_show_the_diagonal_and_the_worst_pairs():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])  # class 2 is always called class 0
    matrix = train.confusion_matrix(preds, labels, 3)
    assert matrix.tolist() == [[3, 1, 0], [0, 4, 0], [2, 0, 0]]
    picture = train.confusion_picture(matrix, cell=2)
    assert picture.shape == (6, 6, 3) and picture.dtype == np.uint8
    brightness = picture.astype(int).sum(-1)[::2, ::2]  # one pixel per cell
    assert brightness[1, 1] == brightness.max() and brightness[2, 0] > brightness[0, 1] > brightness[2, 2]
    assert train.most_confused(labels, preds, 3) == [(2, 0, 2, 8), (0, 1, 1, 3)]  # (true, predicted, count, first)
    images = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 3, 8, 8)
    grid = train.confused_examples(images, labels, preds, ["goldfish", "tabby", "espresso"])
    assert grid.size[0] == 4 + 2 * (16 + 4)  # two tiles, 2x, side by side
    assert np.asarray(grid)[4 + 8, 4 + 8].tolist() == [8, 8, 8]  # the first tile is val image 8 (espresso -> goldfish)
    assert train.confused_examples(images, labels, labels, ["goldfish", "tabby", "espresso"]) is None


def meta_digest(prepared) -> str:
    return data.load_prepared(prepared).sha256[:16]


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_same_seed_same_weights(prepared, tmp_path, optimizer):
    train.run(job_cfg(prepared, tmp_path / "a", f"train.optimizer={optimizer}"))
    train.run(job_cfg(prepared, tmp_path / "b", f"train.optimizer={optimizer}"))
    train.run(job_cfg(prepared, tmp_path / "c", f"train.optimizer={optimizer}", "seed=1"))
    a, b, c = (torch.load(tmp_path / d / "models" / "classifier.pt")["state_dict"] for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(prepared, tmp_path):
    args = [f"paths.prepared={prepared}", f"paths.metrics={tmp_path}/k/metrics", f"paths.plots={tmp_path}/k/plots",
            f"paths.classifier={tmp_path}/k/classifier.pt", f"paths.checkpoints={tmp_path}/k/checkpoints",
            f"tracking.uri=sqlite:///{tmp_path}/k/mlflow.db", f"hydra.run.dir={tmp_path}/k/out", "progress=false",
            *[o.replace("train.epochs=2", "train.epochs=6") for o in TINY]]
    checkpoint = tmp_path / "k" / "checkpoints" / "train_last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # as a crash or `kill -9` would
    proc.wait()
    done = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 1 <= done < 6, "the kill should land mid-training"
    assert not (tmp_path / "k" / "classifier.pt").exists()
    resumed = subprocess.run([sys.executable, "-m", "pipeline.train", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoint} after epoch {done}" in resumed.stdout + resumed.stderr
    train.run(job_cfg(prepared, tmp_path / "u", "train.epochs=6"))  # uninterrupted
    got = torch.load(tmp_path / "k" / "classifier.pt")["state_dict"]
    want = torch.load(tmp_path / "u" / "models" / "classifier.pt")["state_dict"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert len(list(csv.DictReader(open(tmp_path / "k" / "plots" / "train.csv")))) == 6


def test_fetch_cs231n_h5_over_http(prepared, tmp_path, http_server):
    test_models = pytest.importorskip("test_models")
    weights = test_models.random_weights(seed=1, num_classes=4)
    h5 = test_models.write_h5(tmp_path / "pretrained_model.h5", weights)
    http_server.add("/pretrained_model.h5", Route(h5.read_bytes()))
    cfg = job_cfg(prepared, tmp_path, "model=cs231n", "model.source=fetch", f"model.url={http_server.url}/pretrained_model.h5")
    metrics = train.run(cfg)
    assert metrics["train_minutes"] == 0 and metrics["epochs"] == 0 and 0 <= metrics["val_accuracy"] <= 1
    model, meta = load_classifier(tmp_path / "models" / "classifier.pt")
    assert meta["source"] == "fetch" and meta["arch"]["arch"] == "cs231n"
    cache = data.load_prepared(prepared)
    pixels = cache.split("val").images[:3].double().numpy()
    expected = test_models.reference_forward(pixels, cache.mean_image.double().numpy(),
                                             {k: v.astype(np.float64) for k, v in weights.items()})
    test_models.assert_close(model(torch.from_numpy(pixels).float()), expected)
    assert meta["model"]["url"] == f"{http_server.url}/pretrained_model.h5"  # its identity, for the jobs


def test_jobs_read_the_fetched_model_the_train_stage_wrote(prepared, tmp_path, http_server):
    """Under `dvc exp run -S experiment=cs231n_2016` the train stage fetches the model once; the
    visualization stages explain that checkpoint (no second download, even with an empty cache)."""
    test_models = pytest.importorskip("test_models")
    h5 = test_models.write_h5(tmp_path / "pretrained_model.h5", test_models.random_weights(seed=1, num_classes=4))
    route = http_server.add("/pretrained_model.h5", Route(h5.read_bytes()))
    url = f"model.url={http_server.url}/pretrained_model.h5"
    train.run(job_cfg(prepared, tmp_path, "experiment=cs231n_2016", url))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="saliency", overrides=[
            f"paths.prepared={prepared}", f"paths.classifier={tmp_path}/models/classifier.pt",
            f"paths.checkpoints={tmp_path}/elsewhere", f"paths.results={tmp_path}/results",
            f"paths.metrics={tmp_path}/metrics", f"paths.plots={tmp_path}/plots",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "progress=false", "experiment=cs231n_2016", url,
            "saliency.views.cherry_picked.indices=[0,1]", "saliency.evaluation.n=null", "saliency.methods=[gradient]"])
    saliency.run(cfg)
    assert len(route.requests) == 1 and not (tmp_path / "elsewhere").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for job in ("train", "saliency"):
        run = client.search_runs([client.get_experiment_by_name(job).experiment_id])[0]
        assert run.data.tags["experiment"] == "cs231n_2016"
        assert run.data.tags["model"] == "cs231n (pretrained_model.h5)"


def saliency_cfg(prepared, out, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="saliency", overrides=[
            f"paths.prepared={prepared}", f"paths.classifier={out}/models/classifier.pt",
            f"paths.checkpoints={out}/checkpoints", f"paths.results={out}/results", f"paths.metrics={out}/metrics",
            f"paths.plots={out}/plots", f"tracking.uri=sqlite:///{out}/mlflow.db", "progress=false",
            "saliency.views.confident.min_confidence=0.0", "saliency.views.confident.n=2",
            "saliency.evaluation.n=null", "saliency.methods=[gradient]", *overrides])


def test_visualization_runs_link_the_model_version_and_dataset_they_used(prepared, tmp_path):
    """The UI's Logged models / Registered models / Datasets panels: a visualization run records the
    registered version of the model it explains, as an input beside the dataset; models:/ URIs are a
    model source; run names say what ran and stay unique."""
    train.run(job_cfg(prepared, tmp_path))
    saliency.run(saliency_cfg(prepared, tmp_path))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    trained = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
    run = client.get_run(client.search_runs([client.get_experiment_by_name("saliency").experiment_id])[0].info.run_id)
    assert run.info.run_name == "saliency"
    assert run.data.tags["model_version"] == "1" and run.data.tags["model_uri"] == "models:/tinyimagenet-classifier/1"
    original, reference = sorted((client.get_logged_model(m.model_id) for m in run.inputs.model_inputs),
                                 key=lambda m: "reference_of" in m.tags)
    assert original.model_id == trained.data.tags["model_id"]
    # ... and this experiment's reference to it, which the UI's Logged models panel shows
    assert reference.experiment_id == run.info.experiment_id and reference.tags["reference_of"] == original.model_id
    assert reference.tags["model_uri"] == "models:/tinyimagenet-classifier/1"
    assert json.loads(reference.tags["mlflow.modelVersions"]) == [{"name": "tinyimagenet-classifier", "version": 1}]
    (entry,) = run.inputs.dataset_inputs
    assert entry.dataset.digest == meta_digest(prepared) and entry.tags[0].value == "eval"

    # the registered version as the model source of a job: the same weights, no checkpoint needed
    (tmp_path / "models" / "classifier.pt").rename(tmp_path / "moved.pt")
    saliency.run(saliency_cfg(prepared, tmp_path, "model.source=fetch", "model.url=models:/tinyimagenet-classifier/1"))
    runs = client.search_runs([client.get_experiment_by_name("saliency").experiment_id],
                              order_by=["attributes.start_time DESC"])
    assert runs[0].info.run_name == "saliency #2"  # outside Hydra no overrides are seen: numbered, not repeated
    assert runs[0].data.tags["model_weights_sha256"] == run.data.tags["model_weights_sha256"]
    assert runs[0].data.tags["model_version"] == "1" and runs[0].data.tags["model"] == "models:/tinyimagenet-classifier/1"
    again = client.get_run(runs[0].info.run_id).inputs.model_inputs  # one reference per experiment, reused
    assert sorted(m.model_id for m in again) == sorted([original.model_id, reference.model_id])
    with pytest.raises(ConfigError, match="models:/tinyimagenet-classifier/7: not found in the MLflow store"):
        saliency.run(saliency_cfg(prepared, tmp_path, "model.source=fetch", "model.url=models:/tinyimagenet-classifier/7"))


def test_fetch_checks_sha256(prepared, tmp_path, http_server):
    http_server.add("/pretrained_model.h5", Route(b"not really"))
    cfg = job_cfg(prepared, tmp_path, "model=cs231n", "model.source=fetch",
                  f"model.url={http_server.url}/pretrained_model.h5", "model.sha256=" + "0" * 64)
    with pytest.raises(Exception, match="sha256 mismatch"):
        train.run(cfg)
    assert not (tmp_path / "models" / "classifier.pt").exists()


@pytest.mark.parametrize("override, error, message", [
    ("model.arch=vgg", ConfigError, "unknown model arch 'vgg'; known: cs231n, resnet"),
    ("train.lr=-0.1", ConfigError, "train.lr must be > 0"),
    ("train.epochs=0", ConfigError, "train.epochs must be >= 1"),
    ("model.source=hub", ConfigError, "unknown model.source 'hub'"),
    ("train.precision=fp8", ConfigError, "bf16 or fp32"),
    ("model.source=fetch", ConfigError, "needs model.url"),
    ("train.ema.every=0", ConfigError, "train.ema.every >= 1"),
    ("train.optimizer=adam", ConfigError, "train.optimizer must be sgd or muon, got 'adam'"),
    ("train.muon.lr_scale=0", ConfigError, "train.muon.lr_scale must be > 0"),
    ("train.augment.flip=sideways", ConfigError, "train.augment.flip must be true, false or alternate"),
])
def test_bad_configs_fail_before_work(prepared, tmp_path, override, error, message):
    with pytest.raises(error, match=message):
        train.run(job_cfg(prepared, tmp_path, override))
    assert not (tmp_path / "models").exists()


def test_empty_training_set(prepared, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in os.listdir(prepared):
        (empty / name).write_bytes((prepared / name).read_bytes())
    np.save(empty / "train_images.npy", np.zeros((0, 3, 64, 64), np.uint8))
    np.save(empty / "train_labels.npy", np.zeros((0,), np.int64))
    meta = json.loads((empty / "meta.json").read_text())
    meta["files"]["train"] = []
    (empty / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="training set is empty"):
        train.run(job_cfg(empty, tmp_path / "out"))


def test_lr_schedule_and_resize_schedule():
    s = job_cfg("x", "y", "train.epochs=10", "train.resize.start=32", "train.resize.full_size_epochs=2").train
    assert [train.image_size_at(e, s, 64) for e in range(10)] == [32, 32, 40, 48, 48, 48, 56, 64, 64, 64]
    lrs = [train.learning_rate(t, 100, s) for t in range(100)]
    assert max(lrs) == pytest.approx(s.lr) and lrs[0] < lrs[10] and lrs[-1] < 0.05 * s.lr
    assert lrs.index(max(lrs)) == int(100 * s.warmup_fraction) - 1


def test_augment_crops_the_padded_image_and_flips():
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.int64).reshape(4, 3, 8, 8).to(torch.uint8)
    out = train.augment(x, torch.Generator().manual_seed(0), pad=2, flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(4):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
    flipped = train.augment(x, torch.Generator().manual_seed(3), pad=0, flip=True)
    kinds = ["same" if torch.equal(flipped[i], x[i]) else "flip" if torch.equal(flipped[i], x[i].flip(-1)) else "?"
             for i in range(4)]
    assert "?" not in kinds


def test_alternating_flips_mirror_every_image_once_in_two_epochs():
    first = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(train.alternating_flips(first, 0), first) and 400 < int(first.sum()) < 600
    for epoch in range(4):
        assert not (train.alternating_flips(first, epoch) & train.alternating_flips(first, epoch + 1)).any()
        assert (train.alternating_flips(first, epoch) | train.alternating_flips(first, epoch + 1)).all()
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4).to(torch.uint8)
    out = train.augment(x, torch.Generator().manual_seed(0), pad=0, flip=torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_a_torchvision_model_is_scored_saved_and_explained_like_any_other(prepared, tmp_path):
    """`model=torchvision`: no training; the train stage scores it on val and writes classifier.pt with its
    identity, which a job naming the same model then reads back (layers, weights and all)."""
    model_cfg = ["model=torchvision", "model.name=resnet18", "model.weights=null", "model.input_size=64"]
    metrics = train.run(job_cfg(prepared, tmp_path, *model_cfg))
    assert metrics["epochs"] == 0 and 0 <= metrics["val_accuracy"] <= 1
    from pipeline.model.sources import load_checkpoint

    model, meta = load_checkpoint(tmp_path / "models" / "classifier.pt")
    assert meta["arch"]["arch"] == "torchvision" and meta["model"]["name"] == "resnet18"
    assert "layer4.1" in model.layer_names and model.num_classes == 4  # 1000 ImageNet logits, restricted
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="saliency", overrides=[
            f"paths.prepared={prepared}", f"paths.classifier={tmp_path}/models/classifier.pt",
            f"paths.checkpoints={tmp_path}/checkpoints", f"paths.results={tmp_path}/results",
            f"paths.metrics={tmp_path}/metrics", f"paths.plots={tmp_path}/plots",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "progress=false", *model_cfg,
            "saliency.views.confident.min_confidence=0.0", "saliency.views.confident.n=2",
            "saliency.evaluation.n=null", "saliency.methods=[gradient]"])
    saliency.run(cfg)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    tags = client.search_runs([client.get_experiment_by_name("saliency").experiment_id])[0].data.tags
    assert tags["model"] == "torchvision resnet18" and tags["model_weights_sha256"] == meta["state_dict_sha256"]
