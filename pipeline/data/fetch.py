"""Fetch one file over HTTP(S) (or from a local path) safely.

Streams into ``<dest>.part``, resumes an interrupted transfer with an HTTP Range request,
retries transient failures with exponential backoff, and renames into place only once the
bytes are complete and (when a checksum is given) verified. Used for the dataset zip and
for pretrained weights.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import DownloadError

log = logging.getLogger(__name__)

USER_AGENT = "pipeline-fetch/0.1"
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def redact(url: str) -> str:
    """The URL without any ``user:password@`` part, fit for logs and error messages.

    Also accepts text with a URL inside (``data.url=https://u:p@host/x``).
    """
    if "://" in url and not url.split("://", 1)[0].isalnum():
        head, sep, rest = url.partition("=")
        if sep and "://" in rest:
            return head + sep + redact(rest)
    parts = urllib.parse.urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


class _Transient(Exception):
    """A failure worth retrying (connection reset, timeout, 5xx, short body)."""


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 1.0,
    chunk_size: int = 1 << 20,
    progress: bool | None = None,
) -> str:
    """Download ``url`` to ``dest`` and return the file's sha256 (hex).

    ``url`` may be http(s)://, file:// or a plain local path (for offline mirrors and files
    pulled with DVC). ``progress=None`` shows a bar only on a terminal.
    """
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise DownloadError(f"bad download settings: retries={retries}, timeout={timeout}, backoff={backoff}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shown = redact(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    try:
        if scheme in ("http", "https"):
            _http_download(url, part, retries=retries, timeout=timeout, backoff=backoff,
                           chunk_size=chunk_size, progress=progress)
        elif scheme in ("", "file"):
            _copy_local(url, part, chunk_size=chunk_size, progress=progress)
        else:
            raise DownloadError(f"unsupported URL scheme {scheme!r} in {shown} (use http, https, file or a path)")
    except OSError as exc:  # local copy or writing the .part file (disk full, permissions)
        raise DownloadError(f"download of {shown} to {part} failed: {exc}") from None
    except KeyboardInterrupt:
        log.warning("interrupted; the partial file %s is kept so the next run resumes", part)
        raise
    digest = sha256_file(part)
    if sha256 and digest.lower() != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"sha256 mismatch for {shown}: expected {sha256.lower()}, got {digest} (file discarded)")
    os.replace(part, dest)
    return digest


def _copy_local(url: str, part: Path, *, chunk_size: int, progress: bool | None) -> None:
    src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path)) if url.startswith("file:") else Path(url)
    if not src.is_file():
        raise DownloadError(f"source file not found: {src}")
    with open(src, "rb") as fin, open(part, "wb") as fout, _bar(src.stat().st_size, 0, src.name, progress) as bar:
        while block := fin.read(chunk_size):
            fout.write(block)
            bar.update(len(block))


def _bar(total: int | None, initial: int, desc: str, progress: bool | None) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if progress is None else not progress, leave=False)


def _http_download(url: str, part: Path, *, retries: int, timeout: float, backoff: float,
                   chunk_size: int, progress: bool | None) -> None:
    shown = redact(url)
    attempt = 0
    while True:
        try:
            if _http_attempt(url, part, timeout=timeout, chunk_size=chunk_size, progress=progress):
                return
            raise _Transient("connection closed before the whole body arrived")
        except (_Transient, http.client.HTTPException, OSError) as exc:  # URLError, SSL, resets, timeouts
            if isinstance(exc, urllib.error.HTTPError) and exc.code not in _TRANSIENT_HTTP:
                part.unlink(missing_ok=True)
                raise DownloadError(f"HTTP {exc.code} {exc.reason} for {shown}") from None
            reason = _describe(exc)
            if attempt >= retries:
                raise DownloadError(
                    f"download of {shown} failed after {attempt + 1} attempts: {reason}"
                    + (f" ({part.stat().st_size} bytes kept in {part.name} to resume)" if part.exists() else "")
                ) from None
            delay = backoff * 2**attempt
            log.warning("download of %s: %s; retry %d/%d in %.1fs", shown, reason, attempt + 1, retries, delay)
            time.sleep(delay)
            attempt += 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return "timed out"
        return str(getattr(exc, "strerror", None) or exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__


def _http_attempt(url: str, part: Path, *, timeout: float, chunk_size: int, progress: bool | None) -> bool:
    """One request; returns True when ``part`` holds the complete body."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # Range not satisfiable: either we already hold everything, or the part is stale.
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == have:
                return True
            part.unlink(missing_ok=True)
            raise _Transient("server refused to resume; restarting from zero") from None
        raise
    with response:
        status = response.status
        if status == 206:
            start = _start_from_content_range(response.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start}, expected {have}; restarting")
            mode, done = "ab", have
        elif status == 200:
            mode, done = "wb", 0  # no resume support, or a fresh start
        else:
            raise _Transient(f"unexpected HTTP status {status}")
        length = response.headers.get("Content-Length", "")
        expected = done + int(length) if length.strip().isdigit() else None  # malformed = unknown
        with open(part, mode) as out, _bar(expected, done, Path(urllib.parse.urlsplit(url).path).name, progress) as bar:
            while block := response.read(chunk_size):
                out.write(block)
                done += len(block)
                bar.update(len(block))
        return expected is None or done >= expected


def _start_from_content_range(value: str | None) -> int:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return -1


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes */200"
    try:
        return int(value.rsplit("/", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return None

