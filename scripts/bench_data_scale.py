"""Benchmark: time and peak memory of a folder dataset as it grows, from decoding to a cached rerun.

    python scripts/bench_data_scale.py                                   # 1k, 5k, 20k JPEGs of 1024 px
    python scripts/bench_data_scale.py --counts 400 --side 1024 --format png
    python scripts/bench_data_scale.py --counts 5000 --side 256          # flat in native resolution?

The script writes synthetic RGB images (a smooth random colour field per image: every image distinct,
two classes in an image folder) under --work, once; later calls reuse them. Then, for each folder,
three runs, each in a process of its own and one after the other (never time two runs at once on a
small machine):

- decode: loading the dataset alone (the image_folder plugin) with an empty decode cache;
- first: ``freezebench run`` of a one-trial suite (linear probe, --image-size px, 2 epochs) with an
  empty decode cache;
- rerun: the same run again in a fresh results folder, with the cache the first run left.

Peak memory is the child process's maximum resident set size (``wait4``), which counts the pages of
memory-mapped cache files it touched. Prints a Markdown table; --json writes the rows.
--pythonpath runs another checkout of freezebench (e.g. a worktree of an older commit) for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SUITE = """\
[suites.scale]
datasets = [{{ name = "image_folder", root = "{root}" }}]
backbones = ["mobilenetv2_100"]
n_trials = 1
confirm = false

[suites.scale.params]
strategy = "linear_probe"
lr = 0.01
epochs = 2
batch_size = 64
image_size = {size}
"""


def _write_image(job: tuple[str, int, int, str]) -> None:
    import numpy as np
    from PIL import Image

    folder, i, side, fmt = job
    rng = np.random.default_rng(i)
    field = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    field[..., 0] = field[..., 0] // 2 + 128 * (i % 2)  # class 1 redder: something for the probe to learn
    image = Image.fromarray(field).resize((side, side), Image.BILINEAR)
    target = Path(folder) / f"class{i % 2}" / f"img{i:06d}.{fmt}"
    image.save(target, **({"quality": 90} if fmt == "jpg" else {"compress_level": 1}))


def make_folder(work: Path, count: int, side: int, fmt: str) -> Path:
    root = work / f"{fmt}-{side}px-{count}"
    done = root / ".complete"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for c in ("class0", "class1"):
        (root / c).mkdir(parents=True)
    start = time.monotonic()
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write_image, [(str(root), i, side, fmt) for i in range(count)], chunksize=64))
    done.write_text(f"{time.monotonic() - start:.1f} s to write\n")
    return root


def _child(argv: list[str], env: dict, cwd: Path) -> tuple[float, float, str]:
    """Run a command; (wall seconds, peak RSS in MB, its output tail)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def decode_only(root: str) -> None:
    """Child of the decode mode: load the folder dataset as a suite would."""
    from freezebench import plugins

    spec = plugins.datasets().get("image_folder")
    start = time.monotonic()
    dataset = spec.load(root=root)
    print(f"loaded {len(dataset.images)} images in {time.monotonic() - start:.1f} s")


def measure(root: Path, work: Path, size: int, pythonpath: str | None) -> list[dict]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cache, rows = work / "cache", []
    shutil.rmtree(cache, ignore_errors=True)
    env["FREEZEBENCH_CACHE"] = str(cache)
    wall, rss, _ = _child([sys.executable, str(Path(__file__).resolve()), "--decode-only", str(root)], env, work)
    rows.append({"mode": "decode", "wall_s": wall, "peak_rss_mb": rss, "cache_mb": _size_mb(cache)})
    shutil.rmtree(cache, ignore_errors=True)
    config = work / "scale.toml"
    config.write_text(SUITE.format(root=root, size=size))
    for mode in ("first", "rerun"):
        results = work / f"results-{mode}"
        shutil.rmtree(results, ignore_errors=True)
        wall, rss, out = _child([sys.executable, "-m", "freezebench", "run", "--suite", "scale", "--config", str(config),
                                 "--results-dir", str(results)], env, work)
        rows.append({"mode": mode, "wall_s": wall, "peak_rss_mb": rss, "cache_mb": _size_mb(cache)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--side", type=int, default=1024, help="native width and height of the images")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--image-size", type=int, default=128, help="the trial's input size")
    parser.add_argument("--work", type=Path, default=Path("/tmp/freezebench-scale"))
    parser.add_argument("--pythonpath", help="run this checkout instead of the installed freezebench")
    parser.add_argument("--label", default="", help="a name for this code in the table (e.g. a commit)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--decode-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_only:
        return decode_only(args.decode_only)
    args.work.mkdir(parents=True, exist_ok=True)
    table = []
    for count in args.counts:
        root = make_folder(args.work, count, args.side, args.format)
        for row in measure(root, args.work, args.image_size, args.pythonpath):
            row.update(images=count, side=args.side, format=args.format, image_size=args.image_size, code=args.label,
                       files_mb=_size_mb(root))
            table.append(row)
            print(f"{count} x {args.side} px {args.format}: {row['mode']} {row['wall_s']:.1f} s, "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB, cache {row['cache_mb']:.0f} MB", flush=True)
    print("\n| code | images | native | files MB | mode | wall s | peak RSS MB | cache MB |\n|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['code']} | {r['images']} | {r['side']} px {r['format']} | {r['files_mb']:.0f} | {r['mode']} | "
              f"{r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['cache_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
