"""Training a candidate on the worker's side of the sandbox (the parent's side: evaluate/sandboxed.py).

The sandbox worker calls `run_evaluation` after its lock-down, as the entry point the parent names in its request
(sandbox/worker.py). It trains on the served test sets (inputs and scored positions, no targets) and ships every
evaluation's outputs to the parent, which scores them (evaluate/remote_scoring.py); `integrity`
(sandbox/integrity.py) is verified after the candidate's module is loaded and at every scored evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

# everything the training runs is imported with this module, which the worker imports before its integrity snapshot
# and its lock-down (sandbox/entry.py KNOWN_MODULES): a spare worker waits warm, and all of it is watched
from mixerlab.config import Profile, get_profile
from mixerlab.mixers.loading import MixerSpec
from mixerlab.sandbox.channel import WorkerChannel
from mixerlab.sandbox.entry import ahead_of_request, entry_point
from mixerlab.sandbox.integrity import Integrity
from mixerlab.tasks import parse_task
from mixerlab.train.batched import DEVICE_SETUP_LOCK
from mixerlab.train.scoring import Scoring, TestSet

from .remote_scoring import RemoteScorer, test_set_id
from .runner import EvalOptions, evaluate_mixer

TEST_SETS_FILE = "test_sets.pt"  # the served test sets (inputs and scored positions only), written by the parent


class EvaluationRequest(BaseModel):
    """The options of an evaluation request (evaluate/sandboxed.py builds it): which trainings to run, how."""

    model_config = ConfigDict(extra="forbid")

    profile: str
    tasks: list[str]
    seeds: int = Field(default=1, ge=1)
    device: str = "cpu"
    train_overrides: dict[str, Any] = Field(default_factory=dict)
    keys: list[str]  # the cache keys of the trainings to run (the parent's plan)
    time_limit: float | None = None
    compile_step: bool = False
    library_solves: bool = False
    max_group_tokens: int | None = None
    max_group_members: int | None = None
    time_parts: bool = False  # send the seconds by part of the training at the end (train/timing.py)
    concurrent_groups: int = Field(default=1, ge=1, le=64)  # training groups at once (evaluate/concurrent.py)


class _StepReporter:
    """The worker's training progress, sent to the parent at most a few times a second (for its progress bar)."""

    def __init__(self, channel: WorkerChannel) -> None:
        self.channel, self.steps, self.sent_at = channel, 0, 0.0

    def start(self, total_trainings: int, cached: int, total_steps: int) -> None:
        pass

    def advance_steps(self, member_steps: int) -> None:
        self.steps += member_steps
        if time.monotonic() - self.sent_at > 0.5:
            self.flush()

    def flush(self) -> None:
        self.channel.send({"type": "steps", "member_steps": self.steps})
        self.sent_at = time.monotonic()

    def finished(self, result) -> None:
        pass

    def forget_steps(self, member_steps: int) -> None:
        pass

    def stop(self) -> None:
        self.flush()


@ahead_of_request("train-warm-up")
def warm_up_training(profile_name: str | None) -> None:
    """Train the DeltaNet template three one-step epochs at each input length of a profile's tasks (one member:
    two eager steps, a CUDA graph capture, test forwards), and throw the results away: a spare evaluation worker
    does this while it waits (SandboxLimits.ahead), so the candidate's evaluation finds CUDA's libraries, the
    kernels and the allocator started. Trusted code only, before the request and the lock-down. Asked for on
    CUDA workers only (SandboxLimits.for_evaluation): a CPU has little to start, and no spare to hide the time in."""
    if not profile_name:
        raise ValueError("train-warm-up needs a profile: train-warm-up:NAME")
    cuda = torch.cuda.is_available()
    train_briefly(get_profile(profile_name), "cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the memory goes back to the device: an evaluation may be training beside this spare


def train_briefly(profile: Profile, device: str) -> None:
    """The warm-up's trainings: the DeltaNet template, three one-step epochs at each of `profile`'s tasks'
    input lengths, the first learning rate and weight decay; results thrown away."""
    from mixerlab.mixers import builtin_spec

    train = profile.train.model_copy(update={"max_epochs": 3, "patience": None})
    settings = {}
    for task, group in profile.settings.items():
        lengths = {s.input_len: s for s in group}.values()  # one setting per input length
        settings[task] = tuple(s.model_copy(update={"num_train": train.batch_size,
                                                     "num_test": min(s.num_test, train.eval_batch_size)})
                               for s in lengths)
    warm = profile.model_copy(update={"train": train, "settings": settings, "lrs": profile.lrs[:1],
                                      "weight_decays": profile.weight_decays[:1]})
    evaluate_mixer(builtin_spec("delta_net"), warm, EvalOptions(tasks=tuple(settings), device=device))


@entry_point
def run_evaluation(spec: MixerSpec, options: dict[str, Any], channel: WorkerChannel, integrity: Integrity) -> None:
    """Train the trainings the parent asked for on the served test sets; every epoch's test logits go to the
    parent, which scores them (evaluate/remote_scoring.py). Nothing this process computes is taken as a score."""

    request = EvaluationRequest.model_validate(options)
    served = torch.load(Path.cwd() / TEST_SETS_FILE, weights_only=True)

    def test_source(job) -> TestSet:
        entry = served[test_set_id(job.setting, job.seed)]
        return TestSet(entry["inputs"], entry["scored"])

    spec.load_class()
    integrity.verify("while its module was loaded")

    def verify(when: str) -> None:
        # while torch.compile traces a group it patches nn.Module for a moment (and puts it back): groups training
        # at once in other threads check once no trace is under way (train/batched.py DEVICE_SETUP_LOCK)
        with DEVICE_SETUP_LOCK:
            integrity.verify(when)

    scoring = Scoring(test_source=test_source, remote=lambda tests: RemoteScorer(channel, tests, verify))
    eval_options = EvalOptions(
        tasks=tuple(parse_task(t) for t in request.tasks), seeds=request.seeds, device=request.device,
        time_limit=request.time_limit, train_overrides=request.train_overrides, compile_step=request.compile_step,
        library_solves=request.library_solves, max_group_tokens=request.max_group_tokens,
        max_group_members=request.max_group_members, only_keys=frozenset(request.keys), scoring=scoring,
        time_parts=request.time_parts, concurrent_groups=request.concurrent_groups)

    def trained(result) -> None:
        verify("during training")
        channel.send({"type": "trained", "key": result.key, "train_losses": [h.train_loss for h in result.history],
                      "seconds": result.seconds, "trainer": result.trainer, "device": result.device})

    channel.send({"type": "log", "event": "ready"})  # the parent times the worker's start up to here
    report = evaluate_mixer(spec, get_profile(request.profile), eval_options, cache=None,
                            progress=_StepReporter(channel), on_result=trained)
    if request.time_parts:
        channel.send({"type": "parts", "seconds": report.parts})
