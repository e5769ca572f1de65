"""What the test images say about leaderboard rows: intervals of confirmed rows (mean over seeds) and
which rows are statistically tied with the first.

- A confirmed row's test metrics are means over its seeds; their 95% interval is the stratified
  bootstrap over test images of that mean (``stats.intervals`` on stacked predictions).
- Every row is compared with the first (the row chosen on validation) on the same test images: the
  AUC difference by paired bootstrap, p-values Holm-corrected over the rows compared. A row is
  **tied with the first** unless it is significantly worse; ``vs_first`` says "tied", "worse" or
  "better" (significantly better on the test images: the validation choice missed it). A row tested on other images (another
  split, another fold: its ``split_hash`` differs) is not compared (``tied_with_first`` is None).
"""

from __future__ import annotations

import numpy as np

from . import layout, stats
from .tracking import load_arrays

TIE_METRIC = "auc"


class Predictions:
    """Test predictions of runs, loaded once per run."""

    def __init__(self, client):
        self.client, self._cache = client, {}

    def run(self, run_id: str) -> dict | None:
        if run_id not in self._cache:
            self._cache[run_id] = load_arrays(self.client, run_id, layout.TEST_PREDICTIONS)
        return self._cache[run_id]

    def row(self, row: dict) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, probs): probs stacked over the row's seeds, shape (seeds, images, classes), for the seeds
        that logged predictions on the same test images as the search trial."""
        first = self.run(row["run_id"])
        if first is None:
            return None
        labels, stack = first["labels"], [first["probs"]]
        for run_id in row.get("seed_run_ids", []):
            other = self.run(run_id)
            if other is not None and np.array_equal(other["labels"], labels) and other["probs"].shape == first["probs"].shape:
                stack.append(other["probs"])
        return labels, np.stack(stack)


def add_evidence(client, rows: list[dict], predictions: Predictions | None = None) -> None:
    """Fill in the confirmed rows' intervals and every row's comparison with the first (in place)."""
    if not rows:
        return
    predictions = predictions or Predictions(client)
    loaded = [predictions.row(r) for r in rows]
    for r, got in zip(rows, loaded):
        if got is not None and r["confirmed"] and got[1].shape[0] > 1:
            for name, interval in stats.intervals(*got).items():
                r[f"test_{name}"], r[f"test_{name}_ci"] = interval.value, [interval.low, interval.high]
    first = loaded[0]
    compared = []
    for i, (r, got) in enumerate(zip(rows, loaded)):
        r["tied_with_first"] = None
        if i == 0:
            r["tied_with_first"] = first is not None
        elif (first is not None and got is not None and r.get("split_hash") == rows[0].get("split_hash")
              and np.array_equal(got[0], first[0])):
            compared.append((r, stats.compare(first[0], got[1], first[1], TIE_METRIC)))
    for (r, c) in zip([r for r, _ in compared], stats.holm([c for _, c in compared])):
        r[f"vs_first_{TIE_METRIC}"] = c.difference.value
        r[f"vs_first_{TIE_METRIC}_ci"] = [c.difference.low, c.difference.high]
        r["vs_first_p"] = c.p_holm
        r["tied_with_first"] = not (c.significant and c.difference.value < 0)
        r["vs_first"] = "tied" if not c.significant else ("worse" if c.difference.value < 0 else "better")
