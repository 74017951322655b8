"""Downloads against loopback servers: resume, retries, checksums, clear errors, nothing half-written,
no spliced sources, no secrets in messages, no endless or trickling transfers."""

import hashlib
import json
import logging
import os
import time

import pytest
from conftest import Route
from omegaconf import OmegaConf

from pipeline.data import fetch as fetch_module
from pipeline.errors import ConfigError, DownloadError
from pipeline.data.fetch import fetch
from pipeline.redaction import redact


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_downloads_and_returns_sha256(http_server, tmp_path):
    body = os.urandom(300_000)
    http_server.add("/f.bin", Route(body))
    digest = fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert digest == hashlib.sha256(body).hexdigest()
    assert leftovers(tmp_path) == ["f.bin"]


def test_cut_transfer_resumes_with_range(http_server, tmp_path):
    body = os.urandom(500_000)
    route = http_server.add("/f.bin", Route(body, etag='"v1"', cut_at=123_456, cuts=2))
    digest = fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=3, backoff=0.01, chunk_size=4096,
                   sha256=sha(body), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert digest == sha(body)
    # first request from zero, then resumed twice from where each cut left off, for the same version only
    assert [r["range"] for r in route.requests] == [None, "bytes=123456-", "bytes=246912-"]
    assert [r["if_range"] for r in route.requests] == [None, '"v1"', '"v1"']
    assert leftovers(tmp_path) == ["f.bin"]  # the sidecar goes with the .part


def test_cut_transfer_without_a_validator_restarts_from_zero(http_server, tmp_path):
    """Without ETag / Last-Modified nothing proves the next response is the same file: no Range."""
    body = os.urandom(200_000)
    route = http_server.add("/f.bin", Route(body, cut_at=50_000, cuts=2))
    fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=2, backoff=0.01, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert [r["range"] for r in route.requests] == [None, None, None]


@pytest.mark.parametrize("validator", [{"etag": '"abc"'}, {"last_modified": "Wed, 21 Oct 2015 07:28:00 GMT"},
                                       {"etag": 'W/"weak"', "last_modified": "Wed, 21 Oct 2015 07:28:00 GMT"}],
                         ids=["etag", "last-modified", "weak-etag"])
def test_partial_file_from_an_interrupted_run_is_resumed(http_server, tmp_path, validator):
    body = os.urandom(200_000)
    route = http_server.add("/f.bin", Route(body, cut_at=50_000, cuts=1, **validator))
    with pytest.raises(DownloadError, match="50000 bytes kept in f.bin.part to resume"):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=0, progress=False)
    assert leftovers(tmp_path) == ["f.bin.part", "f.bin.part.json"]
    fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert route.requests[1]["range"] == "bytes=50000-"
    assert route.requests[1]["if_range"] == (validator.get("etag", "").replace('W/"weak"', "")
                                             or validator["last_modified"])
    assert leftovers(tmp_path) == ["f.bin"]


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
    # fetch and download use pipeline.redaction.redact: userinfo and secret query values both go
    assert redact("https://user:s3cret@example.org:8443/a.zip") == "https://example.org:8443/a.zip"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    shown = redact("download of https://u:s3cret@example.org/a.zip?token=t0k&v=2 failed")
    assert "s3cret" not in shown and "t0k" not in shown and "example.org/a.zip" in shown and "v=2" in shown


# --------------------------------------------------------------------------- 1. basic auth from userinfo

PASSWORD = "p@ss w:rd"  # percent-encoded in the URL below


def test_userinfo_becomes_basic_auth(http_server, tmp_path, capsys):
    body = os.urandom(70_000)
    route = http_server.add("/f.bin", Route(body, auth=f"us er:{PASSWORD}"))
    host = http_server.url.split("://", 1)[1]
    fetch(f"http://us%20er:p%40ss%20w%3Ard@{host}/f.bin", tmp_path / "f.bin", retries=0, progress=True)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert len(route.requests) == 1
    assert "p@ss" not in capsys.readouterr().err  # progress bar


def test_wrong_password_fails_without_showing_it(http_server, tmp_path, caplog, capsys):
    http_server.add("/f.bin", Route(b"x", auth="user:right"))
    host = http_server.url.split("://", 1)[1]
    with caplog.at_level(logging.DEBUG), pytest.raises(DownloadError) as info:
        fetch(f"http://user:WRONGPW@{host}/f.bin?token=SECRETTOK", tmp_path / "f.bin", retries=2, backoff=0.01,
              progress=True)
    message = str(info.value)
    assert "HTTP 401" in message and f"{host}/f.bin" in message and "\n" not in message
    everything = message + caplog.text + "".join(capsys.readouterr())
    assert "WRONGPW" not in everything and "SECRETTOK" not in everything
    assert leftovers(tmp_path) == []


def test_credentials_are_not_forwarded_to_a_redirect_target(http_server, tmp_path):
    target = http_server.add("/real.bin", Route(b"payload"))
    http_server.add("/f.bin", Route(redirect=f"{http_server.url}/real.bin"))
    host = http_server.url.split("://", 1)[1]
    fetch(f"http://user:pw@{host}/f.bin", tmp_path / "f.bin", retries=0, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == b"payload"
    assert http_server.routes["/f.bin"].requests[0]["auth"] == "Basic dXNlcjpwdw=="
    assert target.requests[0]["auth"] is None


# --------------------------------------------------------------------------- 2. never splice two sources

def test_a_partial_file_of_another_url_is_not_resumed(http_server, tmp_path):
    a, b = os.urandom(300_000), os.urandom(300_000)
    http_server.add("/a.bin", Route(a, etag='"same"', cut_at=100_000, cuts=1))
    route_b = http_server.add("/b.bin", Route(b, etag='"same"'))
    with pytest.raises(DownloadError):
        fetch(f"{http_server.url}/a.bin", tmp_path / "f.bin", retries=0, progress=False)
    sidecar = (tmp_path / "f.bin.part.json").read_text()
    assert json.loads(sidecar)["url_sha256"] and "a.bin" not in sidecar and "127.0.0.1" not in sidecar
    digest = fetch(f"{http_server.url}/b.bin", tmp_path / "f.bin", progress=False)
    assert digest == sha(b) and (tmp_path / "f.bin").read_bytes() == b
    assert route_b.requests[0]["range"] is None
    assert leftovers(tmp_path) == ["f.bin"]


def test_server_that_ignores_range_restarts_from_zero(http_server, tmp_path):
    body = os.urandom(200_000)
    route = http_server.add("/f.bin", Route(body, etag='"v1"', ranges=False, cut_at=80_000, cuts=1))
    fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=1, backoff=0.01, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert route.requests[1]["range"] == "bytes=80000-"  # asked, answered 200 with the whole file


@pytest.mark.parametrize("honours_if_range", [True, False])
def test_file_changed_between_attempts_is_fetched_whole(http_server, tmp_path, honours_if_range):
    old, new = os.urandom(300_000), os.urandom(300_000)
    route = http_server.add("/f.bin", Route(old, etag='"v1"', if_range=honours_if_range, cut_at=100_000, cuts=1))
    with pytest.raises(DownloadError):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=0, progress=False)
    route.body, route.etag = new, '"v2"'
    digest = fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=1, backoff=0.01, progress=False)
    assert digest == sha(new) and (tmp_path / "f.bin").read_bytes() == new
    assert route.requests[1]["if_range"] == '"v1"'
    assert leftovers(tmp_path) == ["f.bin"]


def test_body_shorter_than_content_length_is_never_accepted(http_server, tmp_path):
    route = http_server.add("/f.bin", Route(os.urandom(100_000), etag='"v1"', cut_at=30_000, cuts=99))
    with pytest.raises(DownloadError, match="failed after 2 attempts: connection closed after 60000 of 100000 bytes"):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=1, backoff=0.01, progress=False)
    assert not (tmp_path / "f.bin").exists()
    assert route.requests[1]["range"] == "bytes=30000-"  # short both as a whole (200) and resumed (206)


def test_body_without_length_cut_by_a_reset_is_retried(http_server, tmp_path):
    body = os.urandom(300_000)
    route = http_server.add("/f.bin", Route(body, etag='"v1"', length=False, cut_at=100_000, cuts=1, reset=True))
    fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=1, backoff=0.01, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert len(route.requests) == 2


def test_interrupt_keeps_the_part_and_sidecar_for_the_next_run(http_server, tmp_path, monkeypatch):
    body = os.urandom(200_000)
    route = http_server.add("/f.bin", Route(body, etag='"v1"', trickle=(50_000, 0.05)))
    real_bar = fetch_module._bar

    def interrupting_bar(*args):
        bar = real_bar(*args)
        bar.update = lambda n: (_ for _ in ()).throw(KeyboardInterrupt())
        return bar

    monkeypatch.setattr(fetch_module, "_bar", interrupting_bar)
    with pytest.raises(KeyboardInterrupt):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", chunk_size=50_000, progress=False)
    assert leftovers(tmp_path) == ["f.bin.part", "f.bin.part.json"]
    monkeypatch.setattr(fetch_module, "_bar", real_bar)
    kept = (tmp_path / "f.bin.part").stat().st_size
    fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert kept > 0 and route.requests[1]["range"] == f"bytes={kept}-"


# --------------------------------------------------------------------------- 3. trickles and deadlines

def test_trickle_slower_than_min_rate_is_retried_then_fails(http_server, tmp_path):
    route = http_server.add("/f.bin", Route(os.urandom(100_000), etag='"v1"', trickle=(100, 0.5)))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"failed after 2 attempts: slower than 1000 B/s for 1 s \(\d+ bytes kept"):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=1, backoff=0.01, timeout=1, min_rate=1000,
              progress=False)
    assert time.monotonic() - start < 6
    assert len(route.requests) == 2 and route.requests[1]["range"]  # the second attempt resumed


def test_deadline_is_final(http_server, tmp_path):
    route = http_server.add("/f.bin", Route(os.urandom(100_000), trickle=(100, 0.2)))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"exceeded the 1\.5 s deadline"):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", retries=5, backoff=0.01, timeout=1, min_rate=0,
              deadline=1.5, progress=False)
    assert time.monotonic() - start < 4
    assert len(route.requests) == 1


# --------------------------------------------------------------------------- 4. checksum form

@pytest.mark.parametrize("bad", ["abc123", "g" * 64, "0" * 63, "0" * 65])
def test_malformed_sha256_is_refused_before_any_request(http_server, tmp_path, bad):
    route = http_server.add("/f.bin", Route(b"payload"))
    with pytest.raises(ConfigError, match=repr(bad)):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", sha256=bad, progress=False)
    assert route.requests == [] and leftovers(tmp_path) == []


def test_sha256_in_upper_case_is_accepted(http_server, tmp_path):
    http_server.add("/f.bin", Route(b"payload"))
    digest = fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", sha256=sha(b"payload").upper(), progress=False)
    assert digest == sha(b"payload")


def test_download_job_names_data_sha256(http_server, tmp_path):
    from pipeline.data.download import download_dataset

    route = http_server.add("/d.zip", Route(b"payload"))
    data = OmegaConf.create({"source": "tiny-imagenet-100-A", "url": f"{http_server.url}/d.zip", "sha256": "abc123",
                             "download": {"retries": 0, "timeout": 5, "backoff": 0.0, "deadline": 60, "min_rate": 0}})
    with pytest.raises(ConfigError, match=r"data\.sha256='abc123'"):
        download_dataset(data, tmp_path / "d.zip", progress=False)
    assert route.requests == []


# --------------------------------------------------------------------------- 5. byte cap

def test_endless_server_hits_the_byte_cap(http_server, tmp_path):
    http_server.add("/f.bin", Route(endless=True))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"f\.bin is larger than the limit of 1000000 bytes"):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", max_bytes=1_000_000, progress=False)
    assert time.monotonic() - start < 5
    assert leftovers(tmp_path) == []


def test_announced_size_over_the_cap_is_refused_before_streaming(http_server, tmp_path):
    route = http_server.add("/f.bin", Route(os.urandom(5000), etag='"v1"'))
    (tmp_path / "f.bin.part").write_bytes(b"old")
    with pytest.raises(DownloadError, match="larger than the limit of 4999 bytes"):
        fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", max_bytes=4999, retries=3, progress=False)
    assert len(route.requests) == 1 and leftovers(tmp_path) == []
    fetch(f"{http_server.url}/f.bin", tmp_path / "f.bin", max_bytes=5000, progress=False)  # exactly the cap is fine


def test_local_file_over_the_cap_is_refused(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 2000)
    with pytest.raises(DownloadError, match="larger than the limit of 1999 bytes"):
        fetch(src.as_uri(), tmp_path / "out" / "a.bin", max_bytes=1999, progress=False)
    assert leftovers(tmp_path / "out") == []


def test_new_settings_are_validated(tmp_path):
    for bad in ({"deadline": 0}, {"min_rate": -1}, {"max_bytes": -1}):
        with pytest.raises(DownloadError, match="bad download settings"):
            fetch("http://127.0.0.1/x", tmp_path / "x", **bad)
