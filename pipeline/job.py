"""The shape every job shares: a Hydra app over ``conf/config.yaml`` that fails with one clear line.

A job module defines ``run(cfg)`` and ends with ``main = hydra_job("name", run)``; then
``python -m pipeline.<name> key=value ...`` (and ``-m`` for sweeps) works the same for all.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.errors import ConfigError, PipelineError, one_line
from pipeline.files import atomic_path
from pipeline.redaction import redact, redact_log_records
from pipeline.schema import check_types, job_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

log = logging.getLogger("pipeline")
CURRENT_JOB: str | None = None  # the job this process runs (set by hydra_job's entry point)

if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def overrides() -> list[str]:
    """The command-line overrides of the current Hydra run ([] outside Hydra)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


PLUMBING = ("hydra.", "paths.", "tracking.", "progress")  # where things go, not what ran: left out of run names


def run_name(cfg: DictConfig, job: str, label: str = "") -> str:
    """What the MLflow runs table shows for a run: the job, the job's ``label`` (a training run: its model
    and epochs) and the command-line overrides that change the job's defaults, e.g. ``saliency
    method=gradcam`` (``experiment=default``, as ``dvc repro`` passes it, changes nothing and is left out)."""
    return " ".join(part for part in (job, label, *changed_overrides(cfg, primary_config(job))) if part)


def changed_overrides(cfg: DictConfig, config_name: str) -> list[str]:
    """The current Hydra run's overrides whose value (or group choice) differs from the default."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return []
    try:
        parsed = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
        plain = GlobalHydra.instance().config_loader().load_configuration(config_name, [], RunMode.RUN,
                                                                          from_shell=False)
    except Exception:  # an unusual override (a new group, a sweep syntax): name by all of them
        return [o for o in hydra_cfg.overrides.task if not o.lstrip("+~").startswith(PLUMBING)]
    choices, default_choices = hydra_cfg.runtime.choices, plain.hydra.runtime.choices
    defaults = job_defaults(config_name)
    changed = []
    for override, text in zip(parsed, hydra_cfg.overrides.task):
        key = override.key_or_group
        if key.startswith(PLUMBING):
            continue
        if key in choices:
            same = choices.get(key) == default_choices.get(key)
        else:
            value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
            default = OmegaConf.select(defaults, key, default=None, throw_on_missing=False) if defaults else None
            same = value == default and not override.is_delete()
        if not same:
            changed.append(text)
    return changed


def compose_config(name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides`` as a job would see it, without starting a Hydra app
    (benchmarks, tests, notebooks)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def objective_value(cfg: DictConfig, result: object) -> object:
    """What a job returns to Hydra: its metric ``cfg.objective`` as a float when set (optimising
    sweepers need one number), else the job's own result."""
    key = cfg.get("objective")
    if not key:
        return result
    if not isinstance(result, dict) or key not in result:
        names = ", ".join(sorted(result)) if isinstance(result, dict) else "none"
        raise ConfigError(f"objective={key!r} is not a metric of this job; its metrics: {names}")
    return float(result[key])


def primary_config(job: str) -> str:
    return job if (CONF_DIR / f"{job}.yaml").is_file() else "config"


def scrub_hydra_outputs() -> None:
    """Redact credentials from the files Hydra wrote before the job started (``.hydra/config.yaml``,
    ``hydra.yaml``, ``overrides.yaml``, and a sweep's ``multirun.yaml``): they record the command
    line verbatim, ``data.url=https://user:pass@...`` included."""
    hydra_cfg = HydraConfig.get()
    files = []
    if hydra_cfg.output_subdir is not None:
        folder = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir
        files += [folder / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    if str(hydra_cfg.mode) == "RunMode.MULTIRUN":
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        clean = redact(text)
        if clean != text:
            with atomic_path(path) as tmp:
                tmp.write_text(clean)


def drop_other_sections(cfg: DictConfig, config_name: str) -> None:
    """An experiment (conf/experiment/) sets the sections of every job; a job keeps its own only, so its
    MLflow params and config.yaml say what it ran."""
    others = {path.stem for path in CONF_DIR.glob("*.yaml")} - {"base", "config", config_name}
    with open_dict(cfg):
        for key in others & set(cfg.keys()):
            del cfg[key]


def check_config(cfg: DictConfig, config_name: str) -> None:
    """Types against the defaults (pipeline.schema), before the job opens an MLflow run."""
    defaults = job_defaults(config_name)
    if defaults is not None:
        check_types(cfg, defaults)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered as Ctrl-C is, so every ``finally`` and ``atomic_path`` cleans up the same way."""


def _on_sigterm(signum, frame) -> None:
    raise Interrupted(f"signal {signum}")


def hydra_job(name: str, run: Callable[[DictConfig], object]) -> Callable[[], None]:
    """Wrap ``run`` as the Hydra entry point of job ``name`` over its primary config: ``conf/<name>.yaml``
    where the job has one (it extends ``config.yaml`` with the job's section, so its MLflow params and
    DVC params stay focused), else ``conf/config.yaml``.

    Before ``run``: credentials are scrubbed from Hydra's output files and from every log record,
    and config types are checked. Errors the user can fix end the process with one line on stderr
    (exit 1); Ctrl-C and SIGTERM end it after the clean-up, with exit 130 / 143.
    """
    config_name = primary_config(name)

    def main(cfg: DictConfig) -> object:
        scrub_hydra_outputs()
        threads = os.environ.get("PIPELINE_THREADS")  # set by pipeline.sweep for parallel launchers
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        try:
            drop_other_sections(cfg, config_name)
            check_config(cfg, config_name)
            return objective_value(cfg, run(cfg))
        except PipelineError as exc:
            message = one_line(redact(str(exc)))
            log.error("%s failed: %s", name, message)
            print(f"{name}: error: {message}", file=sys.stderr)
            sys.exit(1)

    main.__module__ = f"pipeline.{name}"  # Hydra names the job (and its outputs/ folder) after this
    main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(main)

    def entry() -> object:
        global CURRENT_JOB
        CURRENT_JOB = name  # for Hydra callbacks (pipeline.sweep), which run before any job
        redact_log_records()
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return main()
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Interrupted)
            log.warning("%s interrupted by %s; temporary outputs removed", name, "SIGTERM" if terminated else "Ctrl-C")
            print(f"{name}: interrupted ({'SIGTERM' if terminated else 'Ctrl-C'}); temporary outputs removed",
                  file=sys.stderr)
            sys.exit(143 if terminated else 130)
        finally:
            signal.signal(signal.SIGTERM, previous)

    entry.__name__ = f"{name}_main"
    return entry
