"""Knowledge cards: one sequence-mixing mechanism each, as data (cards.yaml) validated by a schema.

A card says what the mechanism does, its recurrence, which MAD abilities it should help or hurt, why, and the
number each such claim rests on (a published MAD table, the paper's own synthetic results, or this project's
measurements; `unmeasured` where there is none), its cost in time and state, its known failure modes and where
it comes from. Proposers retrieve cards for an
experiment's weaknesses (retrieve.py); the design space's options name the cards behind them
(propose/space.py); the dashboard lists them (/knowledge).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mixerlab.tasks import TASK_ORDER

# the six abilities MAD probes, named by their tasks
ABILITIES: tuple[str, ...] = tuple(t.value for t in TASK_ORDER)
Ability = Literal["compress", "context_recall", "fuzzy_recall", "memorize", "noisy_recall", "selective_copy"]


class Cost(BaseModel):
    model_config = ConfigDict(extra="forbid")
    time: str = Field(min_length=3)
    state: str = Field(min_length=3)


class Citation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    authors: str = Field(min_length=2)
    title: str = Field(min_length=5)
    venue: str = Field(min_length=2)
    year: int = Field(ge=1950, le=2100)

    def short(self) -> str:
        return f"{self.authors}, \"{self.title}\", {self.venue} {self.year}"


EvidenceKind = Literal["mad_table", "paper", "mixerlab"]


class Evidence(BaseModel):
    """What an ability claim rests on: a published MAD table, the paper's own synthetic results, or this
    project's measurements; `figure` is the number itself, `source` where it is printed."""

    model_config = ConfigDict(extra="forbid")
    kind: EvidenceKind
    source: str = Field(min_length=10)
    figure: str = Field(min_length=3)

    def short(self) -> str:
        return f"{self.figure} ({self.source})"


class Claim(BaseModel):
    """A card's claim that its mechanism helps or hurts one MAD ability: why, and the evidence, or `unmeasured`
    (then retrieval does not count it as a claim)."""

    model_config = ConfigDict(extra="forbid")
    why: str = Field(min_length=10)
    evidence: Evidence | Literal["unmeasured"]

    @property
    def measured(self) -> bool:
        return self.evidence != "unmeasured"

    def tag(self) -> str:
        return f"evidence: {self.evidence.short()}" if isinstance(self.evidence, Evidence) else "unmeasured"

    def brief_tag(self) -> str:
        """The evidence in a few words, for prompts: the number, not where it is printed."""
        return f"measured: {self.evidence.figure}" if isinstance(self.evidence, Evidence) else "unmeasured"


class Card(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=3)
    family: str = Field(min_length=3)
    mechanism: str = Field(min_length=80)  # one paragraph
    equation: str = Field(min_length=5)
    helps: dict[Ability, Claim] = Field(default_factory=dict)
    hurts: dict[Ability, Claim] = Field(default_factory=dict)
    cost: Cost
    failure_modes: list[str] = Field(min_length=1)
    citation: Citation
    keywords: list[str] = Field(min_length=1)

    @field_validator("helps", "hurts", mode="before")
    @classmethod
    def _evidence_given(cls, value: object) -> object:
        for ability, claim in (value or {}).items() if isinstance(value, dict) else ():
            if isinstance(claim, str) or (isinstance(claim, dict) and "evidence" not in claim):
                raise ValueError(f"the claim for {ability!r} has no evidence: give it as {{why: ..., evidence: "
                                 "{kind: mad_table | paper | mixerlab, source: ..., figure: ...}}, or write "
                                 "evidence: unmeasured")
        return value

    def measured(self, side: Literal["helps", "hurts"]) -> dict[str, Claim]:
        """The claims of one side that rest on evidence: the only ones retrieval counts."""
        return {a: c for a, c in getattr(self, side).items() if c.measured}

    def text(self) -> str:
        """Everything retrieval may match on, as one string."""
        effects = [f"helps {a.replace('_', ' ')}: {c.why}" for a, c in self.helps.items()]
        effects += [f"hurts {a.replace('_', ' ')}: {c.why}" for a, c in self.hurts.items()]
        return " ".join([self.name, self.family, self.mechanism, self.equation, *effects, *self.failure_modes,
                         " ".join(self.keywords)])

    def brief(self) -> str:
        """A few lines for a prompt or an Insights document."""
        helps = "; ".join(f"{a}: {c.why} [{c.brief_tag()}]" for a, c in self.helps.items()) or "none claimed"
        hurts = "; ".join(f"{a}: {c.why} [{c.brief_tag()}]" for a, c in self.hurts.items()) or "none claimed"
        return (f"[{self.id}] {self.name} ({self.citation.authors} {self.citation.year}). {self.mechanism} "
                f"Equation: {self.equation}. Helps: {helps}. Hurts: {hurts}. Cost: {self.cost.time}; state "
                f"{self.cost.state}. Fails when: {'; '.join(self.failure_modes)}.")


class KnowledgeError(ValueError):
    """The cards file is malformed; the message names the card and the field."""


def parse_cards(text: str, source: str = "cards.yaml") -> list[Card]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise KnowledgeError(f"{source}: not valid YAML ({err}); fix the file's syntax") from None
    if not isinstance(raw, list):
        raise KnowledgeError(f"{source}: expected a list of cards, found {type(raw).__name__}")
    cards, seen = [], set()
    for index, item in enumerate(raw):
        label = item.get("id", f"#{index + 1}") if isinstance(item, dict) else f"#{index + 1}"
        try:
            card = Card.model_validate(item)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"] if p != "[key]")
            raise KnowledgeError(f"{source}: card {label!r}, field {where!r}: {first['msg']}") from None
        if card.id in seen:
            raise KnowledgeError(f"{source}: card id {card.id!r} appears twice; ids must be unique")
        seen.add(card.id)
        cards.append(card)
    return cards


@lru_cache(maxsize=1)
def load_cards() -> tuple[Card, ...]:
    """The package's cards (validated once per process)."""
    text = resources.files("mixerlab.knowledge").joinpath("cards.yaml").read_text(encoding="utf-8")
    return tuple(parse_cards(text))


def card(card_id: str) -> Card:
    for c in load_cards():
        if c.id == card_id:
            return c
    raise KeyError(f"no knowledge card {card_id!r}")
