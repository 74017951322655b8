"""The prepared dataset: one decode of the zip into a compact cache, and the API over it.

Cache layout (a folder, written atomically)::

    meta.json                         wnids, class names, words, file names, zip sha256, stats
    {train,val,test}_images.npy       uint8 (N, 3, H, W)
    {train,val}_labels.npy            int64 (N,)
    mean_image.npy                    float32 (3, H, W), the training-set mean image

Order is deterministic and follows the CS231n loader: classes in ``wnids.txt`` order
(train images sorted by name within a class), val in ``val_annotations.txt`` order, test
sorted by name. Loading memory-maps the arrays, so it takes milliseconds.

The zip is untrusted, so preparing it takes bounded memory whatever it holds: each member is
read with a cap (``data.prepare.max_image_bytes`` / ``max_text_bytes``), a JPEG's dimensions
are checked from its header before it is decoded (a 2 KB file can declare 20000x20000), and
workers decode in batches of bounded size. Decoding runs in forked worker processes; on any
error or interrupt (Ctrl-C, SIGTERM) they are terminated at once, not waited for, and the
half-written cache folder is removed.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import os
import re
import multiprocessing
import pickle
import signal
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Iterator

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
BATCH_BYTES = 64 << 20  # a worker decodes at most about this much (JPEG bytes + pixels) at a time

log = logging.getLogger(__name__)


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


def list_members(zf: zipfile.ZipFile, *, max_text_bytes: int = archive.DEFAULT_MAX_TEXT_BYTES) -> Listing:
    """Sort the members into splits; a missing val_annotations.txt is an error (val would be empty),
    classes without training images are logged as a warning."""
    root = archive.find_root(zf)
    wnids = archive.read_text(zf, root + "wnids.txt", limit=max_text_bytes).split()
    if not wnids:
        raise DataError(f"{zf.filename}: {root}wnids.txt lists no classes")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{zf.filename}: {root}wnids.txt lists a class twice")
    index = {w: i for i, w in enumerate(wnids)}
    words: dict[str, str] = {}
    if root + "words.txt" in zf.NameToInfo:
        for line in archive.read_text(zf, root + "words.txt", limit=max_text_bytes).splitlines():
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
    empty = [w for w in wnids if not by_class[w]]
    if empty:
        shown = ", ".join(empty[:20]) + (", ..." if len(empty) > 20 else "")
        log.warning("%s: %d of %d classes have no training images (under %s<wnid>/images/): %s",
                    zf.filename, len(empty), len(wnids), prefix, shown)

    val, val_labels = [], []
    annotations = root + "val/val_annotations.txt"
    if annotations not in zf.NameToInfo:
        raise DataError(f"{zf.filename}: missing {annotations} (the labels of the val images); "
                        "is this a complete TinyImageNet-style zip?")
    present = set(names)
    for lineno, line in enumerate(archive.read_text(zf, annotations, limit=max_text_bytes).splitlines(), 1):
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


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)


def jpeg_dimensions(data: bytes | bytearray) -> tuple[int, int] | None:
    """(width, height) from the first frame header of JPEG bytes, found as libjpeg finds it
    (bytes before a marker skipped); None if ``data`` is no JPEG or has no frame header before
    its scan. Reads the header only, so a decompression bomb costs nothing to spot."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return None
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no marker / TEM, RSTn, SOI: no length
            continue
        if marker in (0xD9, 0xDA):  # EOI, SOS: no frame header before the image data
            return None
        if marker in _SOF_MARKERS:
            if pos + 7 > end:
                return None
            return int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 3:pos + 5], "big")
        if pos + 2 > end:
            return None
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            return None
        pos += length


def _wrong_size(name: str, width: int, height: int, size: int) -> DataError:
    return DataError(f"{name} is {width}x{height}, expected {size}x{size} "
                     "(set data.image_size if this dataset uses another size)")


def _check_header(head: bytes | bytearray, name: str, size: int) -> None:
    """Refuse an image by its first bytes, before the rest is read or anything decoded: a JPEG
    whose header declares other dimensions than ``size``, or a file that is no JPEG and that
    PIL (which decodes what libjpeg cannot) cannot identify or finds of another size."""
    dims = jpeg_dimensions(head)
    if dims is None and head[:2] != b"\xff\xd8":
        try:
            with Image.open(io.BytesIO(head)) as image:  # reads the header only
                dims = image.size
        except Exception as exc:  # PIL raises many types (and DecompressionBombError)
            raise DataError(f"cannot decode {name}: {exc}") from None
    if dims is not None and dims != (size, size):
        raise _wrong_size(name, *dims, size)


def _decode(data: bytes | bytearray, name: str, size: int, counts: dict) -> np.ndarray:
    """Image bytes -> uint8 (3, size, size) with PIL; grayscale and CMYK become RGB.

    The size is checked from the header (``Image.open`` reads no pixels) before decoding.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises many types for corrupt data (and DecompressionBombError)
        raise DataError(f"cannot decode {name}: {exc}") from None
    with image:
        if image.size != (size, size):
            raise _wrong_size(name, *image.size, size)
        try:
            mode = image.mode
            if mode != "RGB":
                counts[mode] = counts.get(mode, 0) + 1
                image = image.convert("RGB")
            array = np.asarray(image)
        except Exception as exc:
            raise DataError(f"cannot decode {name}: {exc}") from None
    if array.shape != (size, size, 3):
        raise _wrong_size(name, array.shape[1], array.shape[0], size)
    return array.transpose(2, 0, 1)


def _decode_batch(blobs: list[bytearray], names: list[str], size: int, counts: dict) -> np.ndarray:
    """JPEG bytes -> uint8 (N, 3, size, size) with libjpeg-turbo via torchvision (about 5x PIL's speed).

    Grayscale and CMYK become RGB exactly as PIL's ``convert("RGB")`` does; anything
    torchvision cannot decode goes through PIL, which names the broken file. The tensors
    share the blobs' memory (writable bytearrays), so nothing is copied.
    """
    from torchvision.io import ImageReadMode, decode_jpeg  # here: importing torchvision costs every job 1.5 s

    tensors = [torch.frombuffer(blob, dtype=torch.uint8) for blob in blobs]
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
            raise _wrong_size(names[i], image.shape[2], image.shape[1], size)
        out[i] = image.numpy()
    return out


def _decode_chunk(zip_path: Path, npy_path: Path, members: list[str], start: int, stop: int,
                  size: int, max_image_bytes: int = archive.DEFAULT_MAX_IMAGE_BYTES) -> tuple[np.ndarray, dict, int]:
    """Decode ``members[start:stop]`` into rows of the .npy at ``npy_path``.

    Runs in a worker process; returns the float64 per-pixel sum of the chunk (for the mean
    image), how many images of each non-RGB mode it converted, and the image count. Members
    are read with a cap and decoded in batches of about ``BATCH_BYTES``, so a worker's memory
    does not grow with the chunk length or the members' sizes.
    """
    counts: dict = {}
    zf = _open_zip(zip_path)
    out = np.load(npy_path, mmap_mode="r+")
    total = np.zeros((3, size, size), np.float64)
    pixels = 3 * size * size
    blobs: list[bytearray] = []
    names: list[str] = []
    pending, row = 0, start

    def flush() -> None:
        nonlocal pending, row
        if blobs:
            images = _decode_batch(blobs, names, size, counts)
            out[row:row + len(images)] = images
            total[...] += images.sum(axis=0, dtype=np.float64)  # integers below 2**53: exact in any order
            row += len(images)
            blobs.clear()
            names.clear()
        pending = 0

    for name in members[start:stop]:
        with archive.member_errors(zip_path, name):
            blob = archive.read_member(zf, name, max_image_bytes, "data.prepare.max_image_bytes",
                                       inspect=lambda head: _check_header(head, name, size))
        if not blob:
            raise DataError(f"{zip_path}: member {name} is empty")
        if len(blob) > 1 << 20 and (dims := jpeg_dimensions(blob)) not in (None, (size, size)):
            raise _wrong_size(name, *dims, size)  # its frame header came after the first MiB
        blobs.append(blob)
        names.append(name)
        pending += len(blob) + pixels
        if pending >= BATCH_BYTES:
            flush()
    flush()
    out.flush()
    return total, counts, stop - start


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


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a decode worker (set as its ``__cause__``)."""


class _DecodeWorkers:
    """Forked processes that decode ``tasks`` (``(split, _decode_chunk args)``), taking the next one
    from a shared counter. Our own small pool rather than ProcessPoolExecutor: it must be killed
    mid-chunk on an error or Ctrl-C, and killing an executor's workers can leave its manager thread
    blocked forever on a half-sent result. Each worker reports on its own pipe, so a worker that
    dies (even mid-message) shows up as end-of-file there, never as a hang.
    """

    def __init__(self, count: int, tasks: list[tuple[str, tuple]]):
        context = multiprocessing.get_context("fork")  # the tasks are inherited, not pickled
        self.tasks = tasks
        self.next_task = context.Value("q", 0)
        self.processes: dict = {}  # result pipe -> process
        try:
            for _ in range(count):
                reader, writer = context.Pipe(duplex=False)
                process = context.Process(target=_decode_worker, args=(tasks, self.next_task, writer, os.getpid()),
                                          name="prepare-decode", daemon=True)
                self.processes[reader] = process  # before start: an interrupt in between still finds it
                process.start()
                writer.close()  # the worker's copy is the only one left: its exit is EOF on ``reader``
        except BaseException:
            self.kill()
            raise

    def results(self) -> Iterator[tuple[str, tuple]]:
        """(split, result of ``_decode_chunk``) as workers finish chunks; a chunk's exception is re-raised."""
        pending = dict(self.processes)
        while pending:
            for reader in wait_ready(list(pending)):
                try:
                    index, result, error = reader.recv()
                except EOFError:  # the worker is done, or died
                    process = pending.pop(reader)
                    process.join()
                    if process.exitcode != 0:
                        raise DataError(f"a decoding process died (exit code {process.exitcode}; out of memory?)")
                    continue
                if error is not None:
                    exc, remote = error
                    exc.__cause__ = RemoteTraceback(remote)
                    raise exc
                yield self.tasks[index][0], result

    def kill(self, timeout: float = 10.0) -> None:
        """Terminate every worker now (not after its chunk) and reap it."""
        started = [p for p in self.processes.values() if p.pid is not None]
        for process in started:
            if process.exitcode is None:
                process.terminate()
        for process in started:
            process.join(timeout)
            if process.exitcode is None:
                process.kill()
                process.join()
        self.close()

    def close(self) -> None:
        for reader, process in self.processes.items():
            reader.close()
            if process.pid is not None:
                process.join()


def _decode_worker(tasks: list[tuple[str, tuple]], next_task, results, parent: int) -> None:
    """A decode process: chunks until none is left or one fails; each outcome goes to ``results``.

    SIGTERM kills it at once (not the job's SIGTERM -> KeyboardInterrupt, inherited through
    fork) and Ctrl-C at the terminal is left to the parent, which kills its workers. If the
    parent dies without that (SIGKILL), the kernel kills the worker too (Linux).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    try:
        while True:
            with next_task.get_lock():
                index = next_task.value
                next_task.value += 1
            if index >= len(tasks):
                return
            try:
                results.send((index, _decode_chunk(*tasks[index][1]), None))
            except Exception as exc:
                remote = "".join(traceback.format_exception(exc))
                try:
                    pickle.dumps(exc)
                except Exception:
                    exc = RuntimeError(f"{type(exc).__name__}: {exc}")
                results.send((index, None, (exc, remote)))
                return
    finally:
        results.close()


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request
        os._exit(1)


def prepare(zip_path: str | os.PathLike, out_dir: str | os.PathLike, *, image_size: int = 64, workers: int = 2,
            chunk: int = 1024, max_total_bytes: int = archive.DEFAULT_MAX_TOTAL_BYTES,
            max_image_bytes: int = archive.DEFAULT_MAX_IMAGE_BYTES, max_text_bytes: int = archive.DEFAULT_MAX_TEXT_BYTES,
            progress: bool | None = None) -> dict:
    """Decode every image of a TinyImageNet-layout zip into the cache at ``out_dir``; return statistics.

    ``max_*`` cap the uncompressed zip, one image member and one text member (zip bombs). On any
    error or interrupt the decode workers are killed and ``out_dir`` is left as it was.
    """
    if workers < 1 or chunk < 1 or image_size < 1:
        raise ConfigError(f"prepare: workers ({workers}), chunk ({chunk}) and image_size ({image_size}) must be >= 1")
    if min(max_total_bytes, max_image_bytes, max_text_bytes) < 1:
        raise ConfigError(f"prepare: data.prepare.max_total_bytes ({max_total_bytes}), max_image_bytes "
                          f"({max_image_bytes}) and max_text_bytes ({max_text_bytes}) must be >= 1")
    zip_path = Path(zip_path)
    start_time = time.perf_counter()
    with archive.open_checked(zip_path, max_total_bytes=max_total_bytes) as zf:
        listing = list_members(zf, max_text_bytes=max_text_bytes)
    sha256 = sha256_file(zip_path)
    counts: dict[str, int] = {}
    total = sum(len(m) for m in listing.members.values())
    out_dir = Path(out_dir)
    sums = {split: np.zeros((3, image_size, image_size), np.float64) for split in SPLITS}
    with atomic_path(out_dir, is_dir=True) as tmp, \
            tqdm(total=total, desc="prepare", unit="img", disable=None if progress is None else not progress) as bar:
        tasks = []
        for split in SPLITS:
            members = listing.members[split]
            npy = tmp / f"{split}_images.npy"
            np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8,
                                      shape=(len(members), 3, image_size, image_size)).flush()
            tasks += [(split, (zip_path, npy, members, lo, min(lo + chunk, len(members)), image_size, max_image_bytes))
                      for lo in range(0, len(members), chunk)]
            if split in listing.labels:
                np.save(tmp / f"{split}_labels.npy", np.asarray(listing.labels[split], dtype=np.int64))
        pool = None
        try:
            if workers == 1 or len(tasks) <= 1:
                results = ((split, _decode_chunk(*args)) for split, args in tasks)
            else:
                pool = _DecodeWorkers(min(workers, len(tasks)), tasks)
                results = pool.results()
            for split, (part_sum, part_counts, n) in results:
                sums[split] += part_sum
                for mode, k in part_counts.items():
                    counts[mode] = counts.get(mode, 0) + k
                bar.update(n)
        except BaseException:
            if pool is not None:
                pool.kill()  # now, and before atomic_path removes the folder they write into
            raise
        finally:
            if pool is not None:
                pool.close()
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
