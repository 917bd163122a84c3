"""Retrieval quality on queries written from outside the cards (retrieval_queries.yaml), with baselines.

The queries are problem statements that motivated a paper (labelled with that paper's card) and loop experiments
(a parent's weak tasks plus its code, labelled with the papers that set out to fix that weakness). No label is
derived from a card's `helps` field, so a ranker that reads `helps` gets no free points. Three rankers are
scored: the default (BM25 plus the bonus for measured claims), BM25 alone (no bonus), and `helps` alone (cards
ranked by how many of the weak tasks their claims say they help, measured or not). Recall@k is averaged over
queries, with a bootstrap interval over queries; `split` keeps a held-out part that nothing is tuned on.
"""

from __future__ import annotations

import random
from importlib import resources
from typing import Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .cards import ABILITIES, load_cards
from .retrieve import Retriever, build_query, implemented_by

Ranker = Literal["default", "no_bonus", "helps_only"]
RANKERS: tuple[Ranker, ...] = ("default", "no_bonus", "helps_only")


class RetrievalQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    source: Literal["paper", "experiment"]
    split: Literal["tune", "held_out"]
    relevant: list[str] = Field(min_length=1)
    text: str = ""  # a paper's problem statement
    weak: list[str] = Field(default_factory=list)  # an experiment's weak tasks
    code: str = ""  # an experiment's parent: a template name

    @model_validator(mode="after")
    def _valid(self) -> "RetrievalQuery":
        if self.source == "paper" and not self.text:
            raise ValueError(f"{self.id}: a paper query needs its problem statement (text)")
        if self.source == "experiment" and not (self.weak and self.code):
            raise ValueError(f"{self.id}: an experiment query needs weak tasks and the parent's code")
        ids = {c.id for c in load_cards()}
        if missing := [r for r in self.relevant if r not in ids]:
            raise ValueError(f"{self.id}: relevant cards {missing} do not exist")
        if bad := [t for t in self.weak if t not in ABILITIES]:
            raise ValueError(f"{self.id}: unknown tasks {bad}")
        return self

    def source_code(self) -> str:
        if not self.code:
            return ""
        from mixerlab.mixers import template_source

        return template_source(self.code)

    def query(self) -> str:
        return build_query(self.weak, self.source_code(), self.text)


def retrieval_queries(split: str | None = None) -> list[RetrievalQuery]:
    text = resources.files("mixerlab.knowledge").joinpath("retrieval_queries.yaml").read_text(encoding="utf-8")
    items = [RetrievalQuery.model_validate(item) for item in yaml.safe_load(text)]
    return [q for q in items if split is None or q.split == split]


def ranked(retriever: Retriever, query: RetrievalQuery, k: int, ranker: Ranker) -> list[str]:
    """The top-k card ids for a query by one ranker (cards the parent's code already has are left out)."""
    exclude = sorted(implemented_by(query.source_code()))
    if ranker == "helps_only":
        scored = [(-sum(t in c.helps for t in query.weak), c.id) for c in retriever.cards if c.id not in exclude]
        return [card_id for _, card_id in sorted(scored)[:k]]
    weight = retriever.ability_weight if ranker == "default" else 0.0
    saved, retriever.ability_weight = retriever.ability_weight, weight
    try:
        return [h.card.id for h in retriever.search(query.query(), k=k, weak_tasks=query.weak, exclude=exclude)]
    finally:
        retriever.ability_weight = saved


def recall_at(retriever: Retriever, k: int, ranker: Ranker = "default",
              queries: Sequence[RetrievalQuery] | None = None) -> tuple[float, list[dict]]:
    rows = []
    for item in queries if queries is not None else retrieval_queries():
        hits = ranked(retriever, item, k, ranker)
        found = [r for r in item.relevant if r in hits]
        rows.append({"id": item.id, "source": item.source, "split": item.split, "relevant": item.relevant,
                     "retrieved": hits, "recall": len(found) / len(item.relevant)})
    return sum(r["recall"] for r in rows) / max(1, len(rows)), rows


def bootstrap_interval(values: Sequence[float], draws: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean, resampling the queries."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(draws))
    low = means[int((1 - level) / 2 * draws)]
    high = means[min(draws - 1, int((1 + level) / 2 * draws))]
    return low, high
