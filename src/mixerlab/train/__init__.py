"""Training: MAD's metrics, the reference single-model trainer and the fast batched trainer."""

from .batched import BatchedTrainer, train_group
from .job import TrainJob
from .result import EpochRecord, TrainResult
from .single import train_single

__all__ = ["BatchedTrainer", "EpochRecord", "TrainJob", "TrainResult", "train_group", "train_single"]
