"""Whose model and which experiment: ``experiment=cs231n_2016`` as one switch for every job and stage,
and every job explaining the model its config names (not whatever the train stage wrote last)."""

from __future__ import annotations

import re

import mlflow
import pytest
import yaml
from conftest import REPO, Route, job_config
from omegaconf import OmegaConf, open_dict

from pipeline.errors import DataError
from pipeline.explain import saliency
from pipeline.job import CONF_DIR, compose_config, drop_other_sections
from pipeline.registry import JOBS, VISUALIZATIONS

h5py = pytest.importorskip("h5py")

JOB_CONFIGS = ["config"] + [job.name for job in VISUALIZATIONS]


def test_experiment_switches_model_and_every_job_to_the_2016_settings():
    for name in JOB_CONFIGS:
        cfg = compose_config(name, ["experiment=cs231n_2016"])
        assert (cfg.model.arch, cfg.model.source) == ("cs231n", "fetch")
        assert cfg.model.url.endswith("/pretrained_model.h5")
        assert cfg.tracking.tags.experiment == "cs231n_2016"
    viz = compose_config("class_viz", ["experiment=cs231n_2016"]).class_viz
    assert (viz.step, viz.lr, viz.l2, viz.jitter, viz.blur, viz.blur_every, viz.iterations, viz.init_std) == (
        "raw", 1e4, 1e-6, 4, "reference", 1, 100, 1.0)
    assert viz.regime.lr == 1e4 and viz.regime.blur == "reference"  # the regime the job builds sees them
    inv = compose_config("inversion", ["experiment=cs231n_2016"]).inversion
    assert (inv.loss, inv.step, inv.lr, inv.l2, inv.blur_every, inv.iterations, inv.shallow_layer, inv.deep_layer) == (
        "raw", "raw", 5000.0, 1e-8, 10, 400, 3, 6)
    dream = compose_config("deepdream", ["experiment=cs231n_2016"]).deepdream
    assert (dream.layer, dream.lr, dream.step, dream.jitter, dream.iterations, dream.octaves, dream.max_side) == (
        7, 2000.0, "raw", 16, 100, 1, 256)
    fool = compose_config("fooling", ["experiment=cs231n_2016"]).fooling
    assert (fool.step, fool.lr, fool.max_iterations, fool.clip, fool.quantize, fool.target) == (
        "raw", 200.0, 200, False, False, "goose")
    sal = compose_config("saliency", ["experiment=cs231n_2016"]).saliency
    assert sal.colormap == "gray" and list(sal.views.cherry_picked.indices) == [128, 3225, 2417, 1640, 4619]


def test_default_experiment_is_the_pipeline_as_it_was():
    for name in JOB_CONFIGS:
        plain = OmegaConf.to_container(compose_config(name), resolve=False)
        explicit = OmegaConf.to_container(compose_config(name, ["experiment=default"]), resolve=False)
        assert plain == explicit and plain["tracking"]["tags"] == {"experiment": "default"}
        assert plain["model"]["arch"] == "resnet" and plain["model"]["source"] == "train"


def test_a_job_keeps_only_its_own_section():
    cfg = compose_config("class_viz", ["experiment=cs231n_2016"])
    with open_dict(cfg):
        cfg.inversion = {"lr": 1.0}  # what an experiment adds for the other jobs
    drop_other_sections(cfg, "class_viz")
    assert "class_viz" in cfg and "inversion" not in cfg and "model" in cfg


def test_every_stage_after_prepare_runs_the_experiment_params_yaml_names():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert (CONF_DIR / "experiment" / f"{params['experiment']}.yaml").is_file()
    for name, stage in stages.items():
        runs_experiment = name not in ("download", "prepare")  # experiments change models and jobs, not data
        assert ("experiment=${experiment}" in stage["cmd"]) == runs_experiment, name
        assert ("experiment" in stage.get("params", [])) == runs_experiment, name
        if runs_experiment:
            assert "conf/experiment" in stage["deps"], name
    assert set(stages) == set(JOBS)


def h5_for(path, num_classes: int):
    """A random PretrainedCNN in the layout of pretrained_model.h5."""
    import torch

    from pipeline.model.architectures import CS231nNet, _cs231n_h5_names

    torch.manual_seed(0)
    state = CS231nNet(num_classes).state_dict()
    with h5py.File(path, "w") as f:
        for name, key in _cs231n_h5_names(num_classes).items():
            f.create_dataset(name, data=state[key].numpy())
    return path.read_bytes()


SMALL = ["saliency.evaluation.n=4", "saliency.evaluation.steps=2", "saliency.evaluation.sanity_images=0",
         "saliency.evaluation.robustness_images=0", "saliency.methods=[gradient]"]


def test_a_job_explains_the_fetched_model_the_experiment_names(subject_files, http_server, tmp_path):
    body = h5_for(tmp_path / "pretrained_model.h5", num_classes=4)
    http_server.add("/pretrained_model.h5", Route(body))
    url = http_server.url.replace("http://", "http://reader:s3cret@") + "/pretrained_model.h5"
    metrics = saliency.run(job_config("saliency", subject_files, tmp_path, *SMALL, "experiment=cs231n_2016",
                                      f"model.url={url}", f"paths.checkpoints={tmp_path}/checkpoints",
                                      "saliency.views.cherry_picked.indices=[0,5,11]"))
    assert 0 <= metrics["deletion_auc"] <= 1
    assert {p.name for p in (tmp_path / "results" / "saliency").iterdir()} >= {"random.png", "cherry_picked.png"}
    assert (tmp_path / "results" / "saliency" / "cherry_picked_indices.txt").read_text().split() == ["0", "5", "11"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("saliency").experiment_id])[0]
    tags = run.data.tags
    assert tags["experiment"] == "cs231n_2016"
    assert tags["model"] == "cs231n (pretrained_model.h5)" and tags["model_source"] == "fetch"
    assert "s3cret" not in tags["model_url"] and tags["model_url"].endswith("/pretrained_model.h5")
    assert re.fullmatch(r"[0-9a-f]{64}", tags["model_weights_sha256"])
    # the model is fetched once and reused from the cache
    saliency.run(job_config("saliency", subject_files, tmp_path / "again", *SMALL, "experiment=cs231n_2016",
                            f"model.url={url}", f"paths.checkpoints={tmp_path}/checkpoints",
                            "saliency.views.cherry_picked.indices=[0]"))
    assert len(http_server.routes["/pretrained_model.h5"].requests) == 1


def test_a_trained_model_the_checkpoint_does_not_hold_is_an_error(subject_files, tmp_path):
    with pytest.raises(DataError, match=r"holds resnet \(trained\), but the config names cs231n \(trained\).*"
                                        r"train it first: dvc repro train"):
        saliency.run(job_config("saliency", subject_files, tmp_path, *SMALL, "model=cs231n"))
    assert not (tmp_path / "results").exists() and not (tmp_path / "metrics").exists()


def test_the_trained_model_is_used_when_the_config_names_it(subject_files, tmp_path):
    saliency.run(job_config("saliency", subject_files, tmp_path, *SMALL, "saliency.views.confident.min_confidence=0.0",
                            "saliency.views.confident.n=2"))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    tags = client.search_runs([client.get_experiment_by_name("saliency").experiment_id])[0].data.tags
    assert tags["model"] == "resnet (trained)" and tags["experiment"] == "default"


def test_compare_puts_two_models_side_by_side(subject_files, http_server, tmp_path, capsys):
    from pipeline.track import compare

    http_server.add("/pretrained_model.h5", Route(h5_for(tmp_path / "pretrained_model.h5", num_classes=4)))
    common = [*SMALL, "saliency.evaluation.n=null", f"paths.checkpoints={tmp_path}/checkpoints"]
    saliency.run(job_config("saliency", subject_files, tmp_path, *common))
    saliency.run(job_config("saliency", subject_files, tmp_path, *common, "experiment=cs231n_2016",
                            f"model.url={http_server.url}/pretrained_model.h5",
                            "saliency.views.cherry_picked.indices=[0,5]"))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("saliency").experiment_id],
                              order_by=["attributes.start_time ASC"])
    out = tmp_path / "side_by_side.png"
    assert compare.main([*(r.info.run_id for r in runs), "--uri", f"sqlite:///{tmp_path}/mlflow.db",
                         "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    header, _, first, second = printed.splitlines()[1:5]
    assert header.split()[:3] == ["run", "experiment", "model"]
    assert "default" in first and "resnet (trained)" in first
    assert "cs231n_2016" in second and "cs231n (pretrained_model.h5)" in second
    assert out.is_file()
    assert compare.main([runs[0].info.run_id, "not-a-run", "--uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 1
    assert "is not a run id" in capsys.readouterr().err
