"""Selective copying: copy the scattered tokens, in order, after the copy token.

Layout: `num_tokens_to_copy` tokens from `[0, vocab-2)` with `seq_len - 2*n - 1` blank tokens (`vocab-2`)
inserted before them at uniformly random token indices (as MAD's `np.insert`, so the last token to copy
always sits just before the copy token), then the copy token (`vocab-1`) and `n` blanks. Targets (train and
test) are the copied tokens at the last `n` positions.
"""

from __future__ import annotations

import torch

from .sampling import randint
from .settings import IGNORE_INDEX, TaskSetting


def generate_selective_copy(setting: TaskSetting, num: int, train: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    del train
    n, seq_len = setting.num_tokens_to_copy, setting.seq_len
    blank, copy = setting.vocab_size - 2, setting.vocab_size - 1
    n_blank = seq_len - 2 * n - 1
    to_copy = randint(0, setting.vocab_size - 2, (num, n), gen)
    gap_of_blank = randint(0, n, (num, n_blank), gen)  # blank goes before token `gap`
    blanks_before = torch.zeros(num, n, dtype=torch.long).scatter_add_(1, gap_of_blank, torch.ones_like(gap_of_blank))
    positions = torch.arange(n) + blanks_before.cumsum(1)
    inputs = torch.full((num, seq_len), blank, dtype=torch.long)
    inputs.scatter_(1, positions, to_copy)
    inputs[:, n + n_blank] = copy
    targets = torch.full((num, seq_len), IGNORE_INDEX, dtype=torch.long)
    targets[:, seq_len - n :] = to_copy
    return inputs, targets
