"""How much a score moves from seed to seed, measured per profile: the yardstick of every verdict.

`benchmarks/reproduction/noise.py` trains both baselines on a profile with several seeds (each seed draws its own data,
shuffles and initial weights) and writes `mixerlab/data/noise.json`. For each profile and numerics (fp32 on
the CPU, bf16 on CUDA) it holds every baseline's per-seed task scores; from them `NoiseModel` takes the
per-task seed-to-seed standard deviation, pooled over the baselines (the root of the mean variance), and the
standard deviation of the six-task mean. A measurement may cover some tasks only (a costly profile measured a
task at a time, `noise.py --tasks`): the tasks it lacks, and then the six-task mean, have no yardstick.

A difference between two evaluations is called better or worse only beyond `Z` standard deviations of the
difference: for one seed against one seed, Z * sqrt(2) * std. Where a profile was never measured there is no
yardstick, and the verdict says "noise unknown" rather than inventing one (judge.py).
"""

from __future__ import annotations

import json
import math
import statistics
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field

from mixerlab.tasks.settings import TASK_ORDER

ALL_TASKS = frozenset(t.value for t in TASK_ORDER)
DATA = Path(__file__).parent / "data" / "noise.json"
Z = 2.0  # standard deviations of a difference before it counts (about 95% of seed-only differences stay inside)


class Measurement(BaseModel):
    """One profile's measurement: what ran, where, and the per-seed scores of each baseline."""

    profile: str
    numerics: str  # fp32 | bf16
    hardware: str
    command: str
    date: str
    seeds: int = Field(ge=2)
    scores: dict[str, dict[str, list[float]]]  # mixer -> task -> one score per seed


class NoiseModel(BaseModel):
    """Per-task seed-to-seed standard deviation of one evaluation (one seed), and of the six-task mean."""

    source: str  # where the figures come from, for the Insights
    task_std: dict[str, float]
    mean_std: float | None  # None: not every task was measured, so the six-task mean has no yardstick

    def threshold(self, task: str, seeds_a: int = 1, seeds_b: int = 1) -> float:
        std = self.task_std[task]
        return Z * std * math.sqrt(1 / seeds_a + 1 / seeds_b)

    def mean_threshold(self, seeds_a: int = 1, seeds_b: int = 1) -> float | None:
        if self.mean_std is None:
            return None
        return Z * self.mean_std * math.sqrt(1 / seeds_a + 1 / seeds_b)

    def describe(self) -> str:
        spread = ", ".join(f"{task} {std:.3f}" for task, std in self.task_std.items())
        mean = "unmeasured (not every task was)" if self.mean_std is None else f"{self.mean_std:.3f}"
        return f"seed-to-seed std per task ({self.source}): {spread}; of the mean {mean}"


def from_measurement(m: Measurement) -> NoiseModel:
    tasks = sorted({task for per_task in m.scores.values() for task in per_task})
    task_std = {}
    for task in tasks:
        variances = [statistics.variance(runs[task]) for runs in m.scores.values() if len(runs.get(task, [])) >= 2]
        task_std[task] = math.sqrt(statistics.fmean(variances)) if variances else 0.0
    mean_variances = []
    for runs in m.scores.values():
        if set(tasks) >= ALL_TASKS and all(len(runs.get(t, [])) == m.seeds for t in tasks):
            means = [statistics.fmean(runs[t][s] for t in tasks) for s in range(m.seeds)]
            mean_variances.append(statistics.variance(means))
    source = (f"`{m.profile}` on {m.hardware}, {m.numerics}, {m.seeds} seeds x {len(m.scores)} baselines, "
              f"{m.date}, mixerlab/data/noise.json")
    return NoiseModel(source=source, task_std=task_std,
                      mean_std=math.sqrt(statistics.fmean(mean_variances)) if mean_variances else None)


@lru_cache(maxsize=1)
def measurements() -> dict[str, Measurement]:
    """Every committed measurement, by `profile/numerics`."""
    if not DATA.is_file():
        return {}
    raw = json.loads(DATA.read_text())
    return {f"{m['profile']}/{m['numerics']}": Measurement.model_validate(m) for m in raw.get("measurements", [])}


def noise_for(profile: str, numerics: str) -> NoiseModel | None:
    """The measured noise of a profile (its label may carry `+patienceP`: a patience does not change it much,
    but it is another protocol, so it is looked up as such), or None where it was never measured."""
    found = measurements().get(f"{profile}/{numerics}")
    return from_measurement(found) if found else None
