"""Benchmark: time to a trustworthy answer, freezebench's default search against the papers' exhaustive grid.

    python scripts/bench_time_to_answer.py                                   # BreastMNIST, 64 px, seeds 0 1 2
    python scripts/bench_time_to_answer.py --dataset brain_mri --image-size 128 --seeds 0 1
    python scripts/bench_time_to_answer.py --modes default hyperband --json out.json
    python scripts/bench_time_to_answer.py --grid-granularity layer          # paper 002's grid: every layer
    python scripts/bench_time_to_answer.py --from-json out.json              # print a saved run's table again
    python scripts/bench_time_to_answer.py --reuse out.json --json out2.json # compare again, without re-timing
    python scripts/bench_time_to_answer.py --grid-from out.json --set head_init=linear_probe --modes hyperband
                                             # new searches (the quick suite changed) against a saved grid and oracle
                                             # (its store gone: the oracle's configuration is trained again
                                             # with every seed at this commit)

- **grid-naive** (the anchor, run once): the papers' method (paper 002): every freeze point
  (``freeze_to k = 0..n``, block units; ``--grid-granularity layer``: every conv/linear layer, as paper 002
  froze) x 3 learning rates (1e-4, 1e-3, 1e-2), each trial computing every layer every epoch
  (``cache = "off"``, ``channels_last = false``), no confirmation, no analyses.
- **default**: what a user gets: the README's ``quick`` suite as ``benchmarks.toml`` defines it (its
  strategies, ranges, trials, epochs, pruner and confirmation set), on this dataset and image size, with
  the search seed changed.
- **none**, **hyperband**, **median**: the same with that pruner (the quick suite's own is Hyperband,
  the default of every searched suite).
- ``--set KEY=VALUE`` changes a parameter of the searches' suite (a TOML value: ``head_init=linear_probe``,
  ``n_trials=12``, ``epochs=6``); the grid is never changed.

Every mode is one ``freezebench run`` in its own process, timed from start to exit (search, confirmation,
recommendation), with nothing else running. Then, on the same test images:

- the **oracle** is the grid's best trial by test AUC, then **confirmed** as the searches' answers are:
  trained again with seeds 1 and 2 (seeds of the head and batch order; same images), its predictions
  stacked with the grid trial's. The best of many one-seed trials picked on the test set is partly a
  lucky draw (the winner's curse; 159 trials on 156 images at layer granularity); the confirmed oracle
  is what that configuration does, and what the answer is compared with. The one-seed value is kept;
- a search's **answer** is its recommendation, the first leaderboard row (its mean over the confirmation
  seeds);
- the answer is **tied** (as good) when the confirmed oracle's AUC is not significantly higher (paired bootstrap
  over test images, two-sided at 0.05; ``freezebench.results.stats.compare``); an answer significantly
  higher than the oracle is as good too, and marked "better";
- **as delivered**: the same comparison between the two configurations' seed ensembles (each one's seeds'
  probabilities averaged: the model ``freezebench export`` writes for a confirmed recommendation).

Whether a validation set could find the oracle at all: the oracle's rank among the grid's trials by their
validation F1, and the Spearman correlation of the grid's trials' validation F1 with their test AUC (a grid
whose store is kept; a saved run's values otherwise).

Time to answer is the search's wall time when its answer is tied; the ratio is the naive grid's wall time
over it. ``docs/performance.md`` has the measured table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from freezebench.suite.config import SUITE_KEYS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    "breastmnist": '"breastmnist"',
    "brain_mri": '{ name = "brain_tumor_mri", split = "ratio", ratios = [7, 1.5, 1.5] }',
}
GRID_LRS = (1e-4, 1e-3, 1e-2)
SEARCH_MODES = {"default": None, "none": "none", "median": "median", "hyperband": "hyperband"}


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


ORACLE_SEEDS = (1, 2)  # the extra seeds of the product's confirmation (confirm.seeds = 2 after seed 0)


def suite_file(mode: str, dataset: str, backbone: str, image_size: int, seed: int, folder: Path,
               grid_granularity: str = "block", fixed: dict | None = None, changes: dict | None = None) -> Path:
    """The benchmarks.toml of one mode: the anchor grid, the quick suite with the mode's pruner, or
    ("oracle") one grid point ``fixed`` (k, lr) trained with trial seed ``seed``."""
    quick = tomllib.loads((ROOT / "benchmarks.toml").read_text())["suites"]["quick"]
    head = [f'data_root = "{DATA}"', f"datasets = [{DATASETS[dataset]}]", f'backbones = ["{backbone}"]']
    if mode in ("grid-naive", "oracle"):
        params = {"strategy": "freeze_to", "k": {"low": 0}, "lr": list(GRID_LRS), "epochs": quick["params"]["epochs"],
                  "batch_size": quick["params"].get("batch_size", 32), "cache": "off", "channels_last": False,
                  "granularity": grid_granularity}
        if mode == "oracle":  # one trial, every parameter fixed
            params.update(fixed or {}, seed=seed)
            head += ["n_trials = 1", "confirm = false", 'analyses = "none"']
        else:
            head += ["n_trials = 1000", 'sampler = "grid"', "confirm = false", 'analyses = "none"']
    else:
        changes = changes or {}
        quick = {**quick, **{k: v for k, v in changes.items() if k in SUITE_KEYS}}
        params = {**quick["params"], **{k: v for k, v in changes.items() if k not in SUITE_KEYS}}
        head += [f"{k} = {_toml(v)}" for k, v in quick.items() if k not in ("params", "datasets", "backbones", "description", "seed")]
        head += [f"seed = {seed}"]
        if SEARCH_MODES[mode] is not None:
            head = [line for line in head if not line.startswith("pruner")] + [f'pruner = "{SEARCH_MODES[mode]}"']
    params["image_size"] = image_size
    text = "\n".join(["[suites.bench]", *head, "", "[suites.bench.params]", *(f"{k} = {_toml(v)}" for k, v in params.items())])
    path = folder / "benchmarks.toml"
    path.write_text(text + "\n")
    return path


def _changes(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as a dict (each value a TOML value; a bare word is a string)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


def _folder(mode: str, args, seed: int) -> str:
    grid_like = mode in ("grid-naive", "oracle")
    changed = "".join(f"-{k}={v}" for k, v in sorted(args.changes.items())) if not grid_like else ""
    return f"{args.dataset}-{args.image_size}-{mode}{'-' + args.grid_granularity if grid_like else ''}{changed}-s{seed}"


def run_mode(mode: str, args, seed: int, keep: Path, fixed: dict | None = None) -> dict:
    results = keep / _folder(mode, args, seed)
    if results.exists():
        raise SystemExit(f"{results} exists: give another --keep folder")
    results.mkdir(parents=True)
    config = suite_file(mode, args.dataset, args.backbone, args.image_size, seed, results, args.grid_granularity, fixed,
                        args.changes)
    env = {**os.environ, "FREEZEBENCH_CACHE": str(keep / "cache")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "bench", "--config", str(config),
                           "--results-dir", str(results / "results")], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    (results / "run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} (seed {seed}) failed, see {results / 'run.log'}:\n{proc.stderr[-2000:]}")
    return {"mode": mode, "seed": seed, "wall_s": wall, "results": str(results / "results")}


def _client(results: str):
    from freezebench.results.tracking import Tracker

    from freezebench.suite.stores import sqlite_url

    return Tracker(sqlite_url(Path(results) / "mlflow.db"), (Path(results) / "mlartifacts").as_uri()).client


def oracle(grid: dict) -> dict:
    """The grid's best trial by test AUC, and its own answer (best on validation)."""
    from freezebench.results import layout, stats
    from freezebench.results.tracking import load_arrays

    client = _client(grid["results"])
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=5000)
            if r.data.tags.get(layout.ROLE) == layout.TRIAL and r.data.tags.get(layout.STATE) == "complete"]
    scored = []
    for r in runs:
        pred = load_arrays(client, r.info.run_id, layout.TEST_PREDICTIONS)
        scored.append((stats.point_metrics(pred["labels"], pred["probs"])["auc"], r, pred))
    auc, best, pred = max(scored, key=lambda s: s[0])
    chosen = max(scored, key=lambda s: s[1].data.metrics["best_val_f1"])
    val = [s[1].data.metrics["best_val_f1"] for s in scored]
    from scipy.stats import spearmanr  # can the validation set tell the grid's configurations apart at all?

    rho = spearmanr(val, [s[0] for s in scored]).statistic
    name = lambda r: f"freeze_to k={r.data.params['k']} lr={float(r.data.params['lr']):.0e}"  # noqa: E731
    return {"trials": len(runs), "grid_keep": str(Path(grid["results"]).parent.parent), "oracle": name(best), "oracle_auc": auc, "labels": pred["labels"], "probs": pred["probs"],
            "oracle_point": {"k": int(best.data.params["k"]), "lr": float(best.data.params["lr"])},
            "grid_answer": name(chosen[1]), "grid_answer_auc": chosen[0],
            "oracle_val_rank": 1 + sum(v > best.data.metrics["best_val_f1"] for v in val), "val_test_spearman": float(rho)}


def oracle_again(saved: dict, args, keep: Path) -> dict:
    """A saved run's oracle when its grid's store is gone: the grid's best configuration (chosen by that run)
    trained again with seed 0 and the grid's settings at this commit; then confirmed as usual. Its one-seed AUC
    in the saved run is kept as ``oracle_auc_saved`` (training code changed since may move it)."""
    from freezebench.results import layout, stats
    from freezebench.results.tracking import load_arrays

    recorded = saved["oracle"]
    done = keep / _folder("oracle", args, 0) / "results"  # trained again by an earlier --grid-from into this --keep
    run = {"results": str(done)} if done.is_dir() else run_mode("oracle", args, 0, keep, recorded["oracle_point"])
    client = _client(run["results"])
    (trial,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                if r.data.tags.get(layout.ROLE) == layout.TRIAL and r.data.tags.get(layout.STATE) == "complete"]
    pred = load_arrays(client, trial.info.run_id, layout.TEST_PREDICTIONS)
    return {**{k: recorded[k] for k in ("trials", "oracle", "oracle_point", "grid_answer", "grid_answer_auc",
                                         "oracle_val_rank", "val_test_spearman") if k in recorded},
            "oracle_auc": stats.point_metrics(pred["labels"], pred["probs"])["auc"], "oracle_auc_saved": recorded["oracle_auc"],
            "grid_keep": str(keep), "labels": pred["labels"], "probs": pred["probs"]}


def confirm_oracle(truth: dict, args, keep: Path) -> None:
    """Train the oracle's configuration again with ``ORACLE_SEEDS`` and stack its test predictions (in place:
    ``probs`` becomes (seeds, images, classes); ``oracle_auc_confirmed``, ``oracle_auc_per_seed``)."""
    import numpy as np

    from freezebench.results import layout, stats
    from freezebench.results.tracking import load_arrays

    stack = [truth["probs"]]
    for seed in ORACLE_SEEDS:
        done = Path(truth["grid_keep"]) / _folder("oracle", args, seed) / "results"
        run = {"results": str(done)} if done.is_dir() else run_mode("oracle", args, seed, keep, truth["oracle_point"])
        client = _client(run["results"])
        (trial,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                    if r.data.tags.get(layout.ROLE) == layout.TRIAL and r.data.tags.get(layout.STATE) == "complete"]
        if int(trial.data.params["seed"]) != seed or int(trial.data.params["k"]) != truth["oracle_point"]["k"]:
            raise SystemExit(f"the oracle re-run {run['results']} trained another configuration")
        pred = load_arrays(client, trial.info.run_id, layout.TEST_PREDICTIONS)
        if not np.array_equal(pred["labels"], truth["labels"]):
            raise SystemExit("the oracle re-run was tested on other images")
        stack.append(pred["probs"])
    truth["probs"] = np.stack(stack)
    truth["oracle_auc_per_seed"] = [float(stats.point_metrics(truth["labels"], p)["auc"]) for p in stack]
    truth["oracle_auc_confirmed"] = stats.intervals(truth["labels"], truth["probs"])["auc"].value
    truth["oracle_auc_ensemble"] = stats.point_metrics(truth["labels"], truth["probs"].mean(0))["auc"]


def answer(search: dict, dataset_label: str, truth: dict) -> dict:
    """The search's recommendation (the first leaderboard row), compared with the oracle on the same images."""
    import numpy as np

    from freezebench.results import stats
    from freezebench.results.evidence import Predictions

    proc = subprocess.run([sys.executable, "-m", "freezebench", "leaderboard", "--dataset", dataset_label, "--json",
                           "--results-dir", search["results"]], capture_output=True, text=True)
    rows = json.loads(proc.stdout)
    first = rows[0]
    labels, stack = Predictions(_client(search["results"])).row(first)
    if not np.array_equal(labels, truth["labels"]):
        raise SystemExit("the search and the grid were tested on different images")
    c = stats.compare(labels, truth["probs"], stack, "auc")
    e = stats.compare(labels, truth["probs"].mean(0), stack.mean(0), "auc")  # as delivered: each one's seeds averaged
    return {"answer": " ".join([first["strategy"], *([] if first["strategy_params"] == "-" else [first["strategy_params"]]),
                                f"lr={first['lr']:.1e}"]),
            "answer_auc": float(first["test_auc"]), "seeds": int(first["seeds"]), "rows": len(rows),
            "oracle_minus_answer": [c.difference.value, c.difference.low, c.difference.high], "p": c.p_value,
            "tied": _as_good(c), "better": c.significant and c.difference.value < 0,
            "answer_auc_ensemble": stats.point_metrics(labels, stack.mean(0))["auc"],
            "oracle_minus_answer_ensemble": [e.difference.value, e.difference.low, e.difference.high],
            "p_ensemble": e.p_value, "tied_ensemble": _as_good(e), "better_ensemble": e.significant and e.difference.value < 0}


def _as_good(c) -> bool:
    """The answer is as good as the oracle unless the oracle is significantly higher (an answer significantly
    higher than the grid's best is as good too: the docstring's criterion)."""
    return not (c.significant and c.difference.value > 0)


def _verdict(r: dict, suffix: str = "") -> str:
    return "no" if not r["tied" + suffix] else "better" if r.get("better" + suffix) else "yes"


def report(data: dict) -> str:
    truth = data["oracle"]
    grid = next(r for r in data["runs"] if r["mode"] == "grid-naive")
    confirmed = (f"; confirmed over {len(truth['oracle_auc_per_seed'])} seeds: {truth['oracle_auc_confirmed']:.3f} (per seed "
                 + ", ".join(f"{a:.3f}" for a in truth["oracle_auc_per_seed"]) + ")") if "oracle_auc_confirmed" in truth else ""
    lines = [f"{data['dataset']}, {data['image_size']} px, {data['backbone']}: naive grid ({data.get('grid_granularity', 'block')} "
             f"freeze points) {truth['trials']} trials, "
             f"{grid['wall_s']:.0f} s; oracle {truth['oracle']} (test AUC {truth['oracle_auc']:.3f}, one seed{confirmed}"
             + (f"; trained again on {data['oracle_date']}, {truth['oracle_auc_saved']:.3f} on one seed in the grid's run"
                if "oracle_auc_saved" in truth else "") + "); the grid's own "
             f"answer {truth['grid_answer']} (AUC {truth['grid_answer_auc']:.3f})"
             + (f"; on validation F1 the oracle ranks {truth['oracle_val_rank']} of {truth['trials']}, and the grid's trials' "
                f"validation F1 and test AUC correlate at Spearman {truth['val_test_spearman']:.2f}" if "val_test_spearman" in truth else "")
             + "".join(f"; searches with {k} = {v}" for k, v in data.get("changes", {}).items()), "",
             "| mode | seed | wall time | answer | test AUC (mean over seeds) | oracle - answer [95% CI] | p | tied | grid / search |",
             "|---|---|---|---|---|---|---|---|---|"]
    ensembles = [r for r in data["runs"] if "tied_ensemble" in r]
    for r in data["runs"]:
        if r["mode"] == "grid-naive":
            continue
        d = r["oracle_minus_answer"]
        lines.append(f"| {r['mode']} | {r['seed']} | {r['wall_s']:.0f} s | {r['answer']} | {r['answer_auc']:.3f} (x{r['seeds']}) | "
                     f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] | {r['p']:.2f} | {_verdict(r)} | "
                     f"{grid['wall_s'] / r['wall_s']:.1f}x |")
    if ensembles:  # the same, each configuration's seeds averaged into one model (what freezebench export delivers)
        lines += ["", f"As delivered (each configuration's seeds as one ensemble): oracle {truth['oracle_auc_ensemble']:.3f}", "",
                  "| mode | seed | answer, ensemble AUC | oracle - answer [95% CI] | p | tied | grid / search |",
                  "|---|---|---|---|---|---|---|"]
        for r in ensembles:
            d = r["oracle_minus_answer_ensemble"]
            lines.append(f"| {r['mode']} | {r['seed']} | {r['answer_auc_ensemble']:.3f} | {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] | "
                         f"{r['p_ensemble']:.2f} | {_verdict(r, '_ensemble')} | {grid['wall_s'] / r['wall_s']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="breastmnist")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds")
    parser.add_argument("--grid-granularity", choices=["block", "layer"], default="block",
                        help="the anchor grid's freeze points: every block, or every layer (paper 002)")
    parser.add_argument("--modes", nargs="+", default=["none", "hyperband"], choices=sorted(SEARCH_MODES))
    parser.add_argument("--keep", type=Path, help="folder for the runs' results (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--from-json", type=Path, help="print a saved run's table")
    parser.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=VALUE",
                        help="change a parameter of the searches' suite (not the grid's): head_init=linear_probe, n_trials=12")
    parser.add_argument("--grid-from", type=Path, help="a saved run: keep its grid (and confirmed oracle), run new searches")
    parser.add_argument("--reuse", type=Path, help="a saved run: keep its timed runs (grid, searches), confirm the oracle "
                                                   "and compare again (into a new --keep folder)")
    args = parser.parse_args()
    args.changes = _changes(args.changes)
    if args.from_json:
        print(report(json.loads(args.from_json.read_text())))
        return
    if args.dataset == "brain_mri" and not (DATA / "brain-tumor-mri").is_dir():
        raise SystemExit(f"no brain-tumour MRI data at {DATA / 'brain-tumor-mri'}")
    keep = args.keep or Path(tempfile.mkdtemp(prefix="freezebench-tta-"))
    if args.reuse and args.grid_from:
        raise SystemExit("--reuse and --grid-from exclude each other")
    saved = json.loads((args.reuse or args.grid_from).read_text()) if (args.reuse or args.grid_from) else None
    if saved:
        for k in ("dataset", "image_size", "backbone", "grid_granularity"):
            setattr(args, k, saved.get(k, "block" if k == "grid_granularity" else None))
        if args.reuse:
            args.changes = saved.get("changes", {})
    label = "brain_tumor_mri" if args.dataset == "brain_mri" else "breastmnist"
    grid = next(r for r in saved["runs"] if r["mode"] == "grid-naive") if saved else run_mode("grid-naive", args, 0, keep)
    print(f"grid-naive: {grid['wall_s']:.0f} s", flush=True)
    if args.grid_from and not Path(grid["results"]).is_dir():  # the grid's store is gone: train its oracle point again
        print(f"{grid['results']} is gone: training the oracle {saved['oracle']['oracle']} again", flush=True)
        truth = oracle_again(saved, args, keep)
    else:
        truth = oracle(grid)
    confirm_oracle(truth, args, keep)
    print(f"oracle {truth['oracle']}: {truth['oracle_auc']:.3f} one seed, {truth['oracle_auc_confirmed']:.3f} confirmed", flush=True)
    runs = [grid]
    searches = ([(r["mode"], r["seed"], r) for r in saved["runs"] if r["mode"] != "grid-naive"] if args.reuse else
                [(mode, seed, None) for seed in args.seeds for mode in args.modes])
    for mode, seed, run in searches:
        run = {k: run[k] for k in ("mode", "seed", "wall_s", "results")} if run else run_mode(mode, args, seed, keep)
        run.update(answer(run, label, truth))
        print(f"{mode} seed {seed}: {run['wall_s']:.0f} s, {run['answer']}, tied {run['tied']}", flush=True)
        runs.append(run)
    data = {"dataset": args.dataset, "image_size": args.image_size, "backbone": args.backbone, "grid_granularity": args.grid_granularity,
            "changes": args.changes, "date": saved["date"] if args.reuse else time.strftime("%Y-%m-%d"), "runs": runs,
            "oracle": {k: v for k, v in truth.items() if k not in ("labels", "probs")},
            **({"oracle_date": time.strftime("%Y-%m-%d")} if "oracle_auc_saved" in truth else {})}
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(report(data))


if __name__ == "__main__":
    main()
