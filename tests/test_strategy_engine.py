"""The strategy engine on real timm and torchvision architectures (random weights, small inputs):
frozen units bit-identical after a trial, BatchNorm statistics kept, frozen weights untouched by
momentum and weight decay, exact optimizer contents under gradual unfreezing, true counts."""

from __future__ import annotations

import pytest
import torch

from freezebench import plugins
from freezebench.backbone import WeightsRequest, state_snapshot
from freezebench.errors import UserError
from freezebench.engine.freeze import frozen_bn_modules
from freezebench.engine.trial import TrialConfig, build_and_plan, fit

ARCHS = {  # backbone: smallest input it takes
    "resnet18": 32,
    "mobilenetv2_100": 32,
    "efficientnet_b0": 32,
    "densenet121": 32,
    "tv_vgg11": 32,
    "tv_alexnet": 64,
}


def run(dataset, backbone, strategy, *, granularity="block", epochs=2, bn_policy="eval", **strategy_params):
    cfg = TrialConfig(strategy=strategy, lr=0.01, weight_decay=0.05, momentum=0.9, epochs=epochs, batch_size=8,
                      image_size=ARCHS.get(backbone, 32), bn_policy=bn_policy, granularity=granularity,
                      select_epoch="last",  # test the weights training ended with
                      strategy_params=strategy_params)
    torch.manual_seed(0)
    built, plan = build_and_plan(cfg, dataset.num_classes, plugins.backbones().get(backbone), WeightsRequest(False),
                                 plugins.strategies().get(strategy))
    before = state_snapshot(built.model)
    return fit(cfg, built, plan, dataset), built, before


def params_of(backbone, units):
    return [p for u in backbone.units if u.name in set(units) for p in u.params]


def changed(before, model, names):
    after = model.state_dict()
    return {n for n in names if not torch.equal(before[n], after[n])}


def trainable_count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_layer_freeze_point_on_real_architectures(tiny_dataset, arch):
    # freeze the first half of the conv/linear layers, with momentum and weight decay on
    probe = plugins.backbones().get(arch).build(2, WeightsRequest(False))
    from freezebench.engine.units import layer_units

    n = len(layer_units(probe))
    result, b, before = run(tiny_dataset, arch, "freeze_to", granularity="layer", k=n // 2)
    frozen, trainable = b.unit_names()[: n // 2], b.unit_names()[n // 2:]
    assert len(b.units) == n and result.plan.frozen == tuple(frozen)
    frozen_params = params_of(b, frozen)
    assert frozen_params and not changed(before, b.model, frozen_params), "frozen weights moved"
    stats = [f"{m}.{s}" for m in frozen_bn_modules(b, result.plan) for s in ("running_mean", "running_var")]
    assert not changed(before, b.model, stats), "BatchNorm statistics of frozen layers moved"
    moved = changed(before, b.model, params_of(b, trainable) + list(b.head.params))
    assert moved, "nothing trained"
    assert result.trainable_params == trainable_count(b.model) == sum(
        dict(b.model.named_parameters())[p].numel() for p in params_of(b, trainable) + list(b.head.params))


@pytest.mark.parametrize("arch", ["tv_alexnet", "tv_vgg11"])
def test_classic_block_names_and_paper_004_window(tiny_dataset, arch):
    result, b, before = run(tiny_dataset, arch, "train_window", epochs=1, window="conv3..conv4")
    assert b.unit_names() == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert result.plan.trainable == ("conv3", "conv4")
    assert not changed(before, b.model, params_of(b, ["conv1", "conv2", "conv5", "fc6", "fc7"]))
    assert changed(before, b.model, list(b.head.params))


@pytest.mark.parametrize("policy", ["eval", "frozen"])
@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "efficientnet_b0"])
def test_bn_statistics_of_frozen_units_unchanged(tiny_dataset, arch, policy):
    result, b, before = run(tiny_dataset, arch, "last_blocks", bn_policy=policy, n=1)
    frozen = result.plan.frozen
    assert len(frozen) == len(b.units) - 1
    frozen_params = set(params_of(b, frozen))
    stats = [k for k in before if k.endswith(("running_mean", "running_var")) and k.rsplit(".", 1)[0] + ".weight" in frozen_params]
    assert stats and not changed(before, b.model, stats)
    if policy == "frozen":
        kinds = {type(b.model.get_submodule(k.rsplit(".", 1)[0])).__name__ for k in stats}
        assert kinds <= {"FrozenBatchNorm2d", "FrozenBatchNormAct2d"}
    assert not changed(before, b.model, [p for p in params_of(b, frozen) if p in before])


def test_gradual_unfreezing_adds_exactly_the_new_parameters(tiny_dataset):
    from freezebench.engine.freeze import param_groups
    from freezebench.engine.phases import PlanExecutor
    from freezebench.engine.training import make_optimizer

    cfg = TrialConfig(strategy="gradual_unfreeze", lr=0.01, epochs=4, strategy_params={"every": 1})
    b, plan = build_and_plan(cfg, 2, plugins.backbones().get("resnet18"), WeightsRequest(False),
                             plugins.strategies().get("gradual_unfreeze"))
    opt = make_optimizer("sgd", param_groups(b, plan, cfg.lr), cfg.lr, 0.9)
    ex = PlanExecutor(b, plan, opt, lr=cfg.lr, weight_decay=0.0, epochs=4, schedule="step", step=2, gamma=0.5)
    params = dict(b.model.named_parameters())
    units = b.unit_names()  # conv1+bn1, layer1..layer4
    in_opt = lambda: {id(p) for g in opt.param_groups for p in g["params"]}  # noqa: E731
    expected = {id(params[p]) for p in b.head.params}
    for epoch in range(1, 5):
        ex.begin_epoch(epoch)
        if epoch >= 2:  # epoch 2 unfreezes layer4, epoch 3 layer3, ...
            expected |= {id(params[p]) for p in params_of(b, [units[-(epoch - 1)]])}
        ids = [id(p) for g in opt.param_groups for p in g["params"]]
        assert len(ids) == len(set(ids)), "a parameter was added twice"
        assert in_opt() == expected
        assert {id(p) for p in b.model.parameters() if p.requires_grad} == expected
        factor = 0.5 ** ((epoch - 1) // 2)  # every group, new ones too, follows the LR schedule
        assert all(g["lr"] == pytest.approx(g["initial_lr"] * factor) for g in opt.param_groups)
    assert [e["unfrozen_units"] for e in ex.events] == [["layer4"], ["layer3"], ["layer2"]]


def test_gradual_unfreeze_trial_keeps_never_unfrozen_units(tiny_dataset):
    result, b, before = run(tiny_dataset, "mobilenetv2_100", "gradual_unfreeze", epochs=3, every=1)
    later = [u for e in result.events for u in e["unfrozen_units"]]
    assert later == b.unit_names()[-2:][::-1]
    never = [u for u in b.unit_names() if u not in later]  # this 3-epoch trial reached two phases
    assert result.plan.never_trained == ()  # the plan would have unfrozen everything, given epochs
    assert not changed(before, b.model, params_of(b, never))
    assert changed(before, b.model, params_of(b, later))
    assert result.trainable_params == trainable_count(b.model)


def test_lp_ft_probes_then_fine_tunes_at_lower_lr(tiny_dataset):
    result, b, before = run(tiny_dataset, "resnet18", "lp_ft", epochs=2, lp_epochs=1, ft_lr_scale=0.1)
    assert result.events == [{"epoch": 2, "unfrozen_units": b.unit_names(), "new_params": len(params_of(b, b.unit_names()))}]
    assert changed(before, b.model, params_of(b, b.unit_names()))
    assert result.trainable_params == result.total_params


def test_bitfit_trains_biases_only(tiny_dataset):
    result, b, before = run(tiny_dataset, "tv_vgg11", "bitfit", epochs=1)
    weights = [p for p in params_of(b, b.unit_names()) if p.endswith("weight")]
    biases = [p for p in params_of(b, b.unit_names()) if p.endswith("bias")]
    assert not changed(before, b.model, weights)
    assert changed(before, b.model, biases) == set(biases)
    params = dict(b.model.named_parameters())
    assert result.trainable_params == sum(params[p].numel() for p in biases + list(b.head.params))


def test_l2_sp_pulls_toward_pretrained_weights(tiny_dataset):
    far = run(tiny_dataset, "resnet18", "l2_sp", alpha=0.0)
    near = run(tiny_dataset, "resnet18", "l2_sp", alpha=50.0)

    def distance(res):
        result, b, before = res
        return sum(((b.model.state_dict()[p] - before[p]) ** 2).sum().item() for p in params_of(b, b.unit_names()))

    assert distance(near) < distance(far)
    assert near[0].plan.regularizer.alpha == 50.0
    assert near[0].plan.as_dict()["regularizer"] == "L2-SP alpha=50"


def test_layer_wise_lr_decay():
    cfg = TrialConfig(strategy="full", lr=0.1, lr_decay=0.5)
    b, plan = build_and_plan(cfg, 2, plugins.backbones().get("resnet18"), WeightsRequest(False), plugins.strategies().get("full"))
    assert [plan.lr_mult[u] for u in b.unit_names()] == [0.0625, 0.125, 0.25, 0.5, 1.0]


@pytest.mark.parametrize(
    "strategy,params,expected",
    [
        ("freeze_to", {"k": 99}, "k=99 is outside 0..5 for backbone 'resnet18', whose 5 units are: conv1+bn1, layer1"),
        ("train_window", {"window": "layer2..layer9"}, "has no unit 'layer9'; its units are: conv1+bn1, layer1, layer2"),
        ("train_window", {"window": "layer3..layer1"}, "layer3 comes after layer1"),
        ("last_blocks", {"n": -9}, "n=-9 is outside 0..5"),
        ("train_window", {}, "needs parameter 'window'"),
    ],
)
def test_bad_units_name_the_backbone_units(strategy, params, expected):
    cfg = TrialConfig(strategy=strategy, lr=0.1, strategy_params=params)
    with pytest.raises(UserError) as exc:
        build_and_plan(cfg, 2, plugins.backbones().get("resnet18"), WeightsRequest(False), plugins.strategies().get(strategy))
    assert expected in str(exc.value)
