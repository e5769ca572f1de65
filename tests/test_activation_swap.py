"""The activation swap (paper 001: ReLU against LeakyReLU) as a strategy with a surgery: it replaces the
activations of the units that train and nothing else, the frozen prefix stays the pretrained function
(and is still cached), the exported model keeps the swap and predicts what the trained network
predicted, and a prefix that a surgery changed never reuses the plain prefix's cached features."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from freezebench import plugins
from freezebench.backbone import WeightsRequest, state_snapshot
from freezebench.engine.datacache import DataCache
from freezebench.engine.preprocess import Normalizer
from freezebench.engine.saved import load_model, save_model
from freezebench.engine.trial import TrialConfig, build_and_plan, fit
from freezebench.strategy import InvalidParams, plan_from_frozen
from freezebench.engine.surgery import owning_unit
from freezebench_plugins.surgery_strategies import ActivationSurgery


def _build(strategy, cache="auto", **strategy_params):
    cfg = TrialConfig(strategy=getattr(strategy, "name", strategy), lr=0.01, momentum=0.9, epochs=2, batch_size=8,
                      image_size=32, select_epoch="last", cache=cache, strategy_params=strategy_params)
    strat = plugins.strategies().get(strategy) if isinstance(strategy, str) else strategy
    torch.manual_seed(0)
    built, plan = build_and_plan(cfg, 2, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(False), strat)
    return cfg, built, plan


def _activations(model) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU))}


def test_only_the_trained_units_activations_are_swapped_and_the_prefix_is_still_cached(tiny_dataset):
    cfg, b, plan = _build("activation_swap", k=3, slope=0.2)
    units = {u.name: u.params for u in b.units}
    trained = set(b.unit_names()[3:])
    acts = _activations(b.model)
    swapped = {n for n, m in acts.items() if isinstance(m, nn.LeakyReLU)}
    assert swapped and all(acts[n].negative_slope == 0.2 for n in swapped)
    assert {owning_unit(n, units) for n in swapped} == trained  # every trained unit, no frozen one
    assert all(isinstance(m, nn.ReLU6) for n, m in acts.items() if n not in swapped)
    assert not b.added  # no parameter added or replaced
    params = dict(b.model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == {p for u in trained for p in units[u]} | set(b.head.params)
    before = state_snapshot(b.model)
    result = fit(cfg, b, plan, tiny_dataset)
    after = b.model.state_dict()
    assert all(torch.equal(before[p], after[p]) for u in b.unit_names()[:3] for p in units[u])
    assert result.prefix_cache.startswith("on:")
    assert plan.as_dict()["surgery"] == f"activations of {len(trained)} units replaced by LeakyReLU(slope 0.2)"


def test_bad_parameters_are_refused_naming_the_parameter():
    with pytest.raises(InvalidParams, match="slope must be in"):
        _build("activation_swap", slope=1.5)
    with pytest.raises(InvalidParams, match="activation must be one of"):
        _build("activation_swap", activation="gelu")


def test_the_exported_model_keeps_the_swap_and_predicts_what_the_trial_predicted(tiny_dataset, tmp_path):
    cfg, b, plan = _build("activation_swap", activation="relu")
    fit(cfg, b, plan, tiny_dataset)
    folder = save_model(b, cfg, tiny_dataset.classes, tmp_path / "m", surgery=plan.surgery)
    saved = load_model(folder)
    assert saved.manifest["surgery"]["strategy"] == "activation_swap"
    kinds = {n: type(m) for n, m in _activations(saved.model).items()}
    assert kinds == {n: type(m) for n, m in _activations(b.model).items()} and set(kinds.values()) == {nn.ReLU}
    probe = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    b.model.eval()
    with torch.no_grad():
        expected = torch.softmax(b.model(Normalizer(b.mean, b.std)(probe)), 1).numpy()
    np.testing.assert_allclose(saved.predict([img.permute(1, 2, 0).numpy() for img in probe]), expected, atol=1e-6)


def test_a_prefix_changed_by_a_surgery_never_reuses_the_plain_prefixs_cached_features(tiny_dataset):
    """Two trials freeze the same units; the second swaps the activations *inside* the frozen prefix. With
    one shared feature cache, the second must compute what it computes with no cache at all."""

    @dataclasses.dataclass(frozen=True)
    class SwapFrozen:
        name: str = "swap_frozen_test"
        params: tuple = ()
        pretrained: bool = True

        def plan(self, units, params):
            return plan_from_frozen(units, units[:4], params, surgery=ActivationSurgery("leaky_relu", 0.5, units[:4]))

    shared = DataCache()
    cfg, b, plan = _build("freeze_to", k=4)
    fit(cfg, b, plan, tiny_dataset, cache=shared)
    cfg, b, plan = _build(SwapFrozen())
    cached = fit(cfg, b, plan, tiny_dataset, cache=shared)
    assert cached.prefix_cache.startswith("on:")
    cfg, b, plan = _build(SwapFrozen(), cache="off")
    uncached = fit(cfg, b, plan, tiny_dataset)
    np.testing.assert_allclose(cached.outputs.logits, uncached.outputs.logits, atol=1e-4)
    cfg, b, plan = _build("freeze_to", k=4, cache="off")
    plain = fit(cfg, b, plan, tiny_dataset)
    assert not np.allclose(plain.outputs.logits, uncached.outputs.logits, atol=1e-3)  # the swap does change the network
