"""The README gallery is regenerated from the jobs' figures by one command (docs/gallery.py)."""

import runpy
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
gallery = runpy.run_path(str(REPO / "docs" / "gallery.py"))


def test_gallery_shrinks_every_main_figure(tmp_path):
    rng = np.random.default_rng(0)
    for _, source, _ in gallery["PICTURES"]:
        (tmp_path / "results" / source).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (300, 1200, 3), dtype=np.uint8)).save(tmp_path / "results" / source)
    assert gallery["main"](["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out"), "--width", "400"]) == 0
    for name, _, _ in gallery["PICTURES"]:
        with Image.open(tmp_path / "out" / name) as image:
            assert image.size == (400, 100) and image.mode == "P"


def test_gallery_names_what_is_missing(tmp_path, capsys):
    assert gallery["main"](["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "run dvc repro first" in capsys.readouterr().err and not (tmp_path / "out").exists()
