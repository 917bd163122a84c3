"""The record of one training and the rule that turns its epochs into a score.

MAD's rule: training stops after the first epoch whose test accuracy exceeds 0.999; the reported score is
the test accuracy of the epoch with the lowest test perplexity up to then (Lightning reloads the "best"
checkpoint before its final validation). The last epoch's accuracy is kept beside it. An optional patience
(not MAD's) also stops a training whose test perplexity has stopped improving; the score rule is unchanged.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict


class EpochRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    epoch: int
    train_loss: float
    test_loss: float
    test_acc: float  # macro accuracy (MAD's metric)
    test_token_acc: float
    test_ppl: float


class TrainResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    task: str
    setting: str
    lr: float
    weight_decay: float
    seed: int
    score: float  # macro accuracy at the best-perplexity epoch
    score_last: float  # macro accuracy of the last epoch trained
    token_acc: float  # per-token accuracy at the best-perplexity epoch
    best_epoch: int
    epochs_trained: int
    stopped_early: bool
    steps: int
    seconds: float
    trainer: str  # "batched", "sequential" or "single"
    device: str
    history: list[EpochRecord]
    # the key of the longer training whose first epochs this is (read off its history, not trained again)
    derived_from: str | None = None


def select_epochs(
    history: list[EpochRecord], stop_accuracy: float, patience: int | None = None
) -> tuple[list[EpochRecord], bool]:
    """Epochs up to and including the one a training stops after, and whether it stopped before its last epoch:
    the first whose accuracy exceeds stop_accuracy (MAD), or, with a patience, the first that comes `patience`
    epochs after the best-perplexity epoch so far (`best_epoch`'s order: the first of ties, NaN never best)."""
    best_index, best_ppl = -1, math.inf  # -1: no finite perplexity yet, so the patience counts from before epoch 0
    for i, record in enumerate(history):
        if record.test_ppl < best_ppl:  # NaN compares False: never best
            best_index, best_ppl = i, record.test_ppl
        if record.test_acc > stop_accuracy:
            return history[: i + 1], True
        if patience is not None and i - best_index >= patience:
            return history[: i + 1], True
    return history, False


def best_epoch(history: list[EpochRecord]) -> EpochRecord:
    """The epoch with the lowest test perplexity (the first of ties; NaN never wins)."""
    def key(r: EpochRecord) -> float:
        return math.inf if math.isnan(r.test_ppl) else r.test_ppl

    return min(history, key=key)
