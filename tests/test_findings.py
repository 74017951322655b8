"""Published findings as tests of meaning, on the classifier the pipeline trained (skipped without it).

Adebayo et al. 2018, "Sanity Checks for Saliency Maps": when the top layer of a trained network is
re-initialised, the plain gradient and Grad-CAM maps change (they depend on what the network
learned), while guided backprop's barely change (it behaves like an edge detector of the input).
Our trained model must separate the methods the same way; the figures are printed, and the
committed metrics/saliency.json holds those of the reference run over more images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CLASSIFIER, PREPARED = REPO / "models" / "classifier.pt", REPO / "data" / "prepared"

pytestmark = [pytest.mark.real_data, pytest.mark.slow,
              pytest.mark.skipif(not (CLASSIFIER.is_file() and (PREPARED / "meta.json").is_file()),
                                 reason="no trained classifier here (dvc repro train)")]


def top_layer_spearman(name: str, model, meta, images, targets) -> float:
    from pipeline.explain.attribution.registry import factory
    from pipeline.explain.faithfulness import cascading_randomization

    make = factory(name, batch_size=64, seed=0)
    return cascading_randomization(model, meta["arch"], lambda m: make(m).maps(images, targets), seed=0)[0][1]


def test_top_layer_randomisation_separates_the_methods_as_published():
    from pipeline.data.cache import load_prepared
    from pipeline.model.checkpoint import load_classifier

    model, meta = load_classifier(CLASSIFIER)
    model.requires_grad_(False)
    val = load_prepared(PREPARED).split("val")
    index = torch.randperm(len(val), generator=torch.Generator().manual_seed(1))[:32]  # not the job's sample
    images, targets = val.images[index].float(), val.labels[index]
    rho = {name: top_layer_spearman(name, model, meta, images, targets)
           for name in ("gradient", "gradcam", "guided_backprop")}
    print("Spearman to the trained maps after re-initialising the top layer:", rho)
    assert rho["guided_backprop"] >= 0.9, rho  # barely changes
    assert max(rho["gradient"], rho["gradcam"]) <= rho["guided_backprop"] - 0.2, rho  # change clearly more
