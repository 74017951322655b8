"""Images from outside the dataset (a file or an http(s) URL) as float pixel tensors.

Feature inversion and DeepDream accept any picture; a bad path or a file that is not an image
fails with an error naming it, before any work.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from pipeline.errors import ConfigError, DataError
from pipeline.data.fetch import fetch


def read_image(source: str, *, retries: int = 2, timeout: float = 30.0) -> torch.Tensor:
    """(3, H, W) float32 pixels 0..255 from a path or URL (grayscale/CMYK/alpha converted to RGB)."""
    source = str(source)
    if source.startswith(("http://", "https://", "file://")):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image"
            fetch(source, path, retries=retries, timeout=timeout, progress=False)
            return _decode(path, source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"image {source!r}: no such file")
    return _decode(path, source)


def _decode(path: Path, name: str) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"image {name!r} is not a readable image ({exc})") from None
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize of (3, H, W) pixels, clipped to 0..255."""
    out = F.interpolate(image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)[0]
    return out.clamp(0, 255)


def center_square(image: torch.Tensor, side: int) -> torch.Tensor:
    """Crop the largest centred square and resize it to ``side`` (the classifier's input)."""
    _, h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize(image[:, top:top + s, left:left + s], (side, side))


def fit_max_side(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """Resize so the longer side is ``max_side`` (up or down), keeping the aspect ratio."""
    if int(max_side) < 8:
        raise ConfigError(f"max_side must be >= 8 pixels, got {max_side}")
    _, h, w = image.shape
    scale = max_side / max(h, w)
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))
