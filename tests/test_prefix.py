"""Shorter trainings read off longer ones (evaluate/prefix.py): exactly what training them gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixerlab.config import PROFILES
from mixerlab.evaluate import EvalOptions, ResultCache, evaluate_mixer
from mixerlab.evaluate.plan import plan_jobs
from mixerlab.evaluate.prefix import find_finished, first_epochs, containing_trainings
from mixerlab.mixers import resolve_mixer
from mixerlab.tasks import Task
from mixerlab.train.result import EpochRecord, TrainResult

TINY = PROFILES["tiny"]
TASKS = (Task.context_recall, Task.memorize)
SHORT = TINY.model_copy(update={"name": "tiny-short", "train": TINY.train.model_copy(update={"max_epochs": 4})})


@pytest.mark.slow
def test_a_shorter_evaluation_is_read_off_a_longer_one_and_equals_training_it(tmp_path: Path) -> None:
    spec = resolve_mixer("delta_net")
    cache = ResultCache(tmp_path / "c.sqlite")
    evaluate_mixer(spec, TINY, EvalOptions(tasks=TASKS), cache)  # 8 epochs
    read = evaluate_mixer(spec, SHORT, EvalOptions(tasks=TASKS), cache)
    assert (read.trained_now, read.from_cache, read.from_longer) == (0, 2, 2)

    trained = evaluate_mixer(spec, SHORT, EvalOptions(tasks=TASKS), ResultCache(tmp_path / "fresh.sqlite"))
    assert trained.trained_now == 2 and trained.from_longer == 0
    for task in ("context_recall", "memorize"):
        assert read.tasks[task].mean == trained.tasks[task].mean
    jobs = plan_jobs(SHORT, TASKS, 1)
    derived = find_finished(cache, jobs, spec.code_hash, SHORT.train, "fp32")
    direct = ResultCache(tmp_path / "fresh.sqlite").get_many(derived)
    assert set(direct) == set(derived)
    for key, result in derived.items():
        assert result.derived_from is not None and direct[key].derived_from is None
        assert [r.test_ppl for r in result.history] == [r.test_ppl for r in direct[key].history]
        assert (result.score, result.best_epoch, result.epochs_trained, result.steps) == \
            (direct[key].score, direct[key].best_epoch, direct[key].epochs_trained, direct[key].steps)


def _record(epoch: int, acc: float, ppl: float) -> EpochRecord:
    return EpochRecord(epoch=epoch, train_loss=1.0, test_loss=1.0, test_acc=acc, test_token_acc=acc, test_ppl=ppl)


def _long_result(history: list[EpochRecord]) -> TrainResult:
    return TrainResult(key="long", task="memorize", setting="memorize[baseline]", lr=1e-3, weight_decay=0.0, seed=0,
                       score=0.0, score_last=0.0, token_acc=0.0, best_epoch=0, epochs_trained=len(history),
                       stopped_early=False, steps=2 * len(history), seconds=float(len(history)), trainer="batched",
                       device="cpu", history=history)


def test_the_prefix_is_scored_by_mads_rule_on_its_own_epochs() -> None:
    # perplexity falls to epoch 3, then rises; accuracy passes 0.999 only at epoch 5
    history = [_record(i, a, p) for i, (a, p) in enumerate([(0.2, 9), (0.5, 5), (0.6, 4), (0.7, 3), (0.8, 6), (1.0, 7)])]
    train = PROFILES["quick"].train.model_copy(update={"max_epochs": 3})
    short = first_epochs(_long_result(history), train, "short")
    assert (short.key, short.derived_from, short.epochs_trained, short.best_epoch) == ("short", "long", 3, 2)
    assert (short.score, short.score_last, short.steps, short.seconds, short.stopped_early) == (0.6, 0.6, 6, 3.0, False)
    # a longer training that stopped early (epoch 5 of 6) answers a 6-epoch one with the same stop
    six = first_epochs(_long_result(history), train.model_copy(update={"max_epochs": 6}), "six")
    assert six.stopped_early and six.epochs_trained == 6 and six.best_epoch == 3


def test_a_patience_training_is_read_off_the_training_without_it() -> None:
    # perplexity best at epoch 1, then worse for three epochs; a later epoch would have beaten it
    history = [_record(i, a, p) for i, (a, p) in enumerate([(0.2, 9), (0.5, 5), (0.4, 6), (0.45, 7), (0.5, 8), (0.9, 2)])]
    train = PROFILES["full"].train.model_copy(update={"max_epochs": 6, "patience": 3})
    short = first_epochs(_long_result(history), train, "patient")
    assert (short.epochs_trained, short.best_epoch, short.score, short.stopped_early) == (5, 1, 0.5, True)
    assert short.steps == 10 and short.derived_from == "long"
    assert first_epochs(_long_result(history), train.model_copy(update={"patience": 4}), "p4").score == 0.9


def test_which_trainings_contain_a_patience_training() -> None:
    full = PROFILES["full"].train
    patient = full.model_copy(update={"patience": 20})
    assert [(t.max_epochs, t.patience) for t in containing_trainings(patient)] == [(200, None)]
    quick = PROFILES["quick"].train.model_copy(update={"patience": 20})
    assert [(t.max_epochs, t.patience) for t in containing_trainings(quick)] == [(200, 20), (200, None), (100, None)]
    cosine = patient.model_copy(update={"lr_schedule": "cosine"})
    assert [(t.max_epochs, t.patience) for t in containing_trainings(cosine)] == [(200, None)], \
        "a cosine run depends on its epoch count, not on when it stops"


def test_only_a_constant_learning_rate_shares_a_prefix() -> None:
    quick = PROFILES["quick"].train.model_copy(update={"patience": None})  # 100 epochs, MAD's rule alone
    assert [t.max_epochs for t in containing_trainings(quick)] == [200]
    assert containing_trainings(quick.model_copy(update={"lr_schedule": "cosine"})) == []
    assert containing_trainings(PROFILES["full"].train) == []
