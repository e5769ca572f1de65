"""What averaging a configuration's seeds buys on test: for every confirmed configuration in the given
results stores, the mean over seeds of each seed's test AUC and accuracy (what the leaderboard shows) next
to those of the seeds' averaged probabilities (what `freezebench export` writes for the recommended one),
each with its stratified bootstrap 95% interval over the test images. Reads only what the runs logged.

    python scripts/ensemble_gain.py RESULTS_DIR [RESULTS_DIR ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import freezebench.torch_compat  # noqa: F401  (torchvision's op schemas, before anything imports it)
import numpy as np

from freezebench.results import stats
from freezebench.results.evidence import Predictions
from freezebench.results.leaderboard import leaderboard
from freezebench.results.tracking import Tracker


def gains(results_dir: Path) -> list[dict]:
    tracker = Tracker(f"sqlite:///{results_dir / 'mlflow.db'}")
    predictions, out = Predictions(tracker.client), []
    for exp in tracker.client.search_experiments():
        if exp.name == "Default":
            continue
        for row in leaderboard(tracker, exp.name, "f1", predictions=predictions, evidence=False):
            got = predictions.row(row)
            if not row["confirmed"] or got is None or got[1].shape[0] < 2:
                continue
            labels, probs = got
            seeds, together = stats.intervals(labels, probs), stats.intervals(labels, probs.mean(0)[None])
            if not seeds:
                continue
            out.append({"store": str(results_dir), "dataset": exp.name, "study": row["study"], "strategy": row["strategy"],
                        "strategy_params": row["strategy_params"], "lr": row["lr"], "seeds": int(probs.shape[0]),
                        "test_images": int(len(labels)),
                        **{f"{kind}_{m}": [i.value, i.low, i.high] for kind, got_ in (("mean", seeds), ("ensemble", together))
                           for m, i in got_.items() if m in ("auc", "accuracy")}})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", type=Path, help="results folders (holding mlflow.db)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = [r for store in args.stores for r in gains(store)]
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    print("| dataset | configuration | seeds | test images | AUC, mean of seeds | AUC, ensemble | accuracy, mean | accuracy, ensemble |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        what = r["strategy"] + (f" {r['strategy_params']}" if r["strategy_params"] != "-" else "")
        print(f"| {r['dataset']} | {what}, lr {r['lr']:.2g} | {r['seeds']} | {r['test_images']} | {fmt(r['mean_auc'])} | "
              f"{fmt(r['ensemble_auc'])} | {fmt(r['mean_accuracy'])} | {fmt(r['ensemble_accuracy'])} |")
    if rows:
        d = np.array([r["ensemble_auc"][0] - r["mean_auc"][0] for r in rows])
        print(f"\nAUC, ensemble minus mean of seeds, over {len(rows)} configurations: median {np.median(d):+.3f}, "
              f"range {d.min():+.3f} to {d.max():+.3f}; higher in {int((d > 0).sum())}, lower in {int((d < 0).sum())}.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
