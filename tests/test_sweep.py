"""Sweeps: a Hydra multirun is one MLflow parent run with nested children; compare summarises it."""

import os
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO

from pipeline.track import compare


def deepdream_sweep(subject_files, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``python -m pipeline.deepdream -m <args>`` on the synthetic subject, logging to ``tmp_path``."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.deepdream", "-m", *args, "deepdream.octaves=1", "deepdream.max_side=64",
         "deepdream.show_every=0", "progress=false",
         f"paths.prepared={subject_files['prepared']}", f"paths.classifier={subject_files['classifier']}",
         f"paths.results={tmp_path}/results", f"paths.metrics={tmp_path}/metrics",
         f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/multirun"],
        cwd=REPO, capture_output=True, text=True, timeout=300)



@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_multirun_parent_children_and_compare(subject_files, tmp_path, capsys, launcher):
    db = f"sqlite:///{tmp_path}/mlflow.db"
    result = deepdream_sweep(subject_files, tmp_path, f"hydra/launcher={launcher}", "deepdream.lr=1,2",
                             "deepdream.iterations=2")
    assert result.returncode == 0, result.stderr
    client = mlflow.MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("deepdream").experiment_id])
    parent = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parent) == 1 and parent[0].data.params == {"deepdream.lr": "1,2"}
    assert parent[0].info.status == "FINISHED" and parent[0].data.metrics["children"] == 2
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(r.data.params["deepdream.lr"] for r in children) == ["1", "2"]

    assert compare.main(["deepdream", "--uri", db, "--out", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1].split()
    assert header[:2] == ["run", "deepdream.lr"] and "activation_norm_after" in header
    assert (tmp_path / "cmp.png").is_file()
    assert "compare.png" in {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert compare.main([parent[0].info.run_id, "--uri", db, "--out", str(tmp_path / "again.png")]) == 0


def test_a_failing_configuration_marks_the_sweep_failed(subject_files, tmp_path):
    db = f"sqlite:///{tmp_path}/mlflow.db"
    result = deepdream_sweep(subject_files, tmp_path, "deepdream.lr=1,-1", "deepdream.iterations=1")
    assert result.returncode == 1 and "deepdream: error: step size (lr) must be > 0" in result.stderr
    client = mlflow.MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("deepdream").experiment_id])
    parent = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parent) == 1 and parent[0].info.status == "FAILED"


def test_optuna_search_maximises_a_job_metric(subject_files, tmp_path):
    """hydra/sweeper=optuna + objective=<metric>: the job returns the metric, the parent run logs the best."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    db = f"sqlite:///{tmp_path}/mlflow.db"
    result = deepdream_sweep(subject_files, tmp_path, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                             "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=0",
                             "objective=activation_norm_after", "deepdream.lr=interval(0.5,4)", "deepdream.iterations=2")
    assert result.returncode == 0, result.stderr
    client = mlflow.MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("deepdream").experiment_id])
    parent = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parent) == 1 and parent[0].data.params == {"deepdream.lr": "interval(0.5,4)"}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(children) == 3 and len({r.data.params["deepdream.lr"] for r in children}) == 3
    values = {r.info.run_id: r.data.metrics["activation_norm_after"] for r in children}
    best = max(values, key=values.get)
    assert parent[0].data.tags["best_run_id"] == best
    assert parent[0].data.metrics["best_activation_norm_after"] == pytest.approx(values[best])
    found = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    assert found["best_value"] == pytest.approx(values[best], rel=1e-6)
    header, rows = compare.table(parent[0], children)
    assert [row[0] for row in rows if row[0].endswith(" *best")] == [
        next(r.info.run_name for r in children if r.info.run_id == best) + " *best"]


def test_objective_must_be_a_metric_of_the_job():
    from omegaconf import OmegaConf

    from pipeline.errors import ConfigError
    from pipeline.job import objective_value

    metrics = {"top1_rate": 0.5, "seconds": 3.0}
    assert objective_value(OmegaConf.create({"objective": None}), metrics) is metrics
    assert objective_value(OmegaConf.create({"objective": "top1_rate"}), metrics) == 0.5
    with pytest.raises(ConfigError, match="objective='top1' is not a metric of this job; its metrics: seconds, top1_rate"):
        objective_value(OmegaConf.create({"objective": "top1"}), metrics)


def test_compare_errors_are_one_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/mlflow.db"
    assert compare.main(["nosuchjob", "--uri", db]) == 1
    assert "compare: error: no experiment 'nosuchjob'" in capsys.readouterr().err
    assert compare.main(["--uri", db]) == 1
    assert "no sweep" in capsys.readouterr().err


WRITER = """
import sys
import numpy as np
from omegaconf import OmegaConf
from pipeline.track import tracking

i, root = int(sys.argv[1]), sys.argv[2]
cfg = OmegaConf.create({"seed": i, "paths": {"root": root}, "tracking": {"uri": f"sqlite:///{root}/mlflow.db",
                        "experiment_prefix": "", "run_name": f"writer{i}"},
                        "job": {f"p{k}": k * i for k in range(20)}})
with tracking.start_run(cfg, "concurrency", sections=("seed", "job")):
    with tracking.StepLogger(flush_every=10) as log:
        for step in range(50):
            log.metrics(step, {"loss": step * i, "other": -step})
    tracking.log_image(np.full((8, 8, 3), i, dtype=np.uint8), "final")
"""


@pytest.mark.slow
def test_eight_concurrent_writers_lose_nothing(tmp_path):
    """The embedded SQLite store under 8 processes writing at once: every run complete, 5 rounds."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # earlier tests may export one
    for round_ in range(5):
        root = tmp_path / f"round{round_}"
        root.mkdir()
        procs = [subprocess.Popen([sys.executable, str(script), str(i), str(root)], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
        outcomes = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
        assert all(code == 0 for _, _, code in outcomes), [err[-1500:] for _, err, code in outcomes if code]
        client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("concurrency").experiment_id])
        assert sorted(r.info.run_name for r in runs) == sorted(f"writer{i}" for i in range(8))
        for r in runs:
            i = int(r.info.run_name[len("writer"):])
            assert r.info.status == "FINISHED"
            assert {k: v for k, v in r.data.params.items() if k.startswith("job.")} == {
                f"job.p{k}": str(k * i) for k in range(20)}
            assert [m.value for m in client.get_metric_history(r.info.run_id, "loss")] == [s * i for s in range(50)]
            assert len(client.get_metric_history(r.info.run_id, "other")) == 50
            assert {"final.png", "config.yaml"} <= {a.path for a in client.list_artifacts(r.info.run_id)}


@pytest.mark.slow
def test_team_mode_shared_tracking_server(subject_files, tmp_path, monkeypatch):
    """A job logs to `mlflow server` on loopback through MLFLOW_TRACKING_URI (artifacts proxied)."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/team.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        from conftest import job_config

        from pipeline.explain import deepdream

        deepdream.run(job_config("deepdream", subject_files, tmp_path, "deepdream.iterations=2", "deepdream.octaves=1",
                                 "deepdream.max_side=64", "deepdream.show_every=0"))
        client = mlflow.MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name("deepdream").experiment_id])[0]
        assert run.info.status == "FINISHED" and "activation_norm_after" in run.data.metrics
        assert "comparison.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local store
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_compare_captions_shorten_searched_floats():
    assert [compare.short(v) for v in ["1.2167797658455166", "5.542618722974806e-07", "4", "-3", "adam", "[0,1]"]] == [
        "1.217", "5.543e-07", "4", "-3", "adam", "[0,1]"]
