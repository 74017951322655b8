"""Fetch one file over HTTP(S) (or from a local path) safely.

Streams into ``<dest>.part`` and renames into place only once the bytes are complete and (when a
checksum is given) verified. Used for the dataset zip, pretrained weights and user-supplied images.

- Resume: the sidecar ``<dest>.part.json`` ties the partial bytes to their source (a sha256 of the
  URL, never the URL itself, which may hold a secret, and the server's ETag or Last-Modified). An
  interrupted transfer resumes with ``Range`` + ``If-Range`` only for the same URL and the same
  version of the file; anything else restarts from zero, so two sources are never spliced.
- Retries: transient failures (resets, timeouts, 5xx, a body shorter than its Content-Length, a
  transfer slower than ``min_rate``) are retried with exponential backoff, all within one overall
  ``deadline``, which is final.
- Secrets: ``user:password@`` in the URL becomes HTTP basic auth (never sent on to a redirect
  target); URLs in messages and logs go through ``pipeline.redaction.redact``.
- Untrusted inputs: ``max_bytes`` caps the size, announced or streamed.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import ConfigError, DownloadError
from pipeline.redaction import redact

log = logging.getLogger(__name__)

USER_AGENT = "pipeline-fetch/0.1"
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 in hex (64 characters, either case)."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


class _Transient(Exception):
    """A failure worth retrying (connection reset, timeout, 5xx, short body, too slow)."""


class _Deadline(Exception):
    """The overall deadline passed: final, never retried."""


class _TooLarge(Exception):
    """More than ``max_bytes`` announced or received: final, nothing is kept."""


class _Limits:
    """The clock and the caps of one ``fetch``, shared by all its attempts."""

    def __init__(self, deadline: float | None, min_rate: float, window: float, max_bytes: int | None):
        self.deadline, self.min_rate, self.window, self.max_bytes = deadline, min_rate, window, max_bytes
        self.ends = None if deadline is None else time.monotonic() + deadline

    def left(self) -> float:
        return float("inf") if self.ends is None else self.ends - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise _Deadline()

    def socket_timeout(self, timeout: float) -> float:
        """The per-read timeout, shortened so that a stalled read cannot outlive the deadline by much."""
        return max(min(timeout, self.left()), 0.01)


def _num(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else str(int(value))


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 1.0,
    deadline: float | None = 7200.0,
    min_rate: float = 1024.0,
    max_bytes: int | None = None,
    chunk_size: int = 1 << 20,
    progress: bool | None = None,
) -> str:
    """Download ``url`` to ``dest`` and return the file's sha256 (hex).

    ``url`` may be http(s)://, file:// or a plain local path (for offline mirrors and files
    pulled with DVC). ``timeout`` bounds each connect/read and is the window over which the
    transfer must average at least ``min_rate`` bytes/s (0 disables); ``deadline`` (seconds,
    None for none) bounds the whole download including retries; ``max_bytes`` refuses larger
    files (for untrusted URLs). ``progress=None`` shows a bar only on a terminal.
    """
    if sha256 is not None and sha256 != "" and not is_sha256(sha256):
        raise ConfigError(f"expected sha256 {sha256!r} is not 64 hexadecimal characters")
    if (retries < 0 or timeout <= 0 or backoff < 0 or (deadline is not None and deadline <= 0) or min_rate < 0
            or (max_bytes is not None and max_bytes < 0)):
        raise DownloadError(f"bad download settings: retries={retries}, timeout={timeout}, backoff={backoff}, "
                            f"deadline={deadline}, min_rate={min_rate}, max_bytes={max_bytes}")
    shown = redact(url)
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError:  # e.g. an invalid IPv6 host
        raise DownloadError(f"malformed URL {shown}") from None
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    limits = _Limits(deadline, min_rate, timeout, max_bytes)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if scheme in ("http", "https"):
            _http_download(url, part, retries=retries, timeout=timeout, backoff=backoff,
                           chunk_size=chunk_size, progress=progress, limits=limits)
        elif scheme in ("", "file"):
            _copy_local(url, part, chunk_size=chunk_size, progress=progress, max_bytes=max_bytes)
        else:
            raise DownloadError(f"unsupported URL scheme {scheme!r} in {shown} (use http, https, file or a path)")
    except OSError as exc:  # local copy or writing the .part file (disk full, permissions)
        raise DownloadError(redact(f"download of {shown} to {part} failed: {exc}")) from None
    except _TooLarge:
        _discard(part)
        raise DownloadError(f"{shown} is larger than the limit of {max_bytes} bytes (nothing kept)") from None
    except KeyboardInterrupt:
        log.warning("interrupted; the partial file %s is kept so the next run resumes", part)
        raise
    digest = sha256_file(part)
    if sha256 and digest.lower() != sha256.lower():
        _discard(part)
        raise DownloadError(f"sha256 mismatch for {shown}: expected {sha256.lower()}, got {digest} (file discarded)")
    os.replace(part, dest)
    _sidecar(part).unlink(missing_ok=True)
    return digest


def _copy_local(url: str, part: Path, *, chunk_size: int, progress: bool | None, max_bytes: int | None) -> None:
    _discard(part)  # a local copy never resumes; an old sidecar must not vouch for these bytes
    src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path)) if url.startswith("file:") else Path(url)
    if not src.is_file():
        raise DownloadError(f"source file not found: {src}")
    size = src.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise _TooLarge()
    done = 0
    with open(src, "rb") as fin, open(part, "wb") as fout, _bar(size, 0, src.name, progress) as bar:
        while block := fin.read(chunk_size):
            done += len(block)
            if max_bytes is not None and done > max_bytes:  # the file grew while we read it
                raise _TooLarge()
            fout.write(block)
            bar.update(len(block))


def _bar(total: int | None, initial: int, desc: str, progress: bool | None) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if progress is None else not progress, leave=False)


# --------------------------------------------------------------------------- partial file + sidecar

def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)


def _validator(headers) -> str | None:
    """What identifies this version of the file for ``If-Range``: a strong ETag, else Last-Modified
    (a weak ETag never matches in If-Range, so it would make every resume restart)."""
    etag = (headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return (headers.get("Last-Modified") or "").strip() or None


def _resume_point(part: Path, url: str) -> tuple[int, str | None]:
    """(bytes to keep, their validator); (0, None) after discarding bytes that cannot be tied to
    ``url`` and a version of its file (no or foreign sidecar, no validator)."""
    have = part.stat().st_size if part.exists() else 0
    try:
        state = json.loads(_sidecar(part).read_text())
    except (OSError, ValueError):
        state = None
    if have and isinstance(state, dict) and state.get("url_sha256") == _url_key(url):
        validator = state.get("validator")
        if isinstance(validator, str) and validator:
            return have, validator
    if have:
        log.warning("discarding %d bytes in %s: they cannot be tied to this URL and file version; restarting",
                    have, part.name)
    _discard(part)
    return 0, None


# --------------------------------------------------------------------------- HTTP

def _credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its userinfo, and the basic-auth ``Authorization`` value it stands for
    (urllib would take ``user:pass@host`` for the host name, and print it in its errors)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode("utf-8")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), "Basic " + base64.b64encode(token).decode("ascii")


def _http_download(url: str, part: Path, *, retries: int, timeout: float, backoff: float,
                   chunk_size: int, progress: bool | None, limits: _Limits) -> None:
    shown = redact(url)
    target, auth = _credentials(url)

    def kept() -> str:
        return f" ({part.stat().st_size} bytes kept in {part.name} to resume)" if part.exists() else ""

    def too_late(reason: str) -> DownloadError:
        return DownloadError(f"download of {shown} exceeded the {_num(limits.deadline)} s deadline"
                             f"{' (' + reason + ')' if reason else ''}{kept()}")

    attempt = 0
    while True:
        try:
            limits.check()
            _http_attempt(url, target, auth, part, timeout=timeout, chunk_size=chunk_size, progress=progress,
                          limits=limits)
            return
        except _Deadline:
            raise too_late("") from None
        except (_Transient, http.client.HTTPException, OSError) as exc:  # URLError, SSL, resets, timeouts
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()
                if exc.code not in _TRANSIENT_HTTP:
                    _discard(part)
                    raise DownloadError(redact(f"HTTP {exc.code} {exc.reason} for {shown}")) from None
            reason = " ".join(redact(_describe(exc)).split())[:300]
            if limits.left() <= 0:
                raise too_late(f"last error: {reason}") from None
            if attempt >= retries:
                raise DownloadError(
                    f"download of {shown} failed after {attempt + 1} attempts: {reason}{kept()}") from None
            delay = backoff * 2**attempt
            if delay >= limits.left():
                raise too_late(f"last error: {reason}") from None
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
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed early ({exc!r})"
    return str(exc) or type(exc).__name__


def _content_length(headers) -> int | None:
    value = (headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None  # malformed = unknown


def _http_attempt(url: str, target: str, auth: str | None, part: Path, *, timeout: float, chunk_size: int,
                  progress: bool | None, limits: _Limits) -> None:
    """One request; returns once ``part`` holds the complete body, raises otherwise."""
    have, validator = _resume_point(part, url)
    request = urllib.request.Request(target, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if auth:
        request.add_unredirected_header("Authorization", auth)  # never sent on to another host
    if have:
        request.add_header("Range", f"bytes={have}-")
        request.add_header("If-Range", validator)  # a changed file comes back whole (200), not spliced
    try:
        response = urllib.request.urlopen(request, timeout=limits.socket_timeout(timeout))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # Range not satisfiable for this version: either we already hold everything, or the part is stale.
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            exc.close()
            if total == have:
                return
            _discard(part)
            raise _Transient("server refused to resume; restarting from zero") from None
        raise
    with response:
        status, headers = response.status, response.headers
        length = _content_length(headers)
        if status == 206 and have:
            start = _start_from_content_range(headers.get("Content-Range"))
            now = _validator(headers)
            if start != have:
                _discard(part)
                raise _Transient(f"server resumed at byte {start}, expected {have}; restarting from zero")
            if now is not None and now != validator:  # a server that ignores If-Range
                _discard(part)
                raise _Transient("the file changed since the partial download; restarting from zero")
            mode, done = "ab", have
        elif status == 200:
            if have:
                log.warning("server sent the whole file instead of resuming at byte %d (range ignored or file "
                            "changed); restarting from zero", have)
            mode, done = "wb", 0
        else:
            raise _Transient(f"unexpected HTTP status {status}")
        expected = None if length is None else done + length
        if limits.max_bytes is not None and expected is not None and expected > limits.max_bytes:
            raise _TooLarge()
        if mode == "wb":
            _discard(part)
            _sidecar(part).write_text(json.dumps({"url_sha256": _url_key(url), "validator": _validator(headers)}))
        name = redact(Path(urllib.parse.urlsplit(target).path).name)
        with open(part, mode) as out, _bar(expected, done, name, progress) as bar:
            window_start, window_done = time.monotonic(), done
            # read1: return what one recv brings, so a trickle cannot hide inside one long read
            while block := response.read1(chunk_size):
                out.write(block)
                done += len(block)
                bar.update(len(block))
                if limits.max_bytes is not None and done > limits.max_bytes:
                    raise _TooLarge()
                limits.check()
                clock = time.monotonic()
                if limits.min_rate and clock - window_start >= limits.window:
                    if (done - window_done) / (clock - window_start) < limits.min_rate:
                        raise _Transient(f"slower than {_num(limits.min_rate)} B/s for {_num(limits.window)} s")
                    window_start, window_done = clock, done
        # Without Content-Length the body ends when the connection closes cleanly (a reset raises).
        if expected is not None and done < expected:
            raise _Transient(f"connection closed after {done} of {expected} bytes")


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
