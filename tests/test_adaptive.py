"""Training-time control (issue "Strategy API v2", part 3): a plan's controller sees each unit's
statistics after every epoch and may freeze, unfreeze or rescale units. Checked on real trials: a unit
frozen after epoch e is bit-identical from then on and has left the optimizer; LR multipliers follow
the controller; every decision is recorded; caching is off with the reason."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from freezebench import plugins
from freezebench.backbone import WeightsRequest, state_snapshot
from freezebench.engine.trial import TrialConfig, build_and_plan, fit
from freezebench.strategy import Decision, plan_from_frozen


def _trial(dataset, strategy, epochs=4, **strategy_params):
    cfg = TrialConfig(strategy=getattr(strategy, "name", strategy), lr=0.01, weight_decay=0.05, momentum=0.9, epochs=epochs,
                      batch_size=8, image_size=32, select_epoch="last", strategy_params=strategy_params)
    strat = plugins.strategies().get(strategy) if isinstance(strategy, str) else strategy
    torch.manual_seed(0)
    built, plan = build_and_plan(cfg, dataset.num_classes, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(False), strat)
    snapshots = {0: state_snapshot(built.model)}
    optimizers = {}

    def on_epoch(epoch, record):
        snapshots[epoch] = state_snapshot(built.model)

    import freezebench.engine.trial as trial_module

    real = trial_module.make_optimizer

    def spy(*args, **kwargs):
        optimizers["opt"] = real(*args, **kwargs)
        return optimizers["opt"]

    trial_module.make_optimizer = spy
    try:
        result = fit(cfg, built, plan, dataset, on_epoch=on_epoch)
    finally:
        trial_module.make_optimizer = real
    return result, built, snapshots, optimizers["opt"]


@dataclass
class _Scripted:
    """A strategy whose controller follows a script: epoch -> Decision."""

    script: tuple
    name: str = "scripted"
    summary: str = ""
    params: tuple = ()
    pretrained: bool = True

    def plan(self, units, params):
        script = dict(self.script)

        class Controller:
            seen = []

            def after_epoch(self, epoch, stats, record):
                Controller.seen.append((epoch, dict(stats), dict(record)))
                return script.get(epoch)

        self.seen = Controller.seen
        return plan_from_frozen(units, (), params, controller=Controller())


def test_a_unit_frozen_by_the_controller_is_bit_identical_from_then_and_leaves_the_optimizer(tiny_dataset):
    units = plugins.backbones().get("mobilenetv2_100").build(2, WeightsRequest(False)).unit_names()
    script = ((1, Decision(freeze=(units[0], units[1]), reason="test")), (2, Decision(freeze=(units[2],))))
    result, b, snaps, optimizer = _trial(tiny_dataset, _Scripted(script), epochs=4)
    by_unit = {u.name: list(u.params) for u in b.units}
    moved = lambda a, z, names: {n for n in names if not torch.equal(snaps[a][n], snaps[z][n])}  # noqa: E731
    for unit, frozen_after in ((units[0], 1), (units[1], 1), (units[2], 2)):
        assert moved(0, frozen_after, by_unit[unit])  # it trained until then
        assert not moved(frozen_after, 4, [n for n in snaps[0] if n.startswith(tuple(p.rsplit(".", 1)[0] + "."
                                                                                        for p in by_unit[unit]))])
    assert moved(3, 4, by_unit[units[3]])  # the others go on training
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    params = dict(b.model.named_parameters())
    for unit in units[:3]:
        assert all(id(params[n]) not in in_optimizer and not params[n].requires_grad for n in by_unit[unit])
        assert all(params[n] not in optimizer.state for n in by_unit[unit])  # no momentum kept
    assert [(e["epoch"], e["froze"]) for e in result.events] == [(1, [units[0], units[1]]), (2, [units[2]])]
    assert [h["trainable_units"] for h in result.outcome.history] == [6.0, 5.0, 5.0, 5.0]
    assert result.prefix_cache.startswith("off: an adaptive strategy")


def test_the_controller_sees_real_statistics(tiny_dataset):
    strategy = _Scripted(())
    result, b, snaps, _ = _trial(tiny_dataset, strategy, epochs=2)
    epoch, stats, record = strategy.seen[0]
    assert epoch == 1 and set(stats) == set(b.unit_names()) and "val_loss" in record
    first = b.unit_names()[0]
    names = [p for u in b.units if u.name == first for p in u.params]
    moved = torch.sqrt(sum(((snaps[1][n].float() - snaps[0][n].float()) ** 2).sum() for n in names))
    weights = torch.sqrt(sum((snaps[1][n].float() ** 2).sum() for n in names))
    assert stats[first].update_norm == pytest.approx(float(moved), rel=1e-5)
    assert stats[first].weight_norm == pytest.approx(float(weights), rel=1e-5)
    assert all(s.grad_norm > 0 and s.trainable and s.lr_mult == 1.0 for s in stats.values())


def test_auto_rgn_sets_each_unit_lr_from_its_relative_gradient_norm(tiny_dataset):
    result, b, _, optimizer = _trial(tiny_dataset, "auto_rgn", epochs=2)
    first = result.events[0]
    assert first["epoch"] == 1 and max(first["lr_mult"].values()) == pytest.approx(1.0)
    assert len(set(round(v, 6) for v in first["lr_mult"].values())) > 1  # the units differ
    last = result.events[-1]["lr_mult"]
    groups = [g for g in optimizer.param_groups if g["name"].startswith("unit ")]
    assert len(groups) == len(b.unit_names())
    for group in groups:  # epoch 2 trained at epoch 1's decision; epoch 2's decision waits for a next epoch
        assert group["lr"] == pytest.approx(0.01 * first["lr_mult"][group["units"][0]])
        assert group["initial_lr"] == pytest.approx(0.01 * last[group["units"][0]])


def test_autofreeze_freezes_a_leading_prefix_and_unfreeze_on_plateau_adds_units_from_the_top(tiny_dataset):
    result, b, snaps, _ = _trial(tiny_dataset, "autofreeze", epochs=4, threshold=10.0)  # everything counts as settled
    units = b.unit_names()
    assert result.events and result.events[0]["epoch"] == 2 and result.events[0]["froze"] == units[:-1]  # never the last
    result, b, _, _ = _trial(tiny_dataset, "unfreeze_on_plateau", epochs=5, patience=0)
    joined = [u for e in result.events for u in e["unfroze"]]
    assert joined == list(reversed(units))[: len(joined)]  # from the output side, one at a time
    assert [h["trainable_units"] for h in result.outcome.history][-1] == len(joined)
