"""Comparing a candidate with its parent, the baselines and its own Expected Improvements, counting noise.

The yardstick is the seed-to-seed noise measured for the run's profile (noise.py, mixerlab/data/noise.json):
a task's difference is better or worse only beyond Z standard deviations of the difference (for one seed
against one seed, Z * sqrt(2) * std). Where the profile was never measured, evaluations with several seeds
bring their own estimate; with neither, the verdict is "noise unknown": no figure is invented. The mean MAD
score is judged the same way, with the measured noise of the six-task mean.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from mixerlab.evaluate.aggregate import Score, Scores
from mixerlab.noise import Z, NoiseModel
from mixerlab.tasks import TASK_NAMES

VERDICTS = ("better", "worse", "within noise", "noise unknown")
Verdict = Literal["better", "worse", "within noise", "noise unknown"]


def _threshold(a: Score, b: Score, task: str | None, noise: NoiseModel | None) -> float | None:
    """Z standard deviations of a - b: from the measured noise, else from the evaluations' own seeds."""
    na, nb = a.n_seeds, b.n_seeds
    if noise is not None and (noise.mean_std is not None if task is None else task in noise.task_std):
        return noise.mean_threshold(na, nb) if task is None else noise.threshold(task, na, nb)
    if na >= 2 and nb >= 2:
        return Z * math.sqrt(a.std ** 2 / na + b.std ** 2 / nb)
    return None


def _verdict(delta: float, threshold: float | None) -> str:
    if threshold is None:
        return "noise unknown"
    return "better" if delta > threshold else "worse" if delta < -threshold else "within noise"


class TaskVerdict(BaseModel):
    delta: float
    noise: float | None  # the threshold beyond which the delta counts (None: noise unknown)
    verdict: Verdict


class Comparison(BaseModel):
    """One evaluation against another, per task and for the six-task mean."""

    tasks: dict[str, TaskVerdict] = Field(default_factory=dict)
    mean_delta: float = 0.0
    mean_noise: float | None = None
    verdict: Verdict = "noise unknown"


class TargetMet(BaseModel):
    target: float
    actual: float
    met: bool


class Judgement(BaseModel):
    """The record's `judgement`: against the parent (absent for a baseline), each baseline, and the candidate's own
    Expected Improvements."""

    noise: str  # where the yardstick came from
    vs_parent: Comparison | None = None
    vs_baselines: dict[str, Comparison] = Field(default_factory=dict)
    expected: dict[str, TargetMet] = Field(default_factory=dict)
    expected_met: int = 0

    @property
    def improves(self) -> bool:
        """Better than its parent beyond noise: what earns a promotion."""
        return self.vs_parent is not None and self.vs_parent.verdict == "better"

    def recorded(self) -> dict[str, Any]:
        """The JSON the record keeps (no `vs_parent` key where there is no parent)."""
        return self.model_dump(mode="json", exclude={"vs_parent"} if self.vs_parent is None else set())


def compare(scores: Scores, other: Scores, noise: NoiseModel | None) -> Comparison:
    per_task: dict[str, TaskVerdict] = {}
    for task in TASK_NAMES:
        if task not in scores or task not in other:
            continue
        delta = scores[task].mean - other[task].mean
        threshold = _threshold(scores[task], other[task], task, noise)
        per_task[task] = TaskVerdict(delta=delta, noise=threshold, verdict=_verdict(delta, threshold))
    if not per_task:
        return Comparison()
    mean_delta = sum(v.delta for v in per_task.values()) / len(per_task)
    if noise is not None and len(per_task) == len(TASK_NAMES):
        first = next(iter(per_task))
        mean_noise = _threshold(scores[first], other[first], None, noise)
    elif all(v.noise is not None for v in per_task.values()):  # independent tasks: the noise of their mean
        mean_noise = math.sqrt(sum(v.noise ** 2 for v in per_task.values())) / len(per_task)
    else:
        mean_noise = None
    return Comparison(tasks=per_task, mean_delta=mean_delta, mean_noise=mean_noise, verdict=_verdict(mean_delta, mean_noise))


def judge(scores: Scores, parent: Scores | None, baselines: dict[str, Scores],
          expected: dict[str, float], noise: NoiseModel | None) -> Judgement:
    """The verdicts against the parent and each baseline, and which of its own targets the candidate met."""
    met = {}
    for task, target in expected.items():
        if task in scores:
            margin = noise.threshold(task, scores[task].n_seeds, 1) if noise and task in noise.task_std else 0.0
            met[task] = TargetMet(target=target, actual=scores[task].mean, met=scores[task].mean >= target - margin)
    return Judgement(
        noise=noise.source if noise else "unknown: this profile's seed noise was never measured "
                                         "(benchmarks/reproduction/noise.py measures it)",
        vs_parent=compare(scores, parent, noise) if parent else None,
        vs_baselines={name: compare(scores, base, noise) for name, base in baselines.items() if base},
        expected=met, expected_met=sum(v.met for v in met.values()))
