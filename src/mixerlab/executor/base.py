"""The executor interface: where candidates are checked and trained. The loop calls these two methods
and nothing else; implementations decide where the work runs (this machine, a Ray cluster). Both run the
candidate in the sandbox and score it on the trusted side (evaluate/sandboxed.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from pydantic import BaseModel, ConfigDict, Field

from mixerlab.check import CheckReport, Conditions
from mixerlab.evaluate.runner import EvalReport
from mixerlab.mixers.loading import MixerSpec
from mixerlab.train.result import TrainResult

TrainingCallback = Callable[[TrainResult], None]


class EvaluationJob(BaseModel):
    """What the loop asks an executor to evaluate: one mixer on one profile."""

    model_config = ConfigDict(extra="forbid")

    profile: str
    tasks: list[str]
    seeds: int = Field(default=1, ge=1)
    train_overrides: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(gt=0)
    known: list[TrainResult] = Field(default_factory=list)  # its finished trainings already in the loop's cache
    compile_step: bool = False
    time_parts: bool = False  # a profile: seconds by part of the training in the report (train/timing.py)


@dataclass
class EvalOutcome:
    ok: bool
    report: EvalReport | None = None  # made on the trusted side (JSON only across Ray: executor/ray.py)
    trainings: list[TrainResult] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    audit: dict[str, float] = field(default_factory=dict)


class KnownResults:
    """A read-only view of finished trainings, shaped like the result cache (`get_many`) for the planner."""

    path = None  # no file: nothing to checkpoint beside

    def __init__(self, results: list[TrainResult]) -> None:
        self.results = {r.key: r for r in results}

    def get_many(self, keys) -> dict[str, TrainResult]:
        return {k: self.results[k] for k in keys if k in self.results}

    def put(self, result: TrainResult, mixer_hash: str, mixer_name: str) -> None:
        self.results[result.key] = result


class Executor(Protocol):
    def check(self, spec: MixerSpec, known: dict[str, str], slot: int, conditions: Conditions | None = None) -> CheckReport:
        """Run the candidate checks (sandboxed) under `conditions` (how the run trains; default: the executor's)
        and return the report."""

    def evaluate(self, spec: MixerSpec, job: EvaluationJob, on_training: TrainingCallback, slot: int,
                 progress=None) -> EvalOutcome:
        """Train the candidate on a profile (sandboxed, scored on the trusted side). `on_training` is called on
        the caller's side for every finished training, as soon as it is known; only the caller writes the
        database. `progress` (evaluate.runner.Progress) follows trainings and steps where the executor can."""

    def prepare(self, profile: str) -> None:
        """Start ahead what the run's first checks and evaluations on `profile` will need (the local executor's
        spare workers on a GPU), so that they do not wait for it. May do nothing."""

    def close(self) -> None:
        """Release resources (processes, cluster connections)."""


def run_evaluation(spec: MixerSpec, job: EvaluationJob, device: str, limits, on_training: TrainingCallback | None,
                   cuda_device: int | None = None, progress=None) -> EvalOutcome:
    """Evaluate `job` here: sandboxed training, trusted scoring (shared by every executor)."""
    import time

    from mixerlab.config import get_profile
    from mixerlab.evaluate.runner import EvalOptions
    from mixerlab.evaluate.sandboxed import evaluate_untrusted
    from mixerlab.tasks import parse_task

    start = time.monotonic()
    options = EvalOptions(tasks=tuple(parse_task(t) for t in job.tasks), seeds=job.seeds, device=device,
                          train_overrides=job.train_overrides, compile_step=job.compile_step,
                          time_parts=job.time_parts)
    result = evaluate_untrusted(spec, get_profile(job.profile), options, limits, cache=KnownResults(job.known),
                                progress=progress, on_result=on_training, cuda_device=cuda_device)
    seconds = time.monotonic() - start
    if not result.ok:
        return EvalOutcome(ok=False, trainings=result.trainings, error=result.error, seconds=seconds, audit=result.audit)
    return EvalOutcome(ok=True, report=result.report, trainings=result.trainings,
                       seconds=seconds, audit=result.audit)


def merge_outcomes(parts: list[EvalOutcome]) -> EvalOutcome:
    """One outcome from per-task outcomes (the Ray executor trains a candidate's tasks in parallel)."""
    trainings = [t for p in parts for t in p.trainings]
    seconds = max((p.seconds for p in parts), default=0.0)
    failed = [p for p in parts if not p.ok]
    audit = {"probes_checked": sum(p.audit.get("probes_checked", 0) for p in parts),
             "largest_probe_change": max((p.audit.get("largest_probe_change", 0.0) for p in parts), default=0.0)}
    if failed:
        return EvalOutcome(ok=False, trainings=trainings, error=failed[0].error, seconds=seconds, audit=audit)
    reports = [p.report for p in parts if p.report is not None]
    report = reports[0].model_copy(update={
        "tasks": {task: score for r in reports for task, score in r.tasks.items()},
        **{key: sum(getattr(r, key) for r in reports)
           for key in ("trainings", "trained_now", "from_cache", "optimizer_steps", "incomplete")},
        "wall_seconds": seconds})
    return EvalOutcome(ok=True, report=report, trainings=trainings, seconds=seconds, audit=audit)


__all__ = ["Conditions", "EvalOutcome", "EvaluationJob", "Executor", "KnownResults", "merge_outcomes", "run_evaluation"]
