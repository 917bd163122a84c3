"""What every proposer gets (the history, the parent, reference experiments) and must return (a named
code change with its Insights document and numeric per-task targets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from mixerlab.evaluate.aggregate import Scores, as_scores
from mixerlab.insights import Insights
from mixerlab.noise import NoiseModel
from mixerlab.tasks import TASK_NAMES

Language = Literal["en", "zh"]


class TokenUse(BaseModel):
    prompt: int = 0
    completion: int = 0
    calls: int = 0
    cost: float = 0.0

    def __add__(self, other: "TokenUse") -> "TokenUse":
        return TokenUse(prompt=self.prompt + other.prompt, completion=self.completion + other.completion,
                        calls=self.calls + other.calls, cost=self.cost + other.cost)


class Proposal(BaseModel):
    name: str  # delta_net_4layer_<change_in_snake_case>
    code: str
    insights: Insights
    expected: dict[str, float] = Field(default_factory=dict)  # task -> target accuracy
    edits: list[str] = Field(default_factory=list)  # catalog edits composing the code (empty for others)
    tokens: TokenUse = Field(default_factory=TokenUse)


@dataclass
class ExperimentView:
    """One row of the history as proposers see it."""

    name: str
    kind: str
    parent: str | None
    edits: list[str]
    status: str
    success: bool | None
    scores: Scores  # task -> its score (the record's JSON is read into `Score`s here)
    mean_score: float | None
    failure_reason: str = ""
    expected: dict[str, float] = field(default_factory=dict)
    code: str = ""

    def __post_init__(self) -> None:
        self.scores = as_scores(self.scores)

    def score(self, task: str) -> float | None:
        value = self.scores.get(task)
        return None if value is None else value.mean

    def std(self, task: str) -> float:
        value = self.scores.get(task)
        return 0.0 if value is None else value.std


@dataclass
class ProposalContext:
    history: list[ExperimentView]  # every experiment of the run so far, oldest first
    parent: ExperimentView
    references: list[ExperimentView]  # siblings, the best, recent failures
    iteration: int
    language: Language = "en"
    noise: NoiseModel | None = None  # the profile's measured seed noise (noise.py); None: never measured
    taken_names: set[str] = field(default_factory=set)
    claimed: set[tuple[str, str]] = field(default_factory=set)  # (parent, edit) pairs already tried or in flight

    @property
    def evaluated(self) -> list[ExperimentView]:
        return [e for e in self.history if e.status == "done" and e.scores]

    def weak_tasks(self, n: int = 2) -> list[str]:
        """The parent's n tasks with most room to the best score of the run so far."""
        from mixerlab.knowledge import weakest_tasks

        scores = {t: self.parent.score(t) for t in TASK_NAMES if self.parent.score(t) is not None}
        best = {t: max((e.score(t) or 0.0) for e in self.evaluated) for t in TASK_NAMES} if self.evaluated else None
        return weakest_tasks(scores, best, n=n) if scores else []

    def baseline(self, name: str) -> ExperimentView | None:
        return next((e for e in self.history if e.name == name), None)


def unique_name(base: str, taken: set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name = f"{base}_v{n}"
        n += 1
    return name


class ProposerError(RuntimeError):
    """A proposer could not produce a usable proposal; the message says why (recorded with the experiment)."""


class Proposer(Protocol):
    """Everything the loop asks of a proposer. `BaseProposer` gives the defaults of all but `propose`/`repair`."""

    name: str
    concurrent: bool  # propose() may run in several threads at once (slow and stateless: a model endpoint)

    def propose(self, context: ProposalContext) -> Proposal: ...

    def repair(self, context: ProposalContext, proposal: Proposal, report: str) -> Proposal: ...

    def eligible(self, experiment: ExperimentView) -> bool: ...

    def choose_parent(self, history: list[ExperimentView], ucb_c: float) -> ExperimentView | None: ...


class BaseProposer:
    """The defaults of the `Proposer` interface: any experiment can be built on, the parent is chosen by UCB over
    the eligible ones (select.py), and proposals are made one at a time."""

    name = "base"
    concurrent = False

    def propose(self, context: ProposalContext) -> Proposal:
        raise NotImplementedError

    def repair(self, context: ProposalContext, proposal: Proposal, report: str) -> Proposal:
        raise ProposerError(f"the {self.name} proposer does not repair candidates")

    def eligible(self, experiment: ExperimentView) -> bool:
        return True

    def choose_parent(self, history: list[ExperimentView], ucb_c: float) -> ExperimentView | None:
        """The experiment to build on next; None when none is eligible (the loop stops)."""
        from .select import select_parent

        return select_parent(history, self.eligible, ucb_c)


