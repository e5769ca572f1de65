"""Model surgery (issue "Strategy API v2", part 2): a plan may wrap or add modules before training.
Checked on real trials with real timm models and real peft LoRA layers: the added parameters train, every
pretrained parameter stays bit-identical, the optimizer holds exactly the added ones and the head, a
frozen prefix before the first wrapped layer is still cached, and the exported model (merged, or kept
with its added modules) predicts what the trained network predicted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from freezebench import hookimpl, plugins
from freezebench.errors import UserError
from freezebench.backbone import WeightsRequest, state_snapshot
from freezebench.engine.freeze import param_groups
from freezebench.engine.saved import load_model, save_model
from freezebench.engine.surgery import SurgeryError, added_by_unit, operate
from freezebench.engine.trial import TrialConfig, build_and_plan, fit
from freezebench.strategy import plan_from_frozen
from freezebench.torch_compat import ensure_torchvision_importable

ensure_torchvision_importable()  # peft imports transformers, which imports torchvision
pytest.importorskip("peft")


def _build(strategy, backbone="mobilenetv2_100", **strategy_params):
    cfg = TrialConfig(strategy=getattr(strategy, "name", strategy), lr=0.01, momentum=0.9, epochs=2, batch_size=8,
                      image_size=32, select_epoch="last", strategy_params=strategy_params)
    strat = plugins.strategies().get(strategy) if isinstance(strategy, str) else strategy
    torch.manual_seed(0)
    built, plan = build_and_plan(cfg, 2, plugins.backbones().get(backbone), WeightsRequest(False), strat)
    return cfg, built, plan


def _pretrained(backbone) -> dict[str, str]:
    """Each pretrained parameter's name now -> its unit."""
    return {p: u.name for u in backbone.units for p in u.params}


def test_lora_trains_only_what_it_added_and_the_pretrained_weights_stay_bit_identical(tiny_dataset):
    cfg, b, plan = _build("lora", k=3, rank=2)
    assert b.added and all(".lora_" in n for n in b.added)
    wrapped = {n.split(".lora_")[0] for n in b.added}
    assert all(isinstance(b.model.get_submodule(m).get_base_layer(), nn.Conv2d) for m in wrapped)
    units = b.unit_names()
    assert set(added_by_unit(b)) == set(units[3:])  # no layer of units 0..2 is wrapped
    before = state_snapshot(b.model)
    params = dict(b.model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == set(b.added) | set(b.head.params)
    result = fit(cfg, b, plan, tiny_dataset)
    after = b.model.state_dict()
    changed = {n for n in params if not torch.equal(before[n], after[n])}
    assert not changed & set(_pretrained(b))  # the wrapped convolutions' own weights too
    assert {n for n in b.added if ".lora_B." in n} <= changed  # B starts at zero and moves
    assert result.trainable_params == sum(params[n].numel() for n in (*b.added, *b.head.params))
    assert result.prefix_cache.startswith("on:")  # units 0..2 hold no LoRA layer: their output is cached
    assert plan.as_dict()["surgery"] == f"LoRA r=2 alpha=8 on pointwise layers of {len(units) - 3} units"


def test_the_optimizer_holds_exactly_the_added_parameters_and_the_head():
    cfg, b, plan = _build("lora", targets="all")
    params = dict(b.model.named_parameters())
    groups = param_groups(b, plan, cfg.lr, cfg.weight_decay)
    held = sorted(id(p) for g in groups for p in g["params"])
    assert held == sorted(id(params[n]) for n in (*b.added, *b.head.params))
    assert any(g["name"] == "added by surgery" for g in groups)
    # "all" wraps the dense convolutions and the head-side linear layers, never depthwise ones, never the head
    wrapped = {n.split(".lora_")[0] for n in b.added}
    assert not any(b.model.get_submodule(m).get_base_layer().groups > 1 for m in wrapped
                   if isinstance(b.model.get_submodule(m).get_base_layer(), nn.Conv2d))
    assert b.head.name not in wrapped


def test_export_merges_lora_into_the_plain_backbone_and_predicts_what_the_trial_predicted(tiny_dataset, tmp_path):
    cfg, b, plan = _build("lora", rank=2)
    result = fit(cfg, b, plan, tiny_dataset)
    folder = save_model(b, cfg, tiny_dataset.classes, tmp_path / "m", surgery=plan.surgery)
    assert any(".lora_" in n for n, _ in b.model.named_parameters())  # the trained network itself is left as it was
    saved = load_model(folder)
    assert saved.manifest["surgery"] is None
    assert not any("lora" in n or "base_layer" in n for n in saved.model.state_dict())
    probe = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    from freezebench.engine.preprocess import Normalizer

    norm = Normalizer(b.mean, b.std)
    b.model.eval()
    with torch.no_grad():
        expected = torch.softmax(b.model(norm(probe)), 1).numpy()
    got = saved.predict([img.permute(1, 2, 0).numpy() for img in probe])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert result.outcome.best_epoch >= 1


class _Adapter(nn.Module):
    """A residual 1x1 adapter after a block, zero-initialised (TinyTL-style lite residual)."""

    def __init__(self, block: nn.Module, channels: int):
        super().__init__()
        self.block, self.adapter = block, nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)

    def forward(self, x):
        y = self.block(x)
        return y + self.adapter(y)


class _AddAdapter:
    def apply(self, model, units):
        model.blocks[5] = _Adapter(model.blocks[5], 160)

    def merge(self, model):
        return False  # the adapter is kept: loading needs this strategy


class _AdapterStrategy:
    name, summary, params, pretrained = "adapter_test", "a residual adapter after blocks.5", (), True

    def plan(self, units, params):
        return plan_from_frozen(units, units, params, surgery=_AddAdapter())


def test_a_kept_surgery_is_applied_again_when_the_model_is_loaded(tiny_dataset, tmp_path, fresh_plugins):
    strategy = _AdapterStrategy()
    cfg, b, plan = _build(strategy)
    assert sorted(b.added) == ["blocks.5.adapter.bias", "blocks.5.adapter.weight"]
    assert added_by_unit(b) == {"blocks.5": list(b.added)}
    assert all(p.startswith("blocks.5.block.") for p in next(u for u in b.units if u.name == "blocks.5").params)
    before = state_snapshot(b.model)
    fit(cfg, b, plan, tiny_dataset)
    after = b.model.state_dict()
    assert {n for n in before if not torch.equal(before[n], after[n]) and n in dict(b.model.named_parameters())} \
        == set(b.added) | set(b.head.params)
    folder = save_model(b, cfg, tiny_dataset.classes, tmp_path / "m", surgery=plan.surgery)
    with pytest.raises(UserError, match="keeps modules added by strategy 'adapter_test'; loading it needs"):
        load_model(folder)

    class Plugin:
        @hookimpl
        def register_strategies(self, register):
            register(strategy)

    plugins.register_plugin(Plugin(), "adapter-test")
    saved = load_model(folder)
    assert saved.manifest["surgery"]["strategy"] == "adapter_test"
    probe = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    from freezebench.engine.preprocess import Normalizer

    b.model.eval()
    with torch.no_grad():
        expected = torch.softmax(b.model(Normalizer(b.mean, b.std)(probe)), 1).numpy()
    np.testing.assert_allclose(saved.predict([img.permute(1, 2, 0).numpy() for img in probe]), expected, atol=1e-6)


def test_a_surgery_that_replaces_pretrained_parameters_is_refused():
    class Replace:
        def apply(self, model, units):
            model.conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)  # new weights where pretrained ones were

        def merge(self, model):
            return True

    cfg, b, _ = _build("linear_probe")
    with pytest.raises(SurgeryError, match="conv_stem.weight"):
        operate(b, Replace())


def test_a_suite_naming_lora_without_peft_stops_before_writing_anything(tmp_path, tiny_npz, monkeypatch):
    from freezebench.suite.config import load_config
    from freezebench.suite.preparation import prepare_suite
    from freezebench_plugins import surgery_strategies
    from .conftest import write_suite

    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["lora", "full"]')
    monkeypatch.setattr(surgery_strategies, "_peft_installed", lambda: False)
    with pytest.raises(UserError, match=r"suites.tiny.params.strategy: strategy 'lora' cannot run here: .*freezebench\[peft\]"):
        declared = {p.name: e.name for e in plugins.strategies().entries() for p in e.obj.params}
        prepare_suite(load_config(config, declared), "tiny")
    assert not (tmp_path / "results").exists()


def test_a_lora_search_records_ranks_exports_and_predicts_what_it_logged(cli, tmp_path, tiny_npz):
    """Through the CLI: a grid over LoRA's rank, the leaderboard (a strategy parameter named "rank" is not
    the row's rank), and the exported model, merged into the plain backbone, predicting the trial's own
    logged test probabilities."""
    from mlflow.tracking import MlflowClient

    from freezebench.results.tracking import load_arrays

    from .conftest import write_suite

    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"lora"', n_trials=5, extra='sampler = "grid"')
    config.write_text(config.read_text().replace("k = { low = 1, high = -1 }", "k = 4\nrank = [2, 8]")
                      .replace("lr = { low = 1e-3, high = 1e-2, log = true }", "lr = 0.01"))
    results = tmp_path / "results"
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    code, out, err = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    rows = json.loads(out)
    assert [r["rank"] for r in rows] == [1, 2] and sorted(r["params"]["rank"] for r in rows) == [2, 8]
    assert rows[0]["trainable_params"] != rows[1]["trainable_params"]
    code, out, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(tmp_path / "m"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "m" / "freezebench-model.json").read_text())
    assert manifest["surgery"] is None and manifest["strategy"] == "lora"  # merged: the plain backbone
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    logged = load_arrays(client, manifest["run_id"], "test_predictions.npz")
    with np.load(tiny_npz) as npz:
        images = list(npz["test_images"])
    np.testing.assert_allclose(load_model(tmp_path / "m").predict(images), logged["probs"], atol=2e-5)
