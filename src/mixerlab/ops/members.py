"""Shared piece of the ops' vmap rules: the batched trainer runs its model under vmap over members, and every
op here computes members independently, so a rule only needs the member dimension in front."""

from __future__ import annotations

import torch


def members_first(info, in_dims, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor with vmap's member dimension moved to the front; an unbatched one is broadcast to every
    member (`info` and `in_dims` are what `torch.library`'s vmap rule receives)."""
    return [t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape) for t, d in zip(tensors, in_dims)]


def fold_members(info, in_dims, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """[M, B, ...] -> [M * B, ...]: the members become more batch rows for a kernel that takes one batch."""
    return [t.reshape(-1, *t.shape[2:]) for t in members_first(info, in_dims, *tensors)]
