"""Job ``train``: train the classifier on the prepared cache, or obtain the one ``model.source`` names
(the original CS231n model, a torchvision or a user's model: ``pipeline.model.sources``); then
evaluate it on the full val set and save ``models/classifier.pt`` with its identity.

Training reads uint8 tensors from the cache (no JPEG decoding), augments on whole batches
(pad-and-crop, flip), can grow the image size over the epochs (progressive resizing: early
epochs are cheap), steps conv filters with Muon (``pipeline.muon``: far more accuracy per epoch
than SGD here), runs under bf16 autocast with channels_last on CPU (CUDA + bf16 on GPU),
keeps an EMA of the weights, and checkpoints every epoch so a killed run resumes with the
same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pipeline.track import datasets, figures, logged_models, tracking
from pipeline.track.tracking import log_rows
from pipeline.model.checkpoint import architecture, pick_device, save_classifier
from pipeline.model import adversarial, sources
from pipeline.data.cache import PreparedData, Split, load_prepared
from pipeline.data.selection import spread_over_classes
from pipeline.errors import ConfigError, DataError
from pipeline.files import atomic_path, write_csv, write_json
from pipeline.job import hydra_job, overrides, run_name, seed_everything
from pipeline.model.architectures import ImageClassifier, build_model
from pipeline.model.muon import MuonSGD
from pipeline.model.precision import autocast

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- settings


def settings(cfg: DictConfig, device: torch.device) -> DictConfig:
    """The train config for this device: the ``gpu`` block overrides the rest on CUDA."""
    train = OmegaConf.to_container(cfg.train, resolve=True)
    gpu = train.pop("gpu", {}) or {}
    if device.type == "cuda":
        train.update(gpu)
    s = OmegaConf.create(train)
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if int(s[key]) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {s[key]}")
    if not s.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {s.lr}")
    if s.weight_decay < 0 or not 0 <= s.label_smoothing < 1:
        raise ConfigError("train.weight_decay must be >= 0 and train.label_smoothing in [0, 1)")
    if s.optimizer not in ("sgd", "muon"):
        raise ConfigError(f"train.optimizer must be sgd or muon, got {s.optimizer!r}")
    if not s.muon.lr_scale > 0 or int(s.muon.ns_steps) < 1:
        raise ConfigError(f"train.muon.lr_scale must be > 0 and train.muon.ns_steps >= 1, got "
                          f"{s.muon.lr_scale}, {s.muon.ns_steps}")
    if s.augment.flip not in (True, False, "alternate"):
        raise ConfigError(f"train.augment.flip must be true, false or alternate, got {s.augment.flip!r}")
    if s.precision not in ("bf16", "fp32"):
        raise ConfigError(f"train.precision must be bf16 or fp32, got {s.precision!r}")
    if not 0 <= s.ema.decay < 1 or int(s.ema.every) < 1:
        raise ConfigError(f"train.ema.decay must be in [0, 1) and train.ema.every >= 1, got {s.ema.decay}, "
                          f"{s.ema.every}")
    if s.get("adversarial"):
        adversarial.check_threat(s.adversarial)
    return s


def image_size_at(epoch: int, s: DictConfig, full: int) -> int:
    """Progressive resizing: grow linearly from ``resize.start`` to full size, then hold it."""
    start = int(s.resize.start or full)
    ramp = max(s.epochs - int(s.resize.full_size_epochs), 1)
    if start >= full or epoch >= ramp:
        return full
    size = start + (full - start) * epoch / ramp
    return min(full, int(round(size / 8) * 8))


def learning_rate(step: int, total: int, s: DictConfig) -> float:
    """One-cycle: linear warm-up to ``lr``, then cosine down to ``lr * final_lr_fraction``."""
    warm = max(int(total * s.warmup_fraction), 1)
    if step < warm:
        return s.lr * (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    low = s.lr * s.final_lr_fraction
    return low + (s.lr - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# --------------------------------------------------------------------------- batches


def augment(images: torch.Tensor, generator: torch.Generator, pad: int, flip: bool | torch.Tensor) -> torch.Tensor:
    """Random pad-and-crop (zero padding) and horizontal flip of a uint8 batch, as one gather.

    ``flip``: True mirrors a random half, or a boolean mask says which images to mirror.
    """
    n, c, h, w = images.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if pad else torch.zeros(n, dtype=torch.long)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if pad else torch.zeros(n, dtype=torch.long)
    if not isinstance(flip, torch.Tensor):
        flip = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    if not pad and not flip.any():
        return images
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    cols = torch.where(flip[:, None], torch.arange(w - 1, -1, -1), torch.arange(w))  # (n, w), mirrored or not
    rows = dy[:, None] + torch.arange(h)  # (n, h)
    index = (rows[:, :, None] * (w + 2 * pad) + dx[:, None, None] + cols[:, None, :]).reshape(n, 1, h * w)
    return padded.reshape(n, c, -1).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def to_input(images: torch.Tensor, device: torch.device, size: int | None, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> float pixels 0..255 on ``device`` (resized when training small)."""
    x = images.to(device, non_blocking=True).float()
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def alternating_flips(mirrored_first: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images to mirror in ``epoch``: a random half in the first, the other half in the next,
    and so on (alternating flip, Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"):
    short runs see every image both ways every two epochs instead of leaving it to chance."""
    return mirrored_first ^ bool(epoch % 2)


@torch.no_grad()
def predict(model: ImageClassifier, images: torch.Tensor, *, batch_size: int, device: torch.device,
            precision: str = "fp32", channels_last: bool = False, tta_flip: bool = False,
            progress: bool | None = False) -> torch.Tensor:
    """Float32 class scores for uint8 images (N, 3, H, W); ``tta_flip`` averages with the mirror image."""
    model.eval()
    out = []
    for lo in tqdm(range(0, len(images), batch_size), desc="eval", leave=False,
                   disable=None if progress is None else not progress):
        x = to_input(images[lo:lo + batch_size], device, None, channels_last)
        with autocast(device, precision):
            scores = model(x).float()
            if tta_flip:
                scores = (scores + model(x.flip(-1)).float()) / 2
        out.append(scores.cpu())
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def evaluate(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
    return {
        "loss": float(F.cross_entropy(scores, labels)),
        "accuracy": float((top5[:, 0] == labels).float().mean()),
        "top5": float((top5 == labels[:, None]).any(1).float().mean()),
    }


# --------------------------------------------------------------------------- training


def make_optimizer(model: ImageClassifier, s: DictConfig) -> torch.optim.Optimizer:
    """Nesterov SGD (no weight decay on biases and BN), or Muon on the conv filters."""
    filters, decay, no_decay = [], [], []
    for p in model.parameters():
        if p.ndim == 4 and s.optimizer == "muon":
            filters.append(p)
        else:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov)
    groups.append({"params": filters, "muon": True, "lr_scale": s.muon.lr_scale, "ns_steps": s.muon.ns_steps})
    return MuonSGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov)


class EMA:
    """Exponential moving average of weights (and a copy of BN statistics) for evaluation."""

    def __init__(self, model: ImageClassifier, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: ImageClassifier, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm start: early weights fade fast
        ema_state, state = self.model.state_dict(), model.state_dict()
        for key, value in state.items():
            if value.dtype.is_floating_point:
                ema_state[key].lerp_(value, 1 - decay)
            else:
                ema_state[key].copy_(value)


def fingerprint(cfg: DictConfig, s: DictConfig, sha256: str) -> str:
    """What a resumable checkpoint must agree on: settings, architecture, seed, data."""
    blob = json.dumps({"train": OmegaConf.to_container(s), "arch": architecture(cfg.model), "seed": cfg.seed,
                       "data": sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_images(cfg: DictConfig, data: PreparedData, s: DictConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) to train on: the whole train split, or a fixed random subset (quick experiments),
    copied into RAM for fast random access."""
    train_split = data.split("train")
    if len(train_split) == 0:
        raise DataError("the training set is empty")
    images, labels = train_split.images, train_split.labels
    if s.max_train_images:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))[:s.max_train_images]
        images, labels = images[keep.sort().values], labels[keep.sort().values]
    return images.clone(), labels


def resume(checkpoint: Path, key: str, model: ImageClassifier, optimizer: torch.optim.Optimizer,
           ema: EMA | None) -> tuple[list[dict], int]:
    """(history, epochs done) from a checkpoint of the same configuration, else ([], 0)."""
    import mlflow

    try:  # tensors, numbers and strings only: no pickled code runs
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file is not worth failing the run for
        log.warning("ignoring unreadable checkpoint %s (%s)", checkpoint, exc)
        return [], 0
    if not (isinstance(state, dict) and state.get("fingerprint") == key):
        log.info("ignoring %s: it belongs to another configuration", checkpoint)
        return [], 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.model.load_state_dict(state["ema"])
    log.info("resuming from %s after epoch %d", checkpoint, state["epoch"])
    for row in state["history"]:  # the MLflow run of a resumed job shows the whole curve
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    return state["history"], state["epoch"]


def train_one_epoch(model: ImageClassifier, optimizer: torch.optim.Optimizer, ema: EMA | None,
                    images: torch.Tensor, labels: torch.Tensor, mirrored_first: torch.Tensor, *, epoch: int,
                    size: int, steps_per_epoch: int, total_steps: int, cfg: DictConfig, s: DictConfig,
                    device: torch.device) -> dict:
    """One pass over ``images`` in a seeded order at ``size`` px; returns the epoch's train figures."""
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    threat = s.get("adversarial")
    if threat:  # its own random stream: the batches are the same as without the attack
        starts = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 50_021)
        radius = adversarial.radius_at(threat, size, images.shape[-1])
    order = torch.randperm(len(images), generator=generator)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    model.train()
    seen, loss_sum, correct = 0, 0.0, 0
    started = time.perf_counter()
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{s.epochs} @{size}px", leave=False,
               disable=None if cfg.progress is None else not cfg.progress)
    for i in bar:
        step = epoch * steps_per_epoch + i
        idx = order[i * s.batch_size:(i + 1) * s.batch_size]
        flip = alternating_flips(mirrored_first[idx], epoch) if s.augment.flip == "alternate" else s.augment.flip
        batch = augment(images[idx], generator, s.augment.pad, flip)
        target = labels[idx].to(device, non_blocking=True)
        x = to_input(batch, device, size, s.channels_last)
        lr = learning_rate(step, total_steps, s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if threat:  # train on the adversarial images only (Madry et al. 2018)
            x = adversarial.attack(model, x, target, norm=threat.norm, eps=radius, steps=int(threat.steps),
                                   step_size=threat.step_size * radius / int(threat.steps), generator=starts,
                                   loss=criterion, autocast=lambda: autocast(device, s.precision))
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, s.precision):
            scores = model(x)
            loss = criterion(scores.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None and step % s.ema.every == 0:
            ema.update(model, step)
        seen += len(idx)
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((scores.argmax(1) == target).sum())
        if i % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.3g}")
    seconds = time.perf_counter() - started
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "lr": lr,
            "images_per_second": seen / seconds, "epoch_seconds": seconds, "image_size": size}


def monitor(model: ImageClassifier, ema: EMA | None, val: Split, s: DictConfig, device: torch.device) -> dict:
    """The per-epoch val figures on the first ``epoch_val_images`` (the final evaluation uses all)."""
    count = min(int(s.epoch_val_images or len(val)), len(val))
    options = dict(batch_size=s.eval_batch_size, device=device, precision=s.precision, channels_last=s.channels_last)
    scores = predict(ema.model if ema is not None else model, val.images[:count], **options)
    result = evaluate(scores, val.labels[:count])
    row = {"val_loss": result["loss"], "val_accuracy": result["accuracy"], "val_top5": result["top5"]}
    if ema is not None:  # the same images through the raw weights: what the average is worth
        row["raw_val_accuracy"] = evaluate(predict(model, val.images[:count], **options), val.labels[:count])["accuracy"]
    return row


CURVE_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5", "lr",
                 "images_per_second", "epoch_seconds", "image_size", "raw_val_accuracy")  # plots/train.csv


def train_model(cfg: DictConfig, data: PreparedData, device: torch.device, s: DictConfig) -> tuple[
        ImageClassifier, list[dict]]:
    import mlflow

    val_split = data.split("val")
    if len(val_split) == 0:
        raise DataError("the validation set is empty")
    seed_everything(cfg.seed)
    model = build_model(cfg.model, mean_image=data.mean_image, num_classes=data.num_classes).to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, s)
    ema = EMA(model, s.ema.decay) if s.ema.enabled else None
    train_images, labels = training_images(cfg, data, s)
    mirrored_first = torch.rand(len(train_images), generator=torch.Generator().manual_seed(cfg.seed)) < 0.5
    steps_per_epoch = math.ceil(len(train_images) / s.batch_size) if not s.drop_last else \
        max(len(train_images) // s.batch_size, 1)
    checkpoint = Path(cfg.paths.checkpoints) / "train_last.pt"
    key = fingerprint(cfg, s, data.sha256)
    history, start_epoch = resume(checkpoint, key, model, optimizer, ema) if checkpoint.is_file() and s.resume \
        else ([], 0)
    for epoch in range(start_epoch, s.epochs):
        size = image_size_at(epoch, s, data.image_size)
        figures = {"epoch": epoch + 1, **train_one_epoch(
            model, optimizer, ema, train_images, labels, mirrored_first, epoch=epoch, size=size,
            steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * s.epochs, cfg=cfg, s=s, device=device),
            **monitor(model, ema, val_split, s, device)}
        row = {k: figures[k] for k in CURVE_COLUMNS if k in figures}
        history.append(row)
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        log.info("epoch %d/%d @%dpx: train loss %.3f acc %.3f | val acc %.4f top5 %.4f%s | %.0f img/s, %.0fs",
                 epoch + 1, s.epochs, size, row["train_loss"], row["train_accuracy"], row["val_accuracy"],
                 row["val_top5"], f" (raw weights {row['raw_val_accuracy']:.4f})" if ema is not None else "",
                 row["images_per_second"], row["epoch_seconds"])
        with atomic_path(checkpoint) as tmp:
            torch.save({"fingerprint": key, "epoch": epoch + 1, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "ema": ema.model.state_dict() if ema else None,
                        "history": history}, tmp)
    final = ema.model if ema is not None else model
    return final.to(memory_format=torch.contiguous_format), history


# --------------------------------------------------------------------------- reports


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) counts, row = true class, column = predicted."""
    matrix = torch.zeros(n, n, dtype=torch.long)
    matrix.index_put_((labels.long(), preds.long()), torch.ones_like(labels, dtype=torch.long), accumulate=True)
    return matrix


def confusion_tables(preds: torch.Tensor, labels: torch.Tensor, names: list[str], top: int = 25) -> tuple[
        list[dict], list[dict]]:
    """(top confused pairs, per-class accuracy) of top-1 predictions ``preds``, rows ready for CSV."""
    n = len(names)
    matrix = confusion_matrix(preds, labels, n)
    off = matrix.clone()
    off.fill_diagonal_(0)
    pairs = [{"true": names[t], "predicted": names[q], "count": c, "fraction_of_true": c / max(int(matrix[t].sum()), 1)}
             for t, q, c, _ in most_confused(labels, preds, n, top)]
    per_class = [{"index": i, "class": names[i], "accuracy": float(matrix[i, i]) / max(int(matrix[i].sum()), 1),
                  "count": int(matrix[i].sum()),
                  "most_confused_with": names[int(off[i].argmax())] if off[i].sum() else ""} for i in range(n)]
    return pairs, sorted(per_class, key=lambda r: r["accuracy"])


def confusion_picture(matrix: torch.Tensor, cell: int = 4) -> np.ndarray:
    """The row-normalised confusion matrix as an image, ``cell`` pixels per entry; square-root scaled,
    so that a class that loses 5% of its images to another is visible beside a 90% diagonal."""
    rows = matrix.float() / matrix.sum(1, keepdim=True).clamp_min(1)
    picture = figures.heatmap(rows.sqrt(), vmax=1.0)
    return np.repeat(np.repeat(picture, cell, axis=0), cell, axis=1)


def most_confused(labels: torch.Tensor, preds: torch.Tensor, n: int, pairs: int = 12) -> list[tuple[int, int, int, int]]:
    """The ``pairs`` most frequent mistakes as (true, predicted, count, first val index of that mistake)."""
    matrix = confusion_matrix(preds, labels, n)
    matrix.fill_diagonal_(0)
    values, flat = matrix.flatten().topk(min(pairs, n * n))
    found = []
    for count, f in zip(values.tolist(), flat.tolist()):
        if count == 0:
            break
        true, predicted = divmod(f, n)
        found.append((true, predicted, count, int(((labels == true) & (preds == predicted)).nonzero()[0, 0])))
    return found


def confused_examples(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, names: list[str],
                      pairs: int = 12):
    """A grid of val images, one per most confused (true, predicted) pair: what the classifier mistakes
    for what (None when it makes no mistake)."""
    found = most_confused(labels, preds, len(names), pairs)
    if not found:
        return None
    return figures.grid([images[i] for *_, i in found], [f"{names[t]} -> {names[p]} ({c})" for t, p, c, _ in found],
                        columns=min(6, len(found)), scale=2, caption_lines=2)


def robustness(model: ImageClassifier, val: Split, threat: DictConfig, batch_size: int, device: torch.device,
               progress) -> dict:
    """PGD accuracy at the training radius on an evenly spread subset of val (every class alike)."""
    count = min(int(threat.eval_images), len(val))
    if count == 0:
        return {}
    pick = torch.tensor(spread_over_classes(val.labels, count))
    started = time.perf_counter()
    accuracy = adversarial.robust_accuracy(model, val.images[pick], val.labels[pick], norm=threat.norm,
                                           eps=float(threat.eps), steps=int(threat.eval_steps),
                                           batch_size=batch_size, device=device, progress=progress)
    log.info("PGD-%d accuracy at %s radius %g: %.4f on %d val images (%.0f s)", threat.eval_steps, threat.norm,
             threat.eps, accuracy, count, time.perf_counter() - started)
    return {"pgd_accuracy": accuracy, "pgd_eps": float(threat.eps), "pgd_steps": int(threat.eval_steps),
            "pgd_images": count}


# --------------------------------------------------------------------------- job


def run(cfg: DictConfig) -> dict:
    import mlflow

    source = sources.check_source(cfg.model)
    device = pick_device(cfg.train.device)
    s = settings(cfg, device)
    if s.threads:
        torch.set_num_threads(int(s.threads))
    data = load_prepared(cfg.paths.prepared)
    if source not in sources.EXTERNAL:
        build_model(cfg.model, num_classes=data.num_classes)  # unknown arch/options fail before any work
    out_dir = Path(cfg.paths.metrics)
    label = f"{cfg.model.arch} {s.epochs} epochs" if source == "train" else sources.name(cfg.model)
    with tracking.start_run(cfg, "train", dataset_sha256=data.sha256, overrides=overrides(),
                            name=run_name(cfg, "train", label)):
        mlflow.set_tags({"model": sources.name(cfg.model), "model_source": source, "device": str(device),
                         "arch": cfg.model.arch})
        if s.get("adversarial") and source == "train":
            mlflow.set_tag("adversarial", f"{s.adversarial.norm} eps {s.adversarial.eps:g}")
        datasets.log_dataset(cfg.data, data, context="train")
        started = time.perf_counter()
        if source == "train":
            model, history = train_model(cfg, data, device, s)
            images_per_second = float(np.mean([r["images_per_second"] for r in history]))
            train_minutes = (time.perf_counter() - started) / 60
        else:
            model, arch = sources.obtain(cfg.model, data, cache_dir=cfg.paths.checkpoints, progress=cfg.progress,
                                         tracking_uri=tracking.resolve_uri(cfg.tracking.uri, cfg.paths.root))
            history, images_per_second, train_minutes = [], 0.0, 0.0
        model = model.to(device).eval()
        val = data.split("val")
        started_eval = time.perf_counter()
        scores = predict(model, val.images, batch_size=s.eval_batch_size, device=device, precision=s.precision,
                         channels_last=s.channels_last, tta_flip=s.tta_flip, progress=cfg.progress)
        eval_seconds = time.perf_counter() - started_eval
        result = evaluate(scores, val.labels)
        metrics = {"val_accuracy": result["accuracy"], "val_top5": result["top5"], "val_loss": result["loss"],
                   "train_minutes": train_minutes,
                   "images_per_second": images_per_second if source == "train" else len(val) / eval_seconds,
                   "epochs": len(history), "num_parameters": sum(p.numel() for p in model.parameters())}
        if s.get("adversarial"):
            metrics.update(robustness(model, val, s.adversarial, s.eval_batch_size, device, cfg.progress))
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
        preds = scores.argmax(1)
        pairs, per_class = confusion_tables(preds, val.labels, data.class_names)
        reports = Path(cfg.paths.checkpoints) / "reports"
        write_csv(reports / "confusion_top_pairs.csv", pairs)
        write_csv(reports / "per_class_accuracy.csv", per_class)
        log_rows(per_class, "per_class_accuracy.json")
        log_rows(pairs, "confusion_top_pairs.json")
        tracking.log_image(confusion_picture(confusion_matrix(preds, val.labels, data.num_classes)),
                           "confusion_matrix")
        examples = confused_examples(val.images, val.labels, preds, data.class_names)
        if examples is not None:
            tracking.log_image(examples, "most_confused")
        if source == "train":
            arch = architecture(cfg.model)
            arch["num_classes"] = data.num_classes
        meta = {"arch": arch, "wnids": list(data.wnids), "class_names": list(data.class_names), "source": source,
                "val_accuracy": metrics["val_accuracy"], "dataset_sha256": data.sha256,
                "model": sources.identity(cfg.model)}
        meta["state_dict_sha256"] = save_classifier(
            cfg.paths.classifier, model, arch, wnids=data.wnids, class_names=data.class_names, source=source,
            extra={k: meta[k] for k in ("val_accuracy", "dataset_sha256", "model")})
        logged_models.log_classifier(model, meta, val.images[:2], cfg.tracking.get("registered_model"))
        write_csv(Path(cfg.paths.plots) / "train.csv", history)
        write_csv(Path(cfg.paths.plots) / "confusion.csv", [  # DVC plot (template confusion), one row per val image
            {"actual": data.class_names[int(a)], "predicted": data.class_names[int(b)]}
            for a, b in zip(val.labels, preds)])
        write_json(out_dir / "train.json", metrics)
        # Resuming is for killed runs only: a finished run must not short-cut the next one.
        (Path(cfg.paths.checkpoints) / "train_last.pt").unlink(missing_ok=True)
        log.info("val accuracy %.4f, top-5 %.4f (%s, %d epochs, %.1f min)", metrics["val_accuracy"],
                 metrics["val_top5"], source, len(history), train_minutes)
    return metrics


main = hydra_job("train", run)

if __name__ == "__main__":
    main()
