"""Small unit lower-triangular solves as matrix products: the fast form of the WY solve in chunkwise
delta rules.

The chunk algorithm of DeltaNet and Gated DeltaNet solves `(I + L) X = B` for every chunk, with L strictly
lower triangular and C x C (C = 64). `torch.linalg.solve_triangular` runs cuBLAS' batched triangular solve,
whose small sequential kernels made 20% of a compiled DeltaNet training step on the H100
(benchmarks/profile_step.py), forward and backward. Here the inverse is built by blocked recursive
inversion, each level two batched products over all its blocks at once:

    inv([[A11, 0], [A21, A22]]) = [[inv(A11), 0], [-inv(A22) A21 inv(A11), inv(A22)]]

from 1 x 1 blocks (whose inverse is 1) up to C x C, then X = inv(I + L) B. This is the standard stable
recursive triangular inversion (no powers of L, which overflow when keys repeat); backward is products
too. `torch.linalg.solve_triangular` is the reference; tests/test_ops.py holds the two together.

Opt-in (`BatchedTrainer(product_solves=True)`, `benchmarks/profile_step.py --solves products`) until its
speed is measured on a GPU (`benchmarks/triangular_solve.py`); eagerly on CPU it is 0.56-0.59x the library solve
at the shapes of a batched step (benchmarks/results/triangular_solve.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MAX_SIZE = 128  # larger systems keep the library solve: the products grow as C^3 per level


def unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """inv(a) for unit lower-triangular a [..., C, C]; the entries above the diagonal are ignored."""
    size = a.shape[-1]
    n = 1 << max(0, (size - 1).bit_length())  # next power of two; padding with identity keeps the inverse
    if n != size:
        a = F.pad(a, (0, n - size, 0, n - size))
        a = a + torch.diag_embed(F.pad(a.new_zeros(size), (0, n - size), value=1.0))
    batch = a.shape[:-2]
    inv = torch.ones(*batch, n, 1, 1, dtype=a.dtype, device=a.device)  # n diagonal blocks of size 1
    block = 1
    while block < n:
        pairs = n // (2 * block)
        blocks = inv.reshape(*batch, pairs, 2, block, block)
        upper_inv, lower_inv = blocks[..., 0, :, :], blocks[..., 1, :, :]
        # A21 of each pair: row half 1, column half 0 of the pair's diagonal 2*block x 2*block block
        grid = a.reshape(*batch, pairs, 2, block, pairs, 2, block)
        diagonal_blocks = torch.diagonal(grid, dim1=-6, dim2=-3)  # [..., 2, block, 2, block, pairs]
        a21 = diagonal_blocks[..., 1, :, 0, :, :].movedim(-1, -3)  # [..., pairs, block, block]
        x21 = -(lower_inv @ a21 @ upper_inv)
        zeros = torch.zeros_like(x21)
        top = torch.cat([upper_inv, zeros], -1)
        bottom = torch.cat([x21, lower_inv], -1)
        inv = torch.cat([top, bottom], -2)  # [..., pairs, 2*block, 2*block]
        block *= 2
    inv = inv.reshape(*batch, n, n)
    return inv[..., :size, :size]


def unit_lower_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """X with a X = b, for unit lower-triangular a [..., C, C] and b [..., C, N]."""
    return unit_lower_inverse(a) @ b


class UseProductTriangularSolves(TorchFunctionMode):
    """While active, `torch.linalg.solve_triangular(a, b, upper=False, unitriangular=True)` on systems of at
    most MAX_SIZE unknowns runs `unit_lower_solve`; every other call goes through unchanged. A candidate's
    code (and so its hash) stays as written; only rounding differs. `rerouted` counts the calls it took."""

    rerouted = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.linalg.solve_triangular and _is_small_unit_lower(args, kwargs):
            self.rerouted += 1
            return unit_lower_solve(args[0], args[1])
        return func(*args, **kwargs)


def _is_small_unit_lower(args: tuple, kwargs: dict) -> bool:
    if len(args) != 2 or set(kwargs) - {"upper", "unitriangular", "left"}:
        return False
    if kwargs.get("upper", True) or not kwargs.get("unitriangular", False) or not kwargs.get("left", True):
        return False
    a, b = args
    return a.shape[-1] <= MAX_SIZE and b.dim() == a.dim()
