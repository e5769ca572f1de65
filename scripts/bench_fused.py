"""Benchmark: trials fused per step (HFTA's idea) against trials one after the other, on this machine.

    python scripts/bench_fused.py                      # MobileNetV2, 64 px, batch 32, 3 models
    python scripts/bench_fused.py --image-size 128 --models 2 3 --json out.json

Trials that differ only in learning rate or seed train the same architecture. HFTA (Wang et al., MLSys
2021) fuses such models into one, so that each step runs one larger kernel instead of N small ones.
Here the N models are fused with ``torch.func`` (``stack_module_state`` + ``vmap`` of a
``functional_call``, the PyTorch way to run an ensemble as one model): per-model weights, BatchNorm
statistics and learning rates, each model with its own batch (its own seed's data order).

Modes, each in its own process:
- **sequential**: N models, one SGD step each per batch (what N trials do);
- **fused**: the N models stacked, one vmapped step.

Before timing, one step of both is run from the same weights and batches, and the largest difference in
the updated weights and BatchNorm statistics is printed (they must agree to float rounding). Times are
the median of ``--steps`` steps after two warm-up steps. ``docs/performance.md`` has the measured table.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _models(n: int, image_size: int, full: bool):
    import torch

    import freezebench.torch_compat  # noqa: F401
    from freezebench import plugins
    from freezebench.backbone import WeightsRequest

    spec = plugins.backbones().get("mobilenetv2_100")
    base = spec.build(2, WeightsRequest(True)).model
    if not full:  # the last three units train, as freeze_to k = 5 would
        for name, p in base.named_parameters():
            p.requires_grad = name.startswith(("blocks.5", "blocks.6", "conv_head", "bn2", "classifier"))
    models = []
    for i in range(n):
        torch.manual_seed(i)
        m = copy.deepcopy(base)
        m.get_submodule("classifier").reset_parameters()  # each trial's own head
        models.append(m.train())
    return models


def _batches(n: int, batch: int, image_size: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, batch, 3, image_size, image_size, generator=g)
    y = torch.randint(0, 2, (n, batch), generator=g)
    return x, y


def sequential_step(models, lrs, x, y):
    import torch
    import torch.nn.functional as F

    for i, m in enumerate(models):
        params = [p for p in m.parameters() if p.requires_grad]
        loss = F.cross_entropy(m(x[i]), y[i])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lrs[i] * g)


class Fused:
    """N models of one architecture as one: stacked weights and buffers, one vmapped forward and backward."""

    def __init__(self, models):
        import torch
        from torch.func import stack_module_state

        self.base = copy.deepcopy(models[0]).to("meta")
        params, self.buffers = stack_module_state(models)
        trains = {n for n, p in models[0].named_parameters() if p.requires_grad}
        self.trainable = {n: p.detach() for n, p in params.items() if n in trains}
        self.fixed = {n: p.detach() for n, p in params.items() if n not in trains}
        self.torch = torch

    def step(self, lrs, x, y):
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call, grad, vmap

        def loss(trainable, fixed, buffers, xb, yb):
            out = functional_call(self.base, {**trainable, **fixed, **buffers}, (xb,))
            return F.cross_entropy(out, yb)

        grads = vmap(grad(loss), in_dims=(0, 0, 0, 0, 0))(self.trainable, self.fixed, self.buffers, x, y)
        lr = torch.tensor(lrs)
        with torch.no_grad():
            for name, p in self.trainable.items():
                p.sub_(lr.view(-1, *[1] * (p.dim() - 1)) * grads[name])


def check(n: int, image_size: int, batch: int, full: bool) -> float:
    """Largest difference between one fused and one sequential step from the same start."""
    models = _models(n, image_size, full)
    fused = Fused(models)
    lrs = [10 ** -(2 + i) for i in range(n)]
    x, y = _batches(n, batch, image_size)
    sequential_step(models, lrs, x, y)
    fused.step(lrs, x, y)
    worst = 0.0
    for i, m in enumerate(models):
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            if t.dtype.is_floating_point:
                stacked = fused.trainable.get(name, fused.fixed.get(name, fused.buffers.get(name)))
                worst = max(worst, float((stacked[i] - t.detach()).abs().max()))
    return worst


def timed(mode: str, n: int, image_size: int, batch: int, steps: int, full: bool) -> dict:
    import torch

    models = _models(n, image_size, full)
    lrs = [1e-3] * n
    x, y = _batches(n, batch, image_size)
    fused = Fused(models) if mode == "fused" else None
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        if fused is not None:
            fused.step(lrs, x, y)
        else:
            sequential_step(models, lrs, x, y)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return {"mode": mode, "models": n, "image_size": image_size, "batch": batch, "trains": "all" if full else "last 3 units",
            "threads": torch.get_num_threads(), "step_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=3, metavar=("MODE", "N", "FULL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, n, full = args.one[0], int(args.one[1]), args.one[2] == "full"
        print(json.dumps(timed(mode, n, args.image_size, args.batch, args.steps, full)))
        return
    rows = []
    for full in (True, False):
        for n in args.models:
            diff = check(n, args.image_size, 4, full)
            print(f"{'full' if full else 'last 3 units'}, {n} models: fused vs sequential step, largest difference {diff:.2e}",
                  flush=True)
            for mode in ("sequential", "fused"):
                proc = subprocess.run([sys.executable, __file__, "--one", mode, str(n), "full" if full else "part",
                                       "--image-size", str(args.image_size), "--batch", str(args.batch), "--steps", str(args.steps)],
                                      capture_output=True, text=True, check=True)
                row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "max_difference": diff}
                rows.append(row)
                print(f"  {mode}: {row['step_s'] * 1000:.0f} ms per step of {n} models", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
