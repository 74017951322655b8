"""Regenerate the README's gallery (docs/gallery/*.png) from the figures of the last `dvc repro`.

    python docs/gallery.py          # after dvc repro: reads results/<job>/, writes docs/gallery/

Each picture is the job's main figure, scaled to at most ``--width`` pixels and stored as a
256-colour PNG, so the committed copies stay small (tens of KB) while the full-size figures live
in results/ (DVC) and MLflow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "gallery"

# (file in docs/gallery, figure in results/, what the README says under it)
PICTURES = [
    ("saliency.png", "saliency/confident.png", "Saliency maps (Simonyan et al. 2014) of confidently classified val images"),
    ("saliency_methods.png", "saliency/methods.png", "The same images explained by each method of the comparison"),
    ("fooling.png", "fooling/summary.png", "Fooling images: original, fooled, and the difference, magnified"),
    ("class_viz.png", "class_viz/grid.png", "Class model visualizations of all 100 classes"),
    ("inversion.png", "inversion/by_depth.png", "Feature inversion (Mahendran & Vedaldi 2015) by depth"),
    ("deepdream.png", "deepdream/comparison.png", "DeepDream"),
    ("features.png", "features/overview.png", "Feature visualization: 8 channels of each stage, shallow to deep"),
]


def shrink(image: Image.Image, width: int) -> Image.Image:
    image = image.convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    return image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    missing = [source for _, source, _ in PICTURES if not (args.results / source).is_file()]
    if missing:
        print(f"gallery: error: missing {', '.join(missing)} under {args.results} (run dvc repro first)",
              file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, source, caption in PICTURES:
        with Image.open(args.results / source) as image:
            shrink(image, args.width).save(args.out / name, optimize=True)
        print(f"{args.out / name} ({(args.out / name).stat().st_size // 1024} KB): {caption}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
