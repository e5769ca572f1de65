"""Backbones from torchvision: the papers' classic networks that timm lacks (AlexNet, GoogLeNet)
and VGG, ResNet, DenseNet and MobileNetV2 with torchvision's own layer names.

Names are prefixed ``tv_``. Block units: AlexNet and VGG use the classic names (conv1..conv5 or
conv blocks, fc6, fc7), so paper 004's "CL3+CL4" is ``train_window`` over ``conv3..conv4``; the
others use their top-level stages. The head is the last linear layer, replaced for the dataset.
Weights, in order: a local file or URL from the config, the ImageNet MobileNetV2 shipped with
freezebench (tv_mobilenet_v2), or torchvision's download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freezebench.backbone import Backbone, BackboneSpec, Unit, WeightsRequest
from freezebench.errors import UserError
from freezebench.hookspecs import hookimpl
from freezebench.torch_compat import ensure_torchvision_importable
from freezebench.weights import is_url, load_into, match_state_dict

from .timm_backbones import build as timm_build

if TYPE_CHECKING:
    from torch import nn

MODELS = {
    # name: (torchvision builder, head module path)
    "alexnet": ("alexnet", "classifier.6"),
    "vgg11": ("vgg11", "classifier.6"),
    "vgg16": ("vgg16", "classifier.6"),
    "vgg19": ("vgg19", "classifier.6"),
    "vgg16_bn": ("vgg16_bn", "classifier.6"),
    "googlenet": ("googlenet", "fc"),
    "resnet18": ("resnet18", "fc"),
    "resnet50": ("resnet50", "fc"),
    "resnet101": ("resnet101", "fc"),
    "densenet121": ("densenet121", "classifier"),
    "mobilenet_v2": ("mobilenet_v2", "classifier.1"),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@hookimpl
def register_backbones(register):
    for name in MODELS:
        shipped = name == "mobilenet_v2"
        register(
            BackboneSpec(
                name=f"tv_{name}",
                build=lambda num_classes, weights, _n=name: build(_n, num_classes, weights),
                summary=f"torchvision {name}" + (" with ImageNet weights shipped in freezebench" if shipped else ""),
                default_weights="shipped" if shipped else "torchvision download (online) or a local file",
            )
        )


def _create(name: str, pretrained_layout: bool) -> nn.Module:
    ensure_torchvision_importable()
    import torchvision

    kwargs = {}
    if name == "googlenet":  # no auxiliary classifiers; pretrained weights expect transform_input
        kwargs = {"aux_logits": False, "init_weights": not pretrained_layout, "transform_input": pretrained_layout}
    return getattr(torchvision.models, MODELS[name][0])(weights=None, **kwargs)


def _download(name: str, model: nn.Module) -> str:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(MODELS[name][0]).DEFAULT
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise UserError(
            f"Could not get pretrained weights for backbone 'tv_{name}' from torchvision "
            f"({type(exc).__name__}: {exc}). Offline? Name a local file in the backbone's config "
            "(weights = \"path\", optional sha256 = \"...\"), or use a strategy that starts from "
            "random weights (scratch)."
        ) from exc
    if name == "googlenet":
        state = {k: v for k, v in state.items() if not k.startswith("aux")}
    model.load_state_dict(state)
    return f"torchvision:{weights}"


def build(name: str, num_classes: int, weights: WeightsRequest) -> Backbone:
    from torch import nn

    model = _create(name, pretrained_layout=weights.pretrained)
    head_path = MODELS[name][1]
    sha, note = None, ""
    if not weights.pretrained:
        source = "random"
    elif weights.file:
        loaded = load_into(model, weights.file, weights.sha256, ignore_prefix=head_path)
        sha, note = loaded.sha256, loaded.note()
        source = ("url:" if is_url(weights.file) else "file:") + weights.file
    elif name == "mobilenet_v2":  # the shipped file, through timm's model: same tensors, same order
        donor = timm_build("mobilenetv2_100", 1000, WeightsRequest())
        state = {k: v for k, v in donor.model.state_dict().items() if not k.startswith(donor.head.name + ".")}
        model.load_state_dict(match_state_dict(state, model, donor.weights_source, head_path), strict=False)
        sha, source = donor.weights_sha256, donor.weights_source
    else:
        source = _download(name, model)
    old = model.get_submodule(head_path)
    parent, _, leaf = head_path.rpartition(".")
    (model.get_submodule(parent) if parent else model).add_module(leaf, nn.Linear(old.in_features, num_classes))
    head = Unit(head_path, (f"{head_path}.weight", f"{head_path}.bias"))
    return Backbone(
        name=f"tv_{name}",
        model=model,
        units=block_units(name, model, head_path),
        head=head,
        input_size=224,
        mean=MEAN,
        std=STD,
        weights_source=source,
        weights_sha256=sha,
        weights_note=note,
    )


def _params_of(model: nn.Module, prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" for n, _ in model.get_submodule(prefix).named_parameters())


def block_units(name: str, model: nn.Module, head_path: str) -> tuple[Unit, ...]:
    from torch import nn

    units: list[Unit] = []
    if name == "alexnet" or name.startswith("vgg"):
        # conv layers grouped into blocks ending at each max-pool (VGG) or one per conv (AlexNet)
        block: list[str] = []
        for idx, module in model.features.named_children():
            if any(True for _ in module.parameters()):
                block.extend(_params_of(model, f"features.{idx}"))
                if name == "alexnet" and isinstance(module, nn.Conv2d):
                    units.append(Unit(f"conv{len(units) + 1}", tuple(block)))
                    block = []
            if isinstance(module, nn.MaxPool2d) and block:
                units.append(Unit(f"conv{len(units) + 1}", tuple(block)))
                block = []
        linears = [f"classifier.{i}" for i, m in model.classifier.named_children() if isinstance(m, nn.Linear)]
        for i, path in enumerate(p for p in linears if p != head_path):
            units.append(Unit(f"fc{6 + i}", _params_of(model, path)))
        return tuple(units)
    containers = {"mobilenet_v2": "features", "densenet121": "features"}
    root = containers.get(name)
    children = model.get_submodule(root).named_children() if root else model.named_children()
    pending: list[str] = []
    for child, module in children:
        path = f"{root}.{child}" if root else child
        if path == head_path or not any(True for _ in module.parameters()):
            continue
        params = _params_of(model, path)
        if name.startswith("resnet") and child in ("conv1", "bn1"):  # stem: conv1 + bn1
            pending.extend(params)
            if child == "bn1":
                units.append(Unit("conv1+bn1", tuple(pending)))
                pending = []
            continue
        units.append(Unit(path, params))
    return tuple(units)
