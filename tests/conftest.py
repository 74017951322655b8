"""Shared fixtures: synthetic dataset zips and a loopback-only HTTP server."""

from __future__ import annotations

import base64
import http.server
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import synthetic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_ZIP = REPO.parent / "shared" / "data" / "tiny-imagenet-100-A.zip"


@pytest.fixture(autouse=True)
def _no_env_tracking(monkeypatch):
    """Jobs log to the store a test names, never to one a developer's shell exports."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A job run with train.threads=1 sets torch's thread count for the whole process; later tests (and the
    session fixtures they build) must not depend on which test ran first."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def synthetic_zip(tmp_path):
    path = tmp_path / "tiny-imagenet-100-A.zip"
    expected = synthetic.make_zip(path)
    return path, expected


class Route:
    """What the server does for one path: serve ``body``, optionally cut after ``cut_at`` bytes
    (``cuts`` times, with a TCP reset instead of a clean close when ``reset``), or answer ``status``,
    or stall ``delay`` seconds first; with ``auth`` ("user:password") it demands HTTP basic auth.
    By default it sends no validators and honours Range (``ranges``). With an ``etag`` and/or
    ``last_modified`` it sends them and serves a Range only when If-Range names the current one
    (unless ``if_range=False``: a server that ignores If-Range). ``redirect`` answers 302 to that URL;
    ``trickle`` = (bytes, seconds) sends the body in slow steps; ``endless`` streams zeros forever;
    ``length=False`` omits Content-Length (and closes the connection to end the body). Each request
    is recorded in ``requests`` with its path, Range, If-Range and Authorization headers."""

    def __init__(self, body: bytes = b"", *, status: int = 200, cut_at: int | None = None, cuts: int = 1,
                 delay: float = 0.0, ranges: bool = True, auth: str | None = None, etag: str | None = None,
                 last_modified: str | None = None, if_range: bool = True, reset: bool = False,
                 trickle: tuple[int, float] | None = None, endless: bool = False, length: bool = True,
                 redirect: str | None = None):
        self.body, self.status, self.cut_at, self.cuts, self.delay, self.ranges = body, status, cut_at, cuts, delay, ranges
        self.auth, self.etag, self.last_modified, self.if_range = auth, etag, last_modified, if_range
        self.reset, self.trickle, self.endless, self.length, self.redirect = reset, trickle, endless, length, redirect
        self.requests: list[dict] = []

    def serves_range(self, if_range: str | None) -> bool:
        """Whether a Range request carrying this If-Range header gets a 206 (else the whole body)."""
        validators = (self.etag, self.last_modified)
        if not self.ranges:
            return False
        if if_range is None or not self.if_range or validators == (None, None):
            return True
        return if_range in validators


class LoopbackServer:
    def __init__(self):
        self.routes: dict[str, Route] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                header, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                route.requests.append({"range": header, "if_range": if_range, "auth": self.headers.get("Authorization"),
                                       "path": self.path})
                if route.auth is not None:
                    expected = "Basic " + base64.b64encode(route.auth.encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="test"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if route.delay:
                    time.sleep(route.delay)
                if route.status != 200:
                    self.send_error(route.status)
                    return
                if route.redirect:
                    self.send_response(302)
                    self.send_header("Location", route.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, start = route.body, 0
                if header and route.serves_range(if_range):
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if route.etag:
                    self.send_header("ETag", route.etag)
                if route.last_modified:
                    self.send_header("Last-Modified", route.last_modified)
                if route.length and not route.endless:
                    self.send_header("Content-Length", str(len(body) - start))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if route.endless:
                    while True:
                        self.wfile.write(bytes(65536))
                payload = body[start:]
                if route.cut_at is not None and route.cuts > 0:
                    route.cuts -= 1
                    self.wfile.write(payload[: route.cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                    if route.reset:  # RST instead of FIN: the client must not take it for a clean end
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                    return
                if route.trickle is None:
                    self.wfile.write(payload)
                    return
                step, pause = route.trickle
                for i in range(0, len(payload), step):
                    self.wfile.write(payload[i:i + step])
                    self.wfile.flush()
                    time.sleep(pause)

        class QuietServer(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that time out or hang up on purpose

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, route: Route) -> Route:
        self.routes[path] = route
        return route

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    server = LoopbackServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- visualization jobs

TINY_RESNET = {"arch": "resnet", "num_classes": 4, "widths": [8, 16], "blocks": [1, 1], "stem_width": 8}


def tiny_classifier(num_classes: int = 4, mean_image=None, seed: int = 0):
    """A small randomly initialised ResNet (fresh BN statistics replaced by something non-trivial)."""
    import torch

    from pipeline.model.architectures import build_model

    torch.manual_seed(seed)
    arch = dict(TINY_RESNET, num_classes=num_classes)
    model = build_model(arch, mean_image=mean_image)
    for m in model.modules():  # zero-init residual branches would make blocks identities: randomise
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval(), arch


def fit(model, split, steps: int = 60) -> None:
    """A few Adam steps on the synthetic train split (BN in eval mode), so the classifier depends
    on its input like a trained one (a random net tends to predict one class for everything)."""
    import torch

    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = split.images.float(), split.labels
    model.eval()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.requires_grad_(False)


@pytest.fixture(scope="session")
def subject_files(tmp_path_factory):
    """A prepared synthetic dataset (4 classes, 6 val images each) and a tiny classifier for it."""
    from pipeline.data import cache as data
    from pipeline.model.checkpoint import save_classifier

    root = tmp_path_factory.mktemp("subject")
    synthetic.make_zip(root / "d.zip", num_classes=4, train_per_class=4, val_per_class=6)
    data.prepare(root / "d.zip", root / "prepared", workers=1, progress=False)
    prepared = data.load_prepared(root / "prepared")
    model, arch = tiny_classifier(prepared.num_classes, prepared.mean_image)
    fit(model, prepared.split("train"))
    save_classifier(root / "classifier.pt", model, arch, wnids=prepared.wnids, class_names=prepared.class_names,
                    source="train", extra={"val_accuracy": 0.25})
    return {"prepared": root / "prepared", "classifier": root / "classifier.pt"}


def job_config(job: str, files: dict, out: Path, *overrides: str):
    """Compose conf/<job>.yaml for the synthetic subject, writing everything under ``out``."""
    from pipeline.job import compose_config

    return compose_config(job, [
        f"paths.prepared={files['prepared']}", f"paths.classifier={files['classifier']}",
        f"paths.results={out}/results", f"paths.metrics={out}/metrics", f"paths.plots={out}/plots",
        f"tracking.uri=sqlite:///{out}/mlflow.db", "progress=false", *overrides])
