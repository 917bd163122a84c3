"""In-context recall and noisy in-context recall (MAD's multi-query variant).

Layout of one sequence of `seq_len` tokens: `seq_len/2 - 1` (key, value) pairs, some replaced by pairs of
noise tokens, then a final probe pair (a key seen earlier, and its value). A key keeps its value within a
sequence. The model input drops the last token (length `seq_len - 1`). Training targets are the next token
everywhere; test targets score only values whose key appeared earlier, and the final probe value.
Vocabulary: keys `[0, n/2)`, values `[n/2, n)`, noise `[n, n + noise_vocab)` with `n = vocab - noise_vocab`.
"""

from __future__ import annotations

import torch

from .sampling import randint, seen_before
from .settings import IGNORE_INDEX, TaskSetting


def generate_recall(setting: TaskSetting, num: int, train: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n_plain = setting.vocab_size - setting.noise_vocab_size
    n_keys = n_plain // 2
    pairs = setting.seq_len // 2 - 1  # pairs before the final probe

    keys = randint(0, n_keys, (num, pairs), gen)
    value_of_key = randint(n_keys, n_plain, (num, n_keys), gen)  # the sequence's own key->value map
    values = value_of_key.gather(1, keys)

    is_noise = torch.zeros(num, pairs, dtype=torch.bool)
    noise = torch.zeros(num, pairs, 2, dtype=torch.long)
    if setting.frac_noise > 0:
        is_noise = torch.rand(num, pairs, generator=gen) < setting.frac_noise
        # MAD keeps one randomly placed pair free of noise (its index may fall on the probe slot).
        forced = randint(0, pairs + 1, (num,), gen)
        rows = torch.arange(num)
        keep = forced < pairs
        is_noise[rows[keep], forced[keep]] = False
        # MAD would fail on a sequence that is all noise (probability < 1e-6); we keep its first pair.
        is_noise[~(~is_noise).any(1), 0] = False
        noise = randint(n_plain, setting.vocab_size, (num, pairs, 2), gen)

    codes = torch.where(is_noise, n_keys + torch.arange(pairs), keys)  # noise pairs never repeat
    scored = seen_before(codes) & ~is_noise

    present = torch.zeros(num, n_keys + 1, dtype=torch.bool)
    present.scatter_(1, torch.where(is_noise, n_keys, keys), True)
    pick = torch.rand(num, n_keys, generator=gen).masked_fill(~present[:, :n_keys], -1.0)
    probe = pick.argmax(1)  # uniform over the distinct keys shown
    probe_value = value_of_key.gather(1, probe[:, None])[:, 0]

    tokens = torch.empty(num, 2 * pairs + 2, dtype=torch.long)
    tokens[:, 0 : 2 * pairs : 2] = torch.where(is_noise, noise[..., 0], keys)
    tokens[:, 1 : 2 * pairs : 2] = torch.where(is_noise, noise[..., 1], values)
    tokens[:, -2] = probe
    tokens[:, -1] = probe_value
    if train:
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, 1 : 2 * pairs : 2] = torch.where(scored, values, IGNORE_INDEX)
    targets[:, -1] = probe_value
    return tokens[:, :-1].contiguous(), targets[:, 1:].contiguous()
