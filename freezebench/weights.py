"""Load pretrained weights from files safely: safetensors, or torch.load(weights_only=True).

Never unpickles arbitrary objects. Optionally checks a sha256. Can map a state_dict whose
key names differ (e.g. torchvision's file for a timm model) by order, when every shape matches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

from .errors import UserError


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def fetch(url: str, sha256: str | None = None) -> Path:
    """Download ``url`` into torch's hub cache (``$TORCH_HOME/hub/checkpoints``) unless already there."""
    from urllib.parse import urlparse

    import torch

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / (Path(urlparse(url).path).name or "weights.pth")
    if target.is_file() and (not sha256 or sha256_file(target) == sha256.lower()):
        return target
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as exc:
        raise UserError(
            f"Could not download weights from {url}: {type(exc).__name__}: {exc}. "
            "Offline? Download the file elsewhere and name its local path in 'weights'."
        ) from exc
    return target


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Weights file not found: {path}. Check the 'weights' path in your config.")
    if path.stat().st_size == 0:
        raise UserError(f"Weights file {path} is empty (0 bytes): the download or copy did not finish. Fetch it again.")
    if sha256:
        actual = sha256_file(path)
        if actual.lower() != sha256.lower():
            raise UserError(
                f"Weights file {path} has sha256 {actual}, expected {sha256}. "
                "The file is corrupt or not the one named; fetch it again or fix 'sha256'."
            )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"Cannot read weights file {path}: {type(exc).__name__}: {exc}. freezebench reads "
            ".safetensors, or .pth/.pt/.bin state_dicts that load with torch.load(weights_only=True)."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"Weights file {path} does not hold a state_dict of tensors.")
    return state


class MatchedState(dict):
    """A state dict keyed like the model's, with the source tensors left out on the way (``dropped``:
    the source's own classifier, named with its shape)."""

    dropped: tuple[str, ...] = ()
    sha256: str | None = None

    def note(self) -> str:
        return f"dropped the source's classifier: {', '.join(self.dropped)}" if self.dropped else ""


def _shape(t) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _classifier_tail(tail: list) -> bool:
    """``tail`` (the source's last tensors) is a classifier: a (C, F) weight (or a 1x1 convolution's
    (C, F, 1, 1)), optionally followed by its (C,) bias."""
    weight = tail[0][1]
    if weight.ndim not in (2, 4) or (weight.ndim == 4 and tuple(weight.shape[2:]) != (1, 1)):
        return False
    return len(tail) == 1 or (len(tail) == 2 and tail[1][1].ndim == 1 and tail[1][1].shape[0] == weight.shape[0])


def match_state_dict(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    source: str,
    ignore_prefix: str | None = None,
    ordered: bool = True,
) -> MatchedState:
    """Return ``state`` keyed like ``model.state_dict()``: by name, else by order when shapes agree.

    Keys under ``ignore_prefix`` (the classifier, about to be replaced) are left out on both sides.
    Mapping by order needs a source that keeps the module order (torch state dicts do;
    safetensors files come back sorted by name, so they must match by name). When the model's
    classifier is to be replaced and the source still holds its own under another name (last in
    order: a weight, and a bias), it is dropped, and named in the result's ``dropped``.
    """

    def keep(key: str) -> bool:
        return not (ignore_prefix and key.startswith(ignore_prefix + "."))

    target = {k: v for k, v in model.state_dict().items() if keep(k)}
    state = {k: v for k, v in state.items() if keep(k)}
    if set(state) == set(target):
        bad = [k for k in target if state[k].shape != target[k].shape]
        if bad:
            raise UserError(f"{source}: shape mismatch for {bad[:3]}; the weights are for another model.")
        return MatchedState(state)
    src, dst = list(state.items()), list(target.items())
    extra = len(src) - len(dst)
    if ordered and ignore_prefix and extra in (1, 2) and _classifier_tail(src[len(dst):]):
        kept = src[: len(dst)]
        if all(a.shape == b.shape for (_, a), (_, b) in zip(kept, dst)):
            matched = MatchedState({name: tensor for (name, _), (_, tensor) in zip(dst, kept)})
            matched.dropped = tuple(f"{k} {_shape(v)}" for k, v in src[len(dst):])
            return matched
    if ordered and len(src) == len(dst) and all(a.shape == b.shape for (_, a), (_, b) in zip(src, dst)):
        return MatchedState({name: tensor for (name, _), (_, tensor) in zip(dst, src)})
    missing = sorted(set(target) - set(state))[:3]
    raise UserError(
        f"{source}: its {len(state)} tensors do not match the model's {len(target)} "
        f"(e.g. missing {missing}); the weights are for another architecture."
    )


def load_into(model: nn.Module, path: str | Path, sha256: str | None = None, ignore_prefix: str | None = None) -> MatchedState:
    """Load a weights file (or URL) into ``model``; every tensor outside ``ignore_prefix`` must be filled.

    Returns what was loaded, with ``sha256`` (the file's) and ``note()`` (what was left out, if anything).
    """
    if isinstance(path, str) and is_url(path):
        path = fetch(path, sha256)
    ordered = Path(path).suffix != ".safetensors"
    state = match_state_dict(read_state_dict(path, sha256), model, str(path), ignore_prefix, ordered)
    result = model.load_state_dict(state, strict=ignore_prefix is None)
    assert not result.unexpected_keys
    assert all(k.startswith(f"{ignore_prefix}.") for k in result.missing_keys)
    state.sha256 = sha256.lower() if sha256 else sha256_file(path)
    return state
