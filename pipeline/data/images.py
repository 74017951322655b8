"""Images from outside the dataset (a file or an http(s) URL) as float pixel tensors.

Feature inversion and DeepDream accept any picture; a bad path or a file that is not an image
fails with an error naming it, before any work. The source is untrusted: the bytes read
(``images.max_bytes``) and the pixels decoded (``images.max_pixels``, checked from the header
before decoding) are capped, so an endless URL or a decompression bomb fails in one line instead
of filling the disk or the memory; a download lives in a temporary folder removed on every exit.
"""

from __future__ import annotations

import tempfile
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from pipeline.errors import ConfigError, DataError
from pipeline.data.fetch import fetch
from pipeline.redaction import redact

MAX_BYTES = 50 << 20  # defaults of conf/config.yaml `images`
MAX_PIXELS = 40_000_000


def read_image(source: str, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, retries: int = 2,
               timeout: float = 30.0) -> torch.Tensor:
    """(3, H, W) float32 pixels 0..255 from a path or URL (grayscale/CMYK/alpha converted to RGB)."""
    source, shown = str(source), image_name(str(source))
    if int(max_bytes) < 1 or int(max_pixels) < 1:
        raise ConfigError(f"images.max_bytes ({max_bytes}) and images.max_pixels ({max_pixels}) must be >= 1")
    if source.startswith(("http://", "https://", "file://")):
        with tempfile.TemporaryDirectory(prefix="pipeline-image-") as tmp:
            path = Path(tmp) / "image"
            fetch(source, path, retries=retries, timeout=timeout, progress=False, max_bytes=int(max_bytes))
            return _decode(path, shown, int(max_pixels))
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"image {shown!r}: no such file")
    if path.stat().st_size > int(max_bytes):
        raise DataError(f"image {shown!r} is {path.stat().st_size} bytes, more than images.max_bytes={max_bytes}")
    return _decode(path, shown, int(max_pixels))


def image_name(source: str) -> str:
    """A caption for an image given by path or URL: its file name, never a query string or credentials."""
    source = redact(str(source))
    if "://" in source:
        return Path(urllib.parse.urlsplit(source).path).name or source
    return Path(source).name


def _decode(path: Path, name: str, max_pixels: int) -> torch.Tensor:
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own cap applies instead of PIL's
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
                if width * height > max_pixels:
                    raise DataError(f"image {name!r} is {width}x{height} = {width * height} pixels, more than "
                                    f"images.max_pixels={max_pixels}")
                image.load()
                array = np.asarray(image.convert("RGB"), dtype=np.float32)
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {name!r} is too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"image {name!r} is not a readable image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
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
