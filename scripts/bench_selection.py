"""Benchmark: does choosing by the confirmed mean pick better configurations than one validation split?

    python scripts/bench_selection.py                       # the quick suite, search seeds 0..3
    python scripts/bench_selection.py --suite strategies --seeds 0 1 --json out.json
    python scripts/bench_selection.py --resplit                             # confirm = { ..., resplit = true }

For each search seed, the suite runs once (its own results folder; the confirmation set on, as by
default), and two picks are read from the same store:
- **single split**: the search's best trial on its one validation value (what freezebench did before
  confirmation, and what most papers do);
- **confirmed**: the leaderboard's first row, the best mean validation value over 3 seeds.
For each pick: its test AUC (a confirmed pick: the mean over its seeds, a single pick: its one run),
and, for the single pick, the mean test AUC of its own seeds when it was confirmed too (so both picks
are compared at equal footing). Prints a Markdown table. The test set plays no part in either pick.
With ``--resplit`` the confirmation re-runs also draw train/val again (``confirm.resplit``), so the
confirmed pick is the best mean over three validation sets instead of one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config(suite: str, seed: int, folder: Path, resplit: bool = False) -> Path:
    """The shipped suite with another search seed, as a file of its own."""
    from dataclasses import replace

    from freezebench import plugins
    from freezebench.suite.config import load_config, suite_toml

    declared = {p.name: e.name for e in plugins.strategies().entries() for p in getattr(e.obj, "params", ())}
    chosen = load_config(ROOT / "benchmarks.toml", declared).suite(suite)
    path = folder / f"{suite}-seed{seed}.toml"
    chosen = replace(chosen, seed=seed, confirm=replace(chosen.confirm, resplit=resplit))
    path.write_text(suite_toml(chosen), encoding="utf-8")
    return path


def _picks(results: Path, dataset: str, metric: str) -> dict:
    from freezebench.results import layout
    from freezebench.results.leaderboard import leaderboard
    from freezebench.results.tracking import Tracker

    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", str(results / "mlartifacts"))
    rows = leaderboard(tracker, dataset, metric)
    single = max(rows, key=lambda r: (r.get(f"val_{metric}_trial", r[f"val_{metric}"]), -r["rank"]))
    single_run = tracker.client.get_run(single["run_id"])
    confirmed = rows[0]
    return {
        "single": {"config": f"{single['strategy']} {single['strategy_params']} lr {single['lr']:.2g}",
                   "val": single_run.data.metrics[layout.best_val(metric)],
                   "test_auc_one_run": single_run.data.metrics.get("test_auc"),
                   "test_auc_seed_mean": single["test_auc"] if single["confirmed"] else None},
        "confirmed": {"config": f"{confirmed['strategy']} {confirmed['strategy_params']} lr {confirmed['lr']:.2g}",
                      "val_mean": confirmed[f"val_{metric}"], "test_auc": confirmed["test_auc"],
                      "test_auc_ci": confirmed.get("test_auc_ci"), "seeds": confirmed["seeds"]},
        "same": single["run_id"] == confirmed["run_id"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--dataset", default="breastmnist")
    parser.add_argument("--metric", default="f1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--resplit", action="store_true", help="confirmation re-runs draw train/val again")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-selection-") as tmp:
        for seed in args.seeds:
            config, results = _config(args.suite, seed, Path(tmp), args.resplit), Path(tmp) / f"results-{seed}"
            proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", args.suite, "--config", str(config),
                                   "--results-dir", str(results)], capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
            if proc.returncode:
                sys.exit(f"seed {seed}: freezebench run failed:\n{proc.stderr[-2000:]}")
            out.append({"seed": seed, **_picks(results, args.dataset, args.metric)})
            if args.json:  # after each search: a stopped benchmark keeps what it measured
                args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    print("| search seed | single-split pick (val) | its test AUC: one run / mean of its seeds | confirmed pick (mean val) | "
          "its test AUC, mean of seeds [95% CI] |\n|---|---|---|---|---|")
    for r in out:
        s, c = r["single"], r["confirmed"]
        mean = f"{s['test_auc_seed_mean']:.3f}" if s["test_auc_seed_mean"] is not None else "-"
        ci = f" [{c['test_auc_ci'][0]:.3f}, {c['test_auc_ci'][1]:.3f}]" if c["test_auc_ci"] else ""
        print(f"| {r['seed']} | {s['config']} ({s['val']:.3f}) | {s['test_auc_one_run']:.3f} / {mean} | "
              f"{'same' if r['same'] else c['config']} ({c['val_mean']:.3f}) | {c['test_auc']:.3f}{ci} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
