"""Where trials compute: device and AMP resolution, channels_last, and a trial on the GPU when there is one."""

from __future__ import annotations

import pytest
import torch

from freezebench import plugins
from freezebench.backbone import WeightsRequest
from freezebench.engine.device import resolve_compute
from freezebench.errors import UserError
from freezebench.engine.trial import DataCache, TrialConfig, run_trial

HAS_CUDA = torch.cuda.is_available()


def _trial(dataset, cache=None, lr=0.001, **kw):
    cfg = TrialConfig(strategy="freeze_to", strategy_params={"k": 4}, lr=lr, epochs=2, batch_size=8, image_size=32, **kw)
    return run_trial(cfg, dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(True),
                     plugins.strategies().get("freeze_to"), cache or DataCache())


def test_auto_resolves_to_this_machine():
    compute = resolve_compute("auto", "auto", True)
    assert compute.device.type == ("cuda" if HAS_CUDA else "cpu")
    if not HAS_CUDA:  # float32 on the CPU; NHWC as asked
        assert compute.amp_dtype is None and compute.channels_last and compute.scaler() is None
        assert compute.describe() == f"cpu ({torch.get_num_threads()} threads), amp off, channels_last"
    else:
        assert compute.amp_dtype in (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("device,amp,message", [
    ("gpu", "auto", "device = 'gpu'"),
    ("cpu", "half", "amp = 'half'"),
    ("cpu", "fp16", "amp = 'fp16' needs a GPU"),
    ("cuda:99", "auto", "cuda:99"),
])
def test_impossible_settings_are_named(device, amp, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        resolve_compute(device, amp)


def test_channels_last_model_and_input():
    compute = resolve_compute("cpu", "off", True)
    conv = compute.model(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = compute.layout(torch.zeros(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert compute.layout(torch.zeros(2, 5)).shape == (2, 5)  # features stay as they are


def test_trial_records_its_compute_and_layout_does_not_change_results(tiny_dataset):
    nchw = _trial(tiny_dataset, device="cpu", channels_last=False)
    nhwc = _trial(tiny_dataset, device="cpu", channels_last=True)
    assert nchw.compute.endswith("amp off, contiguous") and nhwc.compute.endswith("amp off, channels_last")
    assert abs(nchw.outcome.test_probs - nhwc.outcome.test_probs).max() < 1e-3
    assert nchw.outcome.history[-1]["val_loss"] == pytest.approx(nhwc.outcome.history[-1]["val_loss"], rel=1e-3)


def test_bf16_autocast_trains_close_to_float32(tiny_dataset):
    """The AMP code path (autocast in training, prediction and the prefix) runs on the CPU in bfloat16."""
    fp32 = _trial(tiny_dataset, device="cpu", amp="off")
    bf16 = _trial(tiny_dataset, device="cpu", amp="bf16")
    assert "amp bf16" in bf16.compute and bf16.prefix_cache.startswith("on:")
    assert bf16.outcome.test_probs.dtype.name == "float64"
    assert abs(fp32.outcome.test_probs - bf16.outcome.test_probs).max() < 0.1  # bfloat16 keeps 8 bits of mantissa
    assert bf16.outcome.history[-1]["val_loss"] == pytest.approx(fp32.outcome.history[-1]["val_loss"], rel=0.1)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (CI has none)")
@pytest.mark.parametrize("amp", ["off", "auto", "fp16"])
def test_gpu_trial_matches_cpu_and_caching_is_exact(tiny_dataset, amp):
    cpu = _trial(tiny_dataset, device="cpu", amp="off")
    cached = _trial(tiny_dataset, device="cuda", amp=amp)
    uncached = _trial(tiny_dataset, device="cuda", amp=amp, cache="off")
    assert cached.compute.startswith(torch.cuda.get_device_name()) and cached.prefix_cache.startswith("on:")
    tolerance = 1e-3 if amp == "off" else 0.1
    assert abs(cached.outcome.test_probs - cpu.outcome.test_probs).max() < tolerance
    assert abs(cached.outcome.test_probs - uncached.outcome.test_probs).max() < tolerance


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (CI has none)")
def test_gpu_batches_are_pinned_and_copied_without_blocking():
    compute = resolve_compute("cuda", "off", True)
    host = torch.arange(12, dtype=torch.uint8).view(1, 3, 2, 2)
    moved = compute.batch(host)
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), host)
    assert compute.batch(moved) is moved  # already there: no copy
