"""Downloads against a loopback server: resume, retries, checksums, clear errors, nothing half-written."""

import hashlib
import os

import pytest
from conftest import Route

from pipeline.errors import DownloadError
from pipeline.data.fetch import fetch, redact


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_downloads_and_returns_sha256(http_server, tmp_path):
    body = os.urandom(300_000)
    http_server.add("/f.bin", Route(body))
    digest = fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert digest == hashlib.sha256(body).hexdigest()
    assert leftovers(tmp_path) == ["f.bin"]


def test_cut_transfer_resumes_with_range(http_server, tmp_path):
    body = os.urandom(500_000)
    route = http_server.add("/f.bin", Route(body, cut_at=123_456, cuts=2))
    digest = fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=3, backoff=0.01, chunk_size=4096,
                   sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert digest == hashlib.sha256(body).hexdigest()
    # first request from zero, then resumed twice from where each cut left off
    assert [r["range"] for r in route.requests] == [None, "bytes=123456-", "bytes=246912-"]


def test_partial_file_from_an_interrupted_run_is_resumed(http_server, tmp_path):
    body = os.urandom(200_000)
    route = http_server.add("/f.bin", Route(body))
    (tmp_path / "f.bin.part").write_bytes(body[:50_000])
    fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert route.requests[0]["range"] == "bytes=50000-"


def test_server_without_range_support_restarts_cleanly(http_server, tmp_path):
    body = os.urandom(100_000)
    http_server.add("/f.bin", Route(body, ranges=False))
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that must not survive")
    fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body


def test_checksum_mismatch_leaves_nothing(http_server, tmp_path):
    http_server.add("/f.bin", Route(b"payload"))
    with pytest.raises(DownloadError, match="sha256 mismatch.*expected 0+, got"):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", sha256="0" * 64, progress=False)
    assert leftovers(tmp_path) == []


def test_404_is_one_clear_error_without_retries(http_server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404 .* for http://127\.0\.0\.1:\d+/missing\.zip"):
        fetch(f"{http_server.url}/missing.zip", tmp_path / "x.zip", retries=3, backoff=5, progress=False)
    assert leftovers(tmp_path) == []


def test_server_errors_are_retried(http_server, tmp_path):
    route = http_server.add("/f.bin", Route(status=503))
    with pytest.raises(DownloadError, match="failed after 3 attempts: HTTP 503"):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=2, backoff=0.01, progress=False)
    assert len(route.requests) == 3
    assert leftovers(tmp_path) == []


def test_timeout_is_reported(http_server, tmp_path):
    http_server.add("/slow.bin", Route(b"x" * 10, delay=1.5))
    with pytest.raises(DownloadError, match="timed out"):
        fetch(f"{http_server.url}/slow.bin", tmp_path / "slow.bin", retries=0, timeout=0.3, progress=False)
    assert not (tmp_path / "slow.bin").exists()


def test_unreachable_host(tmp_path):
    with pytest.raises(DownloadError, match="failed after 1 attempts"):
        fetch("http://127.0.0.1:9/none.zip", tmp_path / "x.zip", retries=0, progress=False)


def test_local_paths_and_file_urls(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)
    fetch(str(src), tmp_path / "a.bin", progress=False)
    fetch(src.as_uri(), tmp_path / "b.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes() == src.read_bytes()
    with pytest.raises(DownloadError, match="not found"):
        fetch(str(tmp_path / "nope.bin"), tmp_path / "c.bin", progress=False)


def test_bad_settings_and_schemes(tmp_path):
    with pytest.raises(DownloadError, match="bad download settings"):
        fetch("http://127.0.0.1/x", tmp_path / "x", retries=-1)
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        fetch("ftp://127.0.0.1/x", tmp_path / "x")


def test_credentials_never_appear_in_messages():
    assert redact("https://user:s3cret@example.org:8443/a.zip") == "https://example.org:8443/a.zip"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
