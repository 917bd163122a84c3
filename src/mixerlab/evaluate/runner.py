"""Evaluate one mixer on a profile: plan the trainings, reuse cached ones, train the rest in groups, score.

This is what `mixerlab eval` runs, and what the research loop calls for every candidate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from pydantic import BaseModel

from mixerlab.config import Profile, TrainConfig
from mixerlab.mixers import MixerSpec
from mixerlab.tasks import TASK_ORDER, Task
from mixerlab.train.batched import train_group
from mixerlab.train.checkpoint import CheckpointStore
from mixerlab.train.interrupts import should_stop, stop_requested
from mixerlab.train.job import TrainJob
from mixerlab.train.result import TrainResult
from mixerlab.train.scoring import LOCAL_SCORING, Scoring
from mixerlab.train.schedule import batches_per_epoch
from mixerlab.train.timing import NoClock, PartClock

from .aggregate import TaskScore, aggregate, score_range
from .cache import ResultCache
from .concurrent import locked, run_groups
from .plan import group_jobs, plan_jobs, token_capacity
from .prefix import find_finished

log = logging.getLogger(__name__)


class Progress(Protocol):
    def start(self, total_trainings: int, cached: int, total_steps: int) -> None: ...
    def advance_steps(self, member_steps: int) -> None: ...
    def finished(self, result: TrainResult) -> None: ...
    def forget_steps(self, member_steps: int) -> None: ...
    def stop(self) -> None: ...


class TaskProgress(BaseModel):
    """How far a task's trainings are: until all are done, its score so far is not the profile's score."""

    done: int
    planned: int
    score_range: tuple[float, float]  # where the finished score can still end (aggregate.score_range)


class EvalReport(BaseModel):
    mixer: str
    mixer_hash: str
    profile: str
    device: str
    seeds: int
    tasks: dict[str, TaskScore]
    trainings: int
    trained_now: int
    from_cache: int
    wall_seconds: float
    optimizer_steps: int  # member-steps trained in this run
    steps_per_second: float
    lr_schedule: str
    init: str = "mad-lab"
    init_seed: str = "setting"
    patience: int | None = None  # epochs without a better test perplexity that stop a training (None: MAD's rule only)
    incomplete: int = 0  # trainings not finished (time limit): the scores above leave them out
    resumed: int = 0  # unfinished trainings picked up from a checkpoint of an earlier run
    from_longer: int = 0  # of from_cache: read off the first epochs of a cached longer training (evaluate/prefix.py)
    stopped_by: str | None = None  # the signal that stopped the run early (SIGTERM, SIGINT), its groups checkpointed
    unfinished: dict[str, TaskProgress] = {}  # the tasks with trainings still missing, by task
    parts: dict[str, float] = {}  # seconds by part of the training (EvalOptions.time_parts; train/timing.py)

    def row(self) -> dict[str, float]:
        return {task: score.mean for task, score in self.tasks.items()}

    def mean_score(self) -> float:
        return sum(s.mean for s in self.tasks.values()) / max(1, len(self.tasks))


@dataclass
class EvalOptions:
    tasks: tuple[Task, ...] = TASK_ORDER
    seeds: int = 1
    device: str = "cpu"
    max_group_tokens: int | None = None  # per optimiser step, across the group; None: by device
    max_group_members: int | None = None  # at most this many trainings per group (smaller checkpoints)
    time_limit: float | None = None  # seconds; stop cleanly after it, keeping finished trainings
    train_overrides: dict = field(default_factory=dict)  # e.g. {"lr_schedule": "cosine"}
    compile_step: bool = False  # CUDA: torch.compile each group's training step
    library_solves: bool = False  # keep torch.linalg.solve_triangular instead of the Triton kernel (ops/tril_solve.py)
    checkpoint_every: float = 120.0  # seconds; unfinished groups are saved beside the cache this often
    max_seq_len: int | None = None  # train only settings up to this length now (a long sweep in parts)
    settings: frozenset[str] | None = None  # train only these setting labels now (plan.select_settings)
    train: bool = True  # False: report what the cache holds, train nothing (after workers trained it: devices.py)
    only_keys: frozenset[str] | None = None  # train only the trainings of these cache keys (a worker's share)
    scoring: Scoring = LOCAL_SCORING  # where test sets come from and who scores them (the sandbox: its parent)
    time_parts: bool = False  # measure seconds by part (syncs the device at each change of part: a profile)
    workers: int = 1  # sandboxed: this many workers share the device, each training its share at the same time
    concurrent_groups: int = 1  # groups training at once, a thread and CUDA stream each (evaluate/concurrent.py)
    shared_logits: bool = True  # sandboxed on CUDA: test logits through shared memory where the system has it (sandbox/shared.py)


def group_capacity(train: TrainConfig, factory, device: str, max_tokens: int | None,
                   max_members: int | None = None, scoring: Scoring = LOCAL_SCORING,
                   concurrent: int = 1) -> Callable[[TrainJob], int]:
    """How many members of a job's shape fit in one group: a token budget on the CPU (or when given), and
    on CUDA a measured memory probe (candidates differ wildly in activation memory); at most `max_members`.

    The cap is for machines that keep checkpoints only up to a size (a member's state is 5-7 MB at width 128):
    past ~100k tokens per step a larger group barely trains faster (benchmarks/results/eval_speed.md), so on
    long settings a cap costs little and lets every group's checkpoint travel whole."""
    if max_members is not None:
        inner = group_capacity(train, factory, device, max_tokens, scoring=scoring, concurrent=concurrent)
        return lambda job: min(max_members, inner(job))
    if max_tokens or not device.startswith("cuda"):
        return token_capacity(train.batch_size, max_tokens or 64 * 1024)
    from mixerlab.train.batched import probe_member_bytes

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    budget = 0.55 * free / max(1, concurrent)  # groups that train at once share the memory
    measured: dict[tuple, int] = {}

    def capacity(job: TrainJob) -> int:
        s = job.setting
        ident = (s.task.backbone, s.input_len, s.vocab_size)
        if ident not in measured:
            per_member = probe_member_bytes(job, train, factory, device, scoring)
            measured[ident] = max(1, min(512, int(budget // per_member)))
            log.info("%s: %.2f GiB per member -> %d members per group", s.label, per_member / 2**30, measured[ident])
        return measured[ident]

    return capacity


def max_steps(job: TrainJob, train: TrainConfig) -> int:
    return batches_per_epoch(job.setting.num_train, train.batch_size) * train.max_epochs


@dataclass
class EvalPlan:
    """An evaluation's trainings: all of them (`jobs`, with their cache `keys`), those cached (`done`) and
    those this run trains (`todo`: not cached, inside --max-seq-len / --settings, none when not training)."""

    train: TrainConfig
    jobs: list[TrainJob]
    keys: dict[TrainJob, str]
    done: dict[str, TrainResult]
    todo: list[TrainJob]


def plan_evaluation(spec: MixerSpec, profile: Profile, options: EvalOptions, cache: ResultCache | None) -> EvalPlan:
    train = profile.train.model_copy(update=options.train_overrides) if options.train_overrides else profile.train
    jobs = plan_jobs(profile, options.tasks, options.seeds)
    numerics = train.numerics(options.device)
    keys = {job: job.cache_key(spec.code_hash, train, numerics) for job in jobs}
    done = find_finished(cache, jobs, spec.code_hash, train, numerics) if cache else {}
    todo = [job for job in jobs if keys[job] not in done and options.train
            and (options.max_seq_len is None or job.setting.seq_len <= options.max_seq_len)
            and (options.settings is None or job.setting.label in options.settings)
            and (options.only_keys is None or keys[job] in options.only_keys)]
    return EvalPlan(train, jobs, keys, done, todo)


def evaluate_mixer(
    spec: MixerSpec,
    profile: Profile,
    options: EvalOptions,
    cache: ResultCache | None = None,
    progress: Progress | None = None,
    on_result: Callable[[TrainResult], None] | None = None,
) -> EvalReport:
    start = time.perf_counter()
    plan = plan_evaluation(spec, profile, options, cache)
    train, jobs, keys, done, todo = plan.train, plan.jobs, plan.keys, plan.done, plan.todo
    results = {keys[j]: done[keys[j]] for j in jobs if keys[j] in done}
    job_of_key = {keys[j]: j for j in todo}
    # unfinished groups are checkpointed beside a cache file; a cache without one (the sandboxed loop's
    # in-memory view of its parent's trainings) trains without checkpoints
    cache_path = getattr(cache, "path", None)
    checkpoints = CheckpointStore.beside(cache_path, options.checkpoint_every) if cache_path else None
    resumable = _resumable_groups(checkpoints, job_of_key) if checkpoints and todo else []
    resumed = sum(len(group) for _, _, group in resumable)
    if progress:
        progress.start(len(jobs), len(jobs) - len(todo), sum(max_steps(j, train) for j in todo))
        for _, state, group in resumable:  # steps an earlier run trained count as done
            progress.advance_steps(state["steps_done"] * len(group))

    member_steps = 0

    def record(result: TrainResult) -> None:
        results[result.key] = result
        if cache:
            cache.put(result, spec.code_hash, spec.name)
        if progress:
            progress.finished(result)
            progress.forget_steps(max_steps(job_of_key[result.key], train) - result.steps)
        if on_result:
            on_result(result)

    def count_steps(n: int) -> None:
        nonlocal member_steps
        member_steps += n
        if progress:
            progress.advance_steps(n)

    deadline = time.monotonic() + options.time_limit if options.time_limit else None
    concurrency = options.concurrent_groups
    clock = PartClock(options.device) if options.time_parts else NoClock()
    clocks: list[PartClock] = [clock]
    lock = threading.Lock()
    on_trained, on_steps = (locked(record, lock), locked(count_steps, lock)) if concurrency > 1 else (record, count_steps)
    if todo:
        factory = spec.factory()
        fast_solves = False if options.library_solves else None  # None: the kernel where it runs (CUDA)

        def train_one(group: list[TrainJob], halt: threading.Event, resume: tuple[str, dict] | None = None) -> None:
            own = clock
            if concurrency > 1 and options.time_parts:  # a clock per group thread, summed at the end
                own = PartClock(options.device)
                with lock:
                    clocks.append(own)
            train_group(group, [keys[j] for j in group], train, factory, options.device, on_result=on_trained,
                        on_steps=on_steps, deadline=deadline, compile_step=options.compile_step,
                        checkpoints=checkpoints, resume=resume, fast_solves=fast_solves, scoring=options.scoring,
                        clock=own, halt=halt)
            own.switch(None)

        claimed = set()
        for ident, state, group in resumable:
            if should_stop(deadline):
                break
            log.info("resuming %d jobs of %s at step %d", len(group), group[0].setting.task.value, state["steps_done"])
            try:
                train_one(group, threading.Event(), resume=(ident, state))
                claimed.update(group)
            except ValueError as err:  # e.g. written by another mixerlab version: train these from the start
                log.warning("cannot resume checkpoint %s (%s); training its jobs from the start", ident, err)
        fresh = [j for j in todo if j not in claimed and keys[j] not in results]
        clock.switch("setup")  # the memory probe of group_capacity runs on the first group it sizes
        capacity = group_capacity(train, factory, options.device, options.max_group_tokens,
                                  options.max_group_members, options.scoring, concurrency) if fresh else None
        groups = group_jobs(fresh, capacity) if fresh else []
        # one at a time: cheapest first, so a time-limited run finishes as many trainings as it can; several at
        # once: most expensive first, so the longest group is not the one left running alone at the end
        groups.sort(key=lambda g: _group_cost(g, train), reverse=concurrency > 1)
        clock.switch(None)
        run_groups(groups, train_one, concurrency, options.device, deadline)
        if len(clocks) > 1:
            for other in clocks[1:]:
                clock.add(other.seconds)
    clock.switch(None)
    if progress:
        progress.stop()
    report = build_report(spec, profile, options, plan, results, time.perf_counter() - start, member_steps, resumed)
    return report.model_copy(update={"parts": dict(clock.seconds)}) if options.time_parts else report


def build_report(spec: MixerSpec, profile: Profile, options: EvalOptions, plan: EvalPlan, results: dict[str, TrainResult],
                 wall: float, member_steps: int, resumed: int = 0) -> EvalReport:
    """The report of an evaluation from its plan and the trainings it has (by cache key): scores of what is
    finished, and how far the rest got. Shared by the in-process run and the sandboxed one."""
    train, jobs, keys = plan.train, plan.jobs, plan.keys
    missing = [j for j in jobs if keys[j] not in results]
    scores = aggregate([results[keys[j]] for j in jobs if keys[j] in results])
    return EvalReport(
        mixer=spec.name, mixer_hash=spec.code_hash, profile=profile.name, device=options.device, seeds=options.seeds,
        tasks=scores, trainings=len(jobs), trained_now=len(plan.todo), from_cache=len(jobs) - len(plan.todo),
        wall_seconds=wall, optimizer_steps=member_steps, steps_per_second=member_steps / wall if wall else 0.0,
        lr_schedule=train.lr_schedule, init=train.init, init_seed=train.init_seed, patience=train.patience,
        incomplete=len(missing), resumed=resumed,
        from_longer=sum(1 for r in plan.done.values() if r.derived_from),
        stopped_by=stop.name if missing and (stop := stop_requested()) else None,
        unfinished={task: p for task, p in task_progress(jobs, keys, results).items() if p.done < p.planned},
    )


def task_progress(jobs: list[TrainJob], keys: dict[TrainJob, str],
                  results: dict[str, TrainResult]) -> dict[str, TaskProgress]:
    """Per task of `jobs`: how many of its trainings are in `results` (by cache key) and where its score can
    still end (a single value once all are in)."""
    planned: dict[str, list[tuple[str, int, float | None]]] = defaultdict(list)
    for job in jobs:
        found = results.get(keys[job])
        planned[job.setting.task.value].append((job.setting.label, job.seed, found.score if found else None))
    return {task: TaskProgress(done=sum(s is not None for _, _, s in runs), planned=len(runs),
                               score_range=score_range(runs))
            for task, runs in planned.items()}


def _group_cost(group: list[TrainJob], train: TrainConfig) -> int:
    """Tokens a group trains if nobody stops early (its step count is its longest member's)."""
    return max(max_steps(j, train) for j in group) * len(group) * group[0].setting.input_len


def _resumable_groups(checkpoints: CheckpointStore, job_of_key: dict[str, TrainJob]):
    """Checkpointed groups with members still to train here: [(id, state, those members' jobs)], each job once."""
    found, claimed = [], set()
    for ident, state in checkpoints.load_all():
        jobs = [job_of_key[k] for k in state["keys"] if k in job_of_key and k not in claimed]
        if jobs:
            claimed.update(k for k in state["keys"] if k in job_of_key)
            found.append((ident, state, jobs))
    return found
