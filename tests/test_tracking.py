"""MLflow: what every run records, where it goes, and failing fast on an unreachable server."""

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pipeline.track import tracking
from pipeline.errors import TrackingError
from pipeline.job import CONF_DIR


@pytest.fixture
def cfg(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "seed=3",
                                                        "tracking.experiment_prefix=test-"])


def test_run_records_params_tags_config_and_images(cfg, tmp_path):
    with tracking.start_run(cfg, "demo", dataset_sha256="ab" * 32, overrides=["seed=3"]) as run:
        mlflow.log_metric("loss", 1.0, step=0)
        mlflow.log_metric("loss", 0.5, step=1)
        tracking.log_image(np.zeros((8, 8, 3), "uint8"), "blank")
        tracking.log_image(np.zeros((8, 8, 3), "uint8"), "evolution", step=2)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "test-demo"
    assert got.data.params["seed"] == "3" and got.data.params["data.image_size"] == "64"
    assert got.data.params["paths.prepared"].endswith("data/prepared")
    tags = got.data.tags
    assert tags["job"] == "demo" and tags["seed"] == "3" and tags["dataset_sha256"] == "ab" * 32
    assert tags["hydra_overrides"] == "seed=3"
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "blank.png"} <= artifacts
    assert (tmp_path / "mlruns" / "test-demo" / run.info.run_id / "artifacts" / "config.yaml").is_file()
    assert "seed: 3" in mlflow.artifacts.load_text(f"{got.info.artifact_uri}/config.yaml")


def test_failed_body_marks_run_failed(cfg, tmp_path):
    with pytest.raises(RuntimeError):
        with tracking.start_run(cfg, "demo") as run:
            raise RuntimeError("boom")
    assert mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run.info.run_id).info.status == "FAILED"


def test_unreachable_server_fails_before_work(cfg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:pw@127.0.0.1:9")
    started = []
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9 is unreachable") as info:
        with tracking.start_run(cfg, "demo"):
            started.append(True)
    assert not started and "pw" not in str(info.value)


def test_uri_resolution(tmp_path, monkeypatch):
    assert tracking.resolve_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_uri("sqlite:///mlflow.db", tmp_path) == "http://127.0.0.1:5000"
    with pytest.raises(TrackingError, match="not writable|does not exist"):
        tracking.check_reachable("sqlite:////proc/x/mlflow.db")


def test_flatten():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x" * 7000})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]" and len(flat["d"]) == tracking.MAX_PARAM_LENGTH


def test_credentials_in_urls_are_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("CS231N_MIRROR", "https://alice:s3cret@mirror.example")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    with tracking.start_run(cfg, "demo", overrides=["data.url=https://bob:pw2@h/x.zip?a=b"]) as run:
        pass
    got = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run.info.run_id)
    recorded = " ".join([*got.data.params.values(), *got.data.tags.values(),
                         mlflow.artifacts.load_text(f"{got.info.artifact_uri}/config.yaml")])
    assert "s3cret" not in recorded and "pw2" not in recorded
    assert got.data.params["data.url"] == "https://mirror.example/tiny-imagenet-100-A.zip"


def test_run_names_are_readable_and_unique(cfg, tmp_path):
    names = []
    for _ in range(3):
        with tracking.start_run(cfg, "demo", name="demo lr=2") as run:
            names.append(run.info.run_name)
    with tracking.start_run(cfg, "demo") as run:
        names.append(run.info.run_name)
    assert names == ["demo lr=2", "demo lr=2 #2", "demo lr=2 #3", "demo"]


def test_system_metrics_on_request(cfg, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    cfg.tracking.system_metrics = True
    with tracking.start_run(cfg, "demo") as run:
        time.sleep(1.5)
    metrics = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run.info.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
