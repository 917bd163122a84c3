"""Where the knowledge cards' ability claims meet this project's own measurements.

Every design-space option names the cards behind it (space.py), and a run's history measures what each option
did when a child introduced it (search.option_effects: child minus parent, per task). This module sets the two
side by side: for each option with measured children, each card behind it and each task, the card's claim
(helps, hurts or none) against the mean measured change, judged against the run's measured seed noise (the
same yardstick as the loop's verdicts, shrunk by the number of measured children). `mixerlab cards --db ...`
prints the disagreements.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal

from mixerlab.knowledge import card
from mixerlab.noise import NoiseModel

from . import space
from .base import TASK_NAMES, ExperimentView
from .search import option_effects

FALLBACK_THRESHOLD = 0.05  # where the run's profile has no measured noise

Verdict = Literal["agrees", "disagrees", "within noise", "unclaimed effect"]


@dataclass(frozen=True)
class ClaimCheck:
    card: str
    option: str  # axis=option
    task: str
    claim: Literal["helps", "hurts", "none"]
    measured: bool  # whether the card's claim rests on evidence (else it is marked unmeasured)
    change: float  # mean child-minus-parent score change
    children: int
    threshold: float

    @property
    def verdict(self) -> Verdict:
        if abs(self.change) <= self.threshold:
            return "within noise"
        if self.claim == "none":
            return "unclaimed effect"
        return "agrees" if (self.change > 0) == (self.claim == "helps") else "disagrees"


def check_claims(history: list[ExperimentView], noise: NoiseModel | None) -> list[ClaimCheck]:
    """Every (option, card, task) where a card claims an effect or the run measured one beyond noise."""
    checks = []
    for (axis, option), per_task in sorted(option_effects(history).items()):
        if option == space.DEFAULTS[axis]:
            continue  # going back to the template's choice is no card's mechanism
        for card_id in space.AXES_BY_NAME[axis].option(option).cards:
            c = card(card_id)
            for task in TASK_NAMES:
                changes = per_task.get(task)
                if not changes:
                    continue
                claim = "helps" if task in c.helps else "hurts" if task in c.hurts else "none"
                side = c.helps if claim == "helps" else c.hurts if claim == "hurts" else {}
                base = noise.threshold(task) if noise and task in noise.task_std else FALLBACK_THRESHOLD
                check = ClaimCheck(card_id, f"{axis}={option}", task, claim,
                                   bool(side.get(task) and side[task].measured), statistics.fmean(changes),
                                   len(changes), base / math.sqrt(len(changes)))
                if claim != "none" or check.verdict == "unclaimed effect":
                    checks.append(check)
    return checks


__all__ = ["ClaimCheck", "check_claims"]
