"""Make ``import torchvision`` (and so ``import timm``) work with a CPU-only torch.

The torchvision wheel that matches torch 2.13 on PyPI is a CUDA build. Its compiled ops
(``torchvision/_C``) do not load against the CPU torch, and torchvision's Python side then
fails at import with "operator torchvision::nms does not exist" when it registers fake
kernels. If (and only if) the compiled ops cannot load, define the missing schemas first.
torchvision.ops / torchvision.io are then unusable; freezebench reads images with PIL.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_done = False
_library = None  # keep a reference: the fragment lives as long as this object


def ensure_torchvision_importable() -> None:
    global _done, _library
    if _done or "torchvision" in sys.modules:
        _done = True
        return
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        _done = True
        return
    compiled = sorted(Path(spec.origin).parent.glob("_C*"))
    try:
        if not compiled:
            raise OSError("no compiled ops")
        torch.ops.load_library(str(compiled[0]))
    except Exception:
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            _library.define(schema)
    _done = True


def import_timm():
    """Import timm (which imports torchvision) safely."""
    ensure_torchvision_importable()
    import timm

    return timm
