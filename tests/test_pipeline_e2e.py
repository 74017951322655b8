"""End to end, as a user would: a copy of the repo, `dvc repro` against a loopback mirror."""

import os
import shutil
import subprocess

import mlflow
import pytest
from conftest import REPO, Route

from pipeline.registry import JOBS, VISUALIZATIONS

pytestmark = pytest.mark.slow

TRACKED = ["pipeline", "conf", "dvc.yaml", "params.yaml", "data.dvc", ".dvc/config", ".dvcignore", ".gitignore", "pyproject.toml",
           "metrics/meaning.json", "docs/meaning.png"]  # committed benchmark results the report stage shows


def copy_repo(dest):
    for name in TRACKED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    shrink_configs(dest)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "copy"], dest)


def shrink_configs(dest):
    from omegaconf import OmegaConf

    for name, changes in (item for job in JOBS.values() for item in job.smoke.items()):
        cfg = OmegaConf.load(dest / name)
        OmegaConf.save(OmegaConf.merge(cfg, changes), dest / name)


def run(cmd, cwd, env=None):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_dvc_repro_runs_every_stage_then_nothing(http_server, synthetic_zip, tmp_path):
    path, _ = synthetic_zip
    route = http_server.add("/tiny-imagenet-100-A.zip", Route(path.read_bytes()))
    repo = tmp_path / "repo"
    copy_repo(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["CS231N_MIRROR"] = http_server.url
    out = run(["dvc", "repro"], repo, env)
    stages = list(JOBS)
    assert all(f"Running stage '{stage}'" in out for stage in stages), out
    assert len(route.requests) == 1
    assert (repo / "data" / "prepared" / "train_images.npy").is_file()
    assert (repo / "metrics" / "download.json").is_file() and (repo / "metrics" / "prepare.json").is_file()
    assert (repo / "dvc.lock").is_file() and (repo / "report" / "index.html").is_file()
    for job in VISUALIZATIONS:
        assert (repo / job.metrics).is_file() and any((repo / job.outputs[0]).iterdir())

    client = mlflow.MlflowClient(f"sqlite:///{repo}/mlflow.db")
    for job in ("download", "prepare", "train", "fooling"):
        runs = client.search_runs([client.get_experiment_by_name(job).experiment_id])
        assert [r.info.status for r in runs] == ["FINISHED"]
        assert runs[0].data.tags["git_commit"] != "unknown"

    again = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in again
    assert len(route.requests) == 1  # nothing fetched the second time
    status = run(["dvc", "status", "dvc.yaml"], repo, env)
    assert "up to date" in status.lower()

    # The 2016 experiment as one switch: the model is fetched (no training), every later stage reruns
    # with the reference settings, the data stages do not, and the runs say which experiment they are.
    h5py = pytest.importorskip("h5py")  # noqa: F841 (the fetched model is an HDF5 file)
    from test_experiment import h5_for

    h5 = http_server.add("/pretrained_model.h5", Route(h5_for(tmp_path / "pretrained_model.h5", num_classes=4)))
    from omegaconf import OmegaConf

    experiment = repo / "conf" / "experiment" / "cs231n_2016.yaml"
    smaller = OmegaConf.merge(OmegaConf.load(experiment), {  # as shrink_configs does for the jobs
        "saliency": {"views": {"cherry_picked": {"indices": [0, 1]}}},  # 8 val images here, not 5,000
        "fooling": {"target": "random", "max_iterations": 10},  # no goose among the synthetic classes
        "class_viz": {"iterations": 3}, "inversion": {"iterations": 3},
        "deepdream": {"iterations": 2, "max_side": 96}})
    experiment.write_text("# @package _global_\n" + OmegaConf.to_yaml(smaller))  # the header is not data
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "smaller 2016 experiment"], repo)
    out = run(["dvc", "exp", "run", "-S", "experiment=cs231n_2016"], repo, env)
    assert [s for s in stages if f"Running stage '{s}'" in out] == [s for s in stages if s not in ("download", "prepare")]
    assert len(h5.requests) == 1 and len(route.requests) == 1
    assert "experiment: cs231n_2016" in (repo / "params.yaml").read_text()
    for job in ("train", "fooling", "class_viz"):
        runs = client.search_runs([client.get_experiment_by_name(job).experiment_id],
                                  order_by=["attributes.start_time DESC"])
        assert [r.data.tags["experiment"] for r in runs] == ["cs231n_2016", "default"]
        assert runs[0].data.tags["model"] == "cs231n (pretrained_model.h5)" and runs[0].info.status == "FINISHED"
    assert '"epochs": 0' in (repo / "metrics" / "train.json").read_text()  # fetched, not trained
