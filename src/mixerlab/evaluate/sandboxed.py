"""Evaluate untrusted code: train it in the sandbox, score it here.

`evaluate_untrusted` is what the research loop (through its executor) and `mixerlab eval FILE.py` run for a
candidate. The plan (which trainings, which are cached), the test sets, the causality probes, the metrics,
every `TrainResult` and the final report are made in this process; the worker only trains and returns the
logits of the served test rows (evaluate/remote_scoring.py, evaluate/audit.py). The sandbox's OS-level confinement
and audit hook hold the worker (sandbox/).
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from mixerlab.config import Profile
from mixerlab.mixers.loading import MixerSpec
from mixerlab.sandbox import SandboxLimits, SandboxOutcome, run_sandboxed
from mixerlab.sandbox.channel import ProtocolError
from mixerlab.sandbox.entry import WorkerRequest
from mixerlab.sandbox.shared import SLOT_BYTES
from mixerlab.train.result import TrainResult

from .audit import serve
from .cache import ResultCache
from .remote import TEST_SETS_FILE, EvaluationRequest, run_evaluation
from .remote_scoring import TrustedScorer, test_set_id
from .runner import EvalOptions, EvalReport, Progress, build_report, max_steps, plan_evaluation


@dataclass
class SandboxedEvaluation:
    """What came of it: the report (None if the worker failed before any result could be scored), the
    trainings scored here now, why it failed, and the sandbox's outcome (confinement, timings)."""

    report: EvalReport | None
    trainings: list[TrainResult] = field(default_factory=list)
    error: str = ""
    outcome: SandboxOutcome | None = None
    audit: dict[str, float] = field(default_factory=dict)  # probes checked, largest relative change seen
    # seconds by part (options.time_parts): the worker's parts (train/timing.py), and this side's "worker start"
    # (launch to the worker's first frame) and "parent scoring" (reading and scoring frames, beside the worker's work)
    parts: dict[str, float] = field(default_factory=dict)
    workers: int = 1  # sandboxed workers that shared the trainings (options.workers, at most one per training)

    @property
    def ok(self) -> bool:
        return not self.error and self.report is not None


def shared_slot_bytes(device: str, shared_logits: bool = True) -> int:
    """The shared-memory slot size of an evaluation's worker: logits come through shared memory on CUDA (where
    they are large), through the pipe elsewhere (0). Part of a spare worker's kind (sandbox.start_spares)."""
    return SLOT_BYTES if shared_logits and device.startswith("cuda") else 0


def evaluate_untrusted(
    spec: MixerSpec,
    profile: Profile,
    options: EvalOptions,
    limits: SandboxLimits,
    cache: ResultCache | None = None,
    progress: Progress | None = None,
    on_result: Callable[[TrainResult], None] | None = None,
    cuda_device: int | None = None,
) -> SandboxedEvaluation:
    start = time.perf_counter()
    plan = plan_evaluation(spec, profile, options, cache)
    results = {plan.keys[j]: plan.done[plan.keys[j]] for j in plan.jobs if plan.keys[j] in plan.done}
    if progress:
        progress.start(len(plan.jobs), len(plan.jobs) - len(plan.todo), sum(max_steps(j, plan.train) for j in plan.todo))
    if not plan.todo:
        if progress:
            progress.stop()
        return SandboxedEvaluation(build_report(spec, profile, options, plan, results, time.perf_counter() - start, 0))

    served = {test_set_id(job.setting, job.seed): serve(job.setting, job.seed, eval_batch=plan.train.eval_batch_size)
              for job in plan.todo}
    numerics = plan.train.numerics(options.device)
    device_label = f"cuda:{cuda_device}" if cuda_device is not None else None

    def record(result: TrainResult) -> None:
        if device_label and result.device.startswith("cuda"):
            result = result.model_copy(update={"device": device_label})  # the worker sees its one GPU as cuda:0
        results[result.key] = result
        if cache:
            cache.put(result, spec.code_hash, spec.name)
        if progress:
            progress.finished(result)
        if on_result:
            on_result(result)

    lock = threading.Lock()  # the shares' scorers record from their own threads
    stop = threading.Event()  # set when one share fails: the others are stopped at their next frame

    def locked_record(result: TrainResult) -> None:
        with lock:
            record(result)

    def advance(steps: int) -> None:
        with lock:
            progress.advance_steps(steps)

    buffer = io.BytesIO()
    torch.save({ident: {"inputs": s.inputs, "scored": s.scored} for ident, s in served.items()}, buffer)
    files = {TEST_SETS_FILE: buffer.getvalue()}
    shares = _shares(plan, options.workers)
    if len(shares) > 1:  # each worker gets its share of the GPU's memory and its own clock
        limits = replace(limits, gpu_memory_fraction=limits.gpu_memory_fraction / len(shares)
                         if limits.gpu_memory_fraction else None)

    def run_share(share: list) -> _Share:
        scorer = TrustedScorer({plan.keys[j]: j for j in share}, plan.train, served, numerics, on_result=locked_record,
                               on_steps=advance if progress else None,
                               device=_scoring_device(options.device, cuda_device))
        request = EvaluationRequest(
            profile=profile.name, tasks=[t.value for t in options.tasks], seeds=options.seeds, device=options.device,
            train_overrides=dict(options.train_overrides), keys=[plan.keys[j] for j in share],
            time_limit=options.time_limit, compile_step=options.compile_step, library_solves=options.library_solves,
            max_group_tokens=options.max_group_tokens, max_group_members=options.max_group_members,
            time_parts=options.time_parts, concurrent_groups=options.concurrent_groups)
        payload = WorkerRequest.of(run_evaluation, spec, options.device, request.model_dump(mode="json")).model_dump(mode="json")
        parent = {"worker start": 0.0, "parent scoring": 0.0}
        launched = time.perf_counter()

        def handle(message: dict, payload: bytes):
            began = time.perf_counter()
            if not parent["worker start"]:
                parent["worker start"] = began - launched
            if stop.is_set():
                raise ProtocolError("stopped: another worker of this evaluation failed")
            try:
                return scorer.handle(message, payload)
            finally:
                parent["parent scoring"] += time.perf_counter() - began

        outcome = run_sandboxed(payload, limits, handle, files=files,
                                shared_slot_bytes=shared_slot_bytes(options.device, options.shared_logits))
        if scorer.failure or outcome.status != "ok":
            stop.set()
        return _Share(scorer, outcome, parent)

    if len(shares) == 1:
        done = [run_share(shares[0])]
    else:
        with ThreadPoolExecutor(len(shares), thread_name_prefix="share") as pool:
            done = list(pool.map(run_share, shares))
    if progress:
        progress.stop()
    audit = {"probes_checked": sum(d.scorer.probes_checked for d in done),
             "largest_probe_change": max(d.scorer.largest_leak for d in done)}
    parts: dict[str, float] = {}
    if options.time_parts:  # seconds summed over the workers (each its own clock)
        for d in done:
            for name, seconds in {**d.scorer.worker_parts, **d.parent}.items():
                parts[name] = parts.get(name, 0.0) + seconds
    trainings = [results[key] for d in done for key in d.scorer.results]  # as recorded: on the GPU this process named
    # the first share to fail says why (the others were stopped because of it)
    failed = sorted((d for d in done if d.scorer.failure or d.outcome.status != "ok"),
                    key=lambda d: "stopped: another worker" in d.outcome.protocol_error)
    if failed:
        first = failed[0]
        if first.scorer.failure:
            return SandboxedEvaluation(None, trainings, first.scorer.failure, first.outcome, audit, parts, len(done))
        reason = first.outcome.reason(limits)
        tail = first.outcome.traceback_tail
        error = f"{reason}" + (f"\n{tail}" if tail and tail not in reason else "")
        return SandboxedEvaluation(None, trainings, error, first.outcome, audit, parts, len(done))
    report = build_report(spec, profile, options, plan, results, time.perf_counter() - start,
                          sum(d.scorer.member_steps for d in done))
    if parts:
        report = report.model_copy(update={"parts": parts})
    return SandboxedEvaluation(report, trainings, "", done[0].outcome, audit, parts, len(done))


@dataclass
class _Share:
    """One worker's part of an evaluation: its scorer, its sandbox outcome, this side's timings of it."""

    scorer: TrustedScorer
    outcome: SandboxOutcome
    parent: dict[str, float]


def _shares(plan, workers: int) -> list[list]:
    """The trainings to do, split over `workers` workers by training tokens (evaluate/devices.py's rule)."""
    if workers <= 1 or len(plan.todo) <= 1:
        return [list(plan.todo)]
    from .devices import split_jobs

    return split_jobs(plan.todo, lambda job: max_steps(job, plan.train) * job.setting.input_len, [], workers)


def _scoring_device(device: str, cuda_device: int | None) -> str:
    """Where this process reduces the worker's logits: the evaluation's own GPU where this process sees it."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "cpu"
    index = cuda_device if cuda_device is not None else (int(device.split(":")[1]) if ":" in device else 0)
    return f"cuda:{index}" if index < torch.cuda.device_count() else "cpu"
