"""The deconvnet view: checked against the deconvnet built by hand (transposed convolutions, max
unpooling by switches, rectification) on a small network, its layers picked from real backbones'
freeze units, carried by trials and drawn per trial and per study."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from freezebench import plugins
from freezebench.analysis import StudyRecords, TrialOutputs
from freezebench.backbone import WeightsRequest
from freezebench_plugins.deconv import deconv_views, default_rule, to_display, unit_layers
from freezebench_plugins.saliency import SaliencyMaps
from freezebench.engine.trial import DataCache, TrialConfig, run_trial


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace=True)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x))))).mean((2, 3)))


def _by_hand(model: _Small, x: torch.Tensor, guided: bool = False):
    """Zeiler & Fergus's deconvnet, written out: each layer's transpose, from the strongest map of relu2
    down; ``guided``: each ReLU also applies its forward mask before rectifying (Springenberg et al.)."""
    with torch.no_grad():
        a1 = torch.relu(model.conv1(x))
        pooled, switches = F.max_pool2d(a1, 2, return_indices=True)
        a2 = torch.relu(model.conv2(pooled))
        strongest = a2.flatten(2).amax(2).argmax(1)
        signal = torch.zeros_like(a2)
        for n, c in enumerate(strongest):
            signal[n, c] = a2[n, c]
        mask2, mask1 = (a2 > 0, a1 > 0) if guided else (1, 1)
        down = F.conv_transpose2d(torch.relu(signal * mask2), model.conv2.weight, padding=1)
        down = F.max_unpool2d(down, switches, 2, output_size=a1.shape[-2:])
        return F.conv_transpose2d(torch.relu(down * mask1), model.conv1.weight, padding=1), strongest


def test_views_equal_the_deconvnet_built_by_hand():
    torch.manual_seed(0)
    model, x = _Small(), torch.randn(3, 3, 12, 12)
    expected, strongest = _by_hand(model, x)
    views, channels = deconv_views(model, x, ["relu2"])
    assert views.shape == (1, 3, 3, 12, 12) and channels.tolist() == [strongest.tolist()]
    assert np.allclose(views[0], expected.numpy(), atol=1e-5)
    # plain gradients would differ: the deconvnet ignores the forward ReLU masks
    x2 = x.clone().requires_grad_(True)
    a2 = model.relu2(model.conv2(model.pool(model.relu1(model.conv1(x2)))))
    keep = torch.zeros_like(a2)
    keep[torch.arange(3), strongest] = a2.detach()[torch.arange(3), strongest]
    (plain,) = torch.autograd.grad(a2, x2, keep)
    assert not np.allclose(views[0], plain.numpy(), atol=1e-3)
    assert model.relu1.inplace and model.relu2.inplace  # put back as they were

    guided, _ = deconv_views(model, x, ["relu2"], rule="guided")
    assert np.allclose(guided[0], _by_hand(model, x, guided=True)[0].numpy(), atol=1e-5)
    assert not np.allclose(guided[0], views[0], atol=1e-3)
    with pytest.raises(ValueError, match="unknown backward rule 'deconv'"):
        deconv_views(model, x, ["relu2"], rule="deconv")


@pytest.mark.parametrize("backbone,rule", [("tv_alexnet", "deconvnet"), ("tv_vgg16", "deconvnet"),
                                           ("mobilenetv2_100", "guided"), ("resnet18", "guided")])
def test_the_rule_follows_how_the_network_downsamples(backbone, rule):
    assert default_rule(plugins.backbones().get(backbone).build(2, WeightsRequest(False)).model) == rule


def test_display_maps_zero_to_grey_and_the_scale_to_the_extremes():
    views = np.zeros((1, 2, 3, 4, 4), dtype=np.float32)
    views[0, 0, 1, 2, 3] = -2.0
    views[0, 0, 0, 0, 0] = 1.0
    shown = to_display(views, percentile=100)
    assert shown.shape == (1, 2, 4, 4, 3) and shown.dtype == np.uint8
    assert shown[0, 0, 2, 3, 1] == 0 and shown[0, 0, 0, 0, 0] == 191 and shown[0, 0, 1, 1, 2] == 128
    assert (shown[0, 1] == 128).all()  # an empty view is plain grey
    ramp = np.linspace(0, 1, 3 * 20 * 20, dtype=np.float32).reshape(3, 20, 20)
    ramp[0, 0, 0] = 1000.0  # one extreme pixel: clipped, instead of leaving the rest grey
    shown = to_display(ramp, percentile=99.5)
    assert shown[0, 0, 0] == 255 and shown[19, 19, 2] == 255 and 180 < shown[10, 10, 1] < 200


@pytest.mark.parametrize("backbone,size,first,last", [
    ("mobilenetv2_100", 64, ("conv_stem+bn1", "bn1"), ("blocks.6.0+conv_head+bn2", "bn2")),
    ("resnet18", 64, ("conv1+bn1", "bn1"), ("layer4", "layer4")),
    ("tv_alexnet", 128, ("conv1", "features.0"), ("conv5", "features.10")),
    ("tv_mobilenet_v2", 64, ("features.0", "features.0"), ("features.18", "features.18")),
])
def test_layers_are_freeze_units_from_first_to_last(backbone, size, first, last):
    built = plugins.backbones().get(backbone).build(2, WeightsRequest(False))
    layers = unit_layers(built.model, built.units, size)
    assert 2 <= len(layers) <= 5 and layers[0] == first and layers[-1] == last
    names = [u.name for u in built.units]
    assert [names.index(u) for u, _ in layers] == sorted(names.index(u) for u, _ in layers)
    for _, module in layers:
        built.model.get_submodule(module)
    if backbone == "tv_mobilenet_v2":  # a block's view starts from its output, after the residual sum
        assert layers[1] == ("features.4", "features.4")


def test_trials_carry_deconv_views(tiny_dataset):
    cfg = TrialConfig(strategy="linear_probe", lr=0.001, epochs=1, batch_size=8, image_size=48)
    result = run_trial(cfg, tiny_dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(True),
                       plugins.strategies().get("linear_probe"), DataCache())
    maps = result.outputs.saliency
    assert maps.deconv_layers == ("conv_stem+bn1", "blocks.1", "blocks.3", "blocks.4", "blocks.6.0+conv_head+bn2")
    assert maps.deconv.shape == (len(maps.deconv_layers), 2, 48, 48, 3) and maps.deconv.dtype == np.uint8
    assert maps.labels[maps.deconv_at].tolist() == [0, 1] and maps.deconv_rule == "guided"  # first test image per class
    assert all((v != 128).any() for v in maps.deconv.reshape(-1, 48 * 48 * 3))  # every view shows something


def _maps(rng, layers=("conv_stem+bn1", "blocks.3", "conv_head+bn2")) -> SaliencyMaps:
    return SaliencyMaps(indices=np.array([0, 1, 4, 5]), images=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
                        labels=np.array([0, 0, 1, 1]), predicted=np.array([0, 1, 1, 1]), cams=np.zeros((4, 2, 2), np.float32),
                        layer="bn2", deconv=rng.integers(0, 255, (len(layers), 2, 32, 32, 3), dtype=np.uint8),
                        deconv_layers=layers, deconv_channels=np.arange(2 * len(layers)).reshape(len(layers), 2),
                        deconv_at=np.array([0, 2]), deconv_rule="guided")


def test_deconv_figure_per_trial(tmp_path):
    rng = np.random.default_rng(0)
    for i, strategy in enumerate(["full", "linear_probe"]):
        outputs = TrialOutputs(strategy, ("benign", "malignant"), np.array([0, 1]), np.zeros((2, 2)), np.zeros((2, 3)),
                               np.zeros((2, 3)), saliency=_maps(rng))
        out = plugins.analyses().get("deconv_view").run(outputs)
        arrays = next(o.arrays for o in out if o.arrays is not None)
        assert arrays["indices"].tolist() == [0, 4] and arrays["layers"].tolist() == list(outputs.saliency.deconv_layers)
        assert np.array_equal(arrays["views"], outputs.saliency.deconv) and arrays["labels"].tolist() == [0, 1]
        figure = next(o for o in out if o.figure is not None)
        figure.figure.savefig(tmp_path / f"deconv{i}.png")
        with Image.open(tmp_path / f"deconv{i}.png") as im:
            assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 500
        assert [ax.get_ylabel() for ax in figure.figure.axes][::2] == ["test image", "conv_stem+bn1", "blocks.3", "conv_head+bn2"]
        assert figure.title == f"Guided backpropagation view per layer ({strategy})" and str(arrays["rule"]) == "guided"



def test_comparison_orders_cases_most_frozen_first(tmp_path):
    rng = np.random.default_rng(1)
    per_trial, trials = {}, []
    for i, (strategy, trainable, f1) in enumerate([("full", 2.2e6, 0.7), ("linear_probe", 2562, 0.8), ("freeze_to", 1e6, 0.75)]):
        outputs = TrialOutputs(strategy, ("benign", "malignant"), np.array([0, 1]), np.zeros((2, 2)), np.zeros((2, 3)),
                               np.zeros((2, 3)), saliency=_maps(rng))
        per_trial[f"r{i}"] = next(o.arrays for o in plugins.analyses().get("deconv_view").run(outputs) if o.arrays is not None)
        trials.append({"run_id": f"r{i}", "run_name": f"t{i}", "state": "complete",
                       "params": {"strategy": strategy, **({"k": "5"} if strategy == "freeze_to" else {})},
                       "metrics": {"best_val_f1": f1, "trainable_params": trainable}})
    per_trial["r3"] = dict(per_trial["r2"], layers=np.array(["a", "b", "c"]))  # other layers: not comparable
    trials.append({"run_id": "r3", "run_name": "t3", "state": "complete", "params": {"strategy": "bitfit"},
                   "metrics": {"best_val_f1": 0.6, "trainable_params": 5e4}})
    records = StudyRecords("s", "d", "f1", ("benign", "malignant"), trials,
                           lambda run, name: per_trial.get(run) if name == "deconv_view.npz" else None)
    out = plugins.analyses().get("deconv_comparison").run(records)
    data = next(o.data for o in out if o.data is not None)
    assert [d["run"] for d in data] == ["t1", "t2", "t0"]  # linear probe, freeze_to, full; bitfit's layers differ
    assert data[0]["channels"] == per_trial["r1"]["channels"].tolist() and data[0]["rule"] == "guided"
    figure = next(o for o in out if o.figure is not None)
    figure.figure.savefig(tmp_path / "cmp.png")
    with Image.open(tmp_path / "cmp.png") as im:
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 600
    axes = figure.figure.axes
    assert axes[1].get_title().startswith("linear_probe") and axes[3].get_title().startswith("full")
    shown = axes[5].images[0].get_array()  # row 2 (image 0, layer blocks.3), column 1 (the linear probe)
    assert np.array_equal(np.asarray(shown), per_trial["r1"]["views"][1, 0])
