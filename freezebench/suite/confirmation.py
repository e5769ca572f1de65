"""Which configurations are trained again with other seeds after the search (the confirmation set).

One noisy validation epoch on 50-500 images picks the winner of a search by luck as often as by
merit. So after the search the ``top`` best trials on validation, and the best trial of each strategy
searched (the references: linear probing, full fine-tuning and every other strategy, so that the
recommendation is compared with them on equal terms; when linear probing or full fine-tuning was not
searched as such, the best trial whose plan amounts to it, such as ``freeze_to k=0``), are trained again with extra seeds, and the
ranking a user sees is by the mean over seeds (see ``results.leaderboard``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..strategy import REFERENCES
from .config import Confirm


@dataclass(frozen=True)
class Candidate:
    """A complete trial of the search: its run, its strategy and its selection value."""

    run_id: str
    strategy: str
    value: float
    number: int
    amounts_to: str | None = None  # the reference strategy its plan is (``FreezePlan.amounts_to``)


def members(candidates: list[Candidate], confirm: Confirm, maximize: bool) -> list[tuple[Candidate, str]]:
    """The confirmation set, best first, each with why it is in it ("top 2", "best of lp_ft", "best as
    full" for the best trial whose plan is full fine-tuning when no ``full`` trial is in the set). A
    trial is in it once, whatever the number of reasons; ties on value go to the earlier trial."""
    if not confirm.enabled:
        return []
    ranked = sorted(candidates, key=lambda c: (-c.value if maximize else c.value, c.number))
    chosen: dict[str, tuple[Candidate, str]] = {}
    for i, c in enumerate(ranked[: confirm.top]):
        chosen[c.run_id] = (c, f"top {i + 1}")
    if confirm.references:
        for c in ranked:
            if not any(o.strategy == c.strategy for o, _ in chosen.values()):
                chosen[c.run_id] = (c, f"best of {c.strategy}")
        for ref in REFERENCES:
            if any(ref in (o.strategy, o.amounts_to) for o, _ in chosen.values()):
                continue
            stand_in = next((c for c in ranked if c.amounts_to == ref), None)
            if stand_in is not None:
                chosen[stand_in.run_id] = (stand_in, f"best as {ref}")
    return sorted(chosen.values(), key=lambda pair: ranked.index(pair[0]))
