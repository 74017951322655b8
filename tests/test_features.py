"""Unit objectives (Channel, Neuron, Direction, Diversity) and the feature-visualization job."""

import json

import mlflow
import pytest
import torch
from conftest import job_config, tiny_classifier
from omegaconf import OmegaConf

from pipeline.errors import ConfigError
from pipeline.explain import features
from pipeline.explain.engine.objectives import L2, Channel, Direction, Diversity, Neuron, Probe
from pipeline.explain.engine.regime import from_config
from pipeline.job import compose_config
from pipeline.model.architectures import build_model
from pipeline.model.precision import frozen
from pipeline.track import report


class Layers:
    """A stand-in model whose layer 0 is the image itself and layer 1 its flattened mean colour, so
    every objective's value can be written down by hand."""

    layer_names = ["image", "colour"]

    def layer_index(self, layer):
        return self.layer_names.index(layer) if isinstance(layer, str) else int(layer)

    def features(self, x, layers):
        return {i: x if i == 0 else x.mean(dim=(2, 3)) for i in layers}


def probe(x, index=None):
    index = torch.arange(len(x)) if index is None else torch.as_tensor(index)
    return Probe(Layers(), x, x, index)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net, _ = tiny_classifier(num_classes=4, mean_image=torch.rand(3, 64, 64) * 100 + 80)
    return frozen(net, "cpu")


def regime_for(model, **kw):
    section = OmegaConf.merge(compose_config("features").features, {"show_every": 0, **kw})
    return from_config(section.regime, center=model.mean_image.cpu())


# --------------------------------------------------------------------------- objectives on small tensors


def test_channel_is_the_mean_activation_of_each_images_channel():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(Channel(0, 1).evaluate(probe(x)).terms["channel"], x[:, 1].mean(dim=(1, 2)))
    # per image: one channel per batch position, looked up by probe.index (here the active images 0 and 2)
    x3 = torch.rand(2, 3, 4, 4)
    value = Channel("image", torch.tensor([2, 1, 0])).evaluate(probe(x3, [0, 2])).terms["channel"]
    assert torch.allclose(value, torch.stack([x3[0, 2].mean(), x3[1, 0].mean()]))
    flat = Channel("colour", torch.tensor([0, 2])).evaluate(probe(x3)).terms["channel"]  # a flat layer: the unit
    assert torch.allclose(flat, torch.stack([x3[0, 0].mean(), x3[1, 2].mean()]))
    with pytest.raises(ConfigError, match="out of range"):
        Channel(0, 3).evaluate(probe(x3))


def test_neuron_is_one_position_the_centre_by_default():
    x = torch.rand(2, 3, 5, 4)
    assert torch.equal(Neuron(0, 2).evaluate(probe(x)).terms["neuron"], x[:, 2, 2, 2])
    assert torch.equal(Neuron(0, torch.tensor([0, 1]), x=3, y=1).evaluate(probe(x)).terms["neuron"],
                       torch.stack([x[0, 0, 1, 3], x[1, 1, 1, 3]]))
    with pytest.raises(ConfigError, match="outside"):
        Neuron(0, 0, x=4).evaluate(probe(x))
    with pytest.raises(ConfigError, match="no positions"):
        Neuron(1, 0).evaluate(probe(x))


def test_direction_cosine_and_dot():
    x = torch.zeros(2, 3, 1, 2)
    x[0, :, 0, 0], x[0, :, 0, 1] = torch.tensor([1.0, 0, 0]), torch.tensor([0, 2.0, 0])  # along v, orthogonal
    x[1, :, 0, 0] = x[1, :, 0, 1] = torch.tensor([-3.0, 0, 0])  # against v
    v = torch.tensor([2.0, 0, 0])
    assert torch.allclose(Direction(0, v).evaluate(probe(x)).terms["direction"], torch.tensor([0.5, -1.0]))
    assert torch.allclose(Direction(0, v, cosine=False).evaluate(probe(x)).terms["direction"], torch.tensor([1.0, -6.0]))
    per_image = torch.stack([v, -v])  # one direction per image
    assert torch.allclose(Direction(0, per_image).evaluate(probe(x)).terms["direction"], torch.tensor([0.5, 1.0]))
    with pytest.raises(ConfigError, match="2 channels"):
        Direction(0, torch.ones(2)).evaluate(probe(x))


def test_diversity_is_minus_the_mean_gram_cosine_to_the_others():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 4, 4)
    value = Diversity(0).evaluate(probe(x)).terms["diversity"]
    grams = torch.stack([(f @ f.T).flatten() for f in x.flatten(2)])
    grams = grams / grams.norm(dim=1, keepdim=True)
    cos = grams @ grams.T
    expected = torch.stack([-(cos[i].sum() - cos[i, i]) / 3 for i in range(4)])
    assert torch.allclose(value, expected)
    # Lucid's batch total, -sum over ordered pairs / batch, is the sum of the values times (n - 1) / n
    lucid = -sum(float(cos[i, j]) for i in range(4) for j in range(4) if i != j) / 4
    assert float(value.sum()) * 3 / 4 == pytest.approx(lucid)
    same = Diversity(0).evaluate(probe(x[:1].expand(3, -1, -1, -1))).terms["diversity"]
    assert torch.allclose(same, torch.full((3,), -1.0))  # identical images: as similar as can be
    assert torch.equal(Diversity(0).evaluate(probe(x[:1])).terms["diversity"], torch.zeros(1))  # alone: 0


def test_diversity_compares_only_within_a_group_and_its_gradient_reaches_the_group():
    torch.manual_seed(1)
    x = torch.rand(5, 3, 4, 4, requires_grad=True)
    groups = torch.tensor([0, 0, 1, 1, 2])
    value = Diversity(0, groups=groups).evaluate(probe(x)).terms["diversity"]
    for i, j in ((0, 1), (2, 3)):
        pair = Diversity(0).evaluate(probe(x[[i, j]])).terms["diversity"]
        assert torch.allclose(value[[i, j]], pair)
    assert value[4] == 0  # alone in its group
    (grad,) = torch.autograd.grad(value[0], x)  # image 0's value moves image 1 too, nothing outside the group
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0 and grad[2:].abs().sum() == 0


def test_unit_objectives_compose_with_the_algebra_and_priors():
    x = torch.rand(2, 3, 4, 4) * 255
    objective = Channel(0, 0) + 2.0 * Neuron(0, 1) - 1e-3 * L2() + 0.5 * Diversity(0)
    e = objective.evaluate(probe(x))
    assert set(e.terms) == {"channel", "neuron", "l2", "diversity"} and {"channel_activation", "neuron_activation"} <= set(e.metrics)
    expected = x[:, 0].mean((1, 2)) + 2 * x[:, 1, 2, 2] - 1e-3 * (x ** 2).flatten(1).sum(1) \
        + 0.5 * Diversity(0).evaluate(probe(x)).terms["diversity"]
    assert torch.allclose(e.total, expected)


@pytest.mark.parametrize("make", [lambda c: Channel("stage2.block1", c), lambda c: Neuron("stage2.block1", c),
                                  lambda c: Direction("stage2.block1", torch.nn.functional.one_hot(c, 16).float())],
                         ids=["channel", "neuron", "direction"])
def test_gradients_flow_and_batched_equals_one_at_a_time(model, make):
    torch.manual_seed(2)
    x = (torch.rand(3, 3, 64, 64) * 255).requires_grad_(True)
    with torch.no_grad():  # each image's most active centre unit: a ReLU unit at 0 has no gradient
        feats = model.features(x, ["stage2.block1"])[2]
        channels = feats[:, :, feats.shape[-2] // 2, feats.shape[-1] // 2].argmax(1)
    batched = make(channels).evaluate(Probe(model, x, x, torch.arange(3))).total
    (grad,) = torch.autograd.grad(batched.sum(), x)
    assert all(g.abs().sum() > 0 for g in grad)
    for i in range(3):
        single = make(channels[i:i + 1]).evaluate(Probe(model, x[i:i + 1], x[i:i + 1], torch.arange(1))).total
        assert torch.allclose(single, batched[i:i + 1], atol=1e-5)


# --------------------------------------------------------------------------- the job's pieces


def test_layers_by_stage_channels_by_activation():
    net = build_model({"arch": "resnet", "num_classes": 4, "widths": [8, 16], "blocks": [1, 2], "stem_width": 8})
    assert [net.layer_names[i] for i in features.choose_layers("stages", net, (64, 64))] == \
        ["stem", "stage1.block1", "stage2.block2"]  # the last layer of each resolution
    assert len(features.choose_layers("all", net, (64, 64))) == 4
    assert features.choose_layers(["stem", 3, "stem"], net, (64, 64)) == [0, 3]
    values = torch.tensor([[0.0, 3.0, 1.0, 3.0, 2.0], [0.0, 1.0, 1.0, 1.0, 0.0]])
    assert features.choose_channels(values, 3, "top") == [1, 3, 2]  # ties: the lower index first
    assert features.choose_channels(values, 3, "spaced") == [0, 2, 4]
    assert features.choose_channels(values, 9, "top") == [1, 3, 2, 4, 0]
    with pytest.raises(ConfigError, match="select"):
        features.choose_channels(values, 2, "random")


def test_redirected_relu_switches_on_a_dead_unit_and_is_plain_relu_otherwise():
    net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.ReLU(inplace=True))
    x = torch.tensor([[-1.0, -2.0], [1.0, -1.0]], requires_grad=True)  # image 0: all off; image 1: one on
    with features.redirected_relus(net):
        out = net(x.clone())
        assert torch.equal(out, torch.tensor([[0.0, 0.0], [1.0, 0.0]])) and not net[1].inplace
        (grad,) = torch.autograd.grad(-out.sum(), x)  # the loss of maximising the sum
    assert torch.equal(grad, torch.tensor([[-1.0, -1.0], [-1.0, 0.0]]))  # dead: passed on; alive: plain ReLU
    with features.redirected_relus(net):
        (grad,) = torch.autograd.grad(out.detach().sum() + net(x.clone()).sum(), x)  # would push x lower: blocked
    assert torch.equal(grad, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert net[1].inplace and not net[1]._forward_hooks  # restored
    (grad,) = torch.autograd.grad(-net(x.clone()).sum(), x)
    assert torch.equal(grad, torch.tensor([[0.0, 0.0], [-1.0, 0.0]]))  # outside the context: plain ReLU


def test_unit_values_match_the_objectives(model):
    x = torch.rand(2, 3, 64, 64) * 255
    feats = model.features(x, ["stage1.block1"])[1]
    for unit, objective in (("channel", Channel), ("neuron", Neuron)):
        values = features.unit_values(feats, unit)
        evaluated = objective(1, torch.tensor([3, 7])).evaluate(Probe(model, x, x, torch.arange(2))).total
        assert torch.allclose(values[[0, 1], [3, 7]], evaluated, atol=1e-5)


def test_render_batched_equals_one_at_a_time_and_raises_the_unit(model):
    regime = regime_for(model, iterations=6)
    layer = model.layer_index("stage1.block1")
    batched = features.visualize_units(model, layer, [0, 4, 7], regime, seed=1, init_std=10.0)
    for k, channel in enumerate([0, 4, 7]):
        single = features.visualize_units(model, layer, [channel], regime, seed=1, init_std=10.0).images
        assert torch.allclose(single[0], batched.images[k], atol=1e-2), (single[0] - batched.images[k]).abs().max()
    result = features.visualize_units(model, layer, [4], regime_for(model, iterations=30), seed=0, init_std=10.0)
    assert result.history[-1]["channel"] > result.history[0]["channel"]
    assert result.images.min() >= 0 and result.images.max() <= 255


def test_samples_with_diversity_differ(model):
    regime = regime_for(model, iterations=8)
    layer = model.layer_index("stage1.block1")
    result = features.visualize_units(model, layer, [2, 6], regime, seed=0, init_std=10.0, samples=2, diversity=5.0)
    assert len(result.images) == 4 and "diversity" in result.history[0] and "gram_similarity" in result.history[0]
    assert (result.images[0] - result.images[1]).abs().mean() > 1.0  # two pictures of channel 2, not one
    with pytest.raises(ConfigError, match="samples"):
        features.visualize_units(model, layer, [2], regime, seed=0, init_std=10.0, samples=0)


# --------------------------------------------------------------------------- the job


def test_features_job_writes_grids_metrics_mlflow_and_its_report_section(subject_files, tmp_path):
    metrics = features.run(job_config("features", subject_files, tmp_path, "features.iterations=3",
                                      "features.channels=3", "features.batch_size=2"))
    saved = json.loads((tmp_path / "metrics" / "features.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["num_layers"] == 3 and saved["num_channels"] == 9 and saved["val_images"] == 24
    assert {"mean_activation_ratio", "min_activation_ratio", "beyond_val_rate", "seconds", "seconds_per_iteration"} <= set(saved)
    assert list(saved["layers"]) == sorted(["stem", "stage1.block1", "stage2.block1"])
    assert all(row["activation_ratio"] > 0 and row["channels"] == 3 for row in saved["layers"].values())
    out = tmp_path / "results" / "features"
    assert (out / "overview.png").is_file()
    assert sorted(p.name for p in (out / "layers").glob("*.png")) == \
        ["00_stem.png", "01_stage1.block1.png", "02_stage2.block1.png"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("features").experiment_id])[0]
    assert run.data.tags["main_figure"] == "overview.png" and run.data.tags["layers"] == "stem,stage1.block1,stage2.block1"
    assert run.data.params["features.param"] == "fourier" and run.data.metrics["layers.stem.activation_ratio"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | \
        {a.path for a in client.list_artifacts(run.info.run_id, "layers")}
    assert {"overview.png", "layers/00_stem.png"} <= artifacts
    assert len(client.get_metric_history(run.info.run_id, "stem.loss")) == 3
    assert len(client.get_metric_history(run.info.run_id, "stem.batch1.loss")) == 3  # channel 3 in a second batch

    page = report.run(job_config("report", subject_files, tmp_path, f"report.out={tmp_path}/report/index.html")).read_text()
    section = page[page.index('<h2 id="features">'):]
    assert "<th>layer</th>" in section and "overview.png" in section
    assert section.index("<td>stem</td>") < section.index("<td>stage1.block1</td>") < section.index("<td>stage2.block1</td>")


@pytest.mark.parametrize("override, message", [("features.unit=pixel", "unit"), ("features.select=random", "select"),
                                               ("features.channels=0", "channels"), ("features.layers=[nope]", "nope"),
                                               ("features.unit=neuron", "flat")])
def test_bad_settings_fail_clearly_and_write_nothing(subject_files, tmp_path, override, message):
    extra = ["features.layers=[stem,pool]"] if override == "features.unit=neuron" else []
    with pytest.raises(Exception, match=message):
        features.run(job_config("features", subject_files, tmp_path, "features.iterations=2", override, *extra))
    assert not (tmp_path / "results" / "features").exists() and not (tmp_path / "metrics" / "features.json").exists()
