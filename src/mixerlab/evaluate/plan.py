"""From a profile to trainings, and from trainings to groups that train together."""

from __future__ import annotations

from typing import Callable

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


def select_settings(profile: Profile, tasks: tuple[Task, ...], names: list[str]) -> frozenset[str]:
    """The labels of the profile's settings that `names` pick, for a run limited to a few settings.

    A name is a full label (`selective_copy[vocab_size=128]`) or the part in brackets (`vocab_size=128`,
    `baseline`), which picks that setting in every chosen task that has it. Unknown names raise ValueError
    listing what the chosen tasks offer."""
    settings = [s for task in tasks for s in profile.settings[task]]
    chosen: set[str] = set()
    for name in (n.strip() for n in names):
        picked = {s.label for s in settings if name in (s.label, s.change_label)}
        if not picked:
            offered = ", ".join(dict.fromkeys(s.change_label for s in settings))
            raise ValueError(f"unknown setting {name!r} for profile {profile.name!r} and these tasks; use one of: "
                             f"{offered} (or task[setting], e.g. {settings[-1].label})")
        chosen |= picked
    return frozenset(chosen)


# a vocabulary up to this size is padded into any group of its shape: at width 128 its head and loss are a few
# percent of a member's step, while a group of its own pays its own compile and an under-filled step
SMALL_VOCAB = 256


def group_jobs(
    jobs: list[TrainJob], capacity: Callable[[TrainJob], int], max_vocab_ratio: int = 4, small_vocab: int = SMALL_VOCAB
) -> list[list[TrainJob]]:
    """Split jobs into groups of one task and shape (backbone, input length, test size) that fit in memory.

    Groups never span tasks, so evaluating a mixer's tasks separately (as the Ray executor does, one task per
    cluster task) trains exactly the same groups, member for member, as evaluating them together.

    `capacity(job)` is how many members like `job` fit in one group (the group is sized by its largest
    vocabulary, its last member). A group never pads a vocabulary more than `max_vocab_ratio` times, except
    up to `small_vocab` classes (quick's selective copy: vocabularies 16-128 train as one group of 22, not two),
    and similar jobs (vocabulary, data size) stay together. Largest sequence lengths come first.
    """
    def shape(job: TrainJob) -> tuple:
        s = job.setting
        return (s.task.value, s.task.backbone, s.input_len, s.num_test)

    ordered = sorted(jobs, key=lambda j: (-j.setting.input_len, shape(j), j.setting.vocab_size, -j.setting.num_train,
                                          j.lr, j.weight_decay, j.seed))
    groups: list[list[TrainJob]] = []
    for job in ordered:
        group = groups[-1] if groups else None
        if (
            group is not None
            and shape(group[0]) == shape(job)
            and job.setting.vocab_size <= max(max_vocab_ratio * group[0].setting.vocab_size, small_vocab)
            and len(group) < capacity(job)
        ):
            group.append(job)
        else:
            groups.append([job])
    return groups


def token_capacity(batch_size: int, max_tokens: int, max_members: int = 512) -> Callable[[TrainJob], int]:
    """Members per group from a budget of tokens per step (CPU default)."""
    return lambda job: max(1, min(max_members, max_tokens // (batch_size * job.setting.input_len)))
