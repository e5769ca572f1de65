"""Frozen-prefix caching: the same results as computing the frozen layers every epoch, computed
once per (weights, cut, data), and switched off, with the reason, whenever it would not be exact."""

from __future__ import annotations

import pytest

from freezebench import plugins
from freezebench.backbone import WeightsRequest
from freezebench.engine.prefix import decompose
from freezebench.engine.trial import DataCache, TrialConfig, run_trial


def trial(dataset, backbone="mobilenetv2_100", strategy="freeze_to", data_cache=None, pretrained=True, **kw):
    params = kw.pop("strategy_params", {"k": 4} if strategy == "freeze_to" else {})
    kw = {"lr": 0.005, "epochs": 2, "batch_size": 8, "image_size": 32, **kw}
    cfg = TrialConfig(strategy=strategy, strategy_params=params, **kw)
    return run_trial(cfg, dataset, plugins.backbones().get(backbone), WeightsRequest(pretrained),
                     plugins.strategies().get(strategy), data_cache or DataCache())


@pytest.mark.parametrize("backbone,strategy,params", [
    ("mobilenetv2_100", "linear_probe", {}),
    ("mobilenetv2_100", "freeze_to", {"k": 4}),
    ("resnet18", "freeze_to", {"k": 3}),
    ("tv_alexnet", "train_window", {"window": "conv4..fc7"}),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cached_and_uncached_trials_agree(tiny_dataset, backbone, strategy, params, channels_last):
    kw = {"image_size": 64} if backbone == "tv_alexnet" else {}
    kw.update(pretrained=backbone not in ("resnet18", "tv_alexnet"), channels_last=channels_last)
    on = trial(tiny_dataset, backbone, strategy, strategy_params=params, **kw)
    off = trial(tiny_dataset, backbone, strategy, strategy_params=params, cache="off", **kw)
    assert on.prefix_cache.startswith("on:") and off.prefix_cache == "off: cache = 'off'"
    assert on.trainable_params == off.trainable_params
    if not channels_last:  # the same kernels both ways: the same metrics
        for split in ("best_val", "test"):
            a, b = getattr(on.outcome, split), getattr(off.outcome, split)
            for metric in a:
                assert a[metric] == pytest.approx(b[metric], rel=1e-4, abs=1e-5), (split, metric)
        assert on.outcome.history[-1]["train_loss"] == pytest.approx(off.outcome.history[-1]["train_loss"], rel=1e-4)
    else:  # NHWC kernels round differently by batch shape (1e-7); the randomly initialised AlexNet sits at
        # p = 0.5, where that flips labels, so compare what is continuous: probabilities and losses
        assert abs(on.outcome.test_probs - off.outcome.test_probs).max() < 2e-3
        for h_on, h_off in zip(on.outcome.history, off.outcome.history):
            assert h_on["train_loss"] == pytest.approx(h_off["train_loss"], rel=1e-3)
            assert h_on["val_loss"] == pytest.approx(h_off["val_loss"], rel=1e-3)


@pytest.mark.parametrize("kw,reason", [
    ({"augment": "online"}, "online augmentation"),
    ({"bn_policy": "train"}, "bn_policy 'train'"),
    ({"strategy": "bitfit"}, "the first unit trains"),  # biases of every unit train
    ({"strategy": "auto_rgn"}, "an adaptive strategy decides during training what trains"),
    ({"strategy": "full"}, "the first unit trains"),
    ({"strategy_params": {"k": 0}}, "the first unit trains"),
    ({"cache_limit_mb": 1, "image_size": 128, "strategy_params": {"k": 3}}, "over cache_limit_mb = 1"),
    ({"strategy_params": {"k": 1}}, "larger than the images (no saving)"),
])
def test_cache_is_off_with_its_reason(tiny_dataset, kw, reason):
    result = trial(tiny_dataset, **kw)
    assert result.prefix_cache.startswith("off:") and reason in result.prefix_cache


def test_features_are_computed_once_per_prefix(tiny_dataset, monkeypatch):
    import freezebench.engine.trial as trial_mod

    calls = []
    real = trial_mod.prefix_features
    monkeypatch.setattr(trial_mod, "prefix_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = DataCache()
    for lr in (0.001, 0.01, 0.1):  # an LR sweep at one freeze point
        trial(tiny_dataset, data_cache=cache, lr=lr, epochs=1)
    assert len(calls) == 3  # train, val, test: once for all three trials
    trial(tiny_dataset, data_cache=cache, strategy_params={"k": 5})
    assert len(calls) == 6  # a new freeze point: a new prefix


def test_a_deeper_freeze_point_starts_from_cached_features(tiny_dataset, monkeypatch):
    import freezebench.engine.trial as trial_mod

    runs = []
    real = trial_mod.prefix_features
    monkeypatch.setattr(trial_mod, "prefix_features", lambda steps, *a, **k: runs.append([n for n, _ in steps]) or real(steps, *a, **k))
    chained = DataCache()
    trial(tiny_dataset, data_cache=chained, strategy_params={"k": 4})
    shallow = runs[-1]
    deep = trial(tiny_dataset, data_cache=chained, strategy_params={"k": 7})
    rest = runs[-1]
    assert shallow[-1] == "blocks.2" and rest[0] == "blocks.3"  # only the steps after k = 4's cached prefix ran
    direct = trial(tiny_dataset, data_cache=DataCache(), strategy_params={"k": 7})
    assert runs[-1][0] == "conv_stem" and shallow + rest == runs[-1]  # a fresh cache computes the whole prefix
    for split in ("best_val", "test"):
        a, b = getattr(deep.outcome, split), getattr(direct.outcome, split)
        for metric in a:
            assert a[metric] == pytest.approx(b[metric], rel=1e-4, abs=1e-5), (split, metric)
    fp16 = DataCache()
    trial(tiny_dataset, data_cache=fp16, strategy_params={"k": 4}, cache_dtype="float16")
    trial(tiny_dataset, data_cache=fp16, strategy_params={"k": 7}, cache_dtype="float16")
    assert runs[-1][0] == "conv_stem"  # float16 features are not chained: rounding would compound


def test_fp16_features_stay_close(tiny_dataset):
    full = trial(tiny_dataset, strategy="linear_probe")
    half = trial(tiny_dataset, strategy="linear_probe", cache_dtype="float16")
    assert "float16" in half.prefix_cache
    assert half.outcome.test["accuracy"] == pytest.approx(full.outcome.test["accuracy"], abs=0.1)


def test_undecomposable_model_says_why():
    b = plugins.backbones().get("tv_mobilenet_v2").build(2, WeightsRequest(False))
    assert "does not run" in decompose(b, 64).reason  # its forward() pools with a function call
    assert decompose(b, 32).reason == ""  # ... which a 1x1 feature map makes a plain flatten: checked, so usable


def test_autofreeze_caches_the_prefix_it_froze_from_the_next_epoch_with_the_same_results(tiny_dataset):
    """AutoFreeze (threshold 100: every unit but the last freezes once two epochs' gradient norms are
    known, after epoch 2) trains on the frozen prefix's features from epoch 3, and gets what computing
    that prefix every epoch gets."""
    kw = {"strategy": "autofreeze", "strategy_params": {"threshold": 100.0}, "epochs": 4, "select_epoch": "last"}
    on, off = trial(tiny_dataset, **kw), trial(tiny_dataset, cache="off", **kw)
    cached = [e for e in on.events if "cached_from_epoch" in e]
    assert [e["cached_from_epoch"] for e in cached] == [3]
    assert on.prefix_cache.startswith("on from epoch 3:") and "frozen by the controller" in on.prefix_cache
    assert off.prefix_cache == "off: cache = 'off'" and not [e for e in off.events if "cached_from_epoch" in e]
    froze = [e for e in on.events if e.get("froze")]
    assert froze and froze[0]["epoch"] == 2 and len(froze[0]["froze"]) == len(on.units) - 1
    for h_on, h_off in zip(on.outcome.history, off.outcome.history):
        assert h_on["train_loss"] == pytest.approx(h_off["train_loss"], rel=1e-4)
        assert h_on["val_loss"] == pytest.approx(h_off["val_loss"], rel=1e-4)
    for metric, value in off.outcome.test.items():
        assert on.outcome.test[metric] == pytest.approx(value, rel=1e-4, abs=1e-5), metric
    assert abs(on.outcome.test_probs - off.outcome.test_probs).max() < 1e-5


def test_a_controller_that_may_unfreeze_is_never_cached(tiny_dataset):
    result = trial(tiny_dataset, strategy="unfreeze_on_plateau", epochs=3)
    assert result.prefix_cache.startswith("off: an adaptive strategy decides during training what trains")
    assert not [e for e in result.events if "cached_from_epoch" in e]
