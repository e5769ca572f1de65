"""A trained model as a folder anyone can load and use: the weights as safetensors (no pickle) and a
manifest with all that rebuilds the network and prepares an image the way the trial did.

    model.safetensors       every tensor of the trained network (state dict)
    freezebench-model.json  backbone, head, classes, input size, resize mode, normalisation,
                            the weights' sha256, and where the model came from

An ensemble (the seeds of one configuration, ``confirm.ensemble``) is a folder of such folders:

    freezebench-ensemble.json  the members' folder names, their classes and input, where they came from
    seed-0/, seed-1/, ...      one model folder each; the ensemble's probabilities are their mean

A strategy's surgery (LoRA) is merged into the backbone's own modules first where the strategy can;
where it cannot, the manifest names the strategy and its parameters, and loading applies the surgery
again (with that strategy's plugin installed) before the weights are loaded.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__, plugins
from ..backbone import Backbone, WeightsRequest
from ..errors import UserError
from ..records import TrialConfig
from ..strategy import describe_part, resolve_strategy_params
from ..weights import sha256_file
from .heads import with_head
from .preprocess import Normalizer, resize_images

FORMAT = "freezebench-model/1"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "freezebench-model.json"
ENSEMBLE_FORMAT = "freezebench-ensemble/1"
ENSEMBLE_FILE = "freezebench-ensemble.json"


def save_model(backbone: Backbone, config: TrialConfig, classes: Sequence[str], folder: Path, about: dict | None = None,
               surgery: Any = None) -> Path:
    """Write ``backbone``'s trained network and its manifest into ``folder``; returns the folder. With the
    plan's ``surgery``, a copy of the network is merged first (the trained network is left as it is)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, kept = backbone.model, None
    if surgery is not None:
        model = copy.deepcopy(model)
        if not surgery.merge(model):
            kept = {"strategy": config.strategy, "strategy_params": dict(config.strategy_params),
                    "granularity": config.granularity, "describe": describe_part(surgery)}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    manifest = {
        "format": FORMAT,
        "freezebench_version": __version__,
        "backbone": backbone.name,
        "head": {"kind": config.head, "hidden": config.head_hidden, "dropout": config.head_dropout},
        "classes": list(classes),
        "input": {"image_size": config.image_size, "resize_mode": config.resize_mode,
                  "mean": list(backbone.mean), "std": list(backbone.std)},
        "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
        "pretrained_from": backbone.weights_source,
        "surgery": kept,  # null: the plain backbone
        **(about or {}),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
    return folder


@dataclass
class SavedModel:
    """A model loaded back from its folder, ready to predict."""

    manifest: dict[str, Any]
    model: torch.nn.Module

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Class probabilities (N, C) for decoded uint8 images ((H, W) or (H, W, 3), any size)."""
        spec = self.manifest["input"]
        norm = Normalizer(spec["mean"], spec["std"])
        self.model.eval()
        out = []
        for start in range(0, len(images), batch_size):
            batch = resize_images(images[start : start + batch_size], spec["image_size"], spec["resize_mode"])
            out.append(torch.softmax(self.model(norm(batch)).float(), dim=1))
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, len(self.classes)))


@dataclass
class SavedEnsemble:
    """Models of one configuration trained with different seeds, predicting together: the mean of their class
    probabilities. ``manifest``: the ensemble's (classes, input and backbone shared by every member)."""

    manifest: dict[str, Any]
    members: list[SavedModel]

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """The members' class probabilities (N, C), averaged."""
        return np.mean([m.predict(images, batch_size) for m in self.members], axis=0)


SHARED = ("backbone", "classes", "input")  # what every member of an ensemble has in common, copied to its manifest


def save_ensemble(folder: Path, members: Sequence[str], about: dict | None = None) -> Path:
    """Write the manifest of an ensemble whose member model folders (``members``, names inside ``folder``) are
    already there; ``load_model`` checks each member. Returns the folder."""
    folder = Path(folder)
    manifests = [_json(folder / name / MANIFEST_FILE) for name in members]
    first = manifests[0]
    for name, m in zip(members, manifests):
        for key in SHARED:
            if m.get(key) != first.get(key):
                raise UserError(f"{folder / name}: its {key} ({m.get(key)!r}) differs from {members[0]}'s "
                                f"({first.get(key)!r}): these models cannot make one ensemble.")
    manifest = {"format": ENSEMBLE_FORMAT, "freezebench_version": __version__, "members": list(members),
                "combine": "mean of the members' class probabilities", **{k: first[k] for k in SHARED},
                "pretrained_from": first.get("pretrained_from"), **(about or {})}
    (folder / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
    return folder


def load_model(folder: str | Path) -> SavedModel | SavedEnsemble:
    """A model folder, or an ensemble folder (``ENSEMBLE_FILE``: each member loaded and checked, and each must
    share the ensemble's classes and input). See ``load_single``."""
    folder = Path(folder)
    path = folder / ENSEMBLE_FILE
    if not path.is_file():
        return load_single(folder)
    manifest = _json(path)
    if manifest.get("format") != ENSEMBLE_FORMAT or not isinstance(manifest.get("members"), list) or not manifest["members"]:
        raise UserError(f"{path}: format {manifest.get('format')!r} with members {manifest.get('members')!r} is not a "
                        f"{ENSEMBLE_FORMAT!r} manifest with a list of member folders; export the model again.")
    members = []
    for name in manifest["members"]:
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise UserError(f"{path}: member {name!r} is not the name of a folder beside it; export the model again.")
        member = load_single(folder / name)
        for key in SHARED:
            if member.manifest.get(key) != manifest.get(key):
                raise UserError(f"{folder / name}: its {key} ({member.manifest.get(key)!r}) is not the ensemble's "
                                f"({manifest.get(key)!r}); export the model again.")
        members.append(member)
    return SavedEnsemble(manifest, members)


def _json(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} holds {type(manifest).__name__}, not a manifest (a JSON object); export the model again.")
    return manifest


def load_single(folder: str | Path) -> SavedModel:
    """Rebuild the network a manifest describes (no pretrained download: every tensor comes from the
    folder), check the weights file against the manifest's sha256, and load it strictly."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest_path, weights_path = folder / MANIFEST_FILE, folder / WEIGHTS_FILE
    if not manifest_path.is_file() or not weights_path.is_file():
        raise UserError(f"{folder} is not a freezebench model folder: it needs {MANIFEST_FILE} and {WEIGHTS_FILE} "
                        "(made by freezebench export).")
    manifest = _json(manifest_path)
    if manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT!r}; export the model again "
                        "with this freezebench.")
    actual = sha256_file(weights_path)
    if actual != manifest.get("weights_sha256"):
        raise UserError(f"{weights_path} has sha256 {actual}, but its manifest says {manifest.get('weights_sha256')}: "
                        "the file was changed or damaged. Export the model again.")
    name = manifest["backbone"]
    if name not in plugins.backbones():
        raise UserError(f"{manifest_path}: {plugins.backbones().unknown_message(name)}")
    backbone = plugins.backbones().get(name).build(len(manifest["classes"]), WeightsRequest(pretrained=False))
    head = manifest["head"]
    backbone = with_head(backbone, head["kind"], head["hidden"], head["dropout"])
    if manifest.get("surgery"):
        backbone = _operated(backbone, manifest["surgery"], manifest_path)
    try:
        backbone.model.load_state_dict(load_file(str(weights_path)), strict=True)
    except RuntimeError as exc:
        raise UserError(f"{weights_path} does not fit backbone {name!r} with a {head['kind']} head: "
                        f"{str(exc).splitlines()[0]}") from None
    return SavedModel(manifest, backbone.model.eval())


def _operated(backbone: Backbone, kept: dict, manifest_path: Path) -> Backbone:
    """The backbone with the surgery its strategy applied in training (its modules, untrained)."""
    from .surgery import operate
    from .units import with_granularity

    name = kept.get("strategy")
    if name not in plugins.strategies():
        raise UserError(f"{manifest_path}: the model keeps modules added by strategy {name!r}; loading it needs that "
                        f"strategy's plugin. {plugins.strategies().unknown_message(name)}")
    strategy = plugins.strategies().get(name)
    units = with_granularity(backbone, kept.get("granularity", "block"))
    params = resolve_strategy_params(strategy, backbone.name, units.unit_names(), dict(kept.get("strategy_params") or {}))
    return operate(units, strategy.plan(units.unit_names(), params).surgery)
