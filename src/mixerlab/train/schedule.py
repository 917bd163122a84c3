"""What a training sees when: the shuffled order of each epoch and the learning rate of each epoch.

Both depend only on the job (never on which trainer or group runs it), so a training gives the same
batches whether it runs alone or batched with others.
"""

from __future__ import annotations

import math

import torch

from mixerlab.config import TrainConfig


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)  # the last batch may be short, as a DataLoader's


def epoch_order(shuffle_seed: int, epoch: int, num_examples: int) -> torch.Tensor:
    """The permutation of the training set used in `epoch` (CPU, seeded: identical on every device)."""
    gen = torch.Generator(device="cpu").manual_seed((shuffle_seed + 1_000_003 * epoch) % (1 << 63))
    return torch.randperm(num_examples, generator=gen)


def lr_for_epoch(train: TrainConfig, base_lr: float, epoch: int) -> float:
    """Constant (what mad-lab runs), or cosine from base_lr to min_lr over max_epochs, stepped per epoch."""
    if train.lr_schedule == "constant":
        return base_lr
    progress = min(epoch, train.max_epochs) / train.max_epochs
    return train.min_lr + (base_lr - train.min_lr) * (1 + math.cos(math.pi * progress)) / 2
