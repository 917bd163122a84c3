"""Where candidates are checked and trained: the executor interface and its local implementation.

`LocalExecutor` runs every check and every evaluation in a sandboxed worker process on this machine; with
several workers, evaluations run concurrently and GPUs are assigned round-robin by worker slot. The Ray
executor (mixerlab.ray_executor) implements the same two calls on a cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from mixerlab.check import CheckReport, check_candidate
from mixerlab.mixers.loading import MixerSpec
from mixerlab.sandbox import SandboxLimits, run_sandboxed
from mixerlab.train.result import TrainResult


@dataclass
class EvalOutcome:
    ok: bool
    report: dict[str, Any] | None = None  # EvalReport as JSON
    trainings: list[TrainResult] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


class Executor(Protocol):
    def check(self, spec: MixerSpec, known: dict[str, str], slot: int) -> CheckReport: ...

    def evaluate(self, spec: MixerSpec, options: dict[str, Any], on_training: Callable[[TrainResult], None],
                 slot: int) -> EvalOutcome: ...


def spec_payload(spec: MixerSpec) -> dict[str, Any]:
    return {"name": spec.name, "source": spec.source, "filename": spec.filename, "class_name": spec.class_name}


def evaluation_request(spec: MixerSpec, options: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "evaluate", "spec": spec_payload(spec), "options": options}


def outcome_from_messages(messages: list[dict], status_reason: str | None, seconds: float) -> EvalOutcome:
    """Turn the worker's messages into an EvalOutcome (shared by every executor)."""
    trainings = [TrainResult.model_validate(m["result"]) for m in messages if m.get("type") == "training"]
    report = next((m["report"] for m in messages if m.get("type") == "report"), None)
    error = next((m["error"] for m in messages if m.get("type") == "error"), "")
    if status_reason:
        return EvalOutcome(ok=False, trainings=trainings, error=f"training {status_reason}", seconds=seconds)
    if report is None:
        return EvalOutcome(ok=False, trainings=trainings, error=f"training failed: {error or 'no report'}", seconds=seconds)
    return EvalOutcome(ok=True, report=report, trainings=trainings, seconds=seconds)


class LocalExecutor:
    def __init__(self, device: str = "cpu", gpus: int = 0, check_limits: SandboxLimits = SandboxLimits(),
                 eval_memory_gb: float = 16.0, workers_per_gpu: int = 1, workers: int = 1) -> None:
        self.device = device
        self.cpu_threads = max(1, (os.cpu_count() or 1) // max(1, workers))  # no oversubscription
        self.gpus = gpus
        self.check_limits = check_limits
        self.eval_memory_gb = eval_memory_gb
        self.workers_per_gpu = workers_per_gpu

    def check(self, spec: MixerSpec, known: dict[str, str], slot: int) -> CheckReport:
        return check_candidate(spec, known=known, limits=self.check_limits)

    def evaluate(self, spec: MixerSpec, options: dict[str, Any], on_training: Callable[[TrainResult], None],
                 slot: int) -> EvalOutcome:
        cuda = self.device.startswith("cuda") and self.gpus > 0
        limits = SandboxLimits(
            timeout_s=options.pop("timeout_s"), memory_gb=self.eval_memory_gb, output_bytes=20_000_000,
            cpu_threads=self.cpu_threads,
            cuda_device=(slot % self.gpus) if cuda else None,
            gpu_memory_fraction=(0.9 / self.workers_per_gpu) if cuda else None,
        )
        options = {**options, "device": "cuda" if cuda else "cpu"}

        def on_message(message: dict) -> None:
            if message.get("type") == "training":
                on_training(TrainResult.model_validate(message["result"]))

        outcome = run_sandboxed(evaluation_request(spec, options), limits, on_message)
        reason = outcome.reason(limits) if outcome.status != "ok" else None
        return outcome_from_messages(outcome.messages, reason, outcome.seconds)
