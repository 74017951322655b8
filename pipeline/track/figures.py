"""Labelled image grids: the pictures every job logs (samples, saliency rows, fooling triples, ...)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) or (H, W, 3) pixels in 0..255 -> HxWx3 uint8 (rounded and clipped, as a saved PNG)."""
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def load_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def grid(images: Sequence[torch.Tensor | np.ndarray], captions: Sequence[str] | None = None, *,
         columns: int | None = None, scale: int = 2, caption_lines: int = 1, font_size: int = 11,
         pad: int = 4) -> Image.Image:
    """Tile images (each upscaled ``scale`` x, nearest) with a caption under each."""
    if not len(images):
        raise ValueError("grid: no images")
    tiles = [Image.fromarray(to_uint8_hwc(im)) for im in images]
    width = max(t.width for t in tiles) * scale
    height = max(t.height for t in tiles) * scale
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    text_h = (font_size + 2) * caption_lines if captions else 0
    font = load_font(font_size)
    canvas = Image.new("RGB", (columns * (width + pad) + pad, rows * (height + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        x = pad + (i % columns) * (width + pad)
        y = pad + (i // columns) * (height + text_h + pad)
        canvas.paste(tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST), (x, y))
        if captions:
            for j, line in enumerate(_wrap(captions[i], draw, font, width)[:caption_lines]):
                draw.text((x, y + height + 1 + j * (font_size + 2)), line, fill="black", font=font)
    return canvas


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    lines.append(current)
    return [_fit(line, draw, font, width) for line in lines]


def _fit(line: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> str:
    while line and draw.textlength(line, font=font) > width:
        line = line[:-2] + "…" if len(line) > 2 else ""
    return line


# Anchors of matplotlib's "inferno" (dark -> bright, perceptually ordered): saliency heat maps
# without a plotting dependency.
_INFERNO = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                     [250, 193, 39], [252, 255, 164]], dtype=np.float64)


COLORMAPS = ("inferno", "gray")


def heatmap(values: torch.Tensor | np.ndarray, vmax: float | None = None, colormap: str = "inferno") -> np.ndarray:
    """(H, W) non-negative values -> HxWx3 uint8, 0 dark, ``vmax`` (default: the map's max) bright;
    ``gray`` is the CS231n notebooks' colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    v = values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64)
    top = float(v.max()) if vmax is None else float(vmax)
    t = np.clip(v / top, 0, 1) if top > 0 else np.zeros_like(v, dtype=np.float64)
    if colormap == "gray":
        return np.repeat(np.rint(255 * t).astype(np.uint8)[..., None], 3, axis=-1)
    t = t * (len(_INFERNO) - 1)
    lo = np.minimum(np.floor(t).astype(int), len(_INFERNO) - 2)
    frac = (t - lo)[..., None]
    return np.rint(_INFERNO[lo] * (1 - frac) + _INFERNO[lo + 1] * frac).astype(np.uint8)


def save_png(image: torch.Tensor | np.ndarray, path) -> None:
    """Save pixels (3, H, W) or (H, W, 3) as an 8-bit RGB PNG (rounded and clipped)."""
    Image.fromarray(to_uint8_hwc(image)).save(path, format="PNG")
