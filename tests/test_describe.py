"""`freezebench describe`: units in order with parameter counts and shares, and the head."""

from __future__ import annotations

import json

import pytest
import torch

from freezebench import plugins
from freezebench.backbone import WeightsRequest

from .test_weights import TV_SHA, TV_WEIGHTS


def test_describe_alexnet_is_paper_004_table_1(cli):
    code, out, _ = cli("describe", "tv_alexnet", "--json")
    assert code == 0
    data = json.loads(out)
    assert [u["unit"] for u in data["units"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    model_total = data["total_params"]
    assert sum(u["params"] for u in data["units"]) + data["head"]["params"] == model_total
    assert sum(u["share"] for u in data["units"]) + data["head"]["share"] == pytest.approx(1.0)
    conv3 = data["units"][2]
    assert conv3["params"] == 384 * 192 * 3 * 3 + 384  # a real count, not an estimate
    assert data["head"]["module"] == "classifier.6" and "Linear(4096 -> 2)" in data["head"]["description"]


def test_describe_layer_granularity_and_mlp_head(cli):
    code, out, _ = cli("describe", "mobilenetv2_100", "--granularity", "layer", "--head", "mlp", "--classes", "3", "--json")
    data = json.loads(out)
    assert len(data["units"]) == 52 and data["units"][0]["unit"] == "conv_stem" and data["units"][-1]["unit"] == "conv_head"
    assert "Linear - ReLU - Dropout - BatchNorm1d - Linear" in data["head"]["description"]
    assert data["head"]["params"] == 1280 * 256 + 256 + 2 * 256 + 256 * 3 + 3


def test_describe_table_and_unknown_backbone(cli):
    code, out, _ = cli("describe", "tv_googlenet")
    assert code == 0 and "inception5b" in out and "head: fc" in out
    code, _, err = cli("describe", "alexnett")
    assert code == 2 and "Unknown backbone: 'alexnett'" in err


@pytest.mark.skipif(not TV_WEIGHTS.is_file(), reason="../shared/weights not present")
def test_torchvision_mobilenet_v2_loads_its_own_file_like_the_shipped_one():
    spec = plugins.backbones().get("tv_mobilenet_v2")
    own = spec.build(2, WeightsRequest(file=str(TV_WEIGHTS), sha256=TV_SHA))
    shipped = spec.build(2, WeightsRequest())
    assert own.weights_source == f"file:{TV_WEIGHTS}" and shipped.weights_source.startswith("shipped:")
    a, b = own.model.state_dict(), shipped.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("classifier"))


def test_describe_under_a_strategy_counts_what_trains_per_unit(cli):
    code, out, _ = cli("describe", "mobilenetv2_100", "--strategy", "norm_tuning", "--param", "k=3", "--json")
    assert code == 0
    data = json.loads(out)
    from torch import nn

    from freezebench.engine.units import with_granularity

    built = with_granularity(plugins.backbones().get("mobilenetv2_100").build(2, WeightsRequest(pretrained=False)), "block")
    modules = dict(built.model.named_modules())
    for i, (row, unit) in enumerate(zip(data["units"], built.units)):
        norms = sum(p.numel() for name, p in built.model.named_parameters() if name in unit.params
                    and isinstance(modules[name.rsplit(".", 1)[0]], nn.BatchNorm2d))
        assert row["trainable"] == (0 if i < 3 else norms) and row["when"] == ("frozen" if i < 3 else "from the start")
    assert data["strategy"]["trainable_params"] == sum(r["trainable"] for r in data["units"]) + data["head"]["params"]
    code, out, _ = cli("describe", "mobilenetv2_100", "--strategy", "gradual_unfreeze", "--param", "every=2", "--json")
    whens = [r["when"] for r in json.loads(out)["units"]]
    assert whens[-1] == "from epoch 3" and whens[0] == "from epoch 17"  # one unit more every 2 epochs, output first


@pytest.mark.parametrize("args, expected", [
    (("--strategy", "freeze_to", "--param", "kk=3"), "Strategy 'freeze_to' has no parameter 'kk'; its parameters: k."),
    (("--strategy", "freeze_to"), "Strategy 'freeze_to' needs parameter 'k'"),
    (("--param", "k=3"), "--param sets a strategy parameter: name the strategy with --strategy."),
    (("--strategy", "freeze_to", "--param", "k3"), "--param 'k3': write NAME=VALUE"),
    (("--strategy", "freeze_to", "--param", "k=99"), "k=99 is outside 0..8"),
])
def test_describe_strategy_mistakes_are_named(cli, args, expected):
    code, _, err = cli("describe", "mobilenetv2_100", *args)
    assert code == 2 and expected in " ".join(err.split()) and "Traceback" not in err
