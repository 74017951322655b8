"""Image generation jobs: class visualization, feature inversion and DeepDream."""

import copy
import io
import json

import mlflow
import numpy as np
import pytest
import torch
from conftest import REPO, Route, job_config, tiny_classifier
from omegaconf import OmegaConf
from PIL import Image

from pipeline.explain import class_viz, deepdream, inversion
from pipeline.explain.engine.regime import from_config
from pipeline.job import compose_config
from pipeline.errors import ConfigError, DataError
from pipeline.data.images import center_square, fit_max_side, read_image
from pipeline.model.architectures import UnknownLayerError, build_model, reference_layer
from pipeline.data.cache import load_prepared
from pipeline.data.selection import spread_over_classes
from pipeline.model.checkpoint import save_classifier
from pipeline.model.precision import frozen


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # the same tiny net whatever ran before (batched-vs-single tolerances depend on it)
    net, _ = tiny_classifier(num_classes=4, mean_image=torch.rand(3, 64, 64) * 100 + 80)
    return frozen(net, "cpu")


def png_bytes(size=(40, 30), mode="RGB") -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- layers and images


def test_reference_layers_map_by_resolution():
    cs231n = build_model({"arch": "cs231n"})
    assert [reference_layer(cs231n, k) for k in (3, 6, 7)] == ["conv4", "conv7", "conv8"]  # the notebook's own
    resnet = build_model(OmegaConf.load(REPO / "conf" / "model" / "resnet.yaml"))  # the default model
    assert [reference_layer(resnet, k) for k in (3, 6, 7)] == ["stage2.block1", "stage4.block1", "stage4.block1"]


def test_read_image_from_file_and_url(tmp_path, http_server):
    (tmp_path / "gray.png").write_bytes(png_bytes(mode="L"))
    image = read_image(str(tmp_path / "gray.png"))
    assert image.shape == (3, 30, 40) and torch.equal(image[0], image[2])
    http_server.add("/photo.png", Route(png_bytes()))
    assert torch.equal(read_image(f"{http_server.url}/photo.png"), read_image_bytes(png_bytes()))
    assert center_square(image, 64).shape == (3, 64, 64) and fit_max_side(image, 80).shape == (3, 60, 80)
    with pytest.raises(DataError, match="no such file"):
        read_image(str(tmp_path / "missing.jpg"))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="not a readable image"):
        read_image(str(tmp_path / "notes.txt"))


def read_image_bytes(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1).copy())


# --------------------------------------------------------------------------- class_viz


def regime_for(job, model, **kw):
    """The job's regime as its config builds it, with ``kw`` changed."""
    section = OmegaConf.merge(compose_config(job)[job], {"show_every": 0, **kw})
    return from_config(section.regime, center=model.mean_image.cpu())


def test_class_viz_batched_equals_one_at_a_time(model):
    regime = regime_for("class_viz", model, iterations=6)
    batched = class_viz.visualize_classes(model, [0, 2, 3], regime, seed=1, init_std=10.0).images
    for k, cls in enumerate([0, 2, 3]):
        single = class_viz.visualize_classes(model, [cls], regime, seed=1, init_std=10.0).images
        assert torch.allclose(single[0], batched[k], atol=1e-2), (single[0] - batched[k]).abs().max()
    result = class_viz.visualize_classes(model, [1], regime_for("class_viz", model, iterations=30, lr=3.0), seed=0,
                                         init_std=10.0)
    assert result.history[-1]["score"] > result.history[0]["score"]
    assert result.images.min() >= 0 and result.images.max() <= 255


def test_class_viz_job(subject_files, tmp_path):
    metrics = class_viz.run(job_config("class_viz", subject_files, tmp_path, "class_viz.iterations=5",
                                       "class_viz.show_every=2", "class_viz.batch_size=3"))
    saved = json.loads((tmp_path / "metrics" / "class_viz.json").read_text())
    assert saved == pytest.approx(metrics) and saved["num_classes"] == 4
    assert {"mean_target_prob", "min_target_prob", "top1_rate", "quantized_top1_rate", "shifted_top1_rate",
            "seconds"} <= set(saved)
    out = tmp_path / "results" / "class_viz"
    assert (out / "grid.png").is_file() and len(list((out / "classes").glob("*.png"))) == 4
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("class_viz").experiment_id])[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(5))
    assert len(client.get_metric_history(run.info.run_id, "batch1.loss")) == 5  # the second batch of classes
    assert run.data.params["class_viz.jitter"] == "4" and run.data.tags["model_source"] == "train"


def test_class_viz_classes_and_reference_preset(subject_files, tmp_path):
    metrics = class_viz.run(job_config("class_viz", subject_files, tmp_path, "class_viz=reference",
                                       "class_viz.iterations=2", "class_viz.classes=[bullfrog, 0]"))
    assert metrics["num_classes"] == 2
    cfg = job_config("class_viz", subject_files, tmp_path, "class_viz=reference")
    assert (cfg.class_viz.step, cfg.class_viz.lr, cfg.class_viz.l2, cfg.class_viz.blur_every) == ("raw", 10000.0, 1e-6, 1)


def test_class_viz_judged_by_an_independent_classifier(subject_files, tmp_path):
    metrics = class_viz.run(job_config("class_viz", subject_files, tmp_path, "class_viz.iterations=5",
                                       f"class_viz.judge={subject_files['classifier']}"))
    # The model judging its own saved images: cross-model recognition is its top-1 after PNG.
    assert metrics["cross_model_top1"] == metrics["quantized_top1_rate"] and 0 < metrics["cross_model_target_prob"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("class_viz").experiment_id])[0]
    assert run.data.tags["judge"] == str(subject_files["classifier"]) and run.data.metrics["cross_model_top1"] >= 0


def test_class_viz_judge_of_other_classes_is_refused_before_the_run(subject_files, tmp_path):
    other, arch = tiny_classifier(3)
    save_classifier(tmp_path / "other.pt", other, arch, wnids=["n1", "n2", "n3"], class_names=["a", "b", "c"],
                    source="train")
    with pytest.raises(DataError, match="other classes"):
        class_viz.run(job_config("class_viz", subject_files, tmp_path / "out", f"class_viz.judge={tmp_path}/other.pt"))
    assert not (tmp_path / "out" / "results").exists()


@pytest.mark.parametrize("override, error, message", [
    ("class_viz.classes=zebra", ConfigError, "unknown class 'zebra'"),
    ("class_viz.lr=0", ConfigError, "must be > 0"),
    ("class_viz.step=newton", ConfigError, "unknown step rule"),
    ("class_viz.blur=box", ConfigError, "unknown blur"),
    ("class_viz.jitter=-2", ConfigError, "jitter"),
])
def test_class_viz_bad_inputs(subject_files, tmp_path, override, error, message):
    with pytest.raises(error, match=message):
        class_viz.run(job_config("class_viz", subject_files, tmp_path, override))
    assert not (tmp_path / "results").exists() and not (tmp_path / "metrics").exists()


# --------------------------------------------------------------------------- inversion


def test_inversion_psnr():
    a = torch.zeros(1, 3, 4, 4)
    assert float(inversion.psnr(a, a + 255)) == pytest.approx(0.0)
    assert float(inversion.psnr(a, a + 2.55)) == pytest.approx(40.0, abs=1e-4)


def test_inversion_job_by_depth(subject_files, tmp_path):
    source = tmp_path / "photo.png"
    source.write_bytes(png_bytes((80, 60)))
    metrics = inversion.run(job_config("inversion", subject_files, tmp_path, "inversion.iterations=8",
                                       "inversion.layers=[stem, 2]", f"inversion.image={source}",
                                       "inversion.show_every=4"))
    saved = json.loads((tmp_path / "metrics" / "inversion.json").read_text())
    assert saved == pytest.approx(metrics)
    # stem, stage1.block1 (the tiny net's 1/4-size layer: shallow), stage2.block1 (index 2), ... deep = last spatial
    assert {"psnr_stem", "normalized_error_stem", "shallow_psnr", "shallow_normalized_error", "deep_psnr"} <= set(saved)
    assert saved["num_images"] == 1 and saved["psnr_min_stem"] == saved["psnr_stem"] == saved["stem_psnr_mean"]
    out = tmp_path / "results" / "inversion"
    assert (out / "by_depth.png").is_file() and (out / "original.png").is_file()
    depth = (tmp_path / "plots" / "inversion_depth.csv").read_text().splitlines()  # the DVC plot
    assert depth[0] == "depth,layer,psnr,psnr_min,normalized_error" and len(depth) == 1 + len(
        [k for k in saved if k.startswith("psnr_") and not k.startswith("psnr_min_")])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("inversion").experiment_id])[0]
    assert len(client.get_metric_history(run.info.run_id, "feature_error")) == 8


def test_inversion_job_over_val_images(subject_files, tmp_path):
    """val_index=null: several val images spread over the classes, every (image, layer) in one batch;
    per-layer means and minima, and the headline keys."""
    metrics = inversion.run(job_config("inversion", subject_files, tmp_path, "inversion.iterations=4",
                                       "inversion.val_index=null", "inversion.images=3", "inversion.layers=[1]"))
    layers = ["stem", "stage1.block1"] + [k[len("psnr_min_"):] for k in metrics if k.startswith("psnr_min_")][2:]
    assert metrics["num_images"] == 3
    assert {"shallow_psnr_mean", "shallow_psnr_min", "stem_psnr_mean", "stem_psnr_min", "shallow_psnr", "deep_psnr",
            "seconds_per_iteration"} <= set(metrics)
    for name in layers:
        assert metrics[f"psnr_min_{name}"] <= metrics[f"psnr_{name}"]
        assert f"normalized_error_{name}" in metrics
    assert metrics["shallow_psnr"] == metrics["shallow_psnr_mean"] >= metrics["shallow_psnr_min"]
    out = tmp_path / "results" / "inversion"
    assert (out / "by_depth.png").is_file() and (out / "image02_original.png").is_file()
    depth = (tmp_path / "plots" / "inversion_depth.csv").read_text().splitlines()
    assert depth[0] == "depth,layer,psnr,psnr_min,normalized_error"


def test_meaning_deep_layer_by_tv_is_the_inversion_job(subject_files, tmp_path):
    """benchmarks/meaning.py's shared-prior sweep (every TV weight in one batch) gives, at each weight, the
    deep-layer PSNR the inversion job gives with that single weight; with --reuse it reads its file back."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("meaning", REPO / "benchmarks" / "meaning.py")
    meaning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(meaning)
    base = ("inversion.iterations=6", f"paths.prepared={subject_files['prepared']}",
            f"paths.classifier={subject_files['classifier']}")
    weights = (0.0, 1e-4)
    per_image = meaning.deep_psnr_by_tv(tmp_path / "sweep", base, 3, weights)
    assert len(per_image) == 3 and all(len(row) == len(weights) for row in per_image)
    swept, worst = torch.tensor(per_image).mean(0).tolist(), torch.tensor(per_image).min(0).values.tolist()
    for weight, value, low in zip(weights, swept, worst):
        job = inversion.run(job_config("inversion", subject_files, tmp_path / f"tv{weight:g}", "inversion.iterations=6",
                                       "inversion.val_index=null", "inversion.images=3", "inversion.tv_scaling=none",
                                       f"inversion.tv={weight}"))
        assert value == pytest.approx(job["deep_psnr"], abs=1e-3) and low == pytest.approx(job["deep_psnr_min"], abs=1e-3)
    assert swept[0] != pytest.approx(swept[1], abs=1e-3)  # the weight matters
    assert meaning.deep_psnr_by_tv(tmp_path / "sweep", ("no.such=key",), 3, weights, reuse=True) == per_image
    other = meaning.deep_psnr_by_tv(tmp_path / "sweep", base, 3, (0.0, 1e-2), reuse=True)  # not the saved weights:
    assert json.loads((tmp_path / "sweep" / "deep_psnr_by_tv.json").read_text())["tv"] == [0.0, 1e-2]  # measured again
    assert [row[0] for row in other] == pytest.approx([row[0] for row in per_image], abs=1e-3)
    labels = load_prepared(subject_files["prepared"]).split("val").labels
    chosen = spread_over_classes(labels, 3)
    listed = meaning.deep_psnr_by_tv(tmp_path / "listed", base, chosen, weights)  # the same images, as val indices
    assert torch.allclose(torch.tensor(listed), torch.tensor(per_image), atol=1e-3)
    others = meaning.between(labels, 3)  # the held-out images: as many, none of the chosen ones
    assert len(set(others)) == 3 and not set(others) & set(chosen)
    meaning.deep_psnr_by_tv(tmp_path / "listed", base, others, weights, reuse=True)  # other images: measured again
    assert json.loads((tmp_path / "listed" / "deep_psnr_by_tv.json").read_text())["val_indices"] == others


def test_inversion_picks_val_images_evenly_over_classes():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 3, 3])  # sorted by (label, index): 1 3 | 2 5 | 0 4 | 6 7
    assert spread_over_classes(labels, 4) == [1, 2, 0, 6]
    assert spread_over_classes(labels, 4) == spread_over_classes(labels.clone(), 4)  # deterministic
    assert sorted(spread_over_classes(labels, 20)) == list(range(8))  # more than there are: all of them


def test_inversion_batch_equals_one_image_at_a_time(model):
    """Every (image, layer) is an independent item: the batch of three images gives what three single-image
    runs give (item seeds and noise depend on the image's position, so run k alone with seed + k). In fp64:
    in fp32 the convolutions round differently at batch 6 and 2, and Adam's first step, lr * sign(gradient),
    turns a rounding-level gradient near 0 into a whole step (measured: 0.08 to 0.36 of 255 on 7 of 20 random
    images, <= 2e-3 on the rest), which would hide a real mix-up between items."""
    model = copy.deepcopy(model).double()
    regime = regime_for("inversion", model, iterations=6, lr=4.0, tv=1e-9, jitter=2)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 255
    weights = [1e-9, 4e-9]
    batched, errors = inversion.invert(model, images, [0, 1], regime, seed=5, init_std=10.0, tv_weights=weights)
    for k in range(3):
        single, single_errors = inversion.invert(model, images[k], [0, 1], regime, seed=5 + k, init_std=10.0,
                                                 tv_weights=weights)
        assert torch.allclose(batched.images[2 * k:2 * k + 2], single.images, atol=1e-4)
        assert errors[2 * k:2 * k + 2] == pytest.approx(single_errors, rel=1e-3, abs=1e-6)


def test_inversion_layer_strides_scale_the_tv_prior(model):
    strides = inversion.layer_strides(model, list(range(len(model.layer_names))), 64)
    assert strides[0] == 1 and strides == sorted(strides)  # coarser with depth, flat layers as the coarsest
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    regime = regime_for("inversion", model, iterations=3, lr=4.0, tv=1e-9)
    weighted, _ = inversion.invert(model, image, [0, 1], regime, seed=0, init_std=10.0, tv_weights=[1e-9, 1e-9])
    uniform, _ = inversion.invert(model, image, [0, 1], regime, seed=0, init_std=10.0)  # the regime's own tv
    assert torch.allclose(weighted.images, uniform.images, atol=1e-4)


def test_inversion_lowers_the_feature_error(model):
    regime = regime_for("inversion", model, iterations=40, lr=4.0, tv=0.0)
    image = torch.rand(3, 64, 64) * 255
    result, errors = inversion.invert(model, image, [0, 1], regime, seed=0, init_std=10.0)
    assert all(e < 0.5 * h for e, h in zip(errors, [-result.history[0]["feature_error"]] * 2))


@pytest.mark.parametrize("override, error, message", [
    ("inversion.layers=[conv99]", UnknownLayerError, "unknown layer 'conv99'.*stage1.block1"),
    ("inversion.image=/nonexistent/cat.jpg", DataError, "no such file"),
    ("inversion.val_index=24", ConfigError, "out of range 0..23"),
    ("inversion.lr=-1", ConfigError, "must be > 0"),
    ("inversion.images=0 inversion.val_index=null", ConfigError, "must be >= 1"),
    ("inversion.tv_scaling=cubic", ConfigError, "unknown inversion.tv_scaling"),
])
def test_inversion_bad_inputs(subject_files, tmp_path, override, error, message):
    with pytest.raises(error, match=message):
        inversion.run(job_config("inversion", subject_files, tmp_path, *override.split()))
    assert not (tmp_path / "results").exists() and not (tmp_path / "metrics").exists()


# --------------------------------------------------------------------------- deepdream


def test_deepdream_job_from_url(subject_files, tmp_path, http_server):
    http_server.add("/photo.png", Route(png_bytes((90, 60))))
    metrics = deepdream.run(job_config("deepdream", subject_files, tmp_path, f"deepdream.image={http_server.url}/photo.png",
                                       "deepdream.max_side=96", "deepdream.iterations=3", "deepdream.octaves=2",
                                       "deepdream.layer=stage1.block1", "deepdream.show_every=1"))
    assert metrics["activation_norm_after"] > metrics["activation_norm_before"]
    assert (metrics["height"], metrics["width"]) == (64, 96)
    with Image.open(tmp_path / "results" / "deepdream" / "dream.png") as im:
        assert im.size == (96, 64)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("deepdream").experiment_id])[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "activation_norm")] == list(range(6))


@pytest.mark.parametrize("override, error, message", [
    ("deepdream.layer=fc", ConfigError, "after the flatten.*stem"),
    ("deepdream.layer=pool", ConfigError, "after the flatten"),
    ("deepdream.layer=nope", UnknownLayerError, "unknown layer 'nope'"),
    ("deepdream.lr=0", ConfigError, "must be > 0"),
    ("deepdream.image=/nonexistent/x.png", DataError, "no such file"),
    ("deepdream.octaves=9", ConfigError, "smallest octave"),
])
def test_deepdream_bad_inputs(subject_files, tmp_path, override, error, message):
    with pytest.raises(error, match=message):
        deepdream.run(job_config("deepdream", subject_files, tmp_path, override))
    assert not (tmp_path / "results").exists() and not (tmp_path / "metrics").exists()
