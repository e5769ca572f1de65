"""Benchmark: a freeze-point x learning-rate sweep, naive vs freezebench, and the physical limit.

    python scripts/bench_sweep.py                 # all of it; prints a Markdown report
    python scripts/bench_sweep.py --sizes 128 --epochs 2 --json out.json

The sweep: brain-tumour MRI from ../shared/data (subject-level 7:1.5:1.5 split), MobileNetV2 with
the shipped ImageNet weights, freeze points k = 0..8 over its 8 blocks, 3 learning rates, fixed
epochs, one seed, at each image size.
(a) naive: every trial computes the frozen layers every epoch (cache = "off"), as the papers did, in
    PyTorch's default memory layout (channels_last = false);
(b) freezebench: its defaults (frozen-prefix caching, channels_last);
(c) the limit: one forward of each freeze point's prefix per image, plus the trainable part's
    epochs (training and evaluation on cached features), each timed alone;
(d) with --mode cache-nchw: caching alone, in the naive loop's memory layout, whose test metrics
    can be compared with naive's exactly (NHWC kernels round differently, which can change the
    outcome of unstable trials).
Each mode runs in its own process, so that its peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri"
LRS = (1e-4, 1e-3, 1e-2)


def _dataset():
    from freezebench import plugins as registry
    from freezebench.suite.protocols import SplitProtocol, apply_protocol

    ds = registry.datasets().get("brain_tumor_mri").load(root=str(DATA))
    return apply_protocol(ds, SplitProtocol.from_options({"split": "ratio", "ratios": [7, 1.5, 1.5]}, "bench"))[0]


def run_mode(mode: str, sizes: list[int], epochs: int, ks: list[int]) -> dict:
    import torch

    from freezebench import plugins as registry
    from freezebench.backbone import WeightsRequest
    from freezebench.engine.trial import DataCache, TrialConfig, run_trial

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dataset = _dataset()
    spec, strategy = registry.backbones().get("mobilenetv2_100"), registry.strategies().get("freeze_to")
    trials = []
    start = time.perf_counter()
    for size in sizes:
        cache = DataCache()
        for k in ks:
            for lr in LRS:
                settings = {"naive": {"cache": "off", "channels_last": False}, "cache-nchw": {"channels_last": False}}.get(mode, {})
                cfg = TrialConfig(strategy="freeze_to", lr=lr, epochs=epochs, batch_size=32, image_size=size,
                                  strategy_params={"k": k}, **settings)
                t = time.perf_counter()
                r = run_trial(cfg, dataset, spec, WeightsRequest(), strategy, cache)
                trials.append({"size": size, "k": k, "lr": lr, "seconds": time.perf_counter() - t,
                               "test": r.outcome.test, "cache": r.prefix_cache, "compute": r.compute})
    return {"mode": mode, "total": time.perf_counter() - start, "trials": trials,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_limit(sizes: list[int], epochs: int, ks: list[int]) -> dict:
    """Time the necessary work alone: each prefix forward once, then each trial's suffix epochs."""
    import torch

    from freezebench import plugins as registry
    from freezebench.backbone import WeightsRequest
    from freezebench.engine.device import resolve_compute
    from freezebench.engine.preprocess import Normalizer
    from freezebench.engine.prefix import CachedSuffix, cut_point, decompose, prefix_features
    from freezebench.engine.trial import DataCache, TrialConfig, build_and_plan
    from freezebench.engine.training import SplitTensors, make_optimizer, train
    from freezebench.engine.freeze import param_groups

    dataset = _dataset()
    spec, strategy = registry.backbones().get("mobilenetv2_100"), registry.strategies().get("freeze_to")
    compute = resolve_compute()  # freezebench's defaults: the limit of the work, not of the kernels
    out = []
    for size in sizes:
        data = DataCache().get(dataset, size)
        for k in ks:
            prefix_seconds = None
            for lr in LRS:
                cfg = TrialConfig(strategy="freeze_to", lr=lr, epochs=epochs, batch_size=32, image_size=size, strategy_params={"k": k})
                torch.manual_seed(0)
                backbone, plan = build_and_plan(cfg, 2, spec, WeightsRequest(), strategy)
                steps = decompose(backbone, size).steps
                cut, _ = cut_point(backbone, plan, decompose(backbone, size), online_augment=False)
                norm = Normalizer(backbone.mean, backbone.std)
                compute.model(backbone.model)
                t = time.perf_counter()
                feats = {s: SplitTensors(prefix_features(steps[:cut], d.images, norm, compute=compute) if cut else d.images, d.labels)
                         for s, d in data.items()}
                if prefix_seconds is None:
                    prefix_seconds = time.perf_counter() - t if cut else 0.0
                model = CachedSuffix(steps[cut:]) if cut else backbone.model
                optimizer = make_optimizer("sgd", param_groups(backbone, plan, lr), lr, 0.9)
                t = time.perf_counter()
                train(model, optimizer, feats["train"], feats["val"], feats["test"], (lambda x: x.float()) if cut else norm,
                      epochs=epochs, batch_size=32, seed=0, metric="f1", compute=compute)
                out.append({"size": size, "k": k, "lr": lr, "suffix_seconds": time.perf_counter() - t, "prefix_seconds": prefix_seconds})
    return {"mode": "limit", "trials": out, "total": sum(t["suffix_seconds"] for t in out) + sum(t["prefix_seconds"] for t in out if t["lr"] == LRS[0])}


def startup() -> dict:
    times = {}
    for args in (["--help"], ["list", "strategies"]):
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "freezebench", *args], capture_output=True, check=True)
            runs.append(time.perf_counter() - t)
        times[" ".join(args)] = min(runs)
    return times


def report(naive: dict, fast: dict, limit: dict, start: dict) -> str:
    lines = ["| size | k | naive s | freezebench s | speed-up | per trial | limit s | freezebench / limit | test acc naive | test acc freezebench |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = lambda res: {(t["size"], t["k"], t["lr"]): t for t in res["trials"]}  # noqa: E731
    n, f, lim = by(naive), by(fast), by(limit)
    same, auc_gap = 0, 0.0
    for size in sorted({t["size"] for t in naive["trials"]}):
        for k in sorted({t["k"] for t in naive["trials"]}):
            keys = [(size, k, lr) for lr in LRS]
            ns = sum(n[x]["seconds"] for x in keys)
            fs = sum(f[x]["seconds"] for x in keys)
            ls = sum(lim[x]["suffix_seconds"] for x in keys) + lim[keys[0]]["prefix_seconds"]
            na = "/".join(f"{n[x]['test']['accuracy']:.3f}" for x in keys)
            fa = "/".join(f"{f[x]['test']['accuracy']:.3f}" for x in keys)
            same += sum(abs(n[x]["test"]["accuracy"] - f[x]["test"]["accuracy"]) < 1e-6 for x in keys)
            auc_gap = max([auc_gap] + [abs(n[x]["test"]["auc"] - f[x]["test"]["auc"]) for x in keys])
            per = [n[x]["seconds"] / f[x]["seconds"] for x in keys]
            lines.append(f"| {size} | {k} | {ns:.1f} | {fs:.1f} | {ns / fs:.1f}x | {min(per):.1f}-{max(per):.1f}x | {ls:.1f} | {fs / ls:.2f} | {na} | {fa} |")
    lp = [(n[x]["seconds"], f[x]["seconds"]) for x in n if x[1] == 8]
    lp = lp or [(0.0, 1.0)]
    lines += ["", f"Whole sweep: naive {naive['total']:.0f} s, freezebench {fast['total']:.0f} s "
              f"({naive['total'] / fast['total']:.1f}x); the limit {limit['total']:.0f} s "
              f"(freezebench {fast['total'] / limit['total']:.2f}x the limit).",
              f"Linear-probe trials (k = 8): {sum(a for a, _ in lp) / sum(b for _, b in lp):.1f}x faster than naive.",
              f"Peak memory (max RSS): naive {naive['peak_rss_mb']:.0f} MB, freezebench {fast['peak_rss_mb']:.0f} MB.",
              f"Test accuracy equal, naive vs freezebench, in {same} of {len(n)} trials; largest test AUC gap {auc_gap:.4f}.",
              "Startup: " + ", ".join(f"`freezebench {k}` {v:.2f} s" for k, v in start.items()) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--ks", type=int, nargs="+", default=list(range(9)), help="freeze points (default 0..8)")
    parser.add_argument("--mode", choices=["naive", "freezebench", "limit", "cache-nchw"],
                        help="one mode only; cache-nchw: caching in the naive loop's layout, to compare results exactly")
    parser.add_argument("--json")
    parser.add_argument("--from-json", help="print the report of a saved run (its --json file) again")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(report(saved["naive"], saved["freezebench"], saved["limit"], saved.get("startup") or startup()))
        return
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data")
    if args.mode:
        result = (run_mode(args.mode, args.sizes, args.epochs, args.ks) if args.mode != "limit"
                  else run_limit(args.sizes, args.epochs, args.ks))
        Path(args.json).write_text(json.dumps(result))
        return
    results = {}
    for mode in ("naive", "freezebench", "limit"):
        out = Path(f"/tmp/bench_{mode}.json")
        subprocess.run([sys.executable, __file__, "--mode", mode, "--json", str(out), "--epochs", str(args.epochs),
                        "--sizes", *map(str, args.sizes), "--ks", *map(str, args.ks)], check=True)
        results[mode] = json.loads(out.read_text())
        print(f"{mode}: {results[mode]['total']:.0f} s", file=sys.stderr)
    results["startup"] = startup()
    text = report(results["naive"], results["freezebench"], results["limit"], results["startup"])
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
