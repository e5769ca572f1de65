"""Parameter selectors (issue "Strategy API v2", part 1): a plan chooses which parameters of its
trainable units train by what they are (a named selector or its own predicate over name, module and
unit). Checked after real trials on real timm models: exactly the selected parameters change, the
optimizer holds exactly them, and a frozen prefix is still cached."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from freezebench import plugins
from freezebench.backbone import WeightsRequest, state_snapshot
from freezebench.engine.freeze import owners, param_groups, unit_trainable_params
from freezebench.engine.trial import TrialConfig, build_and_plan, fit
from freezebench.strategy import SELECTORS, ParamInfo, plan_from_frozen, selector


def _build(strategy, backbone="mobilenetv2_100", **strategy_params):
    cfg = TrialConfig(strategy=getattr(strategy, "name", strategy), lr=0.01, weight_decay=0.05, momentum=0.9, epochs=2,
                      batch_size=8, image_size=32, select_epoch="last", strategy_params=strategy_params)
    strat = plugins.strategies().get(strategy) if isinstance(strategy, str) else strategy
    torch.manual_seed(0)
    built, plan = build_and_plan(cfg, 2, plugins.backbones().get(backbone), WeightsRequest(False), strat)
    return cfg, built, plan


def _selected(backbone, units, predicate):
    held = owners(backbone.model)
    return {p for u in backbone.units if u.name in units for p in u.params if predicate(ParamInfo(p, held[p], u.name))}


def test_named_selectors_pick_what_they_say():
    _, b, _ = _build("full")
    held = owners(b.model)
    every = [p for u in b.units for p in u.params]
    norm = {p for p in every if isinstance(held[p], nn.BatchNorm2d)}
    depthwise = {p for p in every if isinstance(held[p], nn.Conv2d) and held[p].groups == held[p].in_channels > 1}
    assert _selected(b, b.unit_names(), SELECTORS["norm"]) == norm and len(norm) > 40
    assert _selected(b, b.unit_names(), SELECTORS["depthwise"]) == depthwise
    assert all("conv_dw" in p for p in depthwise) and len(depthwise) == 17  # one per MobileNetV2 block
    assert _selected(b, b.unit_names(), SELECTORS["bias"]) == {p for p in every if p.endswith(".bias")}
    assert _selected(b, b.unit_names(), SELECTORS["head"]) == set()
    assert _selected(b, b.unit_names(), SELECTORS["all"]) == set(every)
    with pytest.raises(ValueError, match="param_filter must be one of all, bias, norm, depthwise, head"):
        selector("biases")


@pytest.mark.parametrize("strategy, name", [("norm_tuning", "norm"), ("depthwise_tuning", "depthwise")])
def test_selector_strategies_train_exactly_the_selected_parameters(tiny_dataset, strategy, name):
    cfg, b, plan = _build(strategy, k=3)
    before = state_snapshot(b.model)
    chosen = _selected(b, plan.trainable, SELECTORS[name])
    params = dict(b.model.named_parameters())
    in_optimizer = {id(p) for g in param_groups(b, plan, cfg.lr, cfg.weight_decay) for p in g["params"]}
    assert in_optimizer == {id(params[p]) for p in chosen | set(b.head.params)}  # nothing else sees momentum or decay
    result = fit(cfg, b, plan, tiny_dataset)
    after = b.model.state_dict()
    backbone_params = [p for u in b.units for p in u.params]
    moved = {p for p in backbone_params if not torch.equal(before[p], after[p])}
    assert moved == chosen  # every selected parameter moved, and nothing else in the backbone
    assert result.trainable_params == sum(params[p].numel() for p in chosen | set(b.head.params))
    assert plan.frozen == tuple(b.unit_names()[:3]) and result.prefix_cache.startswith("on")  # the frozen prefix is cached


def test_a_plugin_may_select_with_its_own_predicate(tiny_dataset):
    @dataclass(frozen=True)
    class LastWeights:
        name: str = "last_weights"
        summary: str = "only the weights (not biases) of the last unit's convolutions"
        params: tuple = ()
        pretrained: bool = True

        def plan(self, units, params):
            def pick(p: ParamInfo) -> bool:
                return p.unit == units[-1] and p.leaf == "weight" and isinstance(p.module, nn.Conv2d)
            return plan_from_frozen(units, units[:-1], params, param_filter=pick)

    cfg, b, plan = _build(LastWeights())
    before = state_snapshot(b.model)
    chosen = set(unit_trainable_params(b, plan, plan.trainable))
    assert chosen and all(p.startswith(("blocks.6", "conv_head")) and p.endswith("weight") for p in chosen)
    fit(cfg, b, plan, tiny_dataset)
    after = b.model.state_dict()
    assert {p for u in b.units for p in u.params if not torch.equal(before[p], after[p])} == chosen
    assert plan.as_dict()["param_filter"].endswith("pick")  # recorded by name in freeze_plan.json


@pytest.mark.parametrize("name", sorted(e.name for e in plugins.strategies().entries()))
def test_every_registered_strategy_gives_the_optimizer_exactly_its_trainable_parameters(name):
    strategy = plugins.strategies().get(name)
    needs = {p.name: {"unit": 3, "window": "2..4", "int": 1, "float": 0.01}[p.kind] for p in strategy.params
             if p.default is None}
    cfg, b, plan = _build(name, **needs)
    params = dict(b.model.named_parameters())
    expected = set(unit_trainable_params(b, plan, plan.trainable)) | set(b.head.params) | set(b.added)
    assert {n for n, p in params.items() if p.requires_grad} == expected
    groups = param_groups(b, plan, cfg.lr, cfg.weight_decay)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(params[n]) for n in expected)


@pytest.mark.parametrize("name", sorted(e.name for e in plugins.strategies().entries()))
def test_every_registered_strategy_leaves_what_it_never_trains_bit_identical(name, tiny_dataset):
    """After a real trial, the only parameters that changed are the ones the plan let train: its selector's
    choice in the units it trains (at the start, after a phase, or after its controller unfroze them), what
    its surgery added, and the head. Every other parameter, pretrained or not, is bit-identical."""
    strategy = plugins.strategies().get(name)
    needs = {p.name: {"unit": 3, "window": "2..4", "int": 1, "float": 0.01}[p.kind] for p in strategy.params
             if p.default is None}
    cfg, b, plan = _build(name, **needs)
    before = {n: p.detach().clone() for n, p in b.model.named_parameters()}
    result = fit(cfg, b, plan, tiny_dataset)
    later = {u for p in plan.phases for u in p.unfreeze} | {u for e in result.events for u in e.get("unfroze", ())}
    allowed = set(unit_trainable_params(b, plan, set(plan.trainable) | later)) | set(b.head.params) | set(b.added)
    changed = {n for n, p in b.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed <= allowed, sorted(changed - allowed)[:5]
    assert changed & set(b.head.params)  # the trial did train
