"""Choosing the parent of the next candidate and the reference experiments shown with it.

UCB over the mean MAD score: value(e) = normalised mean score + c * sqrt(ln(N + 1) / (children(e) + 1)),
where N counts all candidates so far. The first term exploits the best; the second explores parents that
have been tried little (a novelty bonus). Only successful experiments the proposer can edit are eligible,
so the first candidate's parent is the DeltaNet baseline.
"""

from __future__ import annotations

import math
from typing import Callable

from .base import ExperimentView


def select_parent(history: list[ExperimentView], eligible: Callable[[ExperimentView], bool], c: float = 0.5) -> ExperimentView | None:
    pool = [e for e in history if e.status == "done" and e.success and e.mean_score is not None and eligible(e)]
    if not pool:
        return None
    children: dict[str, int] = {}
    for e in history:
        if e.parent:
            children[e.parent] = children.get(e.parent, 0) + 1
    total = sum(children.values())
    lo, hi = min(e.mean_score for e in pool), max(e.mean_score for e in pool)
    span = hi - lo or 1.0

    def value(e: ExperimentView) -> float:
        return (e.mean_score - lo) / span + c * math.sqrt(math.log(total + 1) / (children.get(e.name, 0) + 1))

    return max(pool, key=lambda e: (value(e), -history.index(e)))


def references(history: list[ExperimentView], parent: ExperimentView, limit: int = 5) -> list[ExperimentView]:
    """Siblings (same parent), the best experiment, and the most recent failures."""
    siblings = [e for e in history if e.parent == parent.name][-2:]
    done = [e for e in history if e.status == "done" and e.mean_score is not None and e.name != parent.name]
    best = sorted(done, key=lambda e: -e.mean_score)[:1]
    failures = [e for e in history if e.status == "failed"][-2:]
    seen, out = set(), []
    for e in siblings + best + failures:
        if e.name not in seen:
            seen.add(e.name)
            out.append(e)
    return out[:limit]
