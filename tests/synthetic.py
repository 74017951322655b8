"""Small TinyImageNet-layout zips for tests: a few classes, a few grayscale/CMYK JPEGs."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900", "n01698640"]
WORDS = {
    "n00000001": "entity",
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n01641577": "bullfrog, Rana catesbeiana",
    "n01644900": "tailed frog, bell toad, ribbed toad",
    "n01698640": "American alligator, Alligator mississipiensis",
    "n09999999": "not in this dataset",
}


def jpeg(rng: np.random.Generator, mode: str = "RGB", size: int = 64) -> bytes:
    """A smooth random image (so JPEG keeps it recognisable) in ``mode``."""
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(base).resize((size, size), Image.BILINEAR)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_zip(path: Path, *, num_classes: int = 4, train_per_class: int = 6, val_per_class: int = 2,
             num_test: int = 3, root: str = "tiny-imagenet-100-A", seed: int = 0, size: int = 64,
             grayscale: tuple[str, ...] = ("train/1/2", "val/3", "test/1"), cmyk: tuple[str, ...] = ("train/0/4",),
             wnids: list[str] | None = None) -> dict:
    """Write the zip; return {member name: jpeg bytes} plus the expected listing for checks."""
    rng = np.random.default_rng(seed)
    wnids = list(wnids or WNIDS[:num_classes])
    members: dict[str, bytes] = {}
    expected = {"train": [], "val": [], "test": [], "train_labels": [], "val_labels": []}
    prefix = f"{root}/" if root else ""

    def mode_of(key: str) -> str:
        return "L" if key in grayscale else "CMYK" if key in cmyk else "RGB"

    for c, wnid in enumerate(wnids):
        boxes = []
        # Write in reverse so the prepared order must come from sorting, not zip order.
        for i in reversed(range(train_per_class)):
            name = f"{prefix}train/{wnid}/images/{wnid}_{i}.JPEG"
            members[name] = jpeg(rng, mode_of(f"train/{c}/{i}"), size)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        members[f"{prefix}train/{wnid}/{wnid}_boxes.txt"] = "".join(boxes).encode()
    train_sorted = []
    for c, wnid in enumerate(wnids):
        for i in range(train_per_class):
            train_sorted.append(f"{wnid}_{i}.JPEG")
            expected["train_labels"].append(c)
    expected["train"] = train_sorted
    annotations = []
    order = rng.permutation(num_classes * val_per_class)
    for k, j in enumerate(order):
        label = int(j) % num_classes
        name = f"val_{k}.JPEG"
        members[f"{prefix}val/images/{name}"] = jpeg(rng, mode_of(f"val/{k}"), size)
        annotations.append(f"{name}\t{wnids[label]}\t0\t0\t63\t63\n")
        expected["val"].append(name)
        expected["val_labels"].append(label)
    members[f"{prefix}val/val_annotations.txt"] = "".join(annotations).encode()
    for k in range(num_test):
        members[f"{prefix}test/images/test_{k}.JPEG"] = jpeg(rng, mode_of(f"test/{k}"), size)
    expected["test"] = sorted((f"test_{k}.JPEG" for k in range(num_test)),
                              key=lambda n: int(n.split("_")[1].split(".")[0]))
    members[f"{prefix}wnids.txt"] = "".join(w + "\n" for w in wnids).encode()
    members[f"{prefix}words.txt"] = "".join(f"{w}\t{t}\n" for w, t in WORDS.items()).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    expected["members"] = members
    expected["wnids"] = wnids
    expected["prefix"] = prefix
    return expected


def decode(data: bytes) -> np.ndarray:
    """Reference decode: PIL, converted to RGB, as (3, H, W) uint8."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)


def jpeg_declaring(width: int, height: int, seed: int = 0) -> bytes:
    """A valid 64x64 JPEG whose frame header (SOF0) is patched to declare ``width`` x ``height``: a
    decompression bomb's header in 2 KB (a decoder would allocate width*height*3 bytes)."""
    data = bytearray(jpeg(np.random.default_rng(seed)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels in a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def set_declared_size(path: Path, member: str, size: int) -> None:
    """Patch the uncompressed size the central directory records for ``member`` (a lying header)."""
    import struct

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        offset = zf.start_dir
    name = member.encode()
    while raw[offset:offset + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", raw[offset + 28:offset + 34])
        if raw[offset + 46:offset + 46 + name_len] == name:
            raw[offset + 24:offset + 28] = struct.pack("<I", size)
            path.write_bytes(bytes(raw))
            return
        offset += 46 + name_len + extra_len + comment_len
    raise KeyError(member)
