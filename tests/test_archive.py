"""Zip safety: unsafe names, bombs, truncation; deriving 100-A from the 200-class layout."""

import zipfile

import pytest
import synthetic

from pipeline.data import archive
from pipeline.errors import DataError


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/passwd", "C:/evil.txt", "a\\..\\..\\x"])
def test_zip_slip_is_rejected(tmp_path, name):
    path = write_zip(tmp_path / "bad.zip", {"root/wnids.txt": "n1\n", name: "x"})
    with pytest.raises(DataError, match="refusing the archive"):
        archive.open_checked(path)


def test_symlink_member_is_rejected(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("root/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        archive.open_checked(path)


def test_oversized_total_is_rejected(tmp_path):
    path = write_zip(tmp_path / "big.zip", {"root/a": b"\0" * 5000, "root/b": b"\0" * 5000})
    with pytest.raises(DataError, match="uncompressed size exceeds"):
        archive.open_checked(path, max_total_bytes=8000)
    archive.open_checked(path, max_total_bytes=10_000).close()


def test_total_cap_error_names_the_member_and_the_real_key(tmp_path):
    path = write_zip(tmp_path / "big.zip", {"root/a": b"\0" * 5000, "root/b": b"\0" * 5000})
    with pytest.raises(DataError, match=r"at member root/b \(5000 bytes; set data\.prepare\.max_total_bytes") as caught:
        archive.open_checked(path, max_total_bytes=8000)
    assert "\n" not in str(caught.value)


def test_default_total_cap_fits_the_dataset_not_8_gib(tmp_path):
    """A member claiming 2 GiB is refused under the defaults (8 GiB let a bomb that size through)."""
    path = write_zip(tmp_path / "claims.zip", {"root/wnids.txt": "n1\n", "root/train/n1/images/n1_0.JPEG": b"x"})
    synthetic.set_declared_size(path, "root/train/n1/images/n1_0.JPEG", 2 << 30)
    with pytest.raises(DataError, match="data.prepare.max_total_bytes"):
        archive.open_checked(path)
    assert archive.DEFAULT_MAX_TOTAL_BYTES == 1 << 30


def test_conf_limits_match_the_code_defaults():
    import yaml
    from conftest import REPO

    conf = yaml.safe_load((REPO / "conf" / "data" / "tiny-imagenet-100-A.yaml").read_text())["prepare"]
    assert conf["max_total_bytes"] == archive.DEFAULT_MAX_TOTAL_BYTES
    assert conf["max_image_bytes"] == archive.DEFAULT_MAX_IMAGE_BYTES
    assert conf["max_text_bytes"] == archive.DEFAULT_MAX_TEXT_BYTES


def test_read_member_is_capped_whatever_the_header_says(tmp_path):
    big = b"\0" * (4 << 20)
    path = write_zip(tmp_path / "m.zip", {"root/big.JPEG": big, "root/lies.JPEG": big, "root/ok.txt": b"fine"})
    with archive.open_checked(path) as zf:
        with pytest.raises(DataError, match=r"member root/big\.JPEG is 4194304 bytes, more than the limit of "
                                            r"1048576 \(data\.prepare\.max_image_bytes\)"):
            archive.read_member(zf, "root/big.JPEG", 1 << 20, "data.prepare.max_image_bytes")
        assert archive.read_member(zf, "root/ok.txt", 4, "k") == b"fine"
        with pytest.raises(DataError, match=r"root/ok\.txt .*data\.prepare\.max_text_bytes"):
            archive.read_text(zf, "root/ok.txt", limit=3)
    synthetic.set_declared_size(path, "root/lies.JPEG", 1000)  # claims 1000 bytes, holds 4 MiB
    with archive.open_checked(path) as zf:
        with pytest.raises(DataError, match=r"root/lies\.JPEG"), archive.member_errors(path, "root/lies.JPEG"):
            archive.read_member(zf, "root/lies.JPEG", 1 << 20, "data.prepare.max_image_bytes")


def test_truncated_and_non_zip_files_are_rejected(synthetic_zip, tmp_path):
    path, _ = synthetic_zip
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="not a valid zip archive"):
        archive.open_checked(truncated)
    html = tmp_path / "page.zip"
    html.write_text("<html>Not Found</html>")
    with pytest.raises(DataError, match="not a valid zip archive"):
        archive.open_checked(html)
    with pytest.raises(DataError, match="no such file"):
        archive.open_checked(tmp_path / "absent.zip")


def test_root_must_hold_one_wnids(tmp_path):
    path = write_zip(tmp_path / "no.zip", {"x/readme.txt": "hi"})
    with archive.open_checked(path) as zf, pytest.raises(DataError, match="exactly one top-level wnids.txt"):
        archive.find_root(zf)


def test_extract_is_complete_and_safe(synthetic_zip, tmp_path):
    path, expected = synthetic_zip
    out = archive.extract(path, tmp_path / "out", progress=False)
    for name, data in expected["members"].items():
        assert (out / name).read_bytes() == data
    bad = write_zip(tmp_path / "bad.zip", {"ok.txt": "x", "../evil.txt": "x"})
    with pytest.raises(DataError):
        archive.extract(bad, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "evil.txt").exists()


def test_derive_subset_from_200_layout(tmp_path):
    big = tmp_path / "tiny-imagenet-200.zip"
    expected = synthetic.make_zip(big, num_classes=5, root="tiny-imagenet-200", val_per_class=3, num_test=4)
    subset = ["n01641577", "n01443537"]  # a subset, in a different order than the source
    counts = archive.derive_subset(big, tmp_path / "sub.zip", subset, root_name="tiny-imagenet-100-A")
    assert counts == {"train": 12, "val": 6, "test": 4}
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        names = set(zf.namelist())
        assert zf.read("tiny-imagenet-100-A/wnids.txt").decode().split() == subset
        lines = zf.read("tiny-imagenet-100-A/val/val_annotations.txt").decode().splitlines()
        source_lines = expected["members"]["tiny-imagenet-200/val/val_annotations.txt"].decode().splitlines()
        assert lines == [line for line in source_lines if line.split("\t")[1] in subset]  # same order
        for line in lines:  # same file name, same bytes
            name = line.split("\t")[0]
            assert zf.read(f"tiny-imagenet-100-A/val/images/{name}") == \
                expected["members"][f"tiny-imagenet-200/val/images/{name}"]
        assert not any("/n01629819/" in n for n in names)
        assert "tiny-imagenet-100-A/words.txt" in names
    again = archive.derive_subset(big, tmp_path / "sub-again.zip", subset, root_name="tiny-imagenet-100-A")
    assert again == counts and (tmp_path / "sub-again.zip").read_bytes() == (tmp_path / "sub.zip").read_bytes()
    with pytest.raises(DataError, match="lacks 1 of the requested wnids"):
        archive.derive_subset(big, tmp_path / "sub2.zip", ["n12345678"], root_name="x")
    assert not (tmp_path / "sub2.zip").exists()
    assert len(names) == 3 + 12 + 2 + 6 + 4  # wnids+words+annotations, train, boxes, val, test
