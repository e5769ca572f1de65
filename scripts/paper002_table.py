"""Paper 002's Table III, re-made from a `paper002_ph2` run: for each learning rate, the freeze point with
the best *test* F1 (the paper's way of choosing: on the test set itself), nothing frozen (k = 0) and
everything frozen (k = n), each with its 95% CI; where k = 0 ranks among that LR's freeze points (the
paper: "the worst results are obtained when no layers are frozen"); and what freezebench recommends when
it chooses on validation instead, confirmed over seeds.

Like the paper's, these rows are single runs: every freeze point's search trial (seed 0), also for a
configuration the confirmation trained again (its mean over seeds is in the last column), so that the
freeze points are ranked like with like. The recommendation's row is the mean over its seeds.

    freezebench run --suite paper002_ph2
    freezebench leaderboard --dataset ph2_melanoma --json > ph2.json
    python scripts/paper002_table.py ph2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _single(row: dict, metric: str) -> tuple[float, list[float] | None]:
    """The search trial's own test value and interval (seed 0), also for a confirmed row."""
    if row.get("confirmed"):
        return row[f"test_{metric}_trial"], row.get(f"test_{metric}_trial_ci")
    return row[f"test_{metric}"], row.get(f"test_{metric}_ci")


def _ci(value: float, interval: list[float] | None) -> str:
    lo, hi = interval or (float("nan"), float("nan"))
    return f"{100 * value:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _cells(row: dict) -> str:
    single = " | ".join(_ci(*_single(row, m)) for m in ("f1", "accuracy", "auc"))
    mean = (f"F1 {100 * row['test_f1']:.1f}, AUC {100 * row['test_auc']:.1f} ({row['seeds']} seeds)"
            if row.get("confirmed") else "-")
    return f"k={row['params']['k']} | {single} | {mean}"


def table(rows: list[dict]) -> str:
    grid = [r for r in rows if r["strategy"] == "freeze_to" and "k" in r.get("params", {})]
    if not grid:
        raise SystemExit("no freeze_to trials in this leaderboard: is it a paper002_ph2 run?")
    n = max(r["params"]["k"] for r in grid)
    out = ["| lr | row | freeze point | test F1 (macro) [95% CI] | test accuracy | test AUC | mean over seeds, where confirmed |",
           "|---|---|---|---|---|---|---|"]
    ranks = []
    for lr in sorted({r["lr"] for r in grid}):
        at = sorted((r for r in grid if r["lr"] == lr), key=lambda r: -_single(r, "f1")[0])
        by_k = {r["params"]["k"]: r for r in at}
        best = [r for r in at if _single(r, "f1")[0] == _single(at[0], "f1")[0]]
        also = f" (tied with k={', '.join(str(r['params']['k']) for r in best[1:])})" if len(best) > 1 else ""
        out.append(f"| {lr:g} | best test F1 of {len(at)} freeze points (the paper's choice){also} | {_cells(at[0])} |")
        for k, what in ((0, "nothing frozen"), (n, "everything frozen (linear probe)")):
            if k in by_k:
                out.append(f"| {lr:g} | {what} | {_cells(by_k[k])} |")
        if 0 in by_k:
            worse = sum(_single(r, "f1")[0] < _single(by_k[0], "f1")[0] for r in at)
            ranks.append(f"lr {lr:g}: k = 0 has the lowest test F1 of {len(at)}? "
                         f"{'yes' if worse == 0 else f'no, {worse} freeze points score lower'}")
    first = rows[0]
    ci = " | ".join(_ci(first[f"test_{m}"], first.get(f"test_{m}_ci")) for m in ("f1", "accuracy", "auc"))
    out.append(f"| {first['lr']:g} | freezebench's recommendation (best mean validation F1, confirmed; mean of its "
               f"{first['seeds']} seeds) | k={first['params']['k']} | {ci} | (this row) |")
    return "\n".join(out) + "\n\n" + "\n".join(f"- {r}" for r in ranks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("leaderboard_json", type=Path, help="freezebench leaderboard --json output of a paper002_ph2 run")
    rows = json.loads(ap.parse_args().leaderboard_json.read_text())
    print(table(rows))


if __name__ == "__main__":
    main()
