"""The local executor: every check and evaluation in a sandboxed process on this machine. With several
loop workers, evaluations run concurrently; each gets its share of the CPU cores, and GPUs are assigned
round-robin by worker slot."""

from __future__ import annotations

from mixerlab.check import CheckReport, Conditions, check_candidate
from mixerlab.config import available_cpus
from mixerlab.mixers.loading import MixerSpec
from mixerlab.evaluate.sandboxed import shared_slot_bytes
from mixerlab.sandbox import SandboxLimits, close_spares, start_spares

from .base import EvalOutcome, EvaluationJob, TrainingCallback, run_evaluation


class LocalExecutor:
    def __init__(self, device: str = "cpu", gpus: int = 0, check_limits: SandboxLimits = SandboxLimits(),
                 eval_memory_gb: float = 16.0, workers_per_gpu: int = 1, workers: int = 1,
                 conditions: Conditions | None = None) -> None:
        self.device = device
        self.cpu_threads = max(1, available_cpus() // max(1, workers))  # no oversubscription
        self.gpus = gpus
        self.check_limits = check_limits
        self.eval_memory_gb = eval_memory_gb
        self.workers_per_gpu = workers_per_gpu
        self.conditions = conditions or Conditions()

    def _gpu(self, slot: int) -> int | None:
        return slot % self.gpus if self.device.startswith("cuda") and self.gpus > 0 else None

    def _check_limits(self, gpu: int | None) -> SandboxLimits:
        # the checks run where the evaluation will: on the GPU, on a worker started ahead (SandboxLimits.spare)
        return SandboxLimits.for_checks(self.check_limits, gpu, 1 / self.workers_per_gpu, spare=gpu is not None)

    def _evaluation_limits(self, gpu: int | None, timeout_s: float, profile: str) -> SandboxLimits:
        # on a GPU the next candidate's worker starts (torch, CUDA: ~9 s) while this one trains
        return SandboxLimits.for_evaluation(timeout_s, gpu, 1 / self.workers_per_gpu, self.eval_memory_gb,
                                            self.cpu_threads, spare=gpu is not None, profile=profile)

    def prepare(self, profile: str) -> None:
        """On a GPU, start the spare check and evaluation workers of every GPU now: the first candidate's checks
        would otherwise wait for a worker's start (~9 s, and its work ahead), as the baselines train."""
        for gpu in sorted({self._gpu(slot) for slot in range(self.gpus)} - {None}):
            start_spares(self._check_limits(gpu))
            start_spares(self._evaluation_limits(gpu, 0.0, profile), shared_slot_bytes("cuda"))

    def check(self, spec: MixerSpec, known: dict[str, str], slot: int, conditions: Conditions | None = None) -> CheckReport:
        gpu = self._gpu(slot)
        limits = self._check_limits(gpu)
        conditions = (conditions or self.conditions).model_copy(update={"device": "cuda" if gpu is not None else "cpu"})
        return check_candidate(spec, known=known, limits=limits, conditions=conditions)

    def evaluate(self, spec: MixerSpec, job: EvaluationJob, on_training: TrainingCallback, slot: int,
                 progress=None) -> EvalOutcome:
        gpu = self._gpu(slot)
        limits = self._evaluation_limits(gpu, job.timeout_s, job.profile)
        return run_evaluation(spec, job, "cuda" if gpu is not None else "cpu", limits, on_training, cuda_device=gpu,
                              progress=progress)

    def close(self) -> None:
        close_spares()
