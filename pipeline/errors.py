"""One exception family, so jobs can print a single clear line instead of a traceback."""


class PipelineError(Exception):
    """A problem the user can fix (bad input, bad config, unreachable service)."""


class DownloadError(PipelineError):
    """Fetching a file failed: HTTP error, timeout, or the bytes are not what was promised."""


class DataError(PipelineError):
    """A dataset archive or prepared cache is malformed, unsafe or inconsistent."""


class ConfigError(PipelineError, ValueError):
    """A configuration value is invalid (unknown name, negative step, ...)."""


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be used."""


def one_line(text: str, limit: int = 500) -> str:
    """A message as one line of at most ``limit`` characters: foreign errors (a SQLAlchemy traceback,
    an HTML page from a server that is not MLflow) must not flood the terminal."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
