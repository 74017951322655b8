"""Hydra sweeps as one MLflow parent run with a nested child run per configuration.

``conf/config.yaml`` registers ``SweepParentRun`` as a Hydra callback. At the start of a multirun
(``python -m pipeline.<job> -m key=a,b``) it creates the parent run in the job's experiment,
named after the sweep, with the swept values as params, and exports its id in
``PIPELINE_SWEEP_PARENT_RUN``; every child run that ``pipeline.track.tracking.start_run`` opens, in this
process or in a launcher's worker process (they inherit the environment), gets the
``mlflow.parentRunId`` tag. The MLflow UI then shows the sweep as one expandable row. With a
parallel launcher (``n_jobs`` workers) each job gets ``cores / n_jobs`` torch threads.

Searches: with ``objective=<metric>`` a job returns that metric of its ``metrics/<job>.json`` to
the sweeper, so ``hydra/sweeper=optuna`` (hydra-optuna-sweeper) can maximise it; the parent run
then logs ``best_<metric>`` and tags ``best_run_id``.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.redaction import redacted
from pipeline.track import tracking

log = logging.getLogger(__name__)

PARENT_ENV = "PIPELINE_SWEEP_PARENT_RUN"
THREADS_ENV = "PIPELINE_THREADS"  # torch threads per job (pipeline.job applies it)


def swept(overrides: list[str]) -> dict[str, str]:
    """The swept keys of a multirun's overrides and their values as typed: ``["a=1,2", "b=3"]`` ->
    {"a": "1,2"} (fixed overrides stay in the ``hydra_overrides`` tag)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.get_key_element().lstrip("+~"): item.partition("=")[2]
            for o, item in zip(parsed, overrides) if o.is_sweep_override()}


def best_child(children: list, metric: str, minimize: bool):
    """The child run with the best value of ``metric``, or None when no child logged it."""
    scored = [r for r in children if metric in r.data.metrics]
    if not scored:
        return None
    return (min if minimize else max)(scored, key=lambda r: r.data.metrics[metric])


class SweepParentRun(Callback):
    def _fail_if_open(self) -> None:
        if self.run_id is not None:
            try:
                import mlflow

                mlflow.MlflowClient(self.uri).set_terminated(self.run_id, status="FAILED")
            except Exception:  # exiting anyway; the run then simply stays RUNNING
                pass
            self.run_id = None

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        from pipeline import job as jobs

        job = jobs.CURRENT_JOB or config.hydra.job.name
        self.uri = tracking.resolve_uri(config.tracking.uri, config.paths.root)
        tracking.check_reachable(self.uri)
        tracking.use_store(self.uri)
        experiment = f"{config.tracking.experiment_prefix}{job}"
        with tracking.store_lock(self.uri):
            tracking.ensure_experiment(mlflow, experiment, self.uri)
        client = mlflow.MlflowClient(self.uri)
        commit, dirty = tracking.git_state(config.paths.root)
        overrides = list(config.hydra.overrides.task)
        run = client.create_run(
            mlflow.get_experiment_by_name(experiment).experiment_id,
            run_name=f"sweep {job} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"sweep": "true", "job": job, "git_commit": commit, "git_dirty": str(dirty).lower(),
                  "mlflow.source.git.commit": commit,
                  "hydra_overrides": " ".join(redacted(overrides)), **tracking.process_tags()})
        for key, value in redacted(swept(overrides)).items():
            client.log_param(run.info.run_id, key, value[: tracking.MAX_PARAM_LENGTH])
        self.run_id = run.info.run_id
        os.environ[PARENT_ENV] = self.run_id
        atexit.register(self._fail_if_open)  # a failing job exits before on_multirun_end
        n_jobs = config.hydra.launcher.get("n_jobs") if "launcher" in config.hydra else None
        if n_jobs and int(n_jobs) > 1:  # parallel workers share the cores instead of oversubscribing them
            os.environ[THREADS_ENV] = str(max(1, (os.cpu_count() or 1) // int(n_jobs)))
        log.info("sweep parent run %s in experiment %r", self.run_id, experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        if self.run_id is None:
            return
        client = mlflow.MlflowClient(self.uri)
        children = client.search_runs([client.get_run(self.run_id).info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'")
        failed = [r for r in children if r.info.status != "FINISHED"]
        client.log_metric(self.run_id, "children", len(children))
        objective = config.get("objective")
        direction = config.hydra.sweeper.get("direction", "maximize")
        if objective and isinstance(direction, str):  # a list of directions: no single best
            best = best_child(children, objective, minimize=direction.lower().startswith("min"))
            if best is not None:
                client.log_metric(self.run_id, f"best_{objective}", best.data.metrics[objective])
                client.set_tag(self.run_id, "best_run_id", best.info.run_id)
        client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
        self.run_id = None
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(THREADS_ENV, None)
