"""Benchmark the train stage on the real TinyImageNet-100-A.

1. Training throughput, measured in this run on the same model and batch size:
   - naive: what a user would write first: torchvision ImageFolder over the extracted JPEGs,
     a DataLoader (2 workers), fp32, contiguous tensors;
   - pipeline: the train job's loop (prepared uint8 cache, batched augmentation, bf16 autocast,
     channels_last) with its optimizer (Muon's orthogonalisation included); naive uses plain SGD.
2. The full default CPU preset (unless --throughput-only): wall minutes, images/s, and the
   final accuracy on all 5,000 val images.

    python benchmarks/train.py [--zip ../shared/data/tiny-imagenet-100-A.zip] [--throughput-only]
        [--steps 30] [hydra overrides for the full run, e.g. train.epochs=12]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from pipeline.data import archive  # noqa: E402
from pipeline.data import cache as data  # noqa: E402
from pipeline.model import train  # noqa: E402
from pipeline.job import CONF_DIR  # noqa: E402
from pipeline.model.architectures import build_model  # noqa: E402


def compose_cfg(tmp: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"paths.prepared={tmp}/prepared", f"paths.metrics={tmp}/metrics", f"paths.plots={tmp}/plots",
            f"paths.classifier={tmp}/classifier.pt", f"paths.checkpoints={tmp}/checkpoints",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", "progress=false", *overrides])


def naive_images_per_second(cfg, root: Path, steps: int, mean_image: torch.Tensor) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomCrop(64, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor(), transforms.Lambda(lambda t: t.float())])
    dataset = datasets.ImageFolder(str(root / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=2,
                                         drop_last=True, persistent_workers=False)
    model = build_model(cfg.model, mean_image=mean_image, num_classes=len(dataset.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return _time_steps(model, optimizer, iter(loader), steps, lambda x: x, precision="fp32")


def pipeline_images_per_second(cfg, prepared: data.PreparedData, steps: int) -> float:
    s = cfg.train
    model = build_model(cfg.model, mean_image=prepared.mean_image, num_classes=prepared.num_classes)
    model = model.to(memory_format=torch.channels_last)
    split = prepared.split("train")
    images, labels = split.images.clone(), split.labels
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)

    def batches():
        for i in range(0, len(order), s.batch_size):
            idx = order[i:i + s.batch_size]
            yield train.augment(images[idx], generator, s.augment.pad, s.augment.flip), labels[idx]

    optimizer = train.make_optimizer(model, train.settings(cfg, torch.device("cpu")))  # the job's own optimizer
    return _time_steps(model, optimizer, batches(), steps,
                       lambda x: train.to_input(x, torch.device("cpu"), None, True), precision=s.precision)


def _time_steps(model, optimizer, batches, steps: int, prepare, precision: str, warmup: int = 3) -> float:
    model.train()
    seen, start = 0, None
    for step in range(steps + warmup):
        if step == warmup:
            start, seen = time.perf_counter(), 0
        x, y = next(batches)
        x = prepare(x)
        with train.autocast(torch.device("cpu"), precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", default=str(REPO.parent / "shared" / "data" / "tiny-imagenet-100-A.zip"))
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per throughput measurement")
    parser.add_argument("--throughput-only", action="store_true", help="skip the full training run")
    args, overrides = parser.parse_known_args()
    zip_path = Path(args.zip)
    if not zip_path.is_file():
        sys.exit(f"no zip at {zip_path}; pass --zip")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg = compose_cfg(tmp, overrides)
        data.prepare(zip_path, tmp / "prepared", progress=False)
        prepared = data.load_prepared(tmp / "prepared")
        extracted = archive.extract(zip_path, tmp / "extracted", progress=False) / prepared.meta["dataset"]
        print(f"model          {cfg.model.arch}: " + ", ".join(f"{k}={cfg.model[k]}" for k in cfg.model
                                                           if k not in ("url", "path", "sha256", "source")))
        print(f"threads        {torch.get_num_threads()}, batch {cfg.train.batch_size}, {args.steps} timed steps each")
        naive = naive_images_per_second(cfg, extracted, args.steps, prepared.mean_image)
        print(f"naive          {naive:8.1f} images/s  (ImageFolder JPEGs + DataLoader(2 workers), fp32, SGD)")
        fast = pipeline_images_per_second(cfg, prepared, args.steps)
        print(f"pipeline       {fast:8.1f} images/s  (uint8 cache, batched augment, {cfg.train.precision} "
              f"autocast, channels_last, {cfg.train.optimizer}) = {fast / naive:.2f}x naive")
        if args.throughput_only:
            return
        started = time.perf_counter()
        metrics = train.run(cfg)
        wall = (time.perf_counter() - started) / 60
        print(f"full run       {metrics['epochs']} epochs, training {metrics['train_minutes']:.1f} min "
              f"(job wall {wall:.1f} min incl. final evaluation)")
        print(f"               {metrics['images_per_second']:.1f} images/s mean over epochs "
              f"(progressive resizing: small early epochs are faster)")
        print(f"val accuracy   top-1 {metrics['val_accuracy']:.4f}, top-5 {metrics['val_top5']:.4f} "
              f"(all {prepared.split('val').images.shape[0]} val images, flip TTA={cfg.train.tta_flip})")
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
