"""Fuzzy in-context recall: keys and values are motifs of 1..k (1..v) distinct adjacent tokens.

Follows MAD's generator step by step, vectorised over sequences:
- a probe pair (k_probe, v_probe) is drawn first; pairs are appended while the sequence is shorter than
  `seq_len - |probe| - (k_motif + v_motif)`; the probe pair is inserted once the length reaches a random
  `probe_idx` (unless a drawn key already equals k_probe); a key keeps its first value (k_probe maps to
  v_probe); then the probe is asked again at the end and the sequence is left-padded to `seq_len + 1`.
- at test time every key has the full motif size; test targets score values of keys seen before and the
  final probe value; training targets are the next token everywhere.
Vocabulary: keys `[0, m)`, values `[m, vocab-1)` with `m = (vocab-1)//2`, pad token `vocab-1`.
"""

from __future__ import annotations

import torch

from .sampling import first_occurrence, randint, sample_distinct, seen_before
from .settings import IGNORE_INDEX, TaskSetting


def _motif_id(tokens: torch.Tensor, size: torch.Tensor, base: int) -> torch.Tensor:
    """An integer naming a motif (its tokens and its length), so equal motifs get equal ids."""
    width = tokens.shape[-1]
    live = torch.arange(width) < size[..., None]
    digits = torch.where(live, tokens + 1, torch.zeros_like(tokens))
    weights = (base + 1) ** torch.arange(width - 1, -1, -1)
    return (digits * weights).sum(-1)


def generate_fuzzy_recall(setting: TaskSetting, num: int, train: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    vocab, seq_len = setting.vocab_size, setting.seq_len
    km, vm = setting.k_motif_size, setting.v_motif_size
    pad_token = vocab - 1
    n_keys = (vocab - 1) // 2
    n_values = vocab - 1 - n_keys
    rows = torch.arange(num)

    # the probe pair
    kp_size = randint(1, km + 1, (num,), gen) if train else torch.full((num,), km)
    vp_size = randint(1, vm + 1, (num,), gen)
    kp_tok = sample_distinct(n_keys, km, (num,), gen)
    vp_tok = sample_distinct(n_values, vm, (num,), gen) + n_keys
    probe_len = kp_size + vp_size
    probe_idx = randint(0, seq_len - 2 * probe_len, (num,), gen)
    limit = seq_len - probe_len - (km + vm)  # append pairs while the length is below this

    # candidate pairs, more than can ever fit
    n_pairs = (seq_len - (km + vm) - 2) // 2 + 1
    k_size = randint(1, km + 1, (num, n_pairs), gen) if train else torch.full((num, n_pairs), km)
    v_size = randint(1, vm + 1, (num, n_pairs), gen)
    k_tok = sample_distinct(n_keys, km, (num, n_pairs), gen)
    v_tok = sample_distinct(n_values, vm, (num, n_pairs), gen) + n_keys

    pair_id = _motif_id(k_tok, k_size, vocab)
    probe_id = _motif_id(kp_tok, kp_size, vocab)
    is_probe_key = pair_id == probe_id[:, None]

    # a repeated key reuses the value (tuple and length) of its first occurrence; k_probe maps to v_probe
    first = first_occurrence(pair_id)
    v_tok = v_tok.gather(1, first[..., None].expand_as(v_tok))
    v_size = v_size.gather(1, first)
    v_tok = torch.where(is_probe_key[..., None], vp_tok[:, None, :], v_tok)
    v_size = torch.where(is_probe_key, vp_size[:, None], v_size)
    pair_len = k_size + v_size

    # where the probe is inserted: before the first pair starting at or after probe_idx
    start_without_probe = pair_len.cumsum(1) - pair_len
    reached = start_without_probe >= probe_idx[:, None]
    j_star = torch.where(reached.any(1), reached.long().argmax(1), torch.full((num,), n_pairs))
    start_at_j = start_without_probe.gather(1, j_star.clamp(max=n_pairs - 1)[:, None])[:, 0]
    probe_seen_first = (is_probe_key & (torch.arange(n_pairs) < j_star[:, None])).any(1)
    inserted = (j_star < n_pairs) & (start_at_j < limit) & ~probe_seen_first

    # items in final order: pairs, with the probe pair at slot j_star when inserted (else parked at the end)
    slots = n_pairs + 1
    order = torch.arange(n_pairs) + (inserted[:, None] & (torch.arange(n_pairs) >= j_star[:, None])).long()
    probe_slot = torch.where(inserted, j_star, torch.full((num,), n_pairs))[:, None]

    def place(pair_values: torch.Tensor, probe_value: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((num, slots) + pair_values.shape[2:], dtype=pair_values.dtype)
        idx = order.view(num, n_pairs, *([1] * (pair_values.dim() - 2))).expand_as(pair_values)
        out.scatter_(1, idx, pair_values)
        pidx = probe_slot.view(num, 1, *([1] * (pair_values.dim() - 2))).expand(num, 1, *pair_values.shape[2:])
        out.scatter_(1, pidx, probe_value[:, None])
        return out

    it_ksize, it_vsize = place(k_size, kp_size), place(v_size, vp_size)
    it_ktok, it_vtok = place(k_tok, kp_tok), place(v_tok, vp_tok)
    it_id = place(pair_id, probe_id)
    it_is_probe = place(torch.zeros_like(k_size, dtype=torch.bool), torch.ones(num, dtype=torch.bool))

    it_len = it_ksize + it_vsize
    it_start = it_len.cumsum(1) - it_len
    included = (it_start < limit[:, None]) & ~(it_is_probe & ~inserted[:, None])
    it_id = torch.where(included, it_id, -1 - torch.arange(slots))  # excluded items never match
    scored = seen_before(it_id) & included & ~it_is_probe

    body_len = (it_len * included).sum(1)
    pad_len = seq_len + 1 - body_len - probe_len  # always >= 1
    seq = torch.full((num, seq_len + 1), pad_token, dtype=torch.long)
    tgt = torch.full((num, seq_len + 1), IGNORE_INDEX, dtype=torch.long)

    def write(tokens: torch.Tensor, offset: torch.Tensor, size: torch.Tensor, live: torch.Tensor, score: torch.Tensor | None) -> None:
        width = tokens.shape[-1]
        pos = offset[..., None] + torch.arange(width)
        mask = live[..., None] & (torch.arange(width) < size[..., None])
        r = rows.view(num, *([1] * (pos.dim() - 1))).expand_as(pos)
        seq[r[mask], pos[mask]] = tokens[mask]
        if score is not None:
            smask = mask & score[..., None]
            tgt[r[smask], pos[smask]] = tokens[smask]

    item_offset = pad_len[:, None] + it_start
    write(it_ktok, item_offset, it_ksize, included, None)
    write(it_vtok, item_offset + it_ksize, it_vsize, included, scored)
    final = seq_len + 1 - probe_len
    always = torch.ones(num, dtype=torch.bool)
    write(kp_tok, final, kp_size, always, None)
    write(vp_tok, final + kp_size, vp_size, always, always)

    if train:
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    return seq[:, :-1].contiguous(), tgt[:, 1:].contiguous()
