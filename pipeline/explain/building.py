"""``hydra.utils.instantiate`` for the explain configs, failing with our own one-line error."""

from __future__ import annotations

from pipeline.errors import ConfigError


def instantiate(config, *args, what: str, **kwargs):
    """Build ``config``'s ``_target_``; a ``ConfigError`` raised while building comes out as itself,
    anything else as a ``ConfigError`` naming ``what`` was being built."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        raise (cause or ConfigError(f"cannot build {what}: {exc}")) from None
