"""Each basic strategy freezes exactly what it claims, checked after a real trial on real timm models."""

from __future__ import annotations

import pytest
import torch

from freezebench import plugins
from freezebench.backbone import WeightsRequest, state_snapshot
from freezebench.errors import UserError
from freezebench.engine.freeze import frozen_bn_modules, param_groups
from freezebench.engine.trial import TrialConfig, build_and_plan, fit

FAST = dict(lr=5e-3, epochs=2, batch_size=8, image_size=32, seed=0)


def _trial(strategy: str, dataset, backbone="mobilenetv2_100", pretrained=True, **kw):
    """Build and plan a backbone, snapshot it, train it: return the result, the backbone, the snapshot."""
    cfg = TrialConfig(strategy=strategy, **{**FAST, **kw})
    spec, strat = plugins.backbones().get(backbone), plugins.strategies().get(strategy)
    torch.manual_seed(cfg.seed)
    built, plan = build_and_plan(cfg, dataset.num_classes, spec, WeightsRequest(pretrained), strat)
    before = state_snapshot(built.model)
    return fit(cfg, built, plan, dataset), built, before


def _unit_params(backbone, units):
    return [p for u in backbone.units if u.name in units for p in u.params]


def _changed(before, model, names):
    after = model.state_dict()
    return {n for n in names if not torch.equal(before[n], after[n])}


@pytest.mark.parametrize("k", [0, 3, 8])
def test_freeze_to_k_freezes_first_k_units(tiny_dataset, k):
    result, backbone, before = _trial("freeze_to", tiny_dataset, strategy_params={"k": k})
    units = backbone.unit_names()
    assert result.plan.frozen == tuple(units[:k]) and result.plan.trainable == tuple(units[k:])
    frozen = _unit_params(backbone, units[:k])
    trainable = _unit_params(backbone, units[k:]) + list(backbone.head.params)
    assert not _changed(before, backbone.model, frozen), "frozen parameters moved"
    assert _changed(before, backbone.model, trainable) == set(trainable), "some trainable parameters never moved"
    # BatchNorm running statistics of frozen units unchanged under the default 'eval' policy
    bn = frozen_bn_modules(backbone, result.plan)
    stats = [f"{m}.{s}" for m in bn for s in ("running_mean", "running_var")]
    assert len(stats) == 2 * len(bn) and (k == 0 or bn)
    assert not _changed(before, backbone.model, stats)
    # reported trainable parameters are the real ones
    params = dict(backbone.model.named_parameters())
    assert result.trainable_params == sum(params[p].numel() for p in trainable)


def test_linear_probe_trains_only_the_head(tiny_dataset):
    result, backbone, before = _trial("linear_probe", tiny_dataset)
    assert result.plan.trainable == ()
    every = [n for u in backbone.units for n in u.params]
    assert not _changed(before, backbone.model, every)
    bn_stats = [n for n in before if n.endswith(("running_mean", "running_var"))]
    assert bn_stats and not _changed(before, backbone.model, bn_stats)
    assert _changed(before, backbone.model, backbone.head.params) == set(backbone.head.params)
    assert result.trainable_params == 1280 * 2 + 2


def test_full_trains_everything_from_pretrained(tiny_dataset):
    result, backbone, before = _trial("full", tiny_dataset)
    assert result.plan.frozen == () and result.weights_source.startswith("shipped:")
    every = [n for u in backbone.units for n in u.params] + list(backbone.head.params)
    assert _changed(before, backbone.model, every) == set(every)
    assert result.trainable_params == result.total_params


def test_scratch_starts_from_random_weights_and_trains_everything(tiny_dataset):
    result, backbone, before = _trial("scratch", tiny_dataset)
    assert result.weights_source == "random" and result.weights_sha256 is None
    pretrained = plugins.backbones().get("mobilenetv2_100").build(2, WeightsRequest(True)).model.state_dict()
    assert not torch.equal(before["conv_stem.weight"], pretrained["conv_stem.weight"])
    assert result.trainable_params == result.total_params


def test_freeze_to_on_a_resnet(tiny_dataset):
    result, backbone, before = _trial("freeze_to", tiny_dataset, backbone="resnet10t", pretrained=False, strategy_params={"k": 2})
    frozen = _unit_params(backbone, backbone.unit_names()[:2])
    assert frozen and not _changed(before, backbone.model, frozen)
    assert result.trainable_params < result.total_params


def test_frozen_parameters_never_reach_the_optimizer():
    spec = plugins.backbones().get("mobilenetv2_100")
    cfg = TrialConfig(strategy="freeze_to", lr=0.1, weight_decay=0.1, strategy_params={"k": 4})
    backbone, plan = build_and_plan(cfg, 2, spec, WeightsRequest(False), plugins.strategies().get("freeze_to"))
    groups = param_groups(backbone, plan, cfg.lr, cfg.weight_decay)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    params = dict(backbone.model.named_parameters())
    for name in _unit_params(backbone, plan.frozen):
        assert id(params[name]) not in in_optimizer and not params[name].requires_grad
    assert groups[-1]["name"] == "head" and groups[-1]["lr"] == pytest.approx(cfg.lr * 10)


def test_bn_eval_policy_survives_train(tiny_dataset):
    spec = plugins.backbones().get("mobilenetv2_100")
    cfg = TrialConfig(strategy="linear_probe", lr=0.1)
    backbone, plan = build_and_plan(cfg, 2, spec, WeightsRequest(True), plugins.strategies().get("linear_probe"))
    backbone.model.train()
    bn = backbone.model.get_submodule(frozen_bn_modules(backbone, plan)[0])
    before = bn.running_mean.clone()
    backbone.model(torch.randn(4, 3, 32, 32))
    assert torch.equal(bn.running_mean, before) and not bn.training


@pytest.mark.parametrize("policy", ["frozen", "train"])
def test_bn_policies(tiny_dataset, policy):
    result, backbone, before = _trial("freeze_to", tiny_dataset, bn_policy=policy, strategy_params={"k": 3})
    frozen_units = backbone.unit_names()[:3]
    stats = [n for n in before if n.endswith("running_mean") and any(n.startswith(p) for p in ("conv_stem", "bn1", "blocks.0", "blocks.1."))]
    assert stats
    moved = _changed(before, backbone.model, stats)
    if policy == "frozen":
        # timm's freeze() swaps BatchNorm2d / BatchNormAct2d for their Frozen* versions
        assert type(backbone.model.get_submodule("bn1")).__name__ in ("FrozenBatchNorm2d", "FrozenBatchNormAct2d")
        assert type(backbone.model.get_submodule("blocks.3.0.bn1")).__name__ == "BatchNormAct2d"
        assert not moved
    else:
        assert moved == set(stats)  # 'train' updates running statistics of frozen units (fastai style)
    assert result.plan.bn_policy == policy and frozen_units == list(result.plan.frozen)


def test_unit_out_of_range_names_the_units(tiny_dataset):
    with pytest.raises(UserError) as exc:
        _trial("freeze_to", tiny_dataset, strategy_params={"k": 42})
    message = str(exc.value)
    assert "k=42" in message and "0..8" in message and "conv_stem+bn1" in message and "blocks.5" in message


def test_a_timm_model_without_group_matcher_gets_a_unit_per_stage(tiny_dataset):
    """MetaFormer (convformer, caformer) has no group_matcher: units are its top-level modules and stages."""
    result, backbone, before = _trial("freeze_to", tiny_dataset, backbone="convformer_s18", pretrained=False,
                                      strategy_params={"k": 3}, epochs=1)
    assert backbone.unit_names() == ["stem", "stages.0.blocks", "stages.1", "stages.2", "stages.3", "head.norm"]
    assert backbone.head.name == "head.fc" and result.plan.frozen == ("stem", "stages.0.blocks", "stages.1")
    assert not _changed(before, backbone.model, _unit_params(backbone, result.plan.frozen))
    assert _changed(before, backbone.model, list(backbone.head.params))
