"""From trainings to MAD scores (evaluate/aggregate.py): best (lr, wd) per setting, mean over a task's settings,
mean and sample std over seeds; and the range a partial sweep's score can still end in."""

from __future__ import annotations

import statistics

import pytest

from mixerlab.evaluate.aggregate import aggregate, score_range
from mixerlab.train.result import TrainResult


def result(setting: str, lr: float, score: float, seed: int = 0, task: str = "memorize") -> TrainResult:
    return TrainResult(key=f"{setting}-{lr}-{seed}", task=task, setting=f"{task}[{setting}]", lr=lr, weight_decay=0.0,
                       seed=seed, score=score, score_last=score, token_acc=score, best_epoch=1, epochs_trained=1,
                       stopped_early=False, steps=1, seconds=0.1, trainer="batched", device="cpu", history=[])


def test_best_lr_per_setting_then_mean_over_settings_then_over_seeds() -> None:
    runs = [result("a", 1e-4, 0.2), result("a", 1e-3, 0.6), result("b", 1e-4, 0.9), result("b", 1e-3, 0.1),
            result("a", 1e-4, 0.4, seed=1), result("b", 1e-4, 0.8, seed=1),
            result("baseline", 5e-4, 0.99, task="compress")]
    scores = aggregate(runs)
    memorize = scores["memorize"]
    assert memorize.seeds == pytest.approx([(0.6 + 0.9) / 2, (0.4 + 0.8) / 2])
    assert memorize.mean == pytest.approx(statistics.fmean(memorize.seeds))
    assert memorize.std == pytest.approx(statistics.stdev(memorize.seeds))
    assert {(s.setting, s.seed): s.lr for s in memorize.settings}[("memorize[a]", 0)] == 1e-3  # the best lr kept
    assert scores["compress"].mean == pytest.approx(0.99) and scores["compress"].std == 0.0
    assert set(scores) == {"memorize", "compress"}  # tasks without trainings are absent, not zero


def test_score_range_floors_at_the_best_so_far_and_caps_at_one_until_a_setting_is_done() -> None:
    # setting a: all three runs in (best 0.2, fixed); b: one of three (floor 0.9, ceiling 1); c: none run (0-1)
    planned = [("a", 0, 0.1), ("a", 0, 0.2), ("a", 0, 0.15),
               ("b", 0, 0.9), ("b", 0, None), ("b", 0, None),
               ("c", 0, None), ("c", 0, None), ("c", 0, None)]
    low, high = score_range(planned)
    assert low == pytest.approx((0.2 + 0.9 + 0.0) / 3)
    assert high == pytest.approx((0.2 + 1.0 + 1.0) / 3)
    done = [(s, seed, 0.5 if score is None else score) for s, seed, score in planned]
    low, high = score_range(done)  # a finished sweep's range is its score: best per setting, averaged
    assert low == high == pytest.approx((0.2 + 0.9 + 0.5) / 3)
    # seeds average as the task score does: per seed over settings, then over seeds
    low, high = score_range([("a", 0, 0.4), ("a", 1, 0.8), ("b", 0, 1.0), ("b", 1, None)])
    assert low == pytest.approx(((0.4 + 1.0) / 2 + (0.8 + 0.0) / 2) / 2)
    assert high == pytest.approx(((0.4 + 1.0) / 2 + (0.8 + 1.0) / 2) / 2)
    with pytest.raises(ValueError, match="at least one planned training"):
        score_range([])


def test_the_range_holds_the_score_the_finished_trainings_give() -> None:
    runs = [result("a", 1e-4, 0.3), result("b", 1e-3, 0.7)]
    planned = [("memorize[a]", 0, 0.3), ("memorize[a]", 0, None), ("memorize[b]", 0, 0.7), ("memorize[b]", 0, None)]
    low, high = score_range(planned)
    assert low <= aggregate(runs)["memorize"].mean <= high
    assert (low, high) == pytest.approx((0.5, 1.0))
