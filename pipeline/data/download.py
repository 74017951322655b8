"""Job ``download``: fetch the dataset zip (resumable, verified) into ``paths.raw_zip``.

With ``data.source=tiny-imagenet-200`` it fetches the 200-class zip and derives the
TinyImageNet-100-A subset from it (same file names, same class order).
"""

from __future__ import annotations

import logging
import time
import zipfile
from pathlib import Path

from omegaconf import DictConfig

from pipeline.data import archive

from pipeline.track import tracking
from pipeline.errors import ConfigError, DataError
from pipeline.data.fetch import fetch, is_sha256, sha256_file
from pipeline.files import write_json
from pipeline.job import hydra_job, overrides, run_name
from pipeline.redaction import redact

log = logging.getLogger(__name__)

SOURCES = ("tiny-imagenet-100-A", "tiny-imagenet-200")


def download_dataset(data: DictConfig, dest: Path, *, progress: bool | None = None) -> dict:
    """Fetch ``data.url`` to ``dest`` (deriving the subset when asked); return what to record."""
    if data.source not in SOURCES:
        raise ConfigError(f"unknown data.source {data.source!r}; choose one of {', '.join(SOURCES)}")
    check_sha256(data.sha256)
    derive = data.source == "tiny-imagenet-200"
    target = dest.with_name(Path(data.url.split("?")[0]).name or "source.zip") if derive else dest
    if derive and target == dest:
        target = dest.with_name("source-" + dest.name)
    start = time.perf_counter()
    settings = data.download
    source_sha256 = fetch(data.url, target, sha256=data.sha256, retries=settings.retries, timeout=settings.timeout,
                          backoff=settings.backoff, deadline=settings.deadline, min_rate=settings.min_rate,
                          progress=progress)
    seconds = time.perf_counter() - start
    if not zipfile.is_zipfile(target):
        head = target.read_bytes()[:60]
        target.unlink(missing_ok=True)
        raise DataError(f"{redact(data.url)} did not return a zip archive (starts with {head!r}); file discarded")
    record = {"source_sha256": source_sha256, "source_bytes": target.stat().st_size, "download_seconds": seconds}
    if derive:
        counts = archive.derive_subset(target, dest, list(data.subset_wnids), root_name=data.subset_name,
                                       progress=progress)
        record.update({f"derived_{k}": v for k, v in counts.items()})
        record["sha256"] = sha256_file(dest)
        record["bytes"] = dest.stat().st_size
    else:
        record["sha256"] = source_sha256
        record["bytes"] = record["source_bytes"]
    record["megabytes_per_second"] = record["source_bytes"] / 1e6 / max(seconds, 1e-9)
    return record


def check_sha256(value) -> None:
    """A malformed checksum is a config mistake: say so before any download, not after an hour of one."""
    if value is not None and not is_sha256(value):
        raise ConfigError(f"data.sha256={value!r}: expected 64 hexadecimal characters (or null)")


def run(cfg: DictConfig) -> dict:
    import mlflow

    check_sha256(cfg.data.sha256)  # before an MLflow run exists
    dest = Path(cfg.paths.raw_zip)
    with tracking.start_run(cfg, "download", overrides=overrides(), name=run_name(cfg, "download")):
        log.info("downloading %s -> %s", redact(cfg.data.url), dest)
        record = download_dataset(cfg.data, dest, progress=cfg.progress)
        mlflow.set_tag("dataset_sha256", record["sha256"])
        mlflow.set_tag("source_sha256", record["source_sha256"])
        mlflow.log_metrics({k: float(v) for k, v in record.items() if not k.endswith("sha256")})
        write_json(Path(cfg.paths.metrics) / "download.json", record)
        log.info("sha256 %s (%d bytes, %.1f MB/s)", record["sha256"], record["bytes"], record["megabytes_per_second"])
    return record


main = hydra_job("download", run)

if __name__ == "__main__":
    main()
