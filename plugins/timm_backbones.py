"""Backbones from timm: any timm model name, its head replaced for the dataset's classes.

Freeze units come from timm's ``group_matcher(coarse=True)``, ordered input to output (models
without one, such as MetaFormer, get a unit per top-level module, or per stage of a top-level
Sequential/ModuleList); the classifier is the head. Pretrained weights, in order: a local file from the config,
the weights shipped with freezebench (mobilenetv2_100), or timm's own download.
"""

from __future__ import annotations

from pathlib import Path

from freezebench.backbone import Backbone, BackboneSpec, Unit, WeightsRequest
from freezebench.errors import UserError
from freezebench.hookspecs import hookimpl
from freezebench.torch_compat import import_timm
from freezebench.weights import is_url, load_into

ASSETS = Path(__file__).parent / "assets"
SHIPPED = {
    "mobilenetv2_100": (
        ASSETS / "mobilenetv2_100.imagenet.safetensors",
        "545799184f77823ee74e8527002cd9eeda45142333be07690d73473fa5a3243f",
    ),
}


@hookimpl
def register_backbones(register):
    timm = import_timm()
    for name in timm.list_models():
        shipped = name in SHIPPED
        register(
            BackboneSpec(
                name=name,
                build=lambda num_classes, weights, _name=name: build(_name, num_classes, weights),
                summary="timm model" + (" with ImageNet weights shipped in freezebench" if shipped else ""),
                default_weights="shipped" if shipped else "timm hub (online) or a local file",
            )
        )


def _unit_name(param_names: list[str]) -> str:
    """A readable name for a group: the common module prefix per top-level module, joined by '+'."""
    by_root: dict[str, list[list[str]]] = {}
    for p in param_names:
        parts = p.split(".")[:-1] or [p]
        by_root.setdefault(parts[0], []).append(parts)
    names = []
    for paths in by_root.values():
        common = paths[0]
        for path in paths[1:]:
            i = 0
            while i < min(len(common), len(path)) and common[i] == path[i]:
                i += 1
            common = common[:i]
        names.append(".".join(common))
    return "+".join(names)


def _module_groups(model) -> dict[int, list[str]]:
    """For models without a group matcher: parameters grouped by top-level module, and by child of a
    top-level Sequential/ModuleList (``stages.0``, ``stages.1``), in registration order."""
    from torch import nn

    keys: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        container = len(parts) > 2 and isinstance(model.get_submodule(parts[0]), (nn.Sequential, nn.ModuleList))
        keys.setdefault(".".join(parts[:2]) if container else parts[0], []).append(name)
    return dict(enumerate(keys.values()))


def freeze_units(model, head_params: set[str]) -> tuple[Unit, ...]:
    timm = import_timm()
    if hasattr(model, "group_matcher"):
        groups = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    else:
        groups = _module_groups(model)
    units, used = [], set()
    for _, names in sorted(groups.items()):
        names = [n for n in names if n not in head_params]
        if not names:
            continue
        name = _unit_name(names)
        while name in used:
            name += "'"
        used.add(name)
        units.append(Unit(name, tuple(names)))
    return tuple(units)


def _head(model) -> tuple[str, set[str]]:
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier and name:
            return name, {f"{name}.{p}" for p, _ in module.named_parameters()}
    raise UserError(f"Cannot find the classifier of timm model {type(model).__name__}.")


def build(name: str, num_classes: int, weights: WeightsRequest) -> Backbone:
    timm = import_timm()
    sha, note = None, ""
    if not weights.pretrained:
        model, source = timm.create_model(name, pretrained=False), "random"
    elif weights.file:
        model = timm.create_model(name, pretrained=False)
        head_name, _ = _head(model)
        loaded = load_into(model, weights.file, weights.sha256, ignore_prefix=head_name)
        sha, note = loaded.sha256, loaded.note()
        source = f"url:{weights.file}" if is_url(weights.file) else f"file:{weights.file}"
    elif name in SHIPPED:
        path, expected = SHIPPED[name]
        model = timm.create_model(name, pretrained=False)
        sha = load_into(model, path, expected).sha256
        source = f"shipped:{path.name}"
    else:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:
            raise UserError(
                f"Could not get pretrained weights for backbone {name!r} from timm's hub "
                f"({type(exc).__name__}: {exc}). Offline? Name a local file in the backbone's "
                "config (weights = \"path\", optional sha256 = \"...\"), or use a strategy that "
                "starts from random weights (scratch)."
            ) from exc
        source = f"timm:{model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url') or name}"
    model.reset_classifier(num_classes)
    head_name, head_params = _head(model)
    cfg = model.pretrained_cfg
    return Backbone(
        name=name,
        model=model,
        units=freeze_units(model, head_params),
        head=Unit(head_name, tuple(sorted(head_params))),
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        weights_source=source,
        weights_sha256=sha,
        weights_note=note,
    )
