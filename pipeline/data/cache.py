"""The prepared dataset: one decode of the zip into a compact cache, and the API over it.

Cache layout (a folder, written atomically)::

    meta.json                         wnids, class names, words, file names, zip sha256, stats
    {train,val,test}_images.npy       uint8 (N, 3, H, W)
    {train,val}_labels.npy            int64 (N,)
    mean_image.npy                    float32 (3, H, W), the training-set mean image

Order is deterministic and follows the CS231n loader: classes in ``wnids.txt`` order
(train images sorted by name within a class), val in ``val_annotations.txt`` order, test
sorted by name. Loading memory-maps the arrays, so it takes milliseconds.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
import multiprocessing
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.data import archive
from pipeline.errors import ConfigError, DataError
from pipeline.data.fetch import sha256_file
from pipeline.files import atomic_path

CACHE_VERSION = 1
SPLITS = ("train", "val", "test")


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Listing:
    """Which zip members go where, before any image is decoded."""

    root: str
    wnids: list[str]
    words: dict[str, str]
    members: dict[str, list[str]]  # split -> zip member names
    labels: dict[str, list[int]]  # split -> label per member (absent for test)


def list_members(zf: zipfile.ZipFile) -> Listing:
    root = archive.find_root(zf)
    wnids = archive.read_text(zf, root + "wnids.txt").split()
    if not wnids:
        raise DataError(f"{zf.filename}: {root}wnids.txt lists no classes")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{zf.filename}: {root}wnids.txt lists a class twice")
    index = {w: i for i, w in enumerate(wnids)}
    words: dict[str, str] = {}
    if root + "words.txt" in zf.NameToInfo:
        for line in archive.read_text(zf, root + "words.txt").splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in index:
                words[wnid] = text.strip()
    names = zf.namelist()
    by_class: dict[str, list[str]] = {w: [] for w in wnids}
    prefix = root + "train/"
    for name in names:
        if name.startswith(prefix) and name.lower().endswith((".jpeg", ".jpg")):
            parts = name[len(prefix):].split("/")
            if parts[0] in by_class:
                by_class[parts[0]].append(name)
    train, train_labels = [], []
    for wnid in wnids:
        files = sorted(by_class[wnid], key=_natural_key)
        train += files
        train_labels += [index[wnid]] * len(files)
    if not train:
        raise DataError(f"{zf.filename}: no training images under {prefix}<wnid>/images/")

    val, val_labels = [], []
    annotations = root + "val/val_annotations.txt"
    if annotations in zf.NameToInfo:
        present = set(names)
        for lineno, line in enumerate(archive.read_text(zf, annotations).splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise DataError(f"{zf.filename}: {annotations} line {lineno} is malformed: {line!r}")
            if fields[1] not in index:
                raise DataError(f"{zf.filename}: {annotations} line {lineno} names class {fields[1]!r}, "
                                "which is not in wnids.txt")
            member = root + "val/images/" + fields[0]
            if member not in present:
                raise DataError(f"{zf.filename}: {annotations} line {lineno} names {fields[0]}, missing from the zip")
            val.append(member)
            val_labels.append(index[fields[1]])
    test_prefix = root + "test/images/"
    test = sorted((n for n in names if n.startswith(test_prefix) and n.lower().endswith((".jpeg", ".jpg"))),
                  key=_natural_key)
    return Listing(root=root, wnids=wnids, words=words,
                   members={"train": train, "val": val, "test": test},
                   labels={"train": train_labels, "val": val_labels})


def _decode(data: bytes, name: str, size: int, counts: dict) -> np.ndarray:
    """JPEG bytes -> uint8 (3, size, size); grayscale and CMYK become RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))  # no-op at 64x64; cheap downscale hint otherwise
            mode = image.mode
            if mode != "RGB":
                counts[mode] = counts.get(mode, 0) + 1
                image = image.convert("RGB")
            array = np.asarray(image)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DataError(f"cannot decode {name}: {exc}") from None
    if array.shape != (size, size, 3):
        raise DataError(f"{name} is {array.shape[1]}x{array.shape[0]}, expected {size}x{size} "
                        "(set data.image_size if this dataset uses another size)")
    return array.transpose(2, 0, 1)


def _decode_batch(blobs: list[bytes], names: list[str], size: int, counts: dict) -> np.ndarray:
    """JPEG bytes -> uint8 (N, 3, size, size) with libjpeg-turbo via torchvision (about 5x PIL's speed).

    Grayscale and CMYK become RGB exactly as PIL's ``convert("RGB")`` does; anything
    torchvision cannot decode goes through PIL, which names the broken file.
    """
    from torchvision.io import ImageReadMode, decode_jpeg  # here: importing torchvision costs every job 1.5 s

    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.UNCHANGED)
    except RuntimeError:
        decoded = [None] * len(blobs)  # find the culprit one by one below
    out = np.empty((len(blobs), 3, size, size), np.uint8)
    for i, image in enumerate(decoded):
        if image is None:
            try:
                image = decode_jpeg(tensors[i], mode=ImageReadMode.UNCHANGED)
            except RuntimeError:
                out[i] = _decode(blobs[i], names[i], size, counts)
                continue
        channels = image.shape[0]
        if channels != 3:
            mode = {1: "L", 4: "CMYK"}.get(channels, f"{channels}-channel")
            counts[mode] = counts.get(mode, 0) + 1
            image = decode_jpeg(tensors[i], mode=ImageReadMode.RGB)
        if tuple(image.shape[1:]) != (size, size):
            raise DataError(f"{names[i]} is {image.shape[2]}x{image.shape[1]}, expected {size}x{size} "
                            "(set data.image_size if this dataset uses another size)")
        out[i] = image.numpy()
    return out


def _decode_chunk(zip_path: Path, npy_path: Path, members: list[str], start: int, stop: int,
                  size: int) -> tuple[np.ndarray, dict, int]:
    """Decode ``members[start:stop]`` into rows of the .npy at ``npy_path``.

    Runs in a worker process; returns the float64 per-pixel sum of the chunk (for the mean
    image), how many images of each non-RGB mode it converted, and the image count.
    """
    counts: dict = {}
    zf = _open_zip(zip_path)
    names = members[start:stop]
    blobs = []
    for name in names:
        with archive.member_errors(zip_path, name):
            blob = zf.read(name)
        if not blob:
            raise DataError(f"{zip_path}: member {name} is empty")
        blobs.append(blob)
    images = _decode_batch(blobs, names, size, counts)
    out = np.load(npy_path, mmap_mode="r+")
    out[start:stop] = images
    out.flush()
    return images.sum(axis=0, dtype=np.float64), counts, stop - start


_open_zips: dict[tuple, zipfile.ZipFile] = {}


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    """One ZipFile per process and file version: opening re-reads the whole central directory
    (~1 s for 60k members). Keyed by pid so a forked worker never shares its parent's file offset."""
    st = zip_path.stat()
    key = (os.getpid(), str(zip_path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _open_zips:
        _open_zips[key] = zipfile.ZipFile(zip_path)
    return _open_zips[key]


def _close_zips() -> None:
    for key in [k for k in _open_zips if k[0] == os.getpid()]:
        _open_zips.pop(key).close()


def prepare(zip_path: str | os.PathLike, out_dir: str | os.PathLike, *, image_size: int = 64, workers: int = 2,
            chunk: int = 1024, max_total_bytes: int = archive.DEFAULT_MAX_TOTAL_BYTES,
            progress: bool | None = None) -> dict:
    """Decode every image of a TinyImageNet-layout zip into the cache at ``out_dir``; return statistics."""
    if workers < 1 or chunk < 1 or image_size < 1:
        raise ConfigError(f"prepare: workers ({workers}), chunk ({chunk}) and image_size ({image_size}) must be >= 1")
    zip_path = Path(zip_path)
    start_time = time.perf_counter()
    with archive.open_checked(zip_path, max_total_bytes=max_total_bytes) as zf:
        listing = list_members(zf)
    sha256 = sha256_file(zip_path)
    counts: dict[str, int] = {}
    total = sum(len(m) for m in listing.members.values())
    out_dir = Path(out_dir)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if workers > 1 else None
    sums = {split: np.zeros((3, image_size, image_size), np.float64) for split in SPLITS}
    with atomic_path(out_dir, is_dir=True) as tmp, \
            tqdm(total=total, desc="prepare", unit="img", disable=None if progress is None else not progress) as bar:
        tasks = []
        for split in SPLITS:
            members = listing.members[split]
            npy = tmp / f"{split}_images.npy"
            np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8,
                                      shape=(len(members), 3, image_size, image_size)).flush()
            tasks += [(split, (zip_path, npy, members, lo, min(lo + chunk, len(members)), image_size))
                      for lo in range(0, len(members), chunk)]
            if split in listing.labels:
                np.save(tmp / f"{split}_labels.npy", np.asarray(listing.labels[split], dtype=np.int64))
        try:
            if pool is None:
                results = ((split, _decode_chunk(*args)) for split, args in tasks)
            else:
                futures = {pool.submit(_decode_chunk, *args): split for split, args in tasks}
                results = ((futures[f], f.result()) for f in as_completed(futures))
            for split, (part_sum, part_counts, n) in results:
                sums[split] += part_sum
                for mode, k in part_counts.items():
                    counts[mode] = counts.get(mode, 0) + k
                bar.update(n)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            _close_zips()
        mean = (sums["train"] / len(listing.members["train"])).astype(np.float32)
        np.save(tmp / "mean_image.npy", mean)
        class_names = [listing.words.get(w, w).split(",")[0].strip() or w for w in listing.wnids]
        train_labels = np.asarray(listing.labels["train"])
        stats = {
            "num_classes": len(listing.wnids),
            "num_train": len(listing.members["train"]),
            "num_val": len(listing.members["val"]),
            "num_test": len(listing.members["test"]),
            "num_converted_grayscale": counts.get("L", 0),
            "num_converted_cmyk": counts.get("CMYK", 0),
            "num_converted_other": sum(v for k, v in counts.items() if k not in ("L", "CMYK")),
            "min_train_per_class": int(np.bincount(train_labels, minlength=len(listing.wnids)).min()),
            "mean_pixel_r": float(mean[0].mean()),
            "mean_pixel_g": float(mean[1].mean()),
            "mean_pixel_b": float(mean[2].mean()),
        }
        meta = {
            "version": CACHE_VERSION,
            "dataset": listing.root.rstrip("/") or zip_path.stem,
            "zip_sha256": sha256,
            "image_size": image_size,
            "wnids": listing.wnids,
            "class_names": class_names,
            "words": [listing.words.get(w, "") for w in listing.wnids],
            "files": {split: [m.rsplit("/", 1)[-1] for m in listing.members[split]] for split in SPLITS},
            "stats": stats,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
    stats["seconds"] = time.perf_counter() - start_time
    stats["zip_sha256"] = sha256
    return stats


@dataclass(frozen=True)
class Split:
    """One split of the cache: uint8 images (N, 3, H, W), int64 labels (None for test), file names."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)


class PreparedData:
    """Read access to a prepared cache; arrays are memory-mapped copy-on-write (fast, safe to modify)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.root}: no prepared dataset here (run the prepare stage: dvc repro prepare)")
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            raise DataError(f"{self.root}: cache version {meta.get('version')} != {CACHE_VERSION}; rerun prepare")
        self.meta = meta
        self.wnids: list[str] = meta["wnids"]
        self.class_names: list[str] = meta["class_names"]
        self.words: list[str] = meta["words"]
        self.sha256: str = meta["zip_sha256"]
        self.image_size: int = meta["image_size"]
        self._splits: dict[str, Split] = {}

    @property
    def num_classes(self) -> int:
        return len(self.wnids)

    @property
    def mean_image(self) -> torch.Tensor:
        return torch.from_numpy(np.load(self.root / "mean_image.npy"))

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        if name not in self._splits:
            images = torch.from_numpy(np.load(self.root / f"{name}_images.npy", mmap_mode="c"))
            labels_path = self.root / f"{name}_labels.npy"
            labels = torch.from_numpy(np.load(labels_path)) if labels_path.exists() else None
            self._splits[name] = Split(name, images, labels, self.meta["files"][name])
        return self._splits[name]

    def class_index(self, query: int | str) -> int:
        """A class by index, wnid, or any synonym in words.txt (case-insensitive)."""
        if isinstance(query, (int, np.integer)) or (isinstance(query, str) and query.strip().lstrip("-").isdigit()):
            index = int(query)
            if not 0 <= index < self.num_classes:
                raise ConfigError(f"class index {index} out of range 0..{self.num_classes - 1}")
            return index
        text = str(query).strip().lower()
        for i, wnid in enumerate(self.wnids):
            if text == wnid.lower():
                return i
        for i, words in enumerate(self.words):
            if text in (s.strip().lower() for s in words.split(",")):
                return i
        names = {s.strip().lower(): i for i, words in enumerate(self.words) for s in words.split(",") if s.strip()}
        close = difflib.get_close_matches(text, list(names), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
            f"; known classes include {', '.join(repr(n) for n in self.class_names[:8])}, ..."
        raise ConfigError(f"unknown class {query!r}{hint}")


def load_prepared(root: str | os.PathLike) -> PreparedData:
    return PreparedData(root)


class ImageDataset(torch.utils.data.Dataset):
    """A split as (float32 pixel image 0..255 (3, H, W), label) pairs, for DataLoader-based code."""

    def __init__(self, split: Split, transform=None):
        if split.labels is None:
            raise ConfigError(f"split {split.name!r} has no labels")
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image = self.split.images[index].float()
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.split.labels[index])
