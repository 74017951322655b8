"""prepare: value-by-value against PIL, deterministic order, clear errors, atomic output."""

import io
import json
import zipfile

import numpy as np
import pytest
import synthetic
import torch
from PIL import Image

from pipeline.data import cache as data
from pipeline.errors import ConfigError, DataError


@pytest.fixture
def prepared(synthetic_zip, tmp_path):
    path, expected = synthetic_zip
    stats = data.prepare(path, tmp_path / "prepared", workers=2, chunk=5, progress=False)
    return data.load_prepared(tmp_path / "prepared"), stats, expected


def test_prepare_values_order_and_labels(prepared):
    cache, stats, expected = prepared
    prefix = expected["prefix"]
    for split, folder in [("train", None), ("val", "val/images/"), ("test", "test/images/")]:
        part = cache.split(split)
        assert part.files == expected[split]
        assert part.images.dtype == torch.uint8 and part.images.shape == (len(expected[split]), 3, 64, 64)
        for i, name in enumerate(part.files):
            member = (f"{prefix}train/{name.split('_')[0]}/images/{name}" if folder is None else prefix + folder + name)
            np.testing.assert_array_equal(part.images[i].numpy(), synthetic.decode(expected["members"][member]))
        if split != "test":
            assert part.labels.tolist() == expected[f"{split}_labels"]
            assert part.labels.dtype == torch.int64
        else:
            assert part.labels is None
    assert stats["num_converted_grayscale"] == 3 and stats["num_converted_cmyk"] == 1
    assert stats["num_train"] == 24 and stats["num_val"] == 8 and stats["num_test"] == 3


def test_mean_image_and_metadata(prepared, synthetic_zip):
    cache, stats, expected = prepared
    train = cache.split("train").images.double()
    np.testing.assert_allclose(cache.mean_image.numpy(), train.mean(0).numpy(), rtol=1e-6)
    assert cache.mean_image.dtype == torch.float32
    assert cache.wnids == expected["wnids"]
    assert cache.class_names == ["goldfish", "European fire salamander", "bullfrog", "tailed frog"]
    assert cache.words[3] == "tailed frog, bell toad, ribbed toad"
    from pipeline.data.fetch import sha256_file
    assert cache.sha256 == sha256_file(synthetic_zip[0]) == stats["zip_sha256"]


def test_prepare_is_deterministic_across_worker_counts(synthetic_zip, tmp_path):
    path, _ = synthetic_zip
    data.prepare(path, tmp_path / "a", workers=1, progress=False)
    data.prepare(path, tmp_path / "b", workers=2, chunk=3, progress=False)
    for name in ["train_images.npy", "val_images.npy", "test_images.npy", "train_labels.npy", "mean_image.npy"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    meta_a, meta_b = (json.loads((tmp_path / d / "meta.json").read_text()) for d in "ab")
    assert meta_a == meta_b


def test_class_lookup(prepared):
    cache, _, _ = prepared
    assert cache.class_index(2) == cache.class_index("2") == cache.class_index("n01641577") == 2
    assert cache.class_index("Rana catesbeiana") == 2 and cache.class_index("BELL TOAD") == 3
    with pytest.raises(ConfigError, match="did you mean 'bullfrog'"):
        cache.class_index("bulfrog")
    with pytest.raises(ConfigError, match="unknown class 'zebra'"):
        cache.class_index("zebra")
    with pytest.raises(ConfigError, match="out of range 0..3"):
        cache.class_index(4)
    with pytest.raises(ConfigError, match="unknown split"):
        cache.split("holdout")


def test_dataset_wrapper(prepared):
    cache, _, _ = prepared
    dataset = data.ImageDataset(cache.split("val"))
    image, label = dataset[0]
    assert image.dtype == torch.float32 and image.max() <= 255 and label == cache.split("val").labels[0]
    with pytest.raises(ConfigError, match="no labels"):
        data.ImageDataset(cache.split("test"))


def rewrite(src, dest, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            payload = change(info.filename, zin.read(info.filename))
            if payload is not None:
                zout.writestr(info.filename, payload)
    return dest


def jpeg_of_size(w, h):
    buffer = io.BytesIO()
    Image.new("RGB", (w, h), "red").save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("change, message", [
    (lambda n, d: jpeg_of_size(48, 64) if n.endswith("val_1.JPEG") else d, r"val_1\.JPEG is 48x64, expected 64x64"),
    (lambda n, d: b"\xff\xd8garbage" if n.endswith("test_2.JPEG") else d, r"cannot decode .*test_2\.JPEG"),
    (lambda n, d: None if n.endswith("val_3.JPEG") else d, r"names val_3\.JPEG, missing from the zip"),
    (lambda n, d: d + b"val_0.JPEG\tn99999999\t0\t0\t1\t1\n" if n.endswith("val_annotations.txt") else d,
     r"line 9 names class 'n99999999'"),
    (lambda n, d: b"" if n.endswith("wnids.txt") else d, "lists no classes"),
    (lambda n, d: None if "/train/" in n else d, "no training images"),
    (lambda n, d: b"" if n.endswith("val_2.JPEG") else d, r"val_2\.JPEG is empty"),
])
def test_bad_datasets_fail_clearly_and_write_nothing(synthetic_zip, tmp_path, change, message):
    path, _ = synthetic_zip
    bad = rewrite(path, tmp_path / "bad.zip", change)
    with pytest.raises(DataError, match=message):
        data.prepare(bad, tmp_path / "out", workers=2, chunk=4, progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_corrupt_member_data(synthetic_zip, tmp_path):
    path, expected = synthetic_zip
    raw = bytearray(path.read_bytes())
    target = expected["members"][f"{expected['prefix']}train/n01641577/images/n01641577_3.JPEG"]
    # flip bytes inside that member's compressed payload (CRC check must catch it)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{expected['prefix']}train/n01641577/images/n01641577_3.JPEG")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 10
    raw[start:start + 20] = bytes(20)
    assert target  # sanity: member exists
    bad = tmp_path / "corrupt.zip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"n01641577_3\.JPEG"):
        data.prepare(bad, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_existing_cache_is_replaced_only_on_success(synthetic_zip, tmp_path):
    path, _ = synthetic_zip
    data.prepare(path, tmp_path / "out", workers=1, progress=False)
    before = (tmp_path / "out" / "train_images.npy").read_bytes()
    bad = rewrite(path, tmp_path / "bad.zip", lambda n, d: b"junk" if n.endswith("test_0.JPEG") else d)
    with pytest.raises(DataError):
        data.prepare(bad, tmp_path / "out", workers=1, progress=False)
    assert (tmp_path / "out" / "train_images.npy").read_bytes() == before


def test_other_image_sizes_and_roots(tmp_path):
    path = tmp_path / "small.zip"
    synthetic.make_zip(path, size=32, root="", num_classes=2, grayscale=(), cmyk=())
    with pytest.raises(DataError, match="expected 64x64"):
        data.prepare(path, tmp_path / "out", workers=1, progress=False)
    stats = data.prepare(path, tmp_path / "out", image_size=32, workers=1, progress=False)
    assert stats["num_classes"] == 2
    assert data.load_prepared(tmp_path / "out").split("train").images.shape[-1] == 32


def test_missing_or_stale_cache(tmp_path):
    with pytest.raises(DataError, match="run the prepare stage"):
        data.load_prepared(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"version": 0}))
    with pytest.raises(DataError, match="cache version"):
        data.load_prepared(tmp_path)
    with pytest.raises(ConfigError, match="must be >= 1"):
        data.prepare(tmp_path / "x.zip", tmp_path / "o", workers=0)
