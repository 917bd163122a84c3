"""Small vectorised sampling helpers shared by the task generators (CPU torch, seeded generators)."""

from __future__ import annotations

import hashlib
import json

import torch


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any JSON-able parts; stable across processes and machines (unlike hash())."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def randint(low: int | torch.Tensor, high: int | torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Uniform integers in [low, high); low/high may be tensors broadcastable to `shape`."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    low_t = torch.as_tensor(low, dtype=torch.float64)
    span = torch.as_tensor(high, dtype=torch.float64) - low_t
    return (low_t + torch.floor(u * span)).clamp(max=(low_t + span - 1)).long()


def sample_distinct(n: int, k: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Ordered tuples of k distinct tokens from [0, n), uniform over all n!/(n-k)! tuples.

    Equivalent to MAD's "shuffle all permutations, pick one", without building the permutation list.
    Returns shape [*shape, k].
    """
    if k > n:
        raise ValueError(f"cannot draw {k} distinct tokens from {n}")
    chosen: list[torch.Tensor] = []
    for i in range(k):
        r = randint(0, n - i, shape, gen)
        if chosen:
            previous = torch.sort(torch.stack(chosen, -1), dim=-1).values
            for j in range(previous.shape[-1]):  # map r to the r-th value not yet chosen
                r = r + (r >= previous[..., j]).long()
        chosen.append(r)
    return torch.stack(chosen, -1)


def seen_before(codes: torch.Tensor) -> torch.Tensor:
    """For each row, True where the code already occurred at an earlier position of that row."""
    sorted_codes, order = torch.sort(codes, dim=-1, stable=True)
    repeat = torch.zeros_like(codes, dtype=torch.bool)
    repeat[..., 1:] = sorted_codes[..., 1:] == sorted_codes[..., :-1]
    return torch.zeros_like(repeat).scatter_(-1, order, repeat)


def first_occurrence(codes: torch.Tensor) -> torch.Tensor:
    """For each row and position, the index of the first position in that row holding the same code."""
    sorted_codes, order = torch.sort(codes, dim=-1, stable=True)
    is_first = torch.ones_like(codes, dtype=torch.bool)
    is_first[..., 1:] = sorted_codes[..., 1:] != sorted_codes[..., :-1]
    # index (in sorted order) of the start of each run, carried forward with a cumulative max
    positions = torch.arange(codes.shape[-1]).expand_as(codes)
    run_start = torch.where(is_first, positions, torch.zeros_like(positions)).cummax(dim=-1).values
    first_sorted = order.gather(-1, run_start)
    return torch.empty_like(order).scatter_(-1, order, first_sorted)
