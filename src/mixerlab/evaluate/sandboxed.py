"""Evaluate untrusted code: train it in the sandbox, score it here.

`evaluate_sandboxed` is what the research loop (through its executor) and `mixerlab eval FILE.py` run for a
candidate. The plan (which trainings, which are cached), the test sets, the causality probes, the metrics,
every `TrainResult` and the final report are made in this process; the worker only trains and returns the
logits of the served test rows (sandbox/scoring.py, evaluate/audit.py). The sandbox's OS-level confinement
and audit hook hold the worker (sandbox/).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from mixerlab.config import Profile
from mixerlab.mixers.loading import MixerSpec
from mixerlab.sandbox import SandboxLimits, SandboxOutcome, run_sandboxed
from mixerlab.sandbox.scoring import TrustedScorer, test_set_id
from mixerlab.sandbox.shared import SLOT_BYTES
from mixerlab.sandbox.tasks import TEST_SETS_FILE, EvaluationRequest
from mixerlab.train.result import TrainResult

from .audit import serve
from .cache import ResultCache
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

    @property
    def ok(self) -> bool:
        return not self.error and self.report is not None


def evaluate_sandboxed(
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

    scorer = TrustedScorer({plan.keys[j]: j for j in plan.todo}, plan.train, served, numerics, on_result=record,
                           on_steps=progress.advance_steps if progress else None,
                           device=_scoring_device(options.device, cuda_device))
    request = EvaluationRequest(
        profile=profile.name, tasks=[t.value for t in options.tasks], seeds=options.seeds, device=options.device,
        train_overrides=dict(options.train_overrides), keys=[plan.keys[j] for j in plan.todo],
        time_limit=options.time_limit, compile_step=options.compile_step, library_solves=options.library_solves,
        max_group_tokens=options.max_group_tokens, max_group_members=options.max_group_members,
        time_parts=options.time_parts)
    buffer = io.BytesIO()
    torch.save({ident: {"inputs": s.inputs, "scored": s.scored} for ident, s in served.items()}, buffer)
    payload = {"kind": "evaluate", "device": options.device, "options": request.model_dump(mode="json"),
               "spec": {"name": spec.name, "source": spec.source, "filename": spec.filename, "class_name": spec.class_name}}
    parent = {"worker start": 0.0, "parent scoring": 0.0}
    launched = time.perf_counter()

    def handle(message: dict, payload: bytes):
        began = time.perf_counter()
        if not parent["worker start"]:
            parent["worker start"] = began - launched
        try:
            return scorer.handle(message, payload)
        finally:
            parent["parent scoring"] += time.perf_counter() - began

    outcome = run_sandboxed(payload, limits, handle, files={TEST_SETS_FILE: buffer.getvalue()},
                            shared_slot_bytes=SLOT_BYTES if options.shared_logits and options.device.startswith("cuda") else 0)
    if progress:
        progress.stop()
    audit = {"probes_checked": scorer.probes_checked, "largest_probe_change": scorer.largest_leak}
    parts = {**scorer.worker_parts, **parent} if options.time_parts else {}
    trainings = [results[key] for key in scorer.results]  # as recorded: on the GPU this process named
    if scorer.failure:
        return SandboxedEvaluation(None, trainings, scorer.failure, outcome, audit, parts)
    if outcome.status != "ok":
        reason = outcome.reason(limits)
        tail = outcome.traceback_tail
        error = f"{reason}" + (f"\n{tail}" if tail and tail not in reason else "")
        return SandboxedEvaluation(None, trainings, error, outcome, audit, parts)
    report = build_report(spec, profile, options, plan, results, time.perf_counter() - start, scorer.member_steps)
    if parts:
        report = report.model_copy(update={"parts": parts})
    return SandboxedEvaluation(report, trainings, "", outcome, audit, parts)


def _scoring_device(device: str, cuda_device: int | None) -> str:
    """Where this process reduces the worker's logits: the evaluation's own GPU where this process sees it."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "cpu"
    index = cuda_device if cuda_device is not None else (int(device.split(":")[1]) if ":" in device else 0)
    return f"cuda:{index}" if index < torch.cuda.device_count() else "cpu"
