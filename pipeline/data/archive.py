"""Safe reading of dataset zips in the TinyImageNet layout.

``<root>/wnids.txt``, ``<root>/words.txt``, ``<root>/train/<wnid>/images/*.JPEG``,
``<root>/val/images/*.JPEG`` with ``<root>/val/val_annotations.txt``, ``<root>/test/images/*.JPEG``.
Archives come from the network, so member names and sizes are checked before anything is
read or written (zip-slip, zip bombs). Nothing is loaded into memory whole without a limit:
members are copied in streams, and the few read into memory (``read_member``: text files, one
image) stop at a per-member cap however large the member claims or turns out to be.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import zipfile
import zlib
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from pipeline.errors import DataError
from pipeline.files import atomic_path

# Defaults of conf/data/*.yaml `prepare:`. Uncompressed sizes: the real 100-A zip holds 121 MB
# (words.txt, the largest text, 2.6 MB; images ~2 KB each), the 200-class one about twice that.
DEFAULT_MAX_TOTAL_BYTES = 1 << 30
DEFAULT_MAX_IMAGE_BYTES = 16 << 20
DEFAULT_MAX_TEXT_BYTES = 64 << 20
DEFAULT_MAX_MEMBERS = 500_000


def open_checked(path: str | os.PathLike, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS) -> zipfile.ZipFile:
    """Open a zip after rejecting unsafe or oversized members; the caller closes it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (run the download stage first)")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a valid zip archive ({exc}); it may be truncated or not a zip at all") from None
    try:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise DataError(f"{path}: {len(infos)} members exceeds the limit of {max_members}")
        total = 0
        for info in infos:
            check_member_name(info.filename, archive=path)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"{path}: member {info.filename!r} is a symbolic link; refusing the archive")
            total += info.file_size
            if total > max_total_bytes:
                raise DataError(f"{path}: uncompressed size exceeds the limit of {max_total_bytes} bytes at member "
                                f"{info.filename} ({info.file_size} bytes; set data.prepare.max_total_bytes "
                                "to allow more)")
    except BaseException:
        zf.close()
        raise
    return zf


def check_member_name(name: str, *, archive: os.PathLike | str = "archive") -> None:
    """Reject names that would escape the extraction folder."""
    if not name or "\x00" in name:
        raise DataError(f"{archive}: member with an empty or NUL-containing name")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise DataError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    if ".." in normalized.split("/"):
        raise DataError(f"{archive}: member {name!r} contains '..'; refusing the archive")


def find_root(zf: zipfile.ZipFile) -> str:
    """The folder prefix (``'tiny-imagenet-100-A/'`` or ``''``) that holds ``wnids.txt``."""
    roots = sorted({name[: -len("wnids.txt")] for name in zf.namelist()
                    if posixpath.basename(name) == "wnids.txt" and name.count("/") <= 1})
    if len(roots) != 1:
        found = "none" if not roots else ", ".join(repr(r + "wnids.txt") for r in roots)
        raise DataError(f"{zf.filename}: expected exactly one top-level wnids.txt, found {found}; "
                        "is this a TinyImageNet-style zip?")
    return roots[0]


# What reading a broken, encrypted or exotically compressed member raises.
MEMBER_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError)


@contextlib.contextmanager
def member_errors(archive_path, name: str):
    """Turn a failure to read one member into a DataError that names it."""
    try:
        yield
    except MEMBER_ERRORS as exc:
        raise DataError(f"{archive_path}: member {name} cannot be read ({exc})") from None


def read_member(zf: zipfile.ZipFile, name: str, limit: int, key: str,
                inspect: Callable[[bytearray], None] | None = None) -> bytearray:
    """The bytes of member ``name``, refused with a DataError naming ``key`` (the config key of
    ``limit``) when it holds more than ``limit`` bytes.

    At most ``limit + 1`` bytes are ever decompressed, in 1 MiB pieces into one buffer, so
    neither a header that lies about the size nor a member of a few GB can exhaust memory.
    ``inspect`` sees the first piece before the rest is read, to refuse a member by its header.
    The result is writable, for ``torch.frombuffer`` without a copy. Read errors propagate
    (KeyError, ``MEMBER_ERRORS``) for the caller to name.
    """
    info = zf.getinfo(name)
    if info.file_size > limit:  # the honest case, refused without reading
        raise DataError(f"{zf.filename}: member {name} is {info.file_size} bytes, more than the limit of {limit} "
                        f"({key})")
    data = bytearray()
    with zf.open(info) as src:
        while len(data) <= limit:
            piece = src.read(min(1 << 20, limit + 1 - len(data)))
            if not piece:
                break
            data += piece
            if inspect is not None and len(data) == len(piece):
                inspect(data)
    if len(data) > limit:
        raise DataError(f"{zf.filename}: member {name} holds more than the limit of {limit} bytes ({key}; "
                        f"its header claims {info.file_size})")
    return data


def read_text(zf: zipfile.ZipFile, name: str, *, limit: int = DEFAULT_MAX_TEXT_BYTES) -> str:
    """A UTF-8 text member (wnids.txt, words.txt, val_annotations.txt), capped at ``limit`` bytes."""
    try:
        return read_member(zf, name, limit, "data.prepare.max_text_bytes").decode("utf-8")
    except KeyError:
        raise DataError(f"{zf.filename}: missing {name}") from None
    except (*MEMBER_ERRORS, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{zf.filename}: cannot read {name}: {exc}") from None


def extract(path: str | os.PathLike, dest: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """Extract a checked zip into ``dest`` (streamed member by member, atomically as a whole)."""
    dest = Path(dest)
    with open_checked(path) as zf, atomic_path(dest, is_dir=True) as tmp:
        for info in tqdm(zf.infolist(), desc="extract", unit="file", disable=None if progress is None else not progress,
                         leave=False):
            target = tmp / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with member_errors(path, info.filename), zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest


def derive_subset(src: str | os.PathLike, dest: str | os.PathLike, wnids: list[str], *, root_name: str,
                  progress: bool | None = None) -> dict:
    """Write a TinyImageNet-layout zip holding only ``wnids`` from a larger one (e.g. 200 -> 100-A).

    File names are kept, so ``val_1.JPEG`` is the same image in both. Test images carry no
    labels and cannot be filtered, so all of them are kept.
    """
    wanted = list(wnids)
    if len(set(wanted)) != len(wanted) or not wanted:
        raise DataError("derive_subset: wnids must be a non-empty list without duplicates")
    with open_checked(src) as zf:
        root = find_root(zf)
        available = read_text(zf, root + "wnids.txt").split()
        missing = [w for w in wanted if w not in available]
        if missing:
            raise DataError(f"{src}: the source zip lacks {len(missing)} of the requested wnids, e.g. {missing[:5]}")
        keep = set(wanted)
        annotations = read_text(zf, root + "val/val_annotations.txt").splitlines()
        val_lines = [line for line in annotations if line.split("\t")[1:2] and line.split("\t")[1] in keep]
        val_files = {line.split("\t")[0] for line in val_lines}
        out_root = root_name.rstrip("/") + "/"
        counts = {"train": 0, "val": 0, "test": 0}
        with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w") as out:
            # Fixed timestamps: the same inputs give the same bytes (and sha256) on every run.
            stamp = (1980, 1, 1, 0, 0, 0)
            out.writestr(zipfile.ZipInfo(out_root + "wnids.txt", stamp), "".join(w + "\n" for w in wanted))
            out.writestr(zipfile.ZipInfo(out_root + "val/val_annotations.txt", stamp),
                         "".join(line + "\n" for line in val_lines), compress_type=zipfile.ZIP_DEFLATED)
            members = tqdm(zf.infolist(), desc="derive", unit="file", leave=False,
                           disable=None if progress is None else not progress)
            for info in members:
                if not info.filename.startswith(root):
                    continue  # outside the dataset folder
                rel = info.filename[len(root):]
                parts = rel.split("/")
                if rel == "words.txt":
                    split = None
                elif parts[0] == "train" and len(parts) > 1 and parts[1] in keep:
                    split = "train"
                elif parts[:2] == ["val", "images"] and parts[-1] in val_files:
                    split = "val"
                elif parts[:2] == ["test", "images"]:
                    split = "test"
                else:
                    continue
                if info.is_dir():
                    continue
                with member_errors(src, info.filename), zf.open(info) as fin, \
                        out.open(_copy_info(info, out_root + rel), "w") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                if split and rel.endswith(".JPEG"):
                    counts[split] += 1
    return counts


def _copy_info(info: zipfile.ZipInfo, name: str) -> zipfile.ZipInfo:
    new = zipfile.ZipInfo(name, date_time=info.date_time)
    new.compress_type = info.compress_type
    new.external_attr = info.external_attr
    new.file_size = info.file_size
    return new
