"""The record of one training and the rule that turns its epochs into a score.

MAD's rule: training stops after the first epoch whose test accuracy exceeds 0.999; the reported score is
the test accuracy of the epoch with the lowest test perplexity up to then (Lightning reloads the "best"
checkpoint before its final validation). The last epoch's accuracy is kept beside it. An optional patience
(not MAD's) also stops a training whose test perplexity has stopped improving; the score rule is unchanged.
"""

from __future__ import annotations

import math

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _nan_if_null(value):
    """A metric a diverged training left as NaN, stored by older versions as JSON null: read back as NaN."""
    return math.nan if value is None else value


Metric = Annotated[float, BeforeValidator(_nan_if_null)]

# NaN and infinities are written as JSON's NaN/Infinity constants (Python's json and pydantic read them back), not
# as null: a diverged training is a state to record, and a null once made every later read of the cache fail.
RECORD_CONFIG = ConfigDict(frozen=True, ser_json_inf_nan="constants")


class EpochRecord(BaseModel):
    model_config = RECORD_CONFIG

    epoch: int
    train_loss: Metric
    test_loss: Metric
    test_acc: Metric  # macro accuracy (MAD's metric)
    test_token_acc: Metric
    test_ppl: Metric


class TrainResult(BaseModel):
    model_config = RECORD_CONFIG

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

    @property
    def diverged(self) -> bool:
        """Whether a loss went to NaN or infinity at some epoch (the training's score is still its best epoch's)."""
        return any(not math.isfinite(v) for r in self.history for v in (r.train_loss, r.test_loss))


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
