"""The report page: built from the jobs' outputs, and loaded in a real (headless) browser."""

import re
import shutil
import subprocess

import pytest
from omegaconf import OmegaConf
from conftest import job_config

from pipeline.explain import deepdream

from pipeline.track import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def page(subject_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    deepdream.run(job_config("deepdream", subject_files, out, "deepdream.iterations=2", "deepdream.octaves=1",
                             "deepdream.max_side=64", "deepdream.show_every=0"))
    path = report.run(job_config("report", subject_files, out, f"report.out={out}/report/index.html",
                                 f"paths.plots={out}/plots", f"report.meaning_figure={out}/docs/meaning.png"))
    return path


def test_page_embeds_figures_metrics_and_links(page):
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)="(https?:)?//(?!127\.0\.0\.1)', text) and "<link" not in text  # no outside assets
    assert text.count('src="data:image/png;base64,') == 3  # deepdream: comparison, input, dream
    assert "activation_norm_after" in text and "/#/experiments/" in text  # metrics table and the MLflow link
    assert "no figures yet in results/saliency/" in text  # jobs not run yet say so
    assert "not measured yet (python benchmarks/meaning.py)" in text


def test_standard_vs_robust_section_shows_the_benchmark(tmp_path):
    from PIL import Image

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "meaning.json").write_text(
        '{"robust_cross_model_top1": 0.31, "pixel_cross_model_top1": 0.02, '
        '"deep_psnr_by_tv": {"5e-10": {"gap": 4.59, "gap_worst_image": -0.03, "robust": 16.53, '
        '"robust_better_images": 15, "standard": 11.94}, "0": {"gap": 5.28, "gap_worst_image": 1.25, '
        '"robust": 14.05, "robust_better_images": 16, "standard": 8.77}}, '
        '"deep_psnr_by_tv_heldout": {"0": {"gap": 5.54, "robust": 14.15, "standard": 8.61}}, '
        '"deep_psnr_gap_both_sets": {"0": 5.41, "5e-10": 4.91}, "heldout_val_indices": [3, 7]}')  # as write_json sorts them
    Image.new("RGB", (40, 20), "red").save(tmp_path / "meaning.png")
    cfg = OmegaConf.create({"report": {"meaning": str(tmp_path / "metrics" / "meaning.json"),
                                       "meaning_figure": str(tmp_path / "meaning.png")}})
    section = report.robust_section(cfg)
    assert "robust_cross_model_top1" in section and "0.31" in section and section.count("data:image/png") == 1
    assert ("<th>TV weight</th><th>standard</th><th>robust</th><th>gap</th><th>gap worst image</th>"
            "<th>robust better images</th><th>held-out standard</th>") in section  # a table, not a dict's repr
    rows = section.split("<table")[2]
    assert rows.index("<td>0</td><td>8.77</td><td>14.05</td><td>5.28</td><td>1.25</td><td>16</td>") < rows.index(
        "<td>5e-10</td>")
    assert "{" not in rows
    assert "<th>held-out gap</th><th>gap, both sets</th>" in rows and "on 2 other val images" in section
    assert "<td>14.05</td><td>5.28</td><td>1.25</td><td>16</td><td>8.61</td><td>14.15</td><td>5.54</td><td>5.41</td>" in rows
    assert "<td>5e-10</td><td>11.94</td><td>16.53</td><td>4.59</td><td>-0.03</td><td>15</td><td>-</td><td>-</td><td>-</td><td>4.91</td>" in rows
    assert "heldout_val_indices" not in section  # folded into the TV table, not dumped as a list


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_renders_in_headless_chromium(page, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-total="3"' in dom.stdout and 'data-images-broken="0"' in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_saliency_comparison_is_one_table(tmp_path):
    rows = {"gradcam": {"deletion_auc": 0.05, "infidelity": 1.5}, "occlusion": {"deletion_auc": 0.07}}
    table = report.comparison_table(rows)
    assert table.count("<tr>") == 3 and "<th>infidelity</th>" in table and "<th>deletion auc</th>" in table and "<td>-</td>" in table
    assert "<td>gradcam</td><td>0.05</td><td>1.5</td>" in table
