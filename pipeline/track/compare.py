"""Judge a sweep at a glance: swept params vs final metrics, and the runs' main figures side by side.

    python -m pipeline.compare                 # the latest sweep of any job
    python -m pipeline.compare class_viz       # the latest sweep in experiment "class_viz"
    python -m pipeline.compare <parent run id> # that sweep
    python -m pipeline.compare <run id> <run id> ...   # these runs of one job, e.g. two models

Runs that differ in the model they explain or the experiment they ran (tags ``model``,
``experiment``) say so in their own columns and captions, so a sweep over ``model=...`` or
``experiment=default,cs231n_2016`` compares models side by side.

Prints one row per child run (swept values, then the job's final metrics) and writes one image
stacking each child's main figure under a caption of its swept values; the image is saved to
``outputs/compare/`` and logged to the parent run as ``compare.png``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline.track import figures, tracking
from pipeline.errors import PipelineError, TrackingError
from pipeline.job import REPO_ROOT

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def find_sweep(client, target: str | None):
    """The parent run: by id, the latest sweep of an experiment, or the latest sweep anywhere."""
    if target and RUN_ID.match(target):
        try:
            return client.get_run(target)
        except Exception:
            raise TrackingError(f"no MLflow run {target}") from None
    if target:
        experiment = client.get_experiment_by_name(target)
        if experiment is None:
            names = sorted(e.name for e in client.search_experiments())
            raise TrackingError(f"no experiment {target!r}; known: {', '.join(names) or 'none'}")
        ids = [experiment.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.sweep = 'true'", order_by=["attributes.start_time DESC"],
                              max_results=1) if ids else []
    if not runs:
        raise TrackingError(f"no sweep (Hydra multirun) found{f' in experiment {target!r}' if target else ''}; "
                            "run one with python -m pipeline.<job> -m key=a,b")
    return runs[0]


def children_of(client, parent):
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                              order_by=["attributes.start_time ASC"])
    if not runs:
        raise TrackingError(f"sweep {parent.info.run_id} has no child runs")
    return runs


COMPARED_TAGS = ("experiment", "model")


def differing_tags(children) -> list[str]:
    """The tags of ``COMPARED_TAGS`` whose values differ between the runs."""
    return [k for k in COMPARED_TAGS if len({run.data.tags.get(k, "") for run in children}) > 1]


def differing_params(children) -> list[str]:
    """Params whose values differ between the runs (what was varied, for runs that are not a sweep)."""
    keys = sorted({k for run in children for k in run.data.params})
    return [k for k in keys if len({run.data.params.get(k, "") for run in children}) > 1]


class Selection:
    """Runs picked by id, standing in for a sweep's parent: their differing params are the 'swept' ones."""

    def __init__(self, children):
        from types import SimpleNamespace

        first = children[0]
        self.info = SimpleNamespace(run_id=first.info.run_id, run_name=f"{len(children)} runs",
                                    experiment_id=first.info.experiment_id)
        self.data = SimpleNamespace(params={k: "" for k in differing_params(children)}, tags={})


def find_runs(client, ids: list[str]):
    runs = []
    for run_id in ids:
        if not RUN_ID.match(run_id):
            raise TrackingError(f"{run_id!r} is not a run id; give two or more run ids, or one job name")
        try:
            runs.append(client.get_run(run_id))
        except Exception:
            raise TrackingError(f"no MLflow run {run_id}") from None
    jobs = {run.data.tags.get("job") for run in runs}
    if len(jobs) > 1:
        raise TrackingError(f"the runs belong to different jobs ({', '.join(sorted(map(str, jobs)))}); "
                            "compare runs of one job")
    return runs


def table(parent, children) -> tuple[list[str], list[list[str]]]:
    swept = sorted(parent.data.params)
    tags = differing_tags(children)
    metric_keys: list[str] = []
    for run in children:
        keys = run.data.tags.get("final_metrics")
        for key in (keys.split(",") if keys else sorted(run.data.metrics)):
            if key and key not in metric_keys:
                metric_keys.append(key)
    header = ["run", *tags, *swept, *metric_keys]
    best = parent.data.tags.get("best_run_id")  # set by a search (objective=<metric>)
    rows = []
    for run in children:
        name = (run.info.run_name or run.info.run_id[:8]) + (" *best" if run.info.run_id == best else "")
        values = [name, *(run.data.tags.get(k, "") for k in tags), *(run.data.params.get(k, "") for k in swept)]
        values += [f"{run.data.metrics[k]:.4g}" if k in run.data.metrics else "" for k in metric_keys]
        rows.append(values)
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def short(value: str) -> str:
    """A param value for a caption: searched floats (0.30000000000000004, 5.5426e-07) to 4 digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if value.lstrip("-").isdigit() else f"{number:.4g}"


def side_by_side(client, parent, children) -> Image.Image | None:
    """Each child's main figure with a caption of its swept values, stacked vertically."""
    swept = sorted(parent.data.params)
    tags = differing_tags(children)
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in children:
            name = run.data.tags.get("main_figure")
            if not name:
                continue
            path = client.download_artifacts(run.info.run_id, name, tmp)
            caption = ", ".join([f"{k}={run.data.tags.get(k, '?')}" for k in tags]
                                + [f"{k}={short(run.data.params.get(k, '?'))}" for k in swept])
            if run.info.run_id == parent.data.tags.get("best_run_id"):
                caption = "best: " + caption
            with Image.open(path) as im:
                panels.append((caption, im.convert("RGB")))
    if not panels:
        return None
    font = figures.load_font(14)
    width = max(max(im.width, int(font.getlength(caption)) + 8) for caption, im in panels)
    height = sum(im.height + 22 for _, im in panels)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for caption, im in panels:
        draw.text((4, y + 3), caption, fill="black", font=font)
        canvas.paste(im, (0, y + 22))
        y += im.height + 22
    return canvas


def main(argv: list[str] | None = None) -> int:
    import mlflow

    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n")[0])
    parser.add_argument("target", nargs="*", help="parent run id or experiment (job) name (default: latest sweep), "
                                                  "or two or more run ids of one job")
    parser.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--out", default=None, help="image path (default: outputs/compare/<parent run>.png)")
    args = parser.parse_args(argv)
    try:
        uri = tracking.resolve_uri(args.uri, REPO_ROOT)
        tracking.check_reachable(uri)
        client = mlflow.MlflowClient(uri)
        if len(args.target) > 1:
            children = find_runs(client, args.target)
            parent = Selection(children)
        else:
            parent = find_sweep(client, args.target[0] if args.target else None)
            children = children_of(client, parent)
        header, rows = table(parent, children)
        print(f"{parent.info.run_name} ({parent.info.run_id}), {len(children)} runs")
        print(format_table(header, rows))
        image = side_by_side(client, parent, children)
        if image is not None:
            out = Path(args.out) if args.out else REPO_ROOT / "outputs" / "compare" / f"{parent.info.run_id}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            image.save(out)
            if not isinstance(parent, Selection):
                client.log_image(parent.info.run_id, image, artifact_file="compare.png")
            print(f"figures side by side: {out}" + ("" if isinstance(parent, Selection) else
                                                     " (and compare.png in the parent run)"))
    except PipelineError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
