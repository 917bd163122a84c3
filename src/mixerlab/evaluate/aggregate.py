"""From trainings to MAD scores: best (lr, weight decay) per setting, mean over a task's settings, then mean
and standard deviation over seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict

from pydantic import BaseModel

from mixerlab.tasks import Task
from mixerlab.train.result import TrainResult


class SettingScore(BaseModel):
    setting: str
    seed: int
    score: float
    lr: float
    weight_decay: float
    epochs: int


class TaskScore(BaseModel):
    task: str
    mean: float
    std: float  # sample std over seeds (0 with one seed)
    seeds: list[float]  # one MAD score per seed
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
