"""From trainings to MAD scores: best (lr, weight decay) per setting, mean over a task's settings, then mean
and standard deviation over seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from mixerlab.tasks import Task
from mixerlab.train.result import TrainResult


class SettingScore(BaseModel):
    setting: str
    seed: int
    score: float
    lr: float
    weight_decay: float
    epochs: int


class Score(BaseModel):
    """A task's score as the record keeps it and the judge compares it (the `scores` column holds one per task)."""

    mean: float
    std: float = 0.0  # sample std over seeds (0 with one seed)
    seeds: list[float] = Field(default_factory=list)  # one MAD score per seed

    @property
    def n_seeds(self) -> int:
        return max(1, len(self.seeds))


Scores = dict[str, Score]  # task -> its score


def as_scores(recorded: Mapping[str, Any] | None) -> Scores:
    """The typed scores of a record's JSON column; entries that are not a score (a damaged value) are left out."""
    return {task: value if isinstance(value, Score) else Score.model_validate(value)
            for task, value in (recorded or {}).items() if isinstance(value, Score) or (isinstance(value, dict) and "mean" in value)}


def recorded(scores: Mapping[str, Score]) -> dict[str, dict[str, Any]]:
    """The JSON the record's `scores` column keeps: per task its mean, std and per-seed scores."""
    return {task: {"mean": s.mean, "std": s.std, "seeds": list(s.seeds)} for task, s in scores.items()}


class TaskScore(Score):
    """A task's score with how it was reached: the best (lr, weight decay) of each setting and seed."""

    task: str
    settings: list[SettingScore]


def aggregate(results: list[TrainResult]) -> dict[str, TaskScore]:
    best: dict[tuple[str, str, int], TrainResult] = {}
    for r in results:
        ident = (r.task, r.setting, r.seed)
        if ident not in best or r.score > best[ident].score:
            best[ident] = r
    per_seed: dict[tuple[str, int], list[float]] = defaultdict(list)
    settings: dict[str, list[SettingScore]] = defaultdict(list)
    for (task, setting, seed), r in sorted(best.items()):
        per_seed[(task, seed)].append(r.score)
        settings[task].append(SettingScore(setting=setting, seed=seed, score=r.score, lr=r.lr,
                                           weight_decay=r.weight_decay, epochs=r.epochs_trained))
    scores: dict[str, TaskScore] = {}
    for task in Task:
        seeds = sorted(seed for t, seed in per_seed if t == task.value)
        if not seeds:
            continue
        values = [statistics.fmean(per_seed[(task.value, s)]) for s in seeds]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        scores[task.value] = TaskScore(task=task.value, mean=statistics.fmean(values), std=std, seeds=values,
                                       settings=settings[task.value])
    return scores


def score_range(planned: list[tuple[str, int, float | None]]) -> tuple[float, float]:
    """The range a partial sweep's task score can still end in, from every planned training as (setting, seed,
    score, or None while it has not run). A setting keeps its best (lr, wd), so later trainings only raise it:
    its best so far (0 before any) is a floor, and 1 its ceiling until its last training is in. Floors and
    ceilings average like the score (over settings, then seeds), so a sweep can decide a question before it
    ends: one setting done at 0.2 caps a 13-setting mean at 0.94 whatever the rest score."""
    runs: dict[tuple[str, int], list[float | None]] = defaultdict(list)
    for setting, seed, score in planned:
        runs[(setting, seed)].append(score)
    per_seed: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for (_, seed), scores in runs.items():
        done = [s for s in scores if s is not None]
        floor = max(done, default=0.0)
        per_seed[seed].append((floor, floor if len(done) == len(scores) else 1.0))
    if not per_seed:
        raise ValueError("score_range needs at least one planned training")
    lows = [statistics.fmean(lo for lo, _ in spans) for spans in per_seed.values()]
    highs = [statistics.fmean(hi for _, hi in spans) for spans in per_seed.values()]
    return statistics.fmean(lows), statistics.fmean(highs)
