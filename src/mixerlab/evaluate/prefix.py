"""Finished trainings, found directly or read off a longer training of the same job.

With a constant learning rate, the first E epochs of a training are the whole of a training with
`max_epochs=E`: same init, same data and batch order, same optimiser steps (the epoch count only decides
when to stop, and MAD's 0.999 rule stops both at the same epoch). So a `quick` training (100 epochs) is
the first 100 epochs of the `full` training (200 epochs) of the same job, and its result can be read off the
longer one's epoch history exactly, without training: best-perplexity epoch among those E, MAD's stop rule
applied to them. A cosine schedule depends on `max_epochs`, so it never shares a prefix. A patience (stop once
test perplexity has not improved for P epochs) only ends a training sooner on the same path, so a training
with one is read off the same training without it (and off any the above contain), its rule applied to them.

`find_finished` is the one lookup the evaluation and the research loop both use.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from mixerlab.config import PROFILES, TrainConfig
from mixerlab.train.job import TrainJob
from mixerlab.train.result import TrainResult, best_epoch, select_epochs


class ResultLookup(Protocol):
    def get_many(self, keys: Iterable[str]) -> dict[str, TrainResult]: ...


def containing_trainings(train: TrainConfig) -> list[TrainConfig]:
    """Configs whose trainings contain `train`'s whole training (longest first): with a constant learning rate,
    the named profiles' longer epoch counts; with a patience, also the same training without it (it follows the
    same path and runs at least as long). [] for a cosine schedule without a patience."""
    epochs = {train.max_epochs}
    if train.lr_schedule == "constant":
        epochs |= {p.train.max_epochs for p in PROFILES.values()} | {TrainConfig().max_epochs}
    configs = []
    for max_epochs in sorted((e for e in epochs if e >= train.max_epochs), reverse=True):
        for patience in dict.fromkeys((train.patience, None)):
            config = train.model_copy(update={"max_epochs": max_epochs, "patience": patience})
            if config != train:
                configs.append(config)
    return configs


def first_epochs(result: TrainResult, train: TrainConfig, key: str) -> TrainResult:
    """`result` (a longer training of the same job) as the training `train` describes: its first
    `train.max_epochs` epochs, up to where `train`'s stop rules (MAD's, its patience) end it, scored by MAD's
    rule, keyed `key`, with `derived_from` set."""
    history, stopped = select_epochs(result.history[: train.max_epochs], train.stop_accuracy, train.patience)
    if not history:
        raise ValueError(f"training {result.key} has no epochs to read a prefix from")
    best = best_epoch(history)
    share = len(history) / result.epochs_trained
    steps_per_epoch = result.steps // result.epochs_trained
    return result.model_copy(update={
        "key": key,
        "score": best.test_acc,
        "score_last": history[-1].test_acc,
        "token_acc": best.test_token_acc,
        "best_epoch": best.epoch,
        "epochs_trained": len(history),
        "stopped_early": stopped,
        "steps": steps_per_epoch * len(history),
        "seconds": result.seconds * share,
        "history": history,
        "derived_from": result.key,
    })


def find_finished(
    cache: ResultLookup, jobs: list[TrainJob], code_hash: str, train: TrainConfig, numerics: str
) -> dict[str, TrainResult]:
    """Finished trainings of `jobs` under `train`, by their cache keys: the cached ones, and those read off a
    cached longer training of the same job (see the module docstring). Jobs with neither are left out."""
    keys = {job: job.cache_key(code_hash, train, numerics) for job in jobs}
    found = cache.get_many(keys.values())
    for longer in containing_trainings(train):
        missing = [job for job in jobs if keys[job] not in found]
        if not missing:
            break
        long_keys = {job.cache_key(code_hash, longer, numerics): job for job in missing}
        for long_key, result in cache.get_many(long_keys).items():
            key = keys[long_keys[long_key]]
            found[key] = first_epochs(result, train, key)
    return found
