"""Hostile and unlucky inputs, each run as a user would run it: a job in its own process.

Every case asserts the same five things: the exit code, exactly one ``<job>: error: ...`` line on
stderr that names the problem, no partial output (no metrics, no results, no ``*.tmp``), no
secret in any file the job wrote (Hydra's output folder and the MLflow store included), and no
process left behind.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import synthetic
from processes import processes_mentioning

REPO = Path(__file__).resolve().parents[1]
SECRETS = ("SECRETPW", "SECRETTOK", "SECRETSIG", "MIRRORPW")


def run_job(job: str, out: Path, *overrides: str, env: dict | None = None, timeout: float = 180,
            files: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline.<job>`` with every output (Hydra's folder too) under ``out``."""
    paths = [f"hydra.run.dir={out}/hydra", f"tracking.uri=sqlite:///{out}/mlflow.db", f"paths.metrics={out}/metrics",
             f"paths.results={out}/results", f"paths.plots={out}/plots", f"paths.checkpoints={out}/checkpoints",
             f"paths.raw_zip={out}/raw/dataset.zip", "progress=false"]
    if files:
        paths += [f"paths.prepared={files['prepared']}", f"paths.classifier={files['classifier']}"]
    else:
        paths.append(f"paths.prepared={out}/prepared")
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", f"pipeline.{job}", *paths, *overrides], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess, job: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{job}: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def leftovers(out: Path) -> list[Path]:
    """Temporary outputs anywhere under ``out``."""
    return [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old", ".part"))]


def secrets_in(out: Path) -> list[str]:
    found = []
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(out)}: {s}" for s in SECRETS if s.encode() in data]
    return found


# --------------------------------------------------------------------------- servers for the cases

class Endless(http.server.BaseHTTPRequestHandler):
    """Streams zeros forever (no Content-Length), like a misconfigured or malicious server."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        block = b"\0" * 65536
        try:
            while True:
                self.wfile.write(block)
        except OSError:
            pass


class NotMlflow(http.server.BaseHTTPRequestHandler):
    """Answers every request with 200 and an 84 KB HTML page (a web server that is not MLflow)."""

    def log_message(self, *args):
        pass

    def _page(self):
        body = ("<html><body>" + "<p>Welcome to a web server that is not MLflow</p>\n" * 1700 + "</body></html>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._page()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._page()


@pytest.fixture
def serve():
    """Start a loopback server with a handler class; returns its base URL."""
    servers = []

    def start(handler) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- files for the cases

def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def zip_without(path: Path, source: Path, suffix: str) -> Path:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith(suffix):
                zout.writestr(info, zin.read(info))
    return path


def checkpoint_variant(path: Path, classifier: Path, change) -> Path:
    payload = torch.load(classifier, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def flip_bit(payload: dict) -> None:
    name = next(k for k, v in payload["state_dict"].items() if v.dtype == torch.float32 and v.numel() > 10)
    tensor = payload["state_dict"][name].clone()
    tensor.view(torch.int32).view(-1)[3] ^= 1 << 22
    payload["state_dict"][name] = tensor


def wrong_shapes(payload: dict) -> None:
    payload["arch"] = dict(payload["arch"], stem_width=payload["arch"]["stem_width"] * 2)
    payload.pop("state_dict_sha256", None)


# --------------------------------------------------------------------------- the table

@dataclass
class Case:
    id: str
    job: str
    overrides: tuple[str, ...]
    message: str  # a regex the error line must match
    needs: tuple[str, ...] = ()  # fixtures: subject, zip, endless, notmlflow, server404
    env: dict = field(default_factory=dict)
    code: int = 1


CASES = [
    # 6. config types, checked before any work
    Case("iterations-not-int", "class_viz", ("class_viz.iterations=abc",), r"class_viz\.iterations='abc': expected an integer",
         ("subject",)),
    Case("lr-not-number", "class_viz", ("class_viz.lr=fast",), r"class_viz\.lr='fast': expected a number", ("subject",)),
    Case("seed-not-int", "train", ("seed=abc",), r"seed='abc': expected an integer"),
    Case("retries-not-int", "download", ("data.download.retries=abc",), r"data\.download\.retries='abc': expected an integer"),
    # values of the right type but meaningless
    Case("negative-step", "class_viz", ("class_viz.lr=-1", "class_viz.classes=0"), r"step size \(lr\) must be > 0",
         ("subject",)),
    Case("unknown-class", "class_viz", ("class_viz.classes=no_such_class",), r"unknown class 'no_such_class'",
         ("subject",)),
    Case("unknown-layer", "inversion", ("inversion.layers=[no_such_layer]",), r"no_such_layer", ("subject",)),
    # 8. a malformed checksum is refused before any download
    Case("sha256-malformed", "download", ("data.sha256=abc123", "data.url={server404}/x.zip"), r"data\.sha256",
         ("server404",)),
    # 1. credentials in a URL that fails: the message names the problem, the secret is nowhere
    Case("secret-url-404", "download",
         ('data.url="http://user:SECRETPW@{server404_host}/missing.zip?token=SECRETTOK&X-Amz-Signature=SECRETSIG"',
          "data.download.retries=0"), r"HTTP 404", ("server404",), env={"CS231N_MIRROR": "http://m:MIRRORPW@127.0.0.1:9"}),
    # broken archives
    Case("truncated-zip", "prepare", (), r"not a valid zip", ("truncated",)),
    Case("no-val-annotations", "prepare", (), r"val_annotations\.txt", ("no_annotations",)),
    # 4. unbounded image inputs
    Case("endless-image-url", "inversion", ("inversion.image={endless}/picture.png", "images.max_bytes=1000000",
                                            "inversion.layers=[0]"),
         r"1000000", ("subject", "endless")),
    Case("decompression-bomb", "inversion", ("inversion.image={bomb}", "inversion.layers=[0]"),
         r"15000x15000 = 225000000 pixels, more than images\.max_pixels", ("subject", "bomb")),
    # 7 / 6. checkpoints: missing parts, wrong shapes, flipped bits
    Case("checkpoint-no-arch", "saliency", ("paths.classifier={no_arch}",), r"checkpoint lacks arch", ("subject",)),
    Case("checkpoint-wrong-shapes", "saliency", ("paths.classifier={wrong_shapes}",), r"weights do not fit the architecture",
         ("subject",)),
    Case("checkpoint-bit-flip", "saliency", ("paths.classifier={flipped}",), r"do not match the digest", ("subject",)),
    # 6 / 8. tracking stores that cannot be used
    Case("tracking-unreachable", "class_viz", ("tracking.uri=http://127.0.0.1:{closed}",),
         r"unreachable .*set tracking\.uri", ("subject",)),
    Case("tracking-not-mlflow", "class_viz", ("tracking.uri={notmlflow}",), r"cannot start an MLflow run",
         ("subject", "notmlflow")),
    Case("tracking-read-only-store", "class_viz", (), r"mlflow\.db is not writable", ("subject", "readonly_db")),
]


def make_read_only(path: Path) -> bool:
    """chmod for a normal user, the immutable flag for root (who ignores permissions); False if neither holds."""
    path.chmod(0o444)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    return not os.access(path, os.W_OK)


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o644)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case, tmp_path, subject_files, http_server, serve):
    from conftest import Route

    out = tmp_path / "out"
    out.mkdir()
    values = {"closed": closed_port()}
    if "server404" in case.needs:
        values["server404"] = http_server.url
        values["server404_host"] = http_server.url.split("://", 1)[1]
    if "endless" in case.needs:
        values["endless"] = serve(Endless)
    if "notmlflow" in case.needs:
        values["notmlflow"] = serve(NotMlflow)
    if "bomb" in case.needs:
        png_header(tmp_path / "bomb.png", 15000, 15000)
        values["bomb"] = tmp_path / "bomb.png"
    files = subject_files if "subject" in case.needs else None
    if files:
        values["no_arch"] = checkpoint_variant(tmp_path / "no_arch.pt", files["classifier"], lambda p: p.pop("arch"))
        values["wrong_shapes"] = checkpoint_variant(tmp_path / "wrong.pt", files["classifier"], wrong_shapes)
        values["flipped"] = checkpoint_variant(tmp_path / "flipped.pt", files["classifier"], flip_bit)
    if "truncated" in case.needs or "no_annotations" in case.needs:
        synthetic.make_zip(tmp_path / "good.zip")
        (out / "raw").mkdir()
        if "truncated" in case.needs:
            data = (tmp_path / "good.zip").read_bytes()
            (out / "raw" / "dataset.zip").write_bytes(data[: len(data) // 2])
        else:
            zip_without(out / "raw" / "dataset.zip", tmp_path / "good.zip", "val_annotations.txt")
    http_server.add("/x.zip", Route(status=404))
    if "readonly_db" in case.needs:
        (out / "mlflow.db").write_bytes(b"")
        if not make_read_only(out / "mlflow.db"):
            make_writable(out / "mlflow.db")
            pytest.skip("cannot make a file read-only here (chmod ignored, no chattr)")

    overrides = [o.format(**values) for o in case.overrides]
    try:
        result = run_job(case.job, out, *overrides, env=case.env, files=files)
    finally:
        if "readonly_db" in case.needs:
            make_writable(out / "mlflow.db")

    assert result.returncode == case.code, result.stderr[-3000:]
    line = error_line(result, case.job)
    assert line.startswith(f"{case.job}: error: ") and re.search(case.message, line), line
    assert len(line) <= 600
    assert not (out / "metrics" / f"{case.job}.json").exists()
    assert not (out / "results" / case.job).exists()
    assert not (out / "prepared").exists()
    assert leftovers(out) == []
    assert secrets_in(out) == []
    assert processes_mentioning(str(out)) == []


def test_credentials_work_and_stay_secret(tmp_path, http_server):
    """1. userinfo becomes HTTP basic auth; neither it nor a token in the query reaches any file."""
    from conftest import Route

    synthetic.make_zip(tmp_path / "good.zip")
    route = http_server.add("/d.zip", Route((tmp_path / "good.zip").read_bytes(), auth="user:SECRETPW"))
    out = tmp_path / "out"
    host = http_server.url.split("://", 1)[1]
    result = run_job("download", out, f'data.url="http://user:SECRETPW@{host}/d.zip?token=SECRETTOK&sig=SECRETSIG"',
                     env={"CS231N_MIRROR": "http://m:MIRRORPW@127.0.0.1:9"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "raw" / "dataset.zip").read_bytes() == (tmp_path / "good.zip").read_bytes()
    assert any(r.get("path", "").startswith("/d.zip") for r in route.requests)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "overrides.yaml" for p in written) and any(p.name == "mlflow.db" for p in written)
    assert secrets_in(out) == []
    assert SECRETS[0] not in result.stdout + result.stderr and SECRETS[1] not in result.stdout + result.stderr


# --------------------------------------------------------------------------- 5. interrupts

def start_class_viz(out: Path, files: dict) -> subprocess.Popen:
    """A class visualization long enough to be interrupted once its temporary results exist."""
    paths = [f"hydra.run.dir={out}/hydra", f"tracking.uri=sqlite:///{out}/mlflow.db", f"paths.metrics={out}/metrics",
             f"paths.results={out}/results", f"paths.plots={out}/plots", "progress=false",
             f"paths.prepared={files['prepared']}", f"paths.classifier={files['classifier']}"]
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.class_viz", *paths, "class_viz.iterations=1000000"],
                            cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "results").glob(".class_viz.*.tmp")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the job never started writing"
        time.sleep(0.2)
    time.sleep(1.0)
    return proc


def run_statuses(out: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(out / "mlflow.db") as db:
        return [row[0] for row in db.execute("select status from runs order by start_time")]


def test_sigterm_cleans_up_and_marks_the_run_killed(tmp_path, subject_files):
    out = tmp_path / "out"
    proc = start_class_viz(out, subject_files)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, stderr
    assert [line for line in stderr.splitlines() if line.startswith("class_viz: ")] == \
        ["class_viz: interrupted (SIGTERM); temporary outputs removed"]
    assert leftovers(out) == [] and not (out / "results" / "class_viz").exists()
    assert run_statuses(out) == ["KILLED"]


def test_after_sigkill_the_next_run_sweeps_debris_and_closes_the_orphan(tmp_path, subject_files):
    out = tmp_path / "out"
    proc = start_class_viz(out, subject_files)
    proc.kill()
    proc.communicate(timeout=60)
    assert leftovers(out) and run_statuses(out) == ["RUNNING"]  # what SIGKILL leaves

    result = run_job("class_viz", out, "class_viz.iterations=2", "class_viz.classes=0", files=subject_files)
    assert result.returncode == 0, result.stderr[-3000:]
    assert leftovers(out) == []
    assert run_statuses(out) == ["KILLED", "FINISHED"]


# --------------------------------------------------------------------------- 8. small ones

def test_each_job_has_its_own_hydra_name(tmp_path):
    """Jobs started in the same second no longer share ``outputs/job/<time>``."""
    for job in ("download", "train"):
        result = run_job(job, tmp_path, "seed=abc", f"hydra.run.dir={tmp_path}/runs/${{hydra.job.name}}")
        assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["download", "train"]


def test_metrics_json_has_no_bare_nan(tmp_path):
    import json

    from pipeline.files import write_json

    write_json(tmp_path / "m.json", {"median_l2": float("nan"), "n": [1.0, float("inf")], "ok": 2.5})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"median_l2": None, "n": [1.0, None], "ok": 2.5}


def test_unreachable_store_blames_the_variable_only_when_it_is_set(monkeypatch):
    from pipeline.errors import TrackingError
    from pipeline.track.tracking import check_reachable

    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingError, match="set tracking.uri") as info:
        check_reachable(uri, timeout=2)
    assert "MLFLOW_TRACKING_URI" not in str(info.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingError, match="unset MLFLOW_TRACKING_URI"):
        check_reachable(uri, timeout=2)


def test_a_sweep_keeps_no_secret_either(tmp_path):
    """A multirun records the command line in multirun.yaml and each child's .hydra/ files: scrubbed too."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.download", "-m", 'data.url="http://u:SECRETPW@127.0.0.1:9/x.zip?token=SECRETTOK"',
         "data.download.retries=abc", f"hydra.sweep.dir={tmp_path}/sweep", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"],
        cwd=REPO, env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, capture_output=True,
        text=True, timeout=180)
    assert result.returncode == 1 and "data.download.retries='abc'" in result.stderr
    assert (tmp_path / "sweep" / "multirun.yaml").is_file() and (tmp_path / "sweep" / "0" / ".hydra").is_dir()
    assert secrets_in(tmp_path) == []
