"""Strategies ranked across datasets (Demsar 2006): the Friedman test on each strategy's rank per
dataset (``scipy.stats.friedmanchisquare``), then the Nemenyi post-hoc test and the critical-difference
diagram (``scikit-posthocs``). Each block is one study (dataset x backbone); each strategy's score is its
best configuration's test AUC there (the leaderboard's first row of that strategy, its mean over seeds
when confirmed). Higher ranks are better (rank 1 = best)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_BLOCKS, MIN_STRATEGIES = 2, 3


@dataclass
class AcrossDatasets:
    blocks: list[str]  # studies
    strategies: list[str]
    scores: np.ndarray  # (blocks, strategies), test AUC
    mean_ranks: dict[str, float]  # 1 = best
    statistic: float | None = None  # Friedman chi-square
    p_value: float | None = None
    pairwise_p: "object | None" = None  # pandas DataFrame of Nemenyi p-values
    reason: str = ""  # why no test was made

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    def sentence(self) -> str:
        order = sorted(self.mean_ranks, key=self.mean_ranks.get)
        ranks = ", ".join(f"{s} {self.mean_ranks[s]:.2f}" for s in order)
        if not self.tested:
            return f"Mean rank of test AUC over {len(self.blocks)} studies: {ranks}. No Friedman test: {self.reason}."
        verdict = ("the strategies differ (p < 0.05)" if self.p_value < 0.05 else
                   "no significant difference between the strategies")
        return (f"Mean rank of test AUC over {len(self.blocks)} studies (1 = best): {ranks}. Friedman chi2 = "
                f"{self.statistic:.2f}, p = {self.p_value:.2g}: {verdict}; pairs not joined by a bar in the diagram differ "
                "by Nemenyi's test.")


def rank_strategies(table: dict[str, dict[str, float]]) -> AcrossDatasets | None:
    """``table``: study -> strategy -> test AUC. Only strategies scored in every study are ranked.
    None when there is nothing to rank (fewer than two strategies in common)."""
    from scipy.stats import friedmanchisquare, rankdata

    blocks = sorted(table)
    common = sorted(set.intersection(*(set(v) for v in table.values()))) if blocks else []
    if len(common) < 2:
        return None
    scores = np.array([[table[b][s] for s in common] for b in blocks], dtype=float)
    ranks = np.array([rankdata(-row) for row in scores])  # 1 = the highest AUC; ties share their mean rank
    result = AcrossDatasets(blocks, common, scores, dict(zip(common, map(float, ranks.mean(0)))))
    if len(blocks) < MIN_BLOCKS or len(common) < MIN_STRATEGIES:
        result.reason = (f"it needs at least {MIN_BLOCKS} studies (datasets) and {MIN_STRATEGIES} strategies scored in "
                         f"each; here {len(blocks)} and {len(common)}")
        return result
    stat = friedmanchisquare(*scores.T)
    result.statistic, result.p_value = float(stat.statistic), float(stat.pvalue)
    import scikit_posthocs as sp

    result.pairwise_p = sp.posthoc_nemenyi_friedman(scores)
    result.pairwise_p.index = result.pairwise_p.columns = common
    return result


def cd_diagram(result: AcrossDatasets):
    """The critical-difference diagram (a matplotlib figure), or None when no test was made."""
    if not result.tested:
        return None
    import scikit_posthocs as sp

    from ..analysis import pyplot

    fig, ax = pyplot().subplots(figsize=(7, 0.6 + 0.3 * len(result.strategies)))
    sp.critical_difference_diagram(result.mean_ranks, result.pairwise_p, ax=ax)
    ax.set_title(f"Mean rank of test AUC over {len(result.blocks)} studies (Friedman p = {result.p_value:.2g})", fontsize=9)
    fig.tight_layout()
    return fig
