"""The MLflow tracking UI as a user sees it: ``mlflow server`` on loopback over a small store, and the run pages
opened in headless Chromium, driven over the DevTools protocol (``browser.py``), so that each check waits for
what the React app renders from its API calls: the run name, the Logged models / Registered models / Datasets
panels, an image artifact actually decoded, and the registered version's page linking back to the train run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser import CHROMIUM, SKIP_REASON, Browser, stop_process_group
from processes import live_processes

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)]

REGISTERED = "tinyimagenet-classifier"
DATASET = "tiny-imagenet-100-A"


@dataclass(frozen=True)
class Shown:
    """What the UI must show for one run."""
    experiment_id: str
    run_id: str
    run_name: str
    image: str | None  # an image artifact of the run (top level); None: the run logs none
    dataset: str  # the dataset's name and MLflow digest, shown as "<name> (<digest>)"
    digest: str
    context: str  # the dataset's context: train, eval
    direction: str  # the run and the model, in the Logged models table: Output (train) or Input (a visualization)
    model_id: str  # the logged model that table links (for a visualization: its experiment's reference)
    version: str  # the registered version it leads to


# --------------------------------------------------------------------------- the store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict[str, Shown]]:
    """(folder holding ``mlflow.db`` and ``mlruns/``, {job: what its run page shows}): the train and saliency jobs
    themselves on a synthetic dataset (tests/test_train.py's tiny configs, about 10 s).

    A visualization run records two input models: the train run's (its lineage) and a *reference* to it in its
    own experiment, because the run page lists only models of the run's experiment (in MLflow 3.17 the Logged
    models panel is a search in that experiment for the run's input and output model ids); the reference's
    ``mlflow.modelVersions`` tag fills the "Registered models" column and panel."""
    import mlflow
    import synthetic
    from test_train import job_cfg, saliency_cfg

    from pipeline.data import cache as data
    from pipeline.explain import saliency
    from pipeline.model import train

    root = tmp_path_factory.mktemp("ui")
    synthetic.make_zip(root / "d.zip", num_classes=4, train_per_class=12, val_per_class=4)
    data.prepare(root / "d.zip", root / "prepared", workers=1, progress=False)
    train.run(job_cfg(root / "prepared", root))
    saliency.run(saliency_cfg(root / "prepared", root))
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    shown = {}
    for job, context, direction in (("train", "train", "Output"), ("saliency", "eval", "Input")):
        experiment = client.get_experiment_by_name(job)
        run = client.get_run(client.search_runs([experiment.experiment_id])[0].info.run_id)
        models = run.outputs.model_outputs if job == "train" else run.inputs.model_inputs
        model = next(m.model_id for m in models
                     if client.get_logged_model(m.model_id).experiment_id == experiment.experiment_id)
        images = [a.path for a in client.list_artifacts(run.info.run_id) if a.path.endswith(".png")]
        dataset = run.inputs.dataset_inputs[0].dataset
        shown[job] = Shown(experiment.experiment_id, run.info.run_id, run.info.run_name,
                           run.data.tags.get("main_figure") or (images[0] if images else None), dataset.name,
                           dataset.digest, context, direction, model, run.data.tags["model_version"])
    return root, shown


# --------------------------------------------------------------------------- server and browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p, parent, _ in live_processes():
        children.setdefault(parent, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def left_alive(pids: set[int]) -> list[str]:
    return [cmd[:120] for p, _, cmd in live_processes() if p in pids]


def healthy(process: subprocess.Popen, base: str, timeout: float) -> bool:
    """Whether the server answers ``/health`` within ``timeout`` seconds (False as soon as it has exited)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            time.sleep(0.25)
    return False


@pytest.fixture(scope="module")
def server(store):
    """Base URL of ``mlflow server`` on a free loopback port over the store; stopped with every process it
    started. Job execution (8 huey consumer processes, and a folder left in /dev/shm per start) and telemetry off."""
    root, _ = store
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for _ in range(3):  # another process may take the free port before the server binds it
        port = free_port()
        base, log = f"http://127.0.0.1:{port}", root / f"server-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                 "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                 "--default-artifact-root", (root / "mlruns").as_uri(), "--workers", "1"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                start_new_session=True)
        if healthy(process, base, timeout=180):
            break
        stop_process_group(process)
    else:
        raise RuntimeError(f"mlflow server did not start: {log.read_text(errors='replace')[-3000:]}")
    started = descendants(process.pid)
    try:
        yield base
    finally:
        stop_process_group(process)
        assert not left_alive(started), f"mlflow server left processes behind: {left_alive(started)}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Browser(tmp_path_factory.mktemp("chromium"))
    try:
        yield chromium
    finally:
        started = descendants(chromium.process.pid)
        chromium.close()
        assert not left_alive(started), f"chromium left processes behind: {left_alive(started)}"


# --------------------------------------------------------------------------- what the run page shows

# The run page's panels, each read from below its <h4> heading (up to the largest box holding no other heading).
# Logged models is an ag-grid: its rows as {column id: text}, column ids relationship_type, step, name, status,
# creation_time, registered_models, dataset.
RUN_PAGE = """(() => {
  const clean = t => (t || '').replace(/\\s+/g, ' ').trim();
  const headings = () => [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')];
  const panel = title => {
    let box = headings().find(h => clean(h.innerText).startsWith(title));
    while (box && box.parentElement && box.parentElement.querySelectorAll('h1, h2, h3, h4, h5, h6').length === 1)
      box = box.parentElement;
    return box || null;
  };
  const links = (box, selector) => box ? [...box.querySelectorAll(selector)]
      .map(a => ({text: clean(a.innerText), href: a.getAttribute('href')})) : [];
  const logged = panel('Logged models'), registered = panel('Registered models'), datasets = panel('Datasets');
  const rows = {};
  for (const row of logged ? logged.querySelectorAll('[role=row][row-index]') : [])
    for (const cell of row.querySelectorAll('[role=gridcell][col-id]'))
      (rows[row.getAttribute('row-index')] ||= {})[cell.getAttribute('col-id')] = clean(cell.innerText);
  const header = document.querySelector('[data-testid=runs-header]');
  return {
    run_name: header ? clean(header.innerText) : null,
    logged: logged && clean(logged.innerText), rows: Object.values(rows),
    model_links: links(logged, 'a[href*="/models/m-"]'),
    registered: registered && clean(registered.innerText), version_links: links(registered, 'a[href*="#/models/"]'),
    datasets: datasets && clean(datasets.innerText),
  };
})()"""


def run_url(base: str, run: Shown, tail: str = "") -> str:
    return f"{base}/#/experiments/{run.experiment_id}/runs/{run.run_id}{tail}"


@pytest.mark.parametrize("job", ["train", "saliency"])
def test_run_page_shows_name_logged_model_registered_version_and_dataset(store, server, browser, job):
    run = store[1][job]
    version_page = f"#/models/{REGISTERED}/versions/{run.version}"

    def complete(page: dict) -> bool:  # the page has loaded everything it will (the last panel fills last)
        return bool(page["run_name"] and page["rows"] and page["datasets"] and page["version_links"]
                    and page["rows"][0].get("registered_models", "-") != "-")

    with browser.open(run_url(server, run)) as tab:
        page = tab.poll(RUN_PAGE, complete, timeout=30)
    assert page["run_name"] == run.run_name, page
    # Logged models (1): one row, the classifier, in this run's direction, with its registered version
    assert page["logged"] and page["logged"].startswith("Logged models (1)"), page
    assert len(page["rows"]) == 1, page
    row = page["rows"][0]
    assert row["relationship_type"] == run.direction, page
    assert row["name"].endswith(" classifier"), page  # "#1a2b3c classifier": the model's colour, then its name
    assert row["status"] == "Ready" and row["registered_models"] == f"{REGISTERED} v{run.version}", page
    assert page["model_links"] == [{"text": "classifier",
                                    "href": f"#/experiments/{run.experiment_id}/models/{run.model_id}"}], page
    # Registered models: a link to the version's page
    assert page["registered"] == f"Registered models {REGISTERED} v{run.version}", page
    assert page["version_links"] == [{"text": f"{REGISTERED} v{run.version}", "href": version_page}], page
    # Datasets: "<name> (<digest>) <context>" (the context is shown capitalised by CSS)
    assert page["datasets"].lower() == f"Datasets {run.dataset} ({run.digest}) {run.context}".lower(), page


ARTIFACT = """(name => {
  const node = document.querySelector(`[data-testid=artifact-tree-node][artifact-name="${name}"]`);
  const img = document.querySelector(`img[alt="${name}"]`);
  return {listed: !!node, src: img && img.src.slice(0, 5), loaded: !!img && img.complete,
          width: img && img.naturalWidth, height: img && img.naturalHeight};
})"""


@pytest.mark.parametrize("job", ["train", "saliency"])
def test_artifacts_tab_lists_the_image_and_shows_it_when_clicked(store, server, browser, job):
    from PIL import Image

    root, runs = store
    run = runs[job]
    assert run.image is not None, f"the {job} run logs no image"
    expected = Image.open(next((root / "mlruns").glob(f"*/{run.run_id}/artifacts/{run.image}"))).size
    probe = f"({ARTIFACT})({json.dumps(run.image)})"
    with browser.open(run_url(server, run, "/artifacts")) as tab:
        listed = tab.poll(probe, lambda a: a["listed"], timeout=60)
        assert listed["listed"], f"{run.image} not in the artifact tree: {tab.text()[:2000]}"
        tab.click(f'[data-testid=artifact-tree-node][artifact-name="{run.image}"]')  # the viewer fetches it now
        shown = tab.poll(probe, lambda a: a["loaded"] and a["width"], timeout=60)
    assert shown["src"] == "blob:" and shown["loaded"], shown
    assert (shown["width"], shown["height"]) == expected, shown  # decoded, at the logged size


def test_registered_version_page_links_the_train_run_and_its_model(store, server, browser):
    train = store[1]["train"]
    probe = """(() => ({text: (document.body.innerText || '').replace(/\\s+/g, ' '),
                        links: [...document.querySelectorAll('a')]
                                   .map(a => [a.innerText.trim(), a.getAttribute('href')])}))()"""
    with browser.open(f"{server}/#/models/{REGISTERED}/versions/{train.version}") as tab:
        page = tab.poll(probe, lambda p: f"Source Run : {train.run_name}" in p["text"]
                        and "Source Model : classifier" in p["text"], timeout=60)  # each from its own request
    assert f"Registered Models {REGISTERED} Version {train.version}" in page["text"], page["text"][:2000]
    assert f"Source Run : {train.run_name}" in page["text"], page["text"][:2000]
    assert "Source Model : classifier" in page["text"], page["text"][:2000]
    assert [train.run_name, f"#/experiments/{train.experiment_id}/runs/{train.run_id}"] in page["links"]
    assert ["classifier", f"#/experiments/{train.experiment_id}/models/{train.model_id}"] in page["links"]
