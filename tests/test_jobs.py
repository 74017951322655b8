"""The download and prepare jobs: in-process for their logic, as subprocesses for the CLI contract."""

import json
import subprocess
import sys
import zipfile

import mlflow
import pytest
import synthetic
from conftest import REPO, Route
from hydra import compose, initialize_config_dir

from pipeline.data import download, prepare
from pipeline.errors import ConfigError, DataError, DownloadError
from pipeline.job import CONF_DIR


def job_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"paths.raw_zip={tmp_path}/raw/dataset.zip", f"paths.prepared={tmp_path}/prepared",
            f"paths.metrics={tmp_path}/metrics", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "data.download.backoff=0.01", "data.download.retries=1", "progress=false", *overrides])


def test_download_then_prepare_records_everything(http_server, synthetic_zip, tmp_path):
    path, expected = synthetic_zip
    http_server.add("/tiny-imagenet-100-A.zip", Route(path.read_bytes()))
    cfg = job_cfg(tmp_path, f"data.mirror={http_server.url}")
    record = download.run(cfg)
    from pipeline.data.fetch import sha256_file
    assert record["sha256"] == sha256_file(path)
    assert json.loads((tmp_path / "metrics" / "download.json").read_text())["sha256"] == record["sha256"]
    stats = prepare.run(cfg)
    assert stats["num_train"] == 24 and stats["zip_sha256"] == record["sha256"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for job in ("download", "prepare"):
        runs = client.search_runs([client.get_experiment_by_name(job).experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert runs[0].data.tags["dataset_sha256"] == record["sha256"]
    prep = client.search_runs([client.get_experiment_by_name("prepare").experiment_id])[0]
    assert {"samples_per_class.png", "classes.json", "config.yaml"} <= {a.path for a in client.list_artifacts(
        prep.info.run_id)}
    assert prep.data.metrics["num_converted_grayscale"] == 3
    (entry,) = client.get_run(prep.info.run_id).inputs.dataset_inputs  # the UI's Datasets panel
    assert entry.dataset.name == "tiny-imagenet-100-A" and entry.dataset.digest == record["sha256"][:16]
    assert json.loads(entry.dataset.profile)["num_train"] == 24 and entry.dataset.source_type == "http"
    assert json.loads(entry.dataset.source)["url"] == f"{http_server.url}/tiny-imagenet-100-A.zip"


def test_download_verifies_sha256(http_server, synthetic_zip, tmp_path):
    path, _ = synthetic_zip
    http_server.add("/tiny-imagenet-100-A.zip", Route(path.read_bytes()))
    cfg = job_cfg(tmp_path, f"data.mirror={http_server.url}", "data.sha256=" + "f" * 64)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download.run(cfg)
    assert not (tmp_path / "raw" / "dataset.zip").exists()
    assert not list((tmp_path / "raw").glob("*.part"))


def test_non_zip_body_is_rejected(http_server, tmp_path):
    http_server.add("/tiny-imagenet-100-A.zip", Route(b"<html><body>maintenance</body></html>"))
    with pytest.raises(DataError, match="did not return a zip archive .*<html>"):
        download.run(job_cfg(tmp_path, f"data.mirror={http_server.url}"))
    assert list((tmp_path / "raw").iterdir()) == []


def test_unknown_source(tmp_path):
    with pytest.raises(ConfigError, match="unknown data.source 'imagenet'"):
        download.download_dataset(job_cfg(tmp_path, "data.source=imagenet").data, tmp_path / "x.zip")


def test_tiny_imagenet_200_source_derives_100A(http_server, tmp_path):
    big = tmp_path / "src" / "tiny-imagenet-200.zip"
    big.parent.mkdir()
    synthetic.make_zip(big, num_classes=5, root="tiny-imagenet-200")
    http_server.add("/tiny-imagenet-200.zip", Route(big.read_bytes()))
    wnids = synthetic.WNIDS[3:0:-1]  # three of the five, reordered
    cfg = job_cfg(tmp_path, f"data.mirror={http_server.url}", "data.source=tiny-imagenet-200",
                  f"data.subset_wnids=[{','.join(wnids)}]")
    record = download.run(cfg)
    assert record["derived_train"] == 18 and record["source_sha256"] != record["sha256"]
    with zipfile.ZipFile(tmp_path / "raw" / "dataset.zip") as zf:
        assert zf.read("tiny-imagenet-100-A/wnids.txt").decode().split() == wnids
    stats = prepare.run(cfg)
    assert stats["num_classes"] == 3 and stats["num_train"] == 18


def test_cli_error_is_one_clear_line(http_server, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.download", f"data.mirror={http_server.url}", "data.download.retries=0",
         f"paths.raw_zip={tmp_path}/dataset.zip", f"paths.metrics={tmp_path}/metrics",
         f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={tmp_path}/out"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "download: error: HTTP 404 Not Found for http://127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dataset.zip").exists() and not (tmp_path / "metrics").exists()


def test_multirun_gives_one_mlflow_run_per_configuration(tmp_path):
    zips = []
    for seed in (1, 2):
        path = tmp_path / f"d{seed}.zip"
        synthetic.make_zip(path, num_classes=2, train_per_class=1, val_per_class=1, num_test=1, seed=seed)
        zips.append(path)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.download", "-m", f"data.url={zips[0]},{zips[1]}", "experiment=default",
         "seed=0", "progress=false", f"paths.raw_zip={tmp_path}/raw/dataset.zip", f"paths.metrics={tmp_path}/metrics",
         f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/multirun"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    everything = client.search_runs([client.get_experiment_by_name("download").experiment_id])
    parents = [r for r in everything if r.data.tags.get("sweep") == "true"]
    runs = [r for r in everything if r not in parents]
    # the sweep is one parent run (swept values as params) with a nested child per configuration
    assert len(parents) == 1 and parents[0].data.params["data.url"] == f"{zips[0]},{zips[1]}"
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["children"] == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs)
    assert sorted(r.data.params["data.url"] for r in runs) == sorted(str(z) for z in zips)
    assert sorted(r.data.tags["hydra_overrides"].split()[0] for r in runs) == sorted(f"data.url={z}" for z in zips)
    # run names: the job and what differs from its defaults (not experiment=default, seed=0, paths, tracking)
    assert sorted(r.info.run_name for r in runs) == sorted(f"download data.url={z}" for z in zips)
    assert (tmp_path / "multirun" / "0").is_dir() and (tmp_path / "multirun" / "1").is_dir()
