"""The Ray executor: checks and trainings as Ray tasks on a cluster (`--executor ray`).

- A candidate's checks are one Ray task (1 CPU). Its evaluation is one Ray task per MAD task, so a single
  candidate spreads over the cluster; each declares its resources (CPUs, and GPUs, possibly fractional so
  several small trainings share one GPU) and runs the candidate inside the same sandbox as locally.
- Fault tolerance: a task whose worker process or node dies is retried by Ray up to `max_retries` times.
  A candidate that fails by itself (crash, timeout, bad numerics) comes back as a normal, failed result and
  is never retried. The driver alone writes the database and the result cache; restarting the driver with
  `--resume` continues from the database.
- Results equal the local executor's: the same groups are trained (groups never span tasks) with the same
  seeds; on CPU use the same threads per training (`--threads`), since the thread count changes float sums.
"""

from __future__ import annotations

import time
from typing import Any

from mixerlab.check import CheckReport, Conditions
from mixerlab.evaluate.runner import EvalReport
from mixerlab.mixers.loading import MixerSpec
from mixerlab.sandbox import SandboxLimits
from mixerlab.train.result import TrainResult

from .base import EvalOutcome, EvaluationJob, TrainingCallback, merge_outcomes

try:
    import ray
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("the Ray executor needs Ray: pip install 'mixerlab[ray]'") from err


@ray.remote
def _evaluation_task(spec: dict[str, Any], job: dict[str, Any], device: str, limits: dict[str, Any]) -> dict[str, Any]:
    """Evaluate on whichever node Ray chose: the sandbox there, the trusted scoring in this task's process."""
    from mixerlab.mixers.loading import MixerSpec
    from mixerlab.sandbox import SandboxLimits

    from .base import EvaluationJob, run_evaluation

    gpu_ids = ray.get_gpu_ids()
    gpu = int(gpu_ids[0]) if gpu_ids else None
    limits = SandboxLimits(**{**limits, "cuda_device": gpu})
    outcome = run_evaluation(MixerSpec(**spec), EvaluationJob.model_validate(job), "cuda" if gpu is not None else "cpu",
                             limits, None, cuda_device=gpu)
    return {"ok": outcome.ok, "report": outcome.report.model_dump(mode="json") if outcome.report else None,
            "error": outcome.error, "seconds": outcome.seconds,
            "audit": outcome.audit, "trainings": [t.model_dump(mode="json") for t in outcome.trainings]}


@ray.remote(num_cpus=1)
def _check_task(spec: dict[str, Any], known: dict[str, str], limits: dict[str, Any], conditions: dict[str, Any]) -> dict[str, Any]:
    from mixerlab.check import Conditions, check_candidate
    from mixerlab.mixers.loading import MixerSpec
    from mixerlab.sandbox import SandboxLimits

    return check_candidate(MixerSpec(**spec), known=known, limits=SandboxLimits(**limits),
                           conditions=Conditions.model_validate(conditions)).model_dump(mode="json")


def _spec_payload(spec: MixerSpec) -> dict[str, Any]:
    return {"name": spec.name, "source": spec.source, "filename": spec.filename, "class_name": spec.class_name}


def _limits_dict(limits: SandboxLimits) -> dict[str, Any]:
    return {field: getattr(limits, field) for field in limits.__dataclass_fields__}


class RayExecutor:
    def __init__(self, address: str | None = None, device: str = "cpu", gpus: int = 0,
                 check_limits: SandboxLimits = SandboxLimits(), eval_memory_gb: float = 16.0,
                 gpus_per_task: float = 1.0, threads: int = 1, max_retries: int = 2, workers: int = 1,
                 workers_per_gpu: int = 1, num_cpus: int | None = None, conditions: Conditions | None = None) -> None:
        if not ray.is_initialized():
            if address in (None, "", "local"):  # a private cluster on this machine, on loopback
                ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.device = device
        self.check_limits = check_limits
        self.eval_memory_gb = eval_memory_gb
        self.gpus_per_task = gpus_per_task if device.startswith("cuda") else 0.0
        self.threads = threads
        self.max_retries = max_retries
        self.conditions = conditions or Conditions()

    def check(self, spec: MixerSpec, known: dict[str, str], slot: int, conditions: Conditions | None = None) -> CheckReport:
        conditions = (conditions or self.conditions).model_copy(update={"device": "cpu"})  # check tasks take a CPU, not a GPU
        ref = _check_task.options(max_retries=self.max_retries).remote(
            _spec_payload(spec), known, _limits_dict(self.check_limits), conditions.model_dump(mode="json"))
        return CheckReport.model_validate(ray.get(ref))

    def evaluate(self, spec: MixerSpec, job: EvaluationJob, on_training: TrainingCallback, slot: int,
                 progress=None) -> EvalOutcome:  # progress: trainings arrive per task, when the task ends
        cuda = self.gpus_per_task > 0
        # cuda_device is the task's own GPU, set where Ray runs it (_evaluation_task); 0 here only marks "a GPU"
        limits = SandboxLimits.for_evaluation(job.timeout_s, 0 if cuda else None, min(1.0, self.gpus_per_task),
                                              self.eval_memory_gb, self.threads)
        pending = {}
        for task in job.tasks:
            part = job.model_copy(update={"tasks": [task], "known": [t for t in job.known if t.task == task]})
            ref = _evaluation_task.options(num_cpus=self.threads, num_gpus=self.gpus_per_task, max_retries=self.max_retries,
                                           retry_exceptions=False).remote(
                _spec_payload(spec), part.model_dump(mode="json"), "cuda" if cuda else "cpu", _limits_dict(limits))
            pending[ref] = task
        parts: list[EvalOutcome] = []
        start = time.monotonic()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as err:  # retries exhausted: the node or worker kept dying
                parts.append(EvalOutcome(ok=False, error=f"training {task} was lost {self.max_retries + 1} times on the "
                                                         f"cluster ({type(err).__name__}); the run can --resume"))
                continue
            trainings = [TrainResult.model_validate(t) for t in result["trainings"]]
            for training in trainings:  # scored on the trusted side of the task; the driver alone writes results
                on_training(training)
            report = EvalReport.model_validate(result["report"]) if result["report"] else None
            parts.append(EvalOutcome(ok=result["ok"], report=report, trainings=trainings, error=result["error"],
                                     seconds=result["seconds"], audit=result["audit"]))
        merged = merge_outcomes(parts)
        merged.seconds = time.monotonic() - start
        return merged

    def prepare(self, profile: str) -> None:
        """Nothing: each Ray task starts its own sandboxed worker on the node that runs it."""

    def close(self) -> None:
        if ray.is_initialized():
            ray.shutdown()
