"""Atomic file output: a reader never sees a half-written file under its final name."""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it into place.

    On any exception (Ctrl-C and SIGTERM included) the temporary file or folder is removed and
    ``path`` is left as it was, so a crash never leaves something that looks valid. A process
    killed outright (SIGKILL, power loss) cannot clean up; its temporaries carry its PID, and the
    next write of the same ``path`` removes them once that process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    prefix = f".{path.name}.{os.getpid()}."
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _apply_umask(tmp, is_dir)
        if is_dir:
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=path.parent))
                path.rename(old / "previous")
                try:
                    tmp.rename(path)
                except BaseException:
                    (old / "previous").rename(path)
                    raise
                finally:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale(path: Path) -> list[Path]:
    """Remove the temporaries ``atomic_path`` left beside ``path`` in processes that no longer run
    (``.<name>.<pid>.<random>.tmp`` / ``.old``); those of a live process (a parallel sweep) stay."""
    removed = []
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
        rest = stale.name[len(path.name) + 2:]
        pid, _, tail = rest.partition(".")
        if not (pid.isdigit() and tail.endswith((".tmp", ".old"))) or process_alive(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _apply_umask(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give outputs the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if is_dir else 0o666) & ~umask)


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically; NaN and infinities become ``null`` (JSON has no
    NaN, and DVC, browsers and ``jq`` reject Python's bare ``NaN``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def finite(value):
    """``value`` with every non-finite float (nested too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rows (dicts with the same keys) as a CSV file with a header, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
