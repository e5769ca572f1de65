"""Grad-CAM: checked against the closed form on a model whose answer is known, found at the right
layer of real backbones, and computed for frozen (linear-probe) and trained trials alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from freezebench import plugins
from freezebench.analysis import TrialOutputs
from freezebench.backbone import WeightsRequest
from freezebench_plugins.saliency import SaliencyMaps, choose_images, grad_cam, last_spatial_module
from freezebench.engine.trial import DataCache, TrialConfig, run_trial


class _Known(nn.Module):
    """features = relu(1x1 conv) of the input; logits = W @ mean(features): Grad-CAM is relu(sum_c W[k, c] A_c)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(weight)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_grad_cam_matches_the_closed_form_and_finds_the_evidence():
    x = torch.zeros(2, 2, 8, 8)
    x[:, 0, 1:3, 5:7] = 1.0  # channel 0: a bright square top right
    x[:, 1, 6, 0] = 0.5  # channel 1: a dim dot bottom left
    weight = torch.tensor([[-1.0, 2.0], [1.0, -0.25]])
    model = _Known(weight)
    cams, predicted, layer = grad_cam(model, x, torch.tensor([1, 0]))
    assert layer == "features"  # the last map larger than 1 x 1 (the adaptive pool that follows is skipped)
    maps = torch.relu(x)
    for i, k in enumerate([1, 0]):
        expected = torch.relu((weight[k].view(2, 1, 1) / 64 * maps[i]).sum(0))
        expected = expected / expected.max()
        assert np.allclose(cams[i], expected.numpy(), atol=1e-6)
    assert np.unravel_index(cams[0].argmax(), cams[0].shape) == (1, 5)  # class 1's evidence: the square
    assert np.unravel_index(cams[1].argmax(), cams[1].shape) == (6, 0)  # class 0's: the dot
    assert list(predicted) == [1, 1]  # the square outweighs the dot


def test_a_class_without_evidence_gives_an_empty_map():
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0] = 1.0
    cams, _, _ = grad_cam(_Known(torch.tensor([[-1.0, 0.0], [1.0, 0.0]])), x, torch.tensor([0]))
    assert not cams.any()


def test_chosen_images_are_the_first_of_each_class():
    labels = np.array([1, 1, 0, 2, 1, 0, 0, 2])
    assert choose_images(labels, per_class=2).tolist() == [0, 1, 2, 3, 5, 7]


@pytest.mark.parametrize("backbone,size,expected", [
    ("mobilenetv2_100", 64, "bn2"), ("resnet18", 64, "layer4"), ("tv_alexnet", 128, "features"), ("tv_alexnet", 64, "features.11"),
])
def test_the_last_feature_map_of_real_backbones(backbone, size, expected):
    spec = plugins.backbones().get(backbone)
    model = spec.build(2, WeightsRequest(False)).model.eval()
    assert last_spatial_module(model, torch.zeros(1, 3, size, size)) == expected


@pytest.mark.parametrize("strategy", ["linear_probe", "full"])
def test_trials_carry_grad_cam_of_the_chosen_test_images(tiny_dataset, strategy):
    cfg = TrialConfig(strategy=strategy, lr=0.001, epochs=1, batch_size=8, image_size=48)
    result = run_trial(cfg, tiny_dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(True),
                       plugins.strategies().get(strategy), DataCache())
    maps = result.outputs.saliency
    test_labels = np.asarray(tiny_dataset.labels)[tiny_dataset.indices("test")]
    assert maps.indices.tolist() == choose_images(test_labels).tolist() and maps.layer == "bn2"
    assert maps.images.shape == (4, 48, 48, 3) and maps.images.dtype == np.uint8
    assert maps.cams.shape == (4, 2, 2) and maps.cams.min() >= 0 and maps.cams.max() <= 1
    assert (maps.cams.reshape(4, -1).max(1) == 1).sum() >= 1  # at least one map with evidence, scaled to 1
    assert maps.labels.tolist() == test_labels[maps.indices].tolist()


def test_grad_cam_figure_is_a_real_image(tmp_path):
    rng = np.random.default_rng(0)
    maps = SaliencyMaps(indices=np.array([0, 3]), images=rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8),
                        labels=np.array([0, 1]), predicted=np.array([0, 0]), cams=rng.random((2, 4, 4)).astype(np.float32), layer="bn2")
    outputs = TrialOutputs("linear_probe", ("benign", "malignant"), np.array([0, 1]), np.zeros((2, 2)), np.zeros((2, 3)),
                           np.zeros((2, 3)), saliency=maps)
    out = plugins.analyses().get("grad_cam").run(outputs)
    figure = next(o for o in out if o.figure is not None)
    figure.figure.savefig(tmp_path / "cam.png")
    with Image.open(tmp_path / "cam.png") as im:
        assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 300
    assert figure.title == "Grad-CAM at bn2 (linear_probe)"
    titles = [ax.get_title() for ax in figure.figure.axes]
    assert "#3 true malignant" in titles and "predicted benign" in titles
    arrays = next(o.arrays for o in out if o.arrays is not None)
    assert np.array_equal(arrays["cams"], maps.cams) and arrays["class_names"].tolist() == ["benign", "malignant"]


def test_images_are_kept_at_display_size():
    from freezebench.engine.device import CPU
    from freezebench_plugins.saliency import saliency_maps

    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    images = torch.randint(0, 256, (6, 3, 160, 160), dtype=torch.uint8)
    maps = saliency_maps(model, images, torch.tensor([0, 1, 0, 1, 0, 1]), lambda x: x.float() / 255, CPU)
    assert maps.images.shape == (4, 128, 128, 3) and maps.images.dtype == np.uint8 and maps.cams.shape == (4, 160, 160)
    assert maps.indices.tolist() == [0, 1, 2, 3] and maps.layer == "0"
