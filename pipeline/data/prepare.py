"""Job ``prepare``: decode the downloaded zip into the compact cache every later job reads.

The zip's size limits (zip bombs) are ``data.prepare.max_total_bytes`` / ``max_image_bytes`` /
``max_text_bytes``; Ctrl-C or SIGTERM stop the decode workers and leave no temporary cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from pipeline.data import cache as data

from pipeline.track import datasets, figures, tracking
from pipeline.data.fetch import sha256_file
from pipeline.files import write_json
from pipeline.job import hydra_job, overrides, run_name

log = logging.getLogger(__name__)


def sample_grid(prepared: data.PreparedData, split: str = "train"):
    """One image per class (the first of each), captioned with its class name."""
    images = prepared.split(split)
    first = {}
    for i, label in enumerate(images.labels.tolist()):
        first.setdefault(label, i)
    order = sorted(first)
    return figures.grid([images.images[first[c]] for c in order],
                        [f"{c}: {prepared.class_names[c]}" for c in order], scale=2, caption_lines=2, font_size=10)


def run(cfg: DictConfig) -> dict:
    import mlflow

    zip_path = Path(cfg.paths.raw_zip)
    dataset_sha256 = sha256_file(zip_path) if zip_path.is_file() else None
    with tracking.start_run(cfg, "prepare", dataset_sha256=dataset_sha256, overrides=overrides(),
                            name=run_name(cfg, "prepare")):
        opts = cfg.data.prepare
        stats = data.prepare(zip_path, cfg.paths.prepared, image_size=cfg.data.image_size, workers=opts.workers,
                             max_total_bytes=opts.max_total_bytes, max_image_bytes=opts.max_image_bytes,
                             max_text_bytes=opts.max_text_bytes, progress=cfg.progress)
        prepared = data.load_prepared(cfg.paths.prepared)
        datasets.log_dataset(cfg.data, prepared, context="prepare")
        mlflow.log_metrics({k: float(v) for k, v in stats.items() if k != "zip_sha256"})
        mlflow.log_dict({"wnids": prepared.wnids, "class_names": prepared.class_names, "words": prepared.words},
                        "classes.json")
        tracking.log_image(sample_grid(prepared), "samples_per_class")
        write_json(Path(cfg.paths.metrics) / "prepare.json", stats)
        log.info("prepared %d train / %d val / %d test images of %d classes in %.1fs", stats["num_train"],
                 stats["num_val"], stats["num_test"], stats["num_classes"], stats["seconds"])
    return stats


main = hydra_job("prepare", run)

if __name__ == "__main__":
    main()
