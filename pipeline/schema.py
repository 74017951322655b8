"""Config types, checked before any work: the shipped YAML defaults are the schema.

Every number and switch in ``conf/`` has a default whose type says what the key takes
(``iterations: 200`` an integer, ``lr: 3.0`` a number, ``sign: true`` a boolean). A job compares
its composed config against the defaults of the same config groups, so ``class_viz.iterations=abc``
or ``seed=1.5`` fails with one line naming the key before an MLflow run exists, instead of as a
traceback deep inside the job. Text defaults (``classes: all``, ``blur: reference``) take any
value their job understands and are checked by the job itself. One schema, no second copy of the
keys to keep in step with the YAML.
"""

from __future__ import annotations

from typing import Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.errors import ConfigError

_KINDS = {bool: "true or false", int: "an integer", float: "a number"}


def expected_kind(default: object) -> type | None:
    """The type a key whose default is ``default`` must hold (None: not checked here)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return None


def fits(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, raw default) for every typed leaf; interpolations are skipped (their target is checked)."""
    for key in node.keys():
        name = f"{prefix}{key}"
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        child = node._get_node(key)
        value = child._value() if not isinstance(child, (DictConfig, ListConfig)) else child
        if isinstance(value, DictConfig):
            yield from _leaves(value, name + ".")
        elif not isinstance(value, ListConfig):
            yield name, value


def check_types(cfg: DictConfig, defaults: DictConfig, *, skip: tuple[str, ...] = ("hydra",)) -> None:
    """Raise ConfigError for the first key of ``cfg`` whose value does not have its default's type."""
    for key, default in _leaves(defaults):
        if key.split(".", 1)[0] in skip:
            continue
        kind = expected_kind(default)
        if kind is None:
            continue
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # an unresolvable interpolation: the job reports it when it reads the key
            continue
        if value is not None and not fits(value, kind):
            raise ConfigError(f"{key}={value!r}: expected {_KINDS[kind]} (default {default!r})")


def job_defaults(config_name: str) -> DictConfig | None:
    """Inside a Hydra app: the config ``config_name`` with the run's group choices but none of its
    value overrides, i.e. the schema the run is checked against (None if it cannot be composed)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        choices = HydraConfig.get().runtime.choices
        overrides = [f"{group}={choice}" for group, choice in choices.items()
                     if not group.startswith("hydra") and choice is not None]
        return GlobalHydra.instance().config_loader().load_configuration(
            config_name, overrides, RunMode.RUN, from_shell=False)
    except Exception:  # e.g. a group added with +group=...: leave the check to the job
        return None
