"""The executor interface: where candidates are checked and trained. The loop calls these two methods
and nothing else; implementations decide where the work runs (this machine, a Ray cluster)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from mixerlab.check import CheckReport
from mixerlab.mixers.loading import MixerSpec
from mixerlab.train.result import TrainResult

TrainingCallback = Callable[[TrainResult], None]


@dataclass
class EvalOutcome:
    ok: bool
    report: dict[str, Any] | None = None  # EvalReport as JSON (tasks -> scores)
    trainings: list[TrainResult] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


class Executor(Protocol):
    def check(self, spec: MixerSpec, known: dict[str, str], slot: int) -> CheckReport:
        """Run the candidate checks (sandboxed) and return the report."""

    def evaluate(self, spec: MixerSpec, options: dict[str, Any], on_training: TrainingCallback, slot: int) -> EvalOutcome:
        """Train the candidate on a profile (sandboxed). `on_training` is called on the caller's side for every
        finished training, as soon as it is known; only the caller writes the database."""

    def close(self) -> None:
        """Release resources (processes, cluster connections)."""


def spec_payload(spec: MixerSpec) -> dict[str, Any]:
    return {"name": spec.name, "source": spec.source, "filename": spec.filename, "class_name": spec.class_name}


def evaluation_request(spec: MixerSpec, options: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "evaluate", "spec": spec_payload(spec), "options": options}


def outcome_from_messages(messages: list[dict], status_reason: str | None, seconds: float) -> EvalOutcome:
    """Turn the sandbox worker's messages into an EvalOutcome (shared by every executor)."""
    trainings = [TrainResult.model_validate(m["result"]) for m in messages if m.get("type") == "training"]
    report = next((m["report"] for m in messages if m.get("type") == "report"), None)
    error = next((m["error"] for m in messages if m.get("type") == "error"), "")
    if status_reason:
        return EvalOutcome(ok=False, trainings=trainings, error=f"training {status_reason}", seconds=seconds)
    if report is None:
        return EvalOutcome(ok=False, trainings=trainings, error=f"training failed: {error or 'no report'}", seconds=seconds)
    return EvalOutcome(ok=True, report=report, trainings=trainings, seconds=seconds)


def merge_outcomes(parts: list[EvalOutcome]) -> EvalOutcome:
    """One outcome from per-task outcomes (the Ray executor trains a candidate's tasks in parallel)."""
    trainings = [t for p in parts for t in p.trainings]
    seconds = max((p.seconds for p in parts), default=0.0)
    failed = [p for p in parts if not p.ok]
    if failed:
        return EvalOutcome(ok=False, trainings=trainings, error=failed[0].error, seconds=seconds)
    report = dict(parts[0].report)
    report["tasks"] = {task: score for p in parts for task, score in p.report["tasks"].items()}
    for key in ("trainings", "trained_now", "from_cache", "optimizer_steps", "incomplete"):
        report[key] = sum(p.report.get(key, 0) for p in parts)
    report["wall_seconds"] = seconds
    return EvalOutcome(ok=True, report=report, trainings=trainings, seconds=seconds)
