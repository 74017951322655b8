"""Attribution methods by name: ``conf/attribution/<name>.yaml`` holds the method's ``_target_`` and
its options, so adding a method is its module plus that file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable

from pipeline.errors import ConfigError
from pipeline.explain.building import instantiate
from pipeline.job import CONF_DIR as _CONF

if TYPE_CHECKING:  # the methods are imported by instantiate, from their _target_
    from pipeline.explain.attribution.base import Attribution

CONF_DIR = _CONF / "attribution"


def available() -> list[str]:
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def method_config(method: str | Mapping, options: Mapping | None = None) -> dict:
    """The method's config (its file for a name, or a mapping with ``_target_``) with ``options`` on top."""
    from omegaconf import OmegaConf

    if isinstance(method, str):
        path = CONF_DIR / f"{method}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown saliency method {method!r}; choose one of {', '.join(available())} "
                              "(or give a mapping with _target_)")
        method = OmegaConf.load(path)
    config = OmegaConf.to_container(OmegaConf.merge(method, options or {}), resolve=True)
    if "_target_" not in config:
        raise ConfigError(f"a saliency method needs a _target_ (a class path), got {config}")
    return config


def factory(method: str | Mapping, options: Mapping | None = None, **common) -> Callable[..., Attribution]:
    """``model -> Attribution`` for the named method; ``common`` (precision, batch_size, seed) go to
    every method. Fails on a bad name or option here, before any work."""
    config = method_config(method, options)
    return lambda model: instantiate(config, model, what=f"saliency method {config['_target_']}", **common)
