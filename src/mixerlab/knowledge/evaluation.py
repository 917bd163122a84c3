"""Retrieval quality on the team's labelled set (labelled_queries.yaml): top-k recall per query and on average."""

from __future__ import annotations

from importlib import resources

import yaml
from pydantic import BaseModel, Field, model_validator

from .cards import ABILITIES, load_cards
from .retrieve import Retriever, build_query, implemented_by


class LabelledQuery(BaseModel):
    weak: list[str] = Field(default_factory=list)
    code: str = ""  # a template name (delta_net, gated_delta_net) or a code fragment
    need: str = ""
    relevant: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _valid(self) -> "LabelledQuery":
        if not self.weak and not self.need:
            raise ValueError("a labelled query needs weak tasks or a need in words")
        ids = {c.id for c in load_cards()}
        missing = [r for r in self.relevant if r not in ids]
        if missing:
            raise ValueError(f"relevant cards {missing} do not exist")
        if bad := [t for t in self.weak if t not in ABILITIES]:
            raise ValueError(f"unknown tasks {bad}")
        return self

    def label(self) -> str:
        return self.need or f"weak {'+'.join(self.weak)} on {self.code or 'any code'}"

    def source(self) -> str:
        if self.code in ("delta_net", "gated_delta_net"):
            from mixerlab.mixers import template_source

            return template_source(self.code)
        return self.code

    def query(self) -> str:
        return build_query(self.weak, self.source(), self.need)


def labelled_queries() -> list[LabelledQuery]:
    text = resources.files("mixerlab.knowledge").joinpath("labelled_queries.yaml").read_text(encoding="utf-8")
    return [LabelledQuery.model_validate(item) for item in yaml.safe_load(text)]


def recall_at(retriever: Retriever, k: int) -> tuple[float, list[dict]]:
    rows = []
    for item in labelled_queries():
        exclude = sorted(implemented_by(item.source()))
        hits = [h.card.id for h in retriever.search(item.query(), k=k, weak_tasks=item.weak, exclude=exclude)]
        found = [r for r in item.relevant if r in hits]
        rows.append({"query": item.label(), "relevant": item.relevant, "retrieved": hits,
                     "recall": len(found) / len(item.relevant)})
    return sum(r["recall"] for r in rows) / len(rows), rows
