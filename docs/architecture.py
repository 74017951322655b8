"""Draw docs/architecture.png: the package's layers, read from the tree and the job registry, so the
picture cannot drift from the code.   python docs/architecture.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from import_graph import all_modules, imports_of  # noqa: E402

from pipeline.registry import JOBS  # noqa: E402
from pipeline.track.figures import load_font  # noqa: E402

PACKAGES = [  # (folder, title, colour, what it holds)
    ("data", "pipeline/data", "#dbeafe", "the dataset: fetch, zip checks, prepared cache"),
    ("model", "pipeline/model", "#dcfce7", "the classifier: architectures, layers by hooks, checkpoint, training"),
    ("explain", "pipeline/explain", "#fef3c7", "explanations: engine, attribution, faithfulness"),
    ("track", "pipeline/track", "#fce7f3", "what people see: MLflow, figures, sweeps, report"),
]
SUBPACKAGES = {"explain": [("engine", "engine/  image optimisation (after Lucent)"),
                           ("attribution", "attribution/  one module per method")]}
FOUNDATION = ["errors.py  one error family", "files.py  atomic outputs", "job.py  Hydra entry point",
              "registry.py  every job's config, outputs, report section"]


def modules(folder: str) -> tuple[list[str], list[str]]:
    """(library modules, job modules) of a subpackage, from the files and the registry."""
    jobs = {job.module.rsplit(".", 1)[1] for job in JOBS.values() if job.module.startswith(f"pipeline.{folder}.")}
    names = sorted(p.stem for p in (REPO / "pipeline" / folder).glob("*.py") if p.stem != "__init__")
    if folder == "model":
        jobs.add("listing")  # python -m pipeline.models
    if folder == "track":
        jobs.add("compare")
    return [n for n in names if n not in jobs], [n for n in names if n in jobs]


def box(draw, xy, fill, outline="#555", radius=10, width=2):
    draw.rounded_rectangle(xy, radius=radius, fill=fill, outline=outline, width=width)


def arrow(draw, start, end, colour="#444"):
    draw.line([start, end], fill=colour, width=3)
    x, y = end
    draw.polygon([(x, y), (x - 7, y - 12), (x + 7, y - 12)], fill=colour)


def main() -> None:
    bottom = render(Image.new("RGB", (1500, 3000), "white"), package_bottom=None)  # measure, then draw
    image = Image.new("RGB", (1500, bottom + 190), "white")
    render(image, package_bottom=bottom)
    out = REPO / "docs" / "architecture.png"
    image.save(out, optimize=True)
    print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size // 1024} KB)")


def render(image: Image.Image, package_bottom: int | None) -> int:
    """Draw the diagram; returns how far down the tallest package reaches."""
    W = image.width
    draw = ImageDraw.Draw(image)
    title, big, body, small = load_font(26), load_font(19), load_font(16), load_font(14)
    draw.text((30, 18), "Architecture: commands -> jobs -> library -> foundation (imports point down only)",
              font=title, fill="#111")

    # commands
    commands = [*JOBS, "compare", "models"]
    box(draw, (30, 70, W - 30, 150), "#f3f4f6")
    draw.text((45, 78), "commands   python -m pipeline.<name>   (dvc.yaml stages: the registered jobs)", font=big, fill="#111")
    x = 45
    for name in commands:
        w = draw.textlength(name, font=body) + 20
        box(draw, (x, 110, x + w, 140), "white" if name in JOBS else "#e5e7eb", radius=6, width=1)
        draw.text((x + 10, 114), name, font=body, fill="#111")
        x += w + 10

    # packages
    top, col_w, gap = 200, (W - 60 - 3 * 20) // 4, 20
    lowest = top
    bottom = package_bottom or top
    for i, (folder, name, colour, blurb) in enumerate(PACKAGES):
        x0 = 30 + i * (col_w + gap)
        arrow(draw, (x0 + col_w // 2, 152), (x0 + col_w // 2, top - 4))
        box(draw, (x0, top, x0 + col_w, bottom), colour)
        draw.text((x0 + 12, top + 10), name, font=big, fill="#111")
        y = top + 40
        for line in _wrap(draw, blurb, small, col_w - 24):
            draw.text((x0 + 12, y), line, font=small, fill="#333")
            y += 18
        library, jobs = modules(folder)
        y += 10
        if jobs:
            draw.text((x0 + 12, y), "jobs and commands", font=body, fill="#7c2d12")
            y += 24
            for job in jobs:
                box(draw, (x0 + 12, y, x0 + col_w - 12, y + 26), "white", radius=5, width=1)
                draw.text((x0 + 20, y + 4), f"{job}.py", font=body, fill="#111")
                y += 32
            y += 6
        draw.text((x0 + 12, y), "library", font=body, fill="#1e3a8a")
        y += 24
        for module in library:
            draw.text((x0 + 20, y), f"{module}.py", font=body, fill="#111")
            y += 22
        for sub, text in SUBPACKAGES.get(folder, []):
            y += 4
            lines = _wrap(draw, text, small, col_w - 40)
            box(draw, (x0 + 12, y, x0 + col_w - 12, y + 10 + 18 * len(lines) + 22 * len(_files(folder, sub))),
                "white", radius=6, width=1)
            yy = y + 5
            for line in lines:
                draw.text((x0 + 20, yy), line, font=small, fill="#333")
                yy += 18
            for module in _files(folder, sub):
                draw.text((x0 + 28, yy), f"{module}.py", font=body, fill="#111")
                yy += 22
            y = yy + 10
        lowest = max(lowest, y + 10)
        arrow(draw, (x0 + col_w // 2, bottom + 2), (x0 + col_w // 2, bottom + 40))

    # foundation
    f0 = bottom + 44
    box(draw, (30, f0, W - 30, f0 + 96), "#ede9fe")
    draw.text((45, f0 + 8), "foundation   pipeline/", font=big, fill="#111")
    x = 45
    for item in FOUNDATION:
        w = draw.textlength(item, font=body) + 24
        box(draw, (x, f0 + 46, x + w, f0 + 80), "white", radius=6, width=1)
        draw.text((x + 12, f0 + 53), item, font=body, fill="#111")
        x += w + 14
    draw.text((30, f0 + 108), "Between packages (from the imports): " + "; ".join(
        f"{a} uses {', '.join(sorted(b))}" for a, b in package_uses().items() if b), font=small, fill="#333")
    draw.text((30, f0 + 128), "conf/ mirrors the tree: data/, model/ + train/ (pipeline/model), optim/ + attribution/ "
              "(pipeline/explain), hydra/ (sweeps); conf/<job>.yaml is each job's primary config.",
              font=small, fill="#333")
    return lowest


def package_uses() -> dict[str, set[str]]:
    """{package: the other packages its modules import at run time}, from the import graph."""
    uses = {folder: set() for folder, *_ in PACKAGES}
    for module in all_modules():
        parts = module.split(".")
        if len(parts) > 2 and parts[1] in uses:
            uses[parts[1]] |= {m.split(".")[1] for m in imports_of(module)} & set(uses) - {parts[1]}
    return uses


def _files(folder: str, sub: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "pipeline" / folder / sub).glob("*.py") if p.stem != "__init__")


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    return [*lines, line] if line else lines


if __name__ == "__main__":
    main()
