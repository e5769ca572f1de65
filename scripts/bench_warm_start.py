"""Benchmark: does a warm-started head (``head_init = "linear_probe"``) help the trials it starts?

    python scripts/bench_warm_start.py                          # BreastMNIST, 128 px, 4 epochs
    python scripts/bench_warm_start.py --image-size 64 --json out.json

The same configurations trained twice, once from a random head and once from the linear probe's fitted
head, with the same seeds, in one process (one study's cache: the fit is shared, as in a study). Each
configuration's seeds are compared on the same test images: the mean test AUC over seeds of each start,
their paired bootstrap difference (``freezebench.results.stats.compare``), the wall time of its trials,
and the selected epoch. Configurations: the quick suite's kinds of trial (full fine-tuning, a mid-network
freeze point, the linear probe) at the learning rates its searches pick.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import freezebench.torch_compat  # noqa: F401  (torchvision's op schemas, before anything imports it)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (("full", {}, 1e-4), ("full", {}, 3e-4), ("full", {}, 1e-3), ("freeze_to", {"k": 5}, 1e-3),
           ("linear_probe", {}, 1e-3), ("linear_probe", {}, 1e-2))


def main() -> None:
    import numpy as np

    from freezebench import plugins
    from freezebench.backbone import WeightsRequest
    from freezebench.engine.trial import DataCache, TrialConfig, run_trial
    from freezebench.results import stats
    from freezebench_plugins.medmnist_datasets import load_npz

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dataset = load_npz(ROOT / "plugins" / "assets" / "breastmnist.npz", classes=("malignant", "normal_or_benign"),
                       name="breastmnist")
    cache, spec = DataCache(), plugins.backbones().get("mobilenetv2_100")
    rows = []
    for strategy, params, lr in CONFIGS:
        runs = {}
        for init in ("random", "linear_probe"):
            runs[init] = []
            for seed in args.seeds:
                cfg = TrialConfig(strategy=strategy, strategy_params=params, lr=lr, epochs=args.epochs, batch_size=32,
                                  image_size=args.image_size, seed=seed, head_init=init)
                result = run_trial(cfg, dataset, spec, WeightsRequest(True), plugins.strategies().get(strategy), cache,
                                   inspect=False)
                runs[init].append(result)
        labels = runs["random"][0].outcome.test_labels
        stacks = {init: np.stack([r.outcome.test_probs for r in rs]) for init, rs in runs.items()}
        diff = stats.compare(labels, stacks["linear_probe"], stacks["random"], "auc")
        row = {"strategy": strategy, "params": params, "lr": lr,
               **{f"{init}_auc_per_seed": [float(r.outcome.test["auc"]) for r in rs] for init, rs in runs.items()},
               **{f"{init}_auc_mean": float(np.mean([r.outcome.test["auc"] for r in rs])) for init, rs in runs.items()},
               **{f"{init}_wall_s": float(sum(r.wall_seconds for r in rs)) for init, rs in runs.items()},
               **{f"{init}_best_epochs": [r.outcome.best_epoch for r in rs] for init, rs in runs.items()},
               "warm_minus_random": [diff.difference.value, diff.difference.low, diff.difference.high], "p": diff.p_value,
               "head_init": runs["linear_probe"][0].head_init}
        rows.append(row)
        d = row["warm_minus_random"]
        print(f"{strategy} {params or ''} lr {lr:g}: random {row['random_auc_mean']:.3f} ({row['random_wall_s']:.0f} s), "
              f"warm {row['linear_probe_auc_mean']:.3f} ({row['linear_probe_wall_s']:.0f} s), "
              f"warm - random {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] p = {diff.p_value:.2f}", flush=True)
    data = {"date": time.strftime("%Y-%m-%d"), "image_size": args.image_size, "epochs": args.epochs, "seeds": args.seeds,
            "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
