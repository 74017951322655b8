"""The real TinyImageNet-100-A, when ../shared/data holds it (never required: skipped otherwise)."""

import io
import zipfile

import numpy as np
import pytest
from conftest import REAL_ZIP
from PIL import Image

from pipeline.data import cache as data

pytestmark = [pytest.mark.real_data, pytest.mark.slow,
              pytest.mark.skipif(not REAL_ZIP.is_file(), reason=f"real dataset not present at {REAL_ZIP}")]

SHA256 = "47759bc6cc7ad009df80b6ef6cb1da310d14b3c7676fed2e52a41154346afb12"


def test_prepare_real_zip(tmp_path):
    stats = data.prepare(REAL_ZIP, tmp_path / "prepared", progress=False)
    assert (stats["num_classes"], stats["num_train"], stats["num_val"], stats["num_test"]) == (100, 50000, 5000, 5000)
    assert stats["min_train_per_class"] == 500 and stats["zip_sha256"] == SHA256
    assert stats["num_converted_grayscale"] > 0
    cache = data.load_prepared(tmp_path / "prepared")
    val = cache.split("val")
    # the CS231n reference order: val in val_annotations.txt order
    assert val.files[0] == "val_1.JPEG" and cache.wnids[int(val.labels[0])] == "n04067472"
    assert np.bincount(val.labels.numpy()).tolist() == [50] * 100
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(REAL_ZIP) as zf:
        for split in ("train", "val", "test"):
            part = cache.split(split)
            for i in rng.choice(len(part), 100, replace=False):
                name = part.files[i]
                folder = f"train/{name.split('_')[0]}/images" if split == "train" else f"{split}/images"
                ref = Image.open(io.BytesIO(zf.read(f"tiny-imagenet-100-A/{folder}/{name}"))).convert("RGB")
                np.testing.assert_array_equal(part.images[i].numpy(), np.asarray(ref).transpose(2, 0, 1))
    train = cache.split("train").images
    np.testing.assert_allclose(cache.mean_image[:, :4, :4].numpy(),
                               train[:, :, :4, :4].double().mean(0).numpy(), rtol=1e-5)
