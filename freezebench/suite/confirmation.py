"""Which configurations are trained again with other seeds after the search (the confirmation set).

One noisy validation epoch on 50-500 images picks the winner of a search by luck as often as by
merit. So after the search the ``top`` best trials on validation, and the best trial of each strategy
searched (the references: linear probing, full fine-tuning and every other strategy, so that the
recommendation is compared with them on equal terms; when linear probing or full fine-tuning was not
searched as such, the best trial whose plan amounts to it, such as ``freeze_to k=0``), are trained again with extra seeds, and the
ranking a user sees is by the mean over seeds (see ``results.leaderboard``)."""

from __future__ import annotations

import math
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


def _rank(c: Candidate, maximize: bool) -> tuple[float, int]:
    """Best first; ties on value go to the earlier trial."""
    return (-c.value if maximize else c.value, c.number)


def keeps_model(earlier: list[Candidate], trial: Candidate, confirm: Confirm, maximize: bool) -> bool:
    """Whether a search trial that just finished keeps its trained model: when it could still be in the
    confirmation set, i.e. it is in the ``top`` of the trials so far, or the best so far of its strategy, or
    (a stand-in for a reference) the best so far of the trials whose plan amounts to that reference. Each
    reason of ``members`` holds at the end only if it held when the trial finished (later trials can only
    push it out), so every configuration confirmed has its search trial's model as well as its re-runs':
    its ensemble has all its seeds. ``earlier``: the study's trials that finished before it."""
    if not confirm.enabled or not math.isfinite(trial.value):
        return False
    ahead = [c for c in earlier if _rank(c, maximize) < _rank(trial, maximize)]
    if len(ahead) < confirm.top:
        return True
    if not confirm.references:
        return False
    if all(c.strategy != trial.strategy for c in ahead):
        return True
    return trial.amounts_to in REFERENCES and all(c.amounts_to != trial.amounts_to for c in ahead)


def members(candidates: list[Candidate], confirm: Confirm, maximize: bool) -> list[tuple[Candidate, str]]:
    """The confirmation set, best first, each with why it is in it ("top 2", "best of lp_ft", "best as
    full" for the best trial whose plan is full fine-tuning when no ``full`` trial is in the set). A
    trial is in it once, whatever the number of reasons; ties on value go to the earlier trial."""
    if not confirm.enabled:
        return []
    ranked = sorted(candidates, key=lambda c: _rank(c, maximize))
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
