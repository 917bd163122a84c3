"""Compression: reconstruct a random sequence from the encoder's state at its last position.

Layout: `seq_len - 1` uniform tokens from `[0, vocab-1)` then the compression token `vocab-1`; the targets
are the inputs themselves (every position, train and test). Trained with the auto-encoder backbone.
"""

from __future__ import annotations

import torch

from .sampling import randint
from .settings import TaskSetting


def generate_compress(setting: TaskSetting, num: int, train: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    del train
    body = randint(0, setting.vocab_size - 1, (num, setting.seq_len - 1), gen)
    inputs = torch.cat([body, torch.full((num, 1), setting.vocab_size - 1)], 1)
    return inputs, inputs.clone()
