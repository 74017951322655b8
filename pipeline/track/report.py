"""Job ``report``: one self-contained HTML page with every stage's latest figures and numbers.

``report/index.html`` embeds its images (data URIs) and its one chart (inline SVG), so it opens
from disk, offline, anywhere, and can be mailed or attached as it is. For each job it shows the
figures in ``results/<job>/``, the metrics in ``metrics/<job>.json``, the key parameters and a
link to the job's latest MLflow run (for ``mlflow ui`` on 127.0.0.1:5000) when the tracking
store has one.

    python -m pipeline.report          # also a DVC stage: dvc repro report
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from pipeline.track import tracking
from pipeline.files import atomic_path
from pipeline.redaction import redact
from pipeline.job import hydra_job
from pipeline.registry import JOBS, VISUALIZATIONS

log = logging.getLogger(__name__)

KEY_PARAMS = 12  # params shown per job (all are in MLflow)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
.meta { color: #666; font-size: 0.9em; } table.methods th { max-width: 7em; } .missing { color: #a00; }
"""

# Marks the page with how many images decoded, so a browser (or a test) can check it at a glance.
CHECK_SCRIPT = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((im) => !(im.complete && im.naturalWidth > 0));
  broken.forEach((im) => im.classList.add("missing"));
  document.documentElement.dataset.imagesTotal = images.length;
  document.documentElement.dataset.imagesBroken = broken.length;
});
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def metrics_table(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" if isinstance(v, (int, float))
                   else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in sorted(metrics.items()))
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def comparison_table(rows: dict, key: str = "method") -> str:
    """{method: {metric: value}} as one table, a row per method (saliency's ``methods``; features'
    ``layers`` with ``key="layer"``)."""
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)  # wraps: the table fits
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(
        f"<td>{row[c]:.4g}</td>" if isinstance(row.get(c), (int, float)) else "<td>-</td>" for c in columns) + "</tr>"
        for name, row in rows.items())
    return f'<table class="methods"><tr><th>{html.escape(key)}</th>{head}</tr>{body}</table>'


def curve_svg(rows: list[dict], keys: tuple[str, ...] = ("train_accuracy", "val_accuracy"), width: int = 520,
              height: int = 240) -> str:
    """Per-epoch curves (fractions 0..1) as an inline SVG line chart."""
    if not rows:
        return ""
    pad = 36
    epochs = [float(r["epoch"]) for r in rows]
    lo, hi = min(epochs), max(max(epochs), min(epochs) + 1)
    colors = ["#1f77b4", "#d62728", "#2ca02c"]

    def xy(epoch: float, value: float) -> str:
        return f"{pad + (epoch - lo) / (hi - lo) * (width - 2 * pad):.1f},{height - pad - value * (height - 2 * pad):.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        y = height - pad - v * (height - 2 * pad)
        parts.append(f'<line x1="{pad}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="4" y="{y + 4:.1f}" font-size="10">{v:.2f}</text>')
    for i, key in enumerate(keys):
        points = " ".join(xy(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, ""))
        parts.append(f'<polyline fill="none" stroke="{colors[i % 3]}" stroke-width="2" points="{points}"/>'
                     f'<text x="{width - pad - 110}" y="{pad + 14 * i}" font-size="11" fill="{colors[i % 3]}">'
                     f'{html.escape(key)}</text>')
    parts.append(f'<text x="{width / 2:.0f}" y="{height - 6}" font-size="11">epoch</text></svg>')
    return "".join(parts)


def latest_runs(cfg: DictConfig) -> tuple[dict, str | None]:
    """{job: latest finished (non-sweep-parent) MLflow run} from the tracking store, if reachable."""
    try:
        import mlflow

        uri = tracking.resolve_uri(cfg.tracking.uri, cfg.paths.root)
        tracking.check_reachable(uri)
        client = mlflow.MlflowClient(uri)
        runs = {}
        for job in ["train", *(v.name for v in VISUALIZATIONS)]:
            experiment = client.get_experiment_by_name(f"{cfg.tracking.experiment_prefix}{job}")
            if experiment is None:
                continue
            found = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                       order_by=["attributes.start_time DESC"], max_results=20)
            found = [r for r in found if r.data.tags.get("sweep") != "true"]
            if found:
                runs[job] = found[0]
        return runs, uri
    except Exception as exc:  # the page is still useful without links
        log.warning("no MLflow links in the report: %s", exc)
        return {}, None


def run_link(run, ui: str) -> str:
    url = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return (f'<p class="meta">MLflow run <a href="{html.escape(url)}">{html.escape(run.info.run_name or run.info.run_id)}'
            f'</a> ({datetime.datetime.fromtimestamp(run.info.start_time / 1000):%Y-%m-%d %H:%M}, '
            f'git {html.escape(run.data.tags.get("git_commit", "?")[:10])})</p>')


def section(job: str, title: str, blurb: str, root: Path, cfg: DictConfig, run, ui: str) -> str:
    parts = [f'<h2 id="{job}">{html.escape(title)}</h2><p>{html.escape(blurb)}</p>']
    if run is not None:
        parts.append(run_link(run, ui))
        params = {k: v for k, v in sorted(run.data.params.items()) if k.startswith(f"{job}.")}
        if params:
            shown = list(params.items())[:KEY_PARAMS]
            parts.append("<details><summary>parameters</summary><table>" + "".join(
                f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in shown) + "</table></details>")
    metrics = read_json(Path(cfg.paths.metrics) / f"{job}.json")
    if metrics and isinstance(metrics.get("methods"), dict):
        parts.append("<p>Methods compared on the same images. Lower is better for deletion AUC, infidelity and "
                     "max-sensitivity; higher for insertion AUC (each beside a random pixel order); a low sanity "
                     "Spearman means the map changes when the model's weights are re-initialised, i.e. it depends "
                     "on what the model learned (Adebayo et al. 2018).</p>"
                     + comparison_table(metrics.pop("methods")))
    if metrics and isinstance(metrics.get("layers"), dict):
        parts.append("<p>Per layer, shallow to deep: activation ratio = a channel's activation on its picture / "
                     "the largest activation any val image gives it (> 1: the picture drives the unit further "
                     "than any natural image does).</p>" + comparison_table({  # metrics files sort their keys: back to model order
                         name: {k: v for k, v in row.items() if k != "layer_index"} for name, row in sorted(
                             metrics.pop("layers").items(), key=lambda kv: kv[1].get("layer_index", 0))}, key="layer"))
    parts.append(metrics_table(metrics) if metrics else '<p class="missing">no metrics yet (dvc repro ' + job + ")</p>")
    folder = root / job
    images = sorted(folder.glob("*.png")) if folder.is_dir() else []
    main = run.data.tags.get("main_figure") if run is not None else None
    images.sort(key=lambda p: (p.name != main, p.name))
    for path in images:
        parts.append(f'<figure><img src="{data_uri(path)}" alt="{html.escape(job)}: {html.escape(path.stem)}">'
                     f"<figcaption>{html.escape(path.name)}</figcaption></figure>")
    if not images:
        parts.append(f'<p class="missing">no figures yet in results/{job}/</p>')
    return "".join(parts)


def robust_section(cfg: DictConfig) -> str:
    """The standard and the robust classifier side by side (benchmarks/meaning.py writes both files)."""
    parts = ['<h2 id="robust">Standard vs robust classifier</h2><p>The same jobs on the standard model and on '
             "an adversarially trained one (train=robust). Cross-model top-1: how often the <em>other</em> model "
             "sees the target class in a class visualization (chance 1%); deep PSNR: inversion from the deep "
             "layer, mean over val images.</p>"]
    metrics = read_json(Path(cfg.report.meaning))
    figure = Path(cfg.report.meaning_figure)
    metrics = metrics or {}
    by_tv = metrics.pop("deep_psnr_by_tv", None)
    heldout, both = metrics.pop("deep_psnr_by_tv_heldout", {}), metrics.pop("deep_psnr_gap_both_sets", {})
    heldout_images = len(metrics.pop("heldout_val_indices", []))
    if metrics:
        parts.append(metrics_table(metrics))
    if by_tv:  # JSON files keep keys sorted as text: rows by weight, the models' columns first
        columns = ("standard", "robust", "gap", "gap_worst_image", "robust_better_images")
        by_tv = {w: {**{c: row[c] for c in columns if c in row},
                     **{f"held-out {c}": heldout[w][c] for c in ("standard", "robust", "gap") if c in heldout.get(w, {})},
                     **({"gap, both sets": both[w]} if w in both else {})}
                 for w, row in sorted(by_tv.items(), key=lambda item: float(item[0]))}
        parts.append("<p>Deep-layer inversion PSNR (dB) at shared TV weights: how much of the reconstruction comes "
                     "from the representation (weight 0: none from an image prior) and how much from the prior; "
                     "the worst image's gap (dB) and on how many of the val images the robust model's is better"
                     + (f"; held-out: the same on {heldout_images} other val images, and the gap over both sets"
                        if heldout else "") + ".</p>" + comparison_table(by_tv, key="TV weight"))
    if figure.is_file():
        parts.append(f'<figure><img src="{data_uri(figure)}" alt="class visualizations, standard vs robust">'
                     f"<figcaption>{html.escape(figure.name)}: the first ten classes of each</figcaption></figure>")
    if not metrics and not figure.is_file():
        parts.append('<p class="missing">not measured yet (python benchmarks/meaning.py)</p>')
    return "".join(parts)


def build(cfg: DictConfig) -> str:
    runs, uri = latest_runs(cfg)
    ui = cfg.report.mlflow_ui.rstrip("/")
    root = Path(cfg.paths.results)
    commit, dirty = tracking.git_state(cfg.paths.root)
    prepare = read_json(Path(cfg.paths.metrics) / "prepare.json") or {}
    train = read_json(Path(cfg.paths.metrics) / "train.json")
    body = [f"<h1>{html.escape(cfg.report.title)}</h1>",
            f'<p class="meta">generated {datetime.datetime.now():%Y-%m-%d %H:%M}, git {html.escape(commit[:10])}'
            f'{" (uncommitted changes)" if dirty else ""}, dataset sha256 {html.escape(str(prepare.get("zip_sha256", "?"))[:16])}'
            f'{", MLflow store " + html.escape(redact(uri)) if uri else ""}</p>',
            "<nav>" + " · ".join(f'<a href="#{j}">{html.escape(t)}</a>' for j, t in
                                 [("classifier", JOBS["train"].title), *((v.name, v.title) for v in VISUALIZATIONS),
                                  ("robust", "Standard vs robust")])
            + "</nav>",
            f'<h2 id="classifier">{html.escape(JOBS["train"].title)}</h2>']
    if "train" in runs:
        body.append(run_link(runs["train"], ui))
        tags = runs["train"].data.tags
        body.append(f'<p>{html.escape(tags.get("arch", "?"))} model, source {html.escape(tags.get("model_source", "?"))}</p>')
    body.append(metrics_table(train) if train else '<p class="missing">no metrics yet (dvc repro train)</p>')
    curves = Path(cfg.paths.plots) / "train.csv"
    if curves.is_file():
        with open(curves, newline="") as f:
            body.append("<figure>" + curve_svg(list(csv.DictReader(f))) + "<figcaption>accuracy per epoch "
                        "(val: a fixed subset during training; the table: all 5,000 val images)</figcaption></figure>")
    for job in VISUALIZATIONS:
        body.append(section(job.name, job.title, job.blurb, root, cfg, runs.get(job.name), ui))
    body.append(robust_section(cfg))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(cfg.report.title)}</title><style>{STYLE}</style>"
            f"<script>{CHECK_SCRIPT}</script></head><body>{''.join(body)}</body></html>")


def run(cfg: DictConfig) -> Path:
    out = Path(cfg.report.out)
    page = build(cfg)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("report: %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


main = hydra_job("report", run)

if __name__ == "__main__":
    main()
