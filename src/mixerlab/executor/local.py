"""The local executor: every check and evaluation in a sandboxed process on this machine. With several
loop workers, evaluations run concurrently; each gets its share of the CPU cores, and GPUs are assigned
round-robin by worker slot."""

from __future__ import annotations

from typing import Any

from mixerlab.check import CheckReport, check_candidate
from mixerlab.config import available_cpus
from mixerlab.mixers.loading import MixerSpec
from mixerlab.sandbox import SandboxLimits, run_sandboxed
from mixerlab.train.result import TrainResult

from .base import EvalOutcome, TrainingCallback, evaluation_request, outcome_from_messages


class LocalExecutor:
    def __init__(self, device: str = "cpu", gpus: int = 0, check_limits: SandboxLimits = SandboxLimits(),
                 eval_memory_gb: float = 16.0, workers_per_gpu: int = 1, workers: int = 1) -> None:
        self.device = device
        self.cpu_threads = max(1, available_cpus() // max(1, workers))  # no oversubscription
        self.gpus = gpus
        self.check_limits = check_limits
        self.eval_memory_gb = eval_memory_gb
        self.workers_per_gpu = workers_per_gpu

    def check(self, spec: MixerSpec, known: dict[str, str], slot: int) -> CheckReport:
        return check_candidate(spec, known=known, limits=self.check_limits)

    def evaluate(self, spec: MixerSpec, options: dict[str, Any], on_training: TrainingCallback, slot: int) -> EvalOutcome:
        cuda = self.device.startswith("cuda") and self.gpus > 0
        options = dict(options)
        limits = SandboxLimits(
            timeout_s=options.pop("timeout_s"), memory_gb=self.eval_memory_gb, output_bytes=20_000_000,
            cpu_threads=self.cpu_threads,
            cuda_device=(slot % self.gpus) if cuda else None,
            gpu_memory_fraction=(0.9 / self.workers_per_gpu) if cuda else None,
        )
        options["device"] = "cuda" if cuda else "cpu"

        def on_message(message: dict) -> None:
            if message.get("type") == "training":
                on_training(TrainResult.model_validate(message["result"]))

        outcome = run_sandboxed(evaluation_request(spec, options), limits, on_message)
        reason = outcome.reason(limits) if outcome.status != "ok" else None
        return outcome_from_messages(outcome.messages, reason, outcome.seconds)

    def close(self) -> None:
        pass
