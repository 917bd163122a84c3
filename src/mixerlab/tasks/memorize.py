"""Memorization: a fixed key->value map shared by every sequence, so it can only live in the weights.

Layout: `(key, insert_token)` repeated `seq_len/2` times; the target after each insert token is the key's
value (keys `[0, m)`, values `[m, vocab-1)` with `m = (vocab-1)//2`, insert token `vocab-1`). Train and test
sequences have the same layout and targets, and share the map.
"""

from __future__ import annotations

import torch

from .sampling import generator, randint
from .settings import IGNORE_INDEX, TaskSetting


def memorization_map(setting: TaskSetting, map_seed: int) -> torch.Tensor:
    """value_of_key[k] for every key k: a random injection from keys into the value vocabulary."""
    n_plain = setting.vocab_size - 1
    n_keys = n_plain // 2
    perm = torch.randperm(n_plain - n_keys, generator=generator(map_seed))
    return n_keys + perm[:n_keys]


def generate_memorize(
    setting: TaskSetting, num: int, train: bool, gen: torch.Generator, map_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    del train  # identical layout for train and test
    value_of_key = memorization_map(setting, map_seed)
    keys = randint(0, value_of_key.numel(), (num, setting.seq_len // 2), gen)
    insert = torch.full_like(keys, setting.vocab_size - 1)
    inputs = torch.stack([keys, insert], -1).reshape(num, setting.seq_len)
    targets = torch.stack([torch.full_like(keys, IGNORE_INDEX), value_of_key[keys]], -1).reshape(num, setting.seq_len)
    return inputs, targets
