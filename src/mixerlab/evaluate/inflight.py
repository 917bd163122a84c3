"""The trainings a sweep has under way: unfinished members of checkpointed groups, named and scored so far.

A checkpoint knows its members only by cache key. Between machines (a lent GPU's packed checkpoints carried
to the next call) one wants to know what they are, how far they got and where their score stands, before
deciding what to run next; this maps each key back to its mixer and training by planning the profile's
trainings for the known mixers, and scores a member by MAD's rule applied to the epochs it has so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from mixerlab.config import Profile
from mixerlab.tasks import TASK_ORDER
from mixerlab.train.result import EpochRecord, best_epoch

from .plan import plan_jobs

NUMERICS = ("bf16", "fp32")  # GPU and CPU trainings have different keys


@dataclass(frozen=True)
class UnfinishedTraining:
    key: str
    mixer: str | None  # None: no known mixer plans this key under the profile (another profile, an old mixer)
    label: str | None  # the training's setting, lr, wd and seed
    epochs: int  # epochs finished so far
    max_epochs: int
    score: float | None  # test accuracy at the lowest-perplexity epoch so far (what it would score if stopped now)
    best_epoch: int | None  # that epoch, counting from 1


def unfinished_trainings(states: Iterable[tuple[str, dict[str, Any]]], profile: Profile,
                         mixers: Iterable[tuple[str, str]], seeds: int = 1) -> list[UnfinishedTraining]:
    """Every member of the checkpoint `states` (as `CheckpointStore.load_all` gives them), named where one of
    `mixers` ((code hash, name) pairs) plans it under `profile` with `seeds` seeds; sorted by mixer and label."""
    train = profile.train
    jobs = plan_jobs(profile, TASK_ORDER, seeds)
    known = {job.cache_key(code_hash, train, numerics): (name, job.label)
             for code_hash, name in mixers for numerics in NUMERICS for job in jobs}
    out = []
    for _, state in states:
        for key, history in zip(state["keys"], state["histories"]):
            records = [EpochRecord(**r) for r in history]
            best = best_epoch(records) if records else None
            mixer, label = known.get(key, (None, None))
            out.append(UnfinishedTraining(
                key=key, mixer=mixer, label=label, epochs=len(records), max_epochs=train.max_epochs,
                score=best.test_acc if best else None, best_epoch=best.epoch + 1 if best else None,
            ))
    return sorted(out, key=lambda u: (u.mixer is None, u.mixer or "", u.label or u.key))
