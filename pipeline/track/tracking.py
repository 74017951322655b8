"""MLflow, owned in one place: where runs go, what every run records, and how images are logged.

Default store: the embedded SQLite database ``mlflow.db`` at the repo root (``MLFLOW_TRACKING_URI``
overrides it, e.g. a team server). One experiment per job (``<prefix><job>``). Every run gets
the flattened resolved Hydra config as params, the resolved config as ``config.yaml``, and tags
for the git commit, dirty flag, dataset sha256, job name, seed and Hydra overrides.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from pipeline.errors import TrackingError, one_line
from pipeline.files import process_alive
from pipeline.redaction import redact, redacted

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def resolve_uri(uri: str | None, root: str | os.PathLike) -> str:
    """``MLFLOW_TRACKING_URI`` wins; a relative sqlite path is taken relative to ``root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///"):]
        if not Path(path).is_absolute():
            uri = "sqlite:///" + str((Path(root) / path).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any work, when the store cannot be used."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                response.read(64)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return  # reachable; auth is MLflow's business (credentials come from MLFLOW_TRACKING_* env)
            raise TrackingError(f"MLflow tracking server {redact(uri)} answered HTTP {exc.code} on /health") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            fix = ("unset MLFLOW_TRACKING_URI to use the local mlflow.db" if os.environ.get("MLFLOW_TRACKING_URI")
                   else "set tracking.uri to a reachable server, or leave it at sqlite:///mlflow.db")
            raise TrackingError(f"MLflow tracking server {redact(uri)} is unreachable ({reason}); start it, or "
                                f"{fix}") from None
    elif scheme == "sqlite":
        parent = Path(uri[len("sqlite:///"):]).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: folder {parent} does not exist or is not writable")
        db = Path(uri[len("sqlite:///"):])
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            raise TrackingError(f"MLflow store {db} is not writable (check its permissions)")


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"data.url": "...", ...} with values as MLflow param strings."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            text = str(value)
            flat[name] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return flat


def git_state(root: str | os.PathLike) -> tuple[str, bool | None]:
    """(commit, dirty) of the repo at ``root``; ("unknown", None) outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, dirty


@contextlib.contextmanager
def start_run(cfg: DictConfig, job: str, *, dataset_sha256: str | None = None,
              overrides: list[str] | None = None, name: str | None = None,
              sections: tuple[str, ...] | None = None) -> Iterator["mlflow.ActiveRun"]:  # noqa: F821
    """An MLflow run for ``job`` with the standard params and tags; FAILED if the body raises.

    ``name``: what the runs table shows (``pipeline.job.run_name``: the job and what differs from its
    defaults), made unique in the experiment; ``tracking.run_name`` wins when set.
    ``sections``: the top-level config keys logged as params (default: all); the full resolved
    config is always attached as ``config.yaml``.
    ``tracking.system_metrics=true`` adds MLflow's CPU / memory / GPU samples (``system/*``).
    """
    import mlflow  # heavy import, only once a job really starts

    root = cfg.paths.root
    uri = resolve_uri(cfg.tracking.uri, root)
    check_reachable(uri)
    use_store(uri)
    commit, dirty = git_state(root)
    tags = {
        "job": job,
        "seed": str(cfg.get("seed")),
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
        "hydra_overrides": " ".join(redacted(list(overrides or []))),
    }
    tags.update(process_tags())
    tags.update({str(k): redact(str(v)) for k, v in (cfg.tracking.get("tags") or {}).items()})  # e.g. experiment
    if dataset_sha256:
        tags["dataset_sha256"] = dataset_sha256
    parent = os.environ.get("PIPELINE_SWEEP_PARENT_RUN")  # set by pipeline.sweep during a Hydra multirun
    if parent:
        tags["mlflow.parentRunId"] = parent
    try:
        with store_lock(uri):
            experiment = f"{cfg.tracking.experiment_prefix}{job}"
            ensure_experiment(mlflow, experiment, uri)
            close_orphans(mlflow, experiment)
            run_name = cfg.tracking.get("run_name") or unique_name(mlflow, experiment, redact(name or job))
            run = mlflow.start_run(run_name=run_name, tags=tags,
                                   log_system_metrics=bool(cfg.tracking.get("system_metrics", False)))
    except Exception as exc:  # MLflow wraps store errors in many types; a foreign server replies with a page
        raise TrackingError(f"cannot start an MLflow run in {redact(uri)}: "
                            f"{one_line(redact(str(exc)), 300)}") from None
    with run, killed_on_interrupt(mlflow):
        resolved = redacted(OmegaConf.to_container(cfg, resolve=True))  # mirror URLs may carry passwords
        logged = resolved if sections is None else {k: resolved[k] for k in sections if k in resolved}
        mlflow.log_params(flatten(logged))
        mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
        log.info("MLflow run %s in experiment %r (%s)", run.info.run_id, f"{cfg.tracking.experiment_prefix}{job}",
                 redact(uri))
        yield run


def unique_name(mlflow, experiment_name: str, name: str) -> str:
    """``name``, or ``name #2``, ``#3``... when the experiment already has a run of that name, so every
    row of the runs table says what ran and still tells runs apart (called under ``store_lock``)."""
    name = name.replace("'", "").strip()[:240]
    taken = {run.info.run_name for run in mlflow.search_runs(
        experiment_names=[experiment_name], filter_string=f"attributes.run_name LIKE '{name}%'",
        output_format="list", max_results=50000)}
    candidate, count = name, 1
    while candidate in taken:
        count += 1
        candidate = f"{name} #{count}"
    return candidate


def process_tags() -> dict[str, str]:
    """Which process owns a run, so a later job can tell a live run from one whose process was killed."""
    return {"pipeline.host": socket.gethostname(), "pipeline.pid": str(os.getpid())}


def close_orphans(mlflow, experiment_name: str) -> list[str]:
    """Mark KILLED the RUNNING runs of the current experiment whose process (on this host) is gone.

    A job killed outright (SIGKILL, out of memory, power loss) cannot end its run; without this
    the UI would show it running forever. Runs of live processes (a parallel sweep) are left alone.
    """
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(experiment_name)
    host = socket.gethostname()
    closed = []
    for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        tags = run.data.tags
        pid = tags.get("pipeline.pid", "")
        if tags.get("pipeline.host") == host and pid.isdigit() and not process_alive(int(pid)):
            client.set_tag(run.info.run_id, "pipeline.end", f"process {pid} ended without closing the run")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    if closed:
        log.warning("marked %d MLflow run(s) KILLED whose process had died: %s", len(closed), ", ".join(closed))
    return closed


@contextlib.contextmanager
def killed_on_interrupt(mlflow) -> Iterator[None]:
    """Ctrl-C or SIGTERM ends the run as KILLED (MLflow's own exit marks every exception FAILED)."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise


def use_store(uri: str) -> None:
    """``mlflow.set_tracking_uri`` without its side effect of exporting ``MLFLOW_TRACKING_URI``:
    that variable is the user's override, and must not turn the first job's store into every
    later job's (in a sweep, in the tests, in processes started from here)."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise the first touches of a SQLite store between processes.

    MLflow creates the tables of a new database on first use; several jobs starting at once (a
    parallel sweep, ``dvc queue start -j N``) would all try, and all but one fail. Holding an
    exclusive ``flock`` on ``<db>.lock`` while the store is opened and the run is created makes
    them take turns; after that, SQLite's own locking handles the short concurrent writes.
    Other stores (a tracking server) need no lock.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (its imports take 0.6 s: not while holding the lock)

    path = Path(uri[len("sqlite:///"):] + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_experiment(mlflow, name: str, uri: str) -> None:
    """Select experiment ``name``, creating it with artifacts beside a SQLite store.

    MLflow's own default puts artifacts in ``./mlruns`` of whatever folder a job starts in.
    """
    if mlflow.get_experiment_by_name(name) is None and uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlruns" / name).resolve().as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by a concurrent job
    mlflow.set_experiment(name)


def log_image(image: Image.Image | np.ndarray, name: str, step: int | None = None) -> None:
    """Log a PIL image or HxWx3 uint8 array; with ``step`` it joins a series the MLflow UI can scrub."""
    import mlflow

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if step is None:
        mlflow.log_image(image, artifact_file=f"{name}.png")
    else:
        mlflow.log_image(image, key=name, step=step)


def log_rows(rows: list[Mapping], name: str) -> None:
    """Rows of dicts as an MLflow table (``mlflow.log_table``, artifact ``name``.json): the UI shows it as a
    table and ``mlflow.load_table`` reads it back, across runs, as one DataFrame."""
    import mlflow

    columns = list(dict.fromkeys(c for row in rows for c in row))
    mlflow.log_table({c: [row.get(c) for row in rows] for c in columns}, artifact_file=name)


class StepLogger:
    """Per-step metrics and image snapshots of an image optimisation, into the active MLflow run.

    Metrics are buffered and sent in batches (one database write per ``flush_every`` steps, not
    per value), each with its step, so the UI plots them against steps. Snapshots are logged as an
    image series (``key``) the UI can scrub through; ``render`` turns the image batch into a picture.
    """

    def __init__(self, prefix: str = "", key: str = "evolution", render=None, flush_every: int = 50,
                 log_metrics: bool = True):
        self.prefix, self.key, self.render, self.flush_every = prefix, key, render, flush_every
        self.log_metrics = log_metrics
        self._pending: list = []

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        import time

        if not self.log_metrics:
            return

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(f"{self.prefix}{k}", float(v), now, int(step)) for k, v in values.items()]
        if len(self._pending) >= self.flush_every * max(len(values), 1):
            self.flush()

    def images(self, step: int, images) -> None:
        if self.render is not None:
            log_image(self.render(images), f"{self.prefix}{self.key}", step=step)

    def flush(self) -> None:
        import mlflow

        run = mlflow.active_run()
        for lo in range(0, len(self._pending), 1000):  # MLflow's limit per batch
            if run is not None:
                mlflow.MlflowClient().log_batch(run.info.run_id, metrics=self._pending[lo:lo + 1000])
        self._pending = []

    def __enter__(self) -> "StepLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
