"""prepare: value-by-value against PIL, deterministic order, clear errors, atomic output,
bounded memory on hostile zips, no workers or temporaries left after an error or interrupt."""

import functools
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import synthetic
from processes import live_children
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


# --------------------------------------------------------------------------- hostile zips, limits


def test_image_member_over_the_cap_is_refused_by_name(synthetic_zip, tmp_path):
    """A member of zeros (a zip bomb within the total cap) is refused after reading at most the cap,
    under the default cap (16 MiB) and a configured one."""
    path, expected = synthetic_zip
    member = f"{expected['prefix']}train/n01641577/images/n01641577_2.JPEG"
    bad = rewrite(path, tmp_path / "bad.zip", lambda n, d: b"\0" * (32 << 20) if n == member else d)
    with pytest.raises(DataError, match=rf"member {member} is 33554432 bytes, more than the limit of 16777216 "
                                        r"\(data\.prepare\.max_image_bytes\)"):
        data.prepare(bad, tmp_path / "out", workers=2, progress=False)
    with pytest.raises(DataError, match=r"member \S+\.JPEG is \d+ bytes, more than the limit of 1000 "
                                        r"\(data\.prepare\.max_image_bytes\)"):
        data.prepare(path, tmp_path / "out", workers=1, max_image_bytes=1000, progress=False)
    with pytest.raises(DataError, match=r"wnids\.txt .*data\.prepare\.max_text_bytes"):
        data.prepare(path, tmp_path / "out", workers=1, max_text_bytes=10, progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_non_image_member_is_refused_from_its_first_mib_even_under_a_raised_cap(synthetic_zip, tmp_path,
                                                                               monkeypatch):
    path, expected = synthetic_zip
    member = f"{expected['prefix']}test/images/test_1.JPEG"
    bad = rewrite(path, tmp_path / "bad.zip", lambda n, d: b"\0" * (64 << 20) if n == member else d)
    read = []
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = real_read(self, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    with pytest.raises(DataError, match=r"cannot decode .*test_1\.JPEG: cannot identify image file"):
        data.prepare(bad, tmp_path / "out", workers=1, max_image_bytes=256 << 20, progress=False)
    assert max(read) <= 1 << 20 and sum(read) < 2 << 20


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_decompression_bomb_is_refused_from_its_header(synthetic_zip, tmp_path, monkeypatch, kind):
    """A 2 KB image that declares a huge size is refused by name before the decoder allocates it."""
    import torchvision.io
    from PIL import ImageFile

    path, expected = synthetic_zip
    bomb = synthetic.jpeg_declaring(20000, 20000) if kind == "jpeg" else synthetic.png_declaring(9000, 9000)
    member = f"{expected['prefix']}val/images/val_2.JPEG"
    bad = rewrite(path, tmp_path / "bomb.zip", lambda n, d: bomb if n == member else d)
    real_decode = torchvision.io.decode_jpeg

    def decode_jpeg(data, *args, **kwargs):  # a PNG it refuses cheaply ("not a JPEG"); a JPEG bomb it would allocate
        for tensor in data if isinstance(data, list) else [data]:
            assert kind != "jpeg" or bytes(tensor.numpy()) != bomb, "the bomb reached the JPEG decoder"
        return real_decode(data, *args, **kwargs)

    def load(self):
        raise AssertionError(f"PIL decodes {self.size}")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    size = "20000x20000" if kind == "jpeg" else "9000x9000"
    with pytest.raises(DataError, match=rf"val_2\.JPEG is {size}, expected 64x64"):
        data.prepare(bad, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_jpeg_dimensions_follow_libjpeg():
    image = synthetic.jpeg(np.random.default_rng(0))
    assert data.jpeg_dimensions(image) == (64, 64)
    assert data.jpeg_dimensions(image[:2] + b"junk" + image[2:]) == (64, 64)  # libjpeg skips junk too
    assert data.jpeg_dimensions(synthetic.jpeg_declaring(300, 20000)) == (300, 20000)
    assert data.jpeg_dimensions(b"\x89PNG") is None and data.jpeg_dimensions(b"\xff\xd8\xff\xda") is None
    assert data.jpeg_dimensions(image[:20]) is None


def test_missing_val_annotations_is_refused(synthetic_zip, tmp_path):
    path, _ = synthetic_zip
    bad = rewrite(path, tmp_path / "bad.zip", lambda n, d: None if n.endswith("val_annotations.txt") else d)
    with pytest.raises(DataError, match=r"missing tiny-imagenet-100-A/val/val_annotations\.txt"):
        data.prepare(bad, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_class_without_training_images_is_named_in_a_warning(synthetic_zip, tmp_path, caplog):
    path, _ = synthetic_zip
    thin = rewrite(path, tmp_path / "thin.zip", lambda n, d: None if "/train/n01641577/images/" in n else d)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.cache"):
        stats = data.prepare(thin, tmp_path / "out", workers=1, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 of 4 classes have no training images" in warnings[0], warnings
    assert "n01641577" in warnings[0] and "n01443537" not in warnings[0]
    assert stats["min_train_per_class"] == 0 and stats["num_train"] == 18


# --------------------------------------------------------------------------- errors and interrupts


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_error_in_one_chunk_kills_the_busy_workers(synthetic_zip, tmp_path, monkeypatch):
    """A bad chunk ends prepare at once: the workers still decoding other chunks are killed, not
    waited for, and the temporary cache is removed."""
    path, _ = synthetic_zip
    original = data._decode_chunk

    @functools.wraps(original)  # same qualified name: the forked workers find it by that name
    def decode_chunk(zip_path, npy_path, *args):
        if npy_path.name.startswith("val"):
            raise DataError("bad chunk")
        time.sleep(120)
        return original(zip_path, npy_path, *args)

    monkeypatch.setattr(data, "_decode_chunk", decode_chunk)
    start = time.monotonic()
    with pytest.raises(DataError, match="bad chunk"):
        data.prepare(path, tmp_path / "out", workers=2, progress=False)
    assert time.monotonic() - start < 30
    assert live_children(os.getpid()) == []
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


SLOW_PREPARE = """
import functools, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
from pipeline.data import cache
original = cache._decode_chunk

@functools.wraps(original)
def slow(*args):
    time.sleep(600)  # a chunk that takes long: the job must not wait for it
    return original(*args)

cache._decode_chunk = slow
from pipeline.data.prepare import main
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_prepare_job_leaves_no_workers_and_no_temporaries(synthetic_zip, tmp_path, signum):
    """Ctrl-C or SIGTERM while the workers decode: the job exits promptly, its workers are gone and
    no temporary cache folder is left. (SIGTERM relies on pipeline.job turning it into KeyboardInterrupt.)"""
    from conftest import REPO

    path, _ = synthetic_zip
    out = tmp_path / "out"
    overrides = [f"paths.raw_zip={path}", f"paths.prepared={out}/prepared", f"paths.metrics={out}/metrics",
                 f"tracking.uri=sqlite:///{out}/mlflow.db", f"hydra.run.dir={out}/hydra", "progress=false",
                 "data.prepare.workers=2"]
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, *overrides], cwd=REPO, env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 or not list(out.glob(".prepared.*.tmp")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "prepare never started its workers"
            time.sleep(0.1)
            workers = live_children(proc.pid)
        time.sleep(1.0)  # the workers are inside their chunks
        proc.send_signal(signum)
        stderr = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:  # ours: started by the job above
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert [pid for pid in workers if alive(pid)] == []
    assert not (out / "prepared").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".prepared")] == []
