"""What moves through the loop's stages: a `Candidate` (its record row, its code, where it came from), the two
ways a proposal can end without one, and the best result so far."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum

from mixerlab.mixers.loading import MixerSpec
from mixerlab.propose import Proposal, ProposalContext
from mixerlab.store import Experiment


class NoCandidate(Enum):
    """Why the propose stage returned no candidate."""

    FAILED = "the proposer failed; the failure is recorded and the next iteration goes on"
    STOP = "no eligible parent is left; the proposal thread stops"


@dataclass
class Candidate:
    """One architecture on its way from proposal to record. `row` is its record as last written (each stage that
    writes returns the new row); `proposal` and `context` are None for a baseline or a resumed candidate."""

    row: Experiment
    parent: Experiment | None = None
    proposal: Proposal | None = None
    context: ProposalContext | None = None

    @property
    def spec(self) -> MixerSpec:
        return MixerSpec(name=self.row.name, source=self.row.code, filename=f"{self.row.name}.py")


class Best:
    """The best mean score of the run so far, kept as results are recorded (the progress line shows it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.name: str | None = None
        self.mean: float | None = None

    def offer(self, name: str, mean: float | None) -> None:
        if mean is None:
            return
        with self._lock:
            if self.mean is None or mean > self.mean:
                self.name, self.mean = name, mean

    def describe(self) -> str:
        with self._lock:
            return f" · best {self.name} {self.mean:.4f}" if self.name is not None else ""
