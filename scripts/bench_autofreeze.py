"""Benchmark: AutoFreeze with its frozen prefix cached from the epoch it freezes, against computing that
prefix every epoch (cache = "off"), on the shipped BreastMNIST x MobileNetV2 (ImageNet weights).

    python scripts/bench_autofreeze.py                         # 64 px, 10 epochs, threshold 0.5
    python scripts/bench_autofreeze.py --image-size 128 --threshold 0.3 --json out.json

Each mode runs in a process of its own (one after the other: never time two runs at once on a small
machine). Prints a Markdown table: wall time of the trial, mean seconds per epoch before and after the
first freeze, the epoch caching began, and the test AUC of both modes (they must agree).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(mode: str, image_size: int, epochs: int, threshold: float, lr: float) -> dict:
    """One trial in this process; returns what the table needs."""
    import freezebench.torch_compat  # noqa: F401  (torchvision's op schemas before timm)
    from freezebench import plugins
    from freezebench.backbone import WeightsRequest
    from freezebench.engine.trial import DataCache, TrialConfig, run_trial
    from freezebench_plugins.medmnist_datasets import load_npz

    dataset = load_npz(ROOT / "plugins" / "assets" / "breastmnist.npz", classes=("malignant", "normal_or_benign"),
                       name="breastmnist")
    cfg = TrialConfig(strategy="autofreeze", strategy_params={"threshold": threshold}, lr=lr, epochs=epochs,
                      image_size=image_size, batch_size=32, cache="auto" if mode == "cached" else "off")
    result = run_trial(cfg, dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(True),
                       plugins.strategies().get("autofreeze"), DataCache())
    seconds = [h["epoch_seconds"] for h in result.outcome.history]
    froze = [e for e in result.events if e.get("froze")]
    first = froze[0]["epoch"] if froze else epochs
    return {"mode": mode, "wall_s": result.wall_seconds, "epoch_s": seconds, "first_freeze_epoch": first,
            "before_s": sum(seconds[:first]) / max(first, 1),
            "after_s": sum(seconds[first:]) / max(len(seconds) - first, 1) if first < epochs else None,
            "frozen_units": [e["froze"] for e in froze], "cached": result.prefix_cache,
            "test_auc": result.outcome.test["auc"], "units": len(result.units)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.image_size, args.epochs, args.threshold, args.lr)))
        return
    rows = []
    for mode in ("uncached", "cached"):
        proc = subprocess.run([sys.executable, __file__, "--one", mode, "--image-size", str(args.image_size),
                               "--epochs", str(args.epochs), "--threshold", str(args.threshold), "--lr", str(args.lr)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    off, on = rows
    print(f"AutoFreeze, BreastMNIST x MobileNetV2, {args.image_size} px, {args.epochs} epochs, threshold {args.threshold}, "
          f"lr {args.lr}")
    print("| mode | trial wall time | s/epoch before the first freeze | s/epoch after | test AUC |")
    print("|---|---|---|---|---|")
    for r in rows:
        after = "-" if r["after_s"] is None else f"{r['after_s']:.2f}"
        print(f"| {r['mode']} | {r['wall_s']:.1f} s | {r['before_s']:.2f} | {after} | {r['test_auc']:.4f} |")
    print(f"first freeze after epoch {on['first_freeze_epoch']}: {on['frozen_units']}; cache: {on['cached']}")
    print(f"speed-up of the trial: {off['wall_s'] / on['wall_s']:.2f}x; after the freeze: "
          f"{(off['after_s'] or 0) / (on['after_s'] or 1):.2f}x per epoch")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
