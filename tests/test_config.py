"""Hydra composition: the primary config, its groups, overrides and the mirror variable."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.job import CONF_DIR, REPO_ROOT


def load(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_defaults_compose_and_resolve(monkeypatch):
    monkeypatch.delenv("CS231N_MIRROR", raising=False)
    cfg = load()
    assert cfg.data.url == "http://cs231n.stanford.edu/tiny-imagenet-100-A.zip"
    assert cfg.paths.raw_zip == f"{REPO_ROOT}/data/raw/dataset.zip"
    assert cfg.paths.prepared == f"{REPO_ROOT}/data/prepared"
    assert len(cfg.data.subset_wnids) == 100 and len(set(cfg.data.subset_wnids)) == 100
    assert cfg.model.arch == "resnet"
    OmegaConf.resolve(cfg)  # every interpolation resolves


def test_mirror_variable_and_source(monkeypatch):
    monkeypatch.setenv("CS231N_MIRROR", "http://127.0.0.1:8765")
    assert load().data.url == "http://127.0.0.1:8765/tiny-imagenet-100-A.zip"
    assert load(["data.source=tiny-imagenet-200"]).data.url == "http://127.0.0.1:8765/tiny-imagenet-200.zip"
    assert load(["data.url=file:///srv/x.zip"]).data.url == "file:///srv/x.zip"


@pytest.mark.parametrize("override", ["model=cs231n", "data.prepare.workers=1", "seed=7", "tracking.uri=sqlite:///x.db"])
def test_overrides(override):
    cfg = load([override])
    key, value = override.split("=")
    if key == "model":
        assert cfg.model.arch == "cs231n"
    else:
        assert str(OmegaConf.select(cfg, key)) == value


def test_dvc_params_exist_in_conf():
    """Every param dvc.yaml declares must exist in the file it names (else DVC silently tracks nothing)."""
    import yaml

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for entry in stage.get("params", []):
            if isinstance(entry, str):  # a key of params.yaml, DVC's default params file
                entry = {"params.yaml": [entry]}
            for path, keys in entry.items():
                params = yaml.safe_load((REPO_ROOT / path).read_text())
                for key in keys or []:
                    assert OmegaConf.select(OmegaConf.create(params), key) is not None or key in params, (name, key)
