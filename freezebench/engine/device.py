"""Where a trial computes: the device, mixed precision (AMP), memory layout, host-to-device transfers.

``device = "auto"`` picks the first CUDA GPU when there is one, else the CPU. On a GPU, ``amp =
"auto"`` trains in bfloat16 autocast where the GPU supports it, else float16 with a gradient
scaler; on the CPU it stays float32 (bfloat16 autocast is slower than float32 on CPUs without
bfloat16 units). Batches stay uint8 on the host, are pinned and copied without blocking, and are
normalised on the device. ``channels_last`` stores 4-D activations as NHWC, which convolution
kernels prefer on GPUs and, as measured in docs/performance.md, on this CPU too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..records import AMP_MODES, DEVICE_PATTERN


@dataclass(frozen=True)
class Compute:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None: float32
    channels_last: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "off")  # type: ignore[arg-type]
        # the CPU's thread count changes the order of float sums, and so the results: the run records it
        name = torch.cuda.get_device_name(self.device) if self.cuda else f"{self.device.type} ({torch.get_num_threads()} threads)"
        return f"{name}, amp {amp}, {'channels_last' if self.channels_last else 'contiguous'}"

    def model(self, module: nn.Module) -> nn.Module:
        """Move a model to the device (in place), NHWC when ``channels_last``."""
        if self.channels_last:
            return module.to(self.device, memory_format=torch.channels_last)
        return module.to(self.device)

    def batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host batch on the device: pinned and copied without blocking when the target is a GPU."""
        if tensor.device == self.device:
            return tensor
        if self.cuda and tensor.device.type == "cpu":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Model input in the chosen memory format (4-D tensors only)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> "torch.amp.GradScaler | None":
        """A gradient scaler for float16 training (bfloat16 and float32 need none)."""
        if self.amp_dtype is torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None


CPU = Compute(torch.device("cpu"), None, False)


def resolve_compute(device: str = "auto", amp: str = "auto", channels_last: bool = True) -> Compute:
    """The trial's ``device``, ``amp`` and ``channels_last`` settings made concrete for this machine."""
    if not DEVICE_PATTERN.match(device):
        raise UserError(f"device = {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    if amp not in AMP_MODES:
        raise UserError(f"amp = {amp!r}: use one of {', '.join(AMP_MODES)}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device = {device!r}, but this machine has no CUDA GPU that torch can use "
                            f"(torch {torch.__version__}). Use device = 'auto' or 'cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device = {device!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("device = 'mps', but Apple's MPS backend is not available here. Use 'auto' or 'cpu'.")
    if amp == "auto":
        dtype = None
        if dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if dtype is torch.float16 and dev.type == "cpu":
        raise UserError("amp = 'fp16' needs a GPU; on the CPU use amp = 'bf16' or 'off'.")
    return Compute(dev, dtype, channels_last)
