"""From a profile to trainings, and from trainings to groups that train together."""

from __future__ import annotations

from mixerlab.config import Profile
from mixerlab.tasks import Task
from mixerlab.train.job import TrainJob


def plan_jobs(profile: Profile, tasks: tuple[Task, ...], seeds: int) -> list[TrainJob]:
    return [
        TrainJob(setting=setting, lr=lr, weight_decay=wd, seed=seed)
        for task in tasks
        for setting in profile.settings[task]
        for lr in profile.lrs
        for wd in profile.weight_decays
        for seed in range(seeds)
    ]


def group_jobs(jobs: list[TrainJob], batch_size: int, max_tokens: int, max_members: int = 512) -> list[list[TrainJob]]:
    """Split jobs into groups of one shape (backbone, input length, test size) within a token budget per step.

    Similar jobs (vocabulary, data size) are kept together so padded vocabularies and epoch lengths match.
    Largest sequence lengths first, so the slowest groups start early.
    """
    def shape(job: TrainJob) -> tuple:
        s = job.setting
        return (s.task.backbone, s.input_len, s.num_test)

    ordered = sorted(jobs, key=lambda j: (-j.setting.input_len, shape(j), j.setting.vocab_size, -j.setting.num_train,
                                          j.setting.task.value, j.lr, j.weight_decay, j.seed))
    groups: list[list[TrainJob]] = []
    for job in ordered:
        per_member = batch_size * job.setting.input_len
        limit = max(1, min(max_members, max_tokens // per_member))
        if groups and shape(groups[-1][0]) == shape(job) and len(groups[-1]) < limit:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups
