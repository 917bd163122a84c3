"""How far a profile's sweep has got for a mixer in a result cache, without training anything.

A `full` sweep (396 trainings) runs in parts, across machines and sessions, through the cache; this says
per task how many of the profile's trainings are finished, how many settings are complete, the score so far
(best (lr, wd) per setting over the finished trainings, as `evaluate_mixer` would report it), the range the
final score can still end in (`aggregate.score_range`) and an upper bound on the training tokens left (every
missing training run to its last epoch: early stops only cut it).
"""

from __future__ import annotations

from dataclasses import dataclass

from mixerlab.config import Profile
from mixerlab.tasks import TASK_ORDER, Task

from .aggregate import aggregate
from .plan import plan_jobs
from .prefix import ResultLookup, find_finished
from .runner import max_steps, task_progress


@dataclass(frozen=True)
class TaskCoverage:
    task: str
    done: int  # finished trainings of the profile's jobs for this task
    planned: int
    settings_complete: int  # settings whose every (lr, wd, seed) training finished
    settings: int
    score: float | None  # mean over the settings that have a finished training; None before the first
    score_range: tuple[float, float]  # where the finished sweep's score can still end (low == high once complete)
    tokens_left: int  # at most: the missing trainings' steps x batch x length, none stopping early

    @property
    def complete(self) -> bool:
        return self.done == self.planned


def sweep_coverage(cache: ResultLookup, profile: Profile, code_hash: str, seeds: int = 1, numerics: str = "bf16",
                   tasks: tuple[Task, ...] = TASK_ORDER) -> list[TaskCoverage]:
    """Per task of `tasks`, the state of `profile`'s sweep for the mixer whose code hash is `code_hash`.
    `numerics` is part of every key: "bf16" for trainings on a GPU (autocast), "fp32" on a CPU."""
    train = profile.train
    out = []
    for task in tasks:
        jobs = plan_jobs(profile, (task,), seeds)
        keys = {job: job.cache_key(code_hash, train, numerics) for job in jobs}
        found = find_finished(cache, jobs, code_hash, train, numerics)
        missing = [job for job in jobs if keys[job] not in found]
        open_settings = {job.setting for job in missing}
        score = aggregate(list(found.values())).get(task.value) if found else None
        progress = task_progress(jobs, keys, found)[task.value]
        out.append(TaskCoverage(
            task=task.value, done=progress.done, planned=progress.planned,
            settings_complete=len(profile.settings[task]) - len(open_settings), settings=len(profile.settings[task]),
            score=score.mean if score else None, score_range=progress.score_range,
            tokens_left=sum(max_steps(job, train) * train.batch_size * job.setting.input_len for job in missing),
        ))
    return out
