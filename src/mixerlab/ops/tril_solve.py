"""Batched unit-lower-triangular solves, the WY step of every chunkwise delta rule, as one Triton kernel.

A chunkwise DeltaNet-style mixer solves `(I + L) X = B` for every chunk of every head: tens of thousands of
64 x 64 systems per layer and step. cuBLAS's batched triangular solve is built for few large systems and
took 38% of a compiled DeltaNet training step on them on an H200 (15 of 40 ms;
benchmarks/results/step_anatomy.md). Here one Triton program solves one system by block forward
substitution over blocks of 16 rows, with the inverses of the diagonal blocks as products of powers of their
strictly lower part, in float32-accurate arithmetic; backward reuses those inverses: dB = A^-T dX by block
back substitution, dA = -tril(dB X^T, -1).

`torch.linalg.solve_triangular(A, B, upper=False, unitriangular=True)` is the reference: tests/test_tril_solve.py
holds the kernel to it (outputs and gradients, run by Triton's interpreter on the CPU) and the op's
autograd, vmap and torch.compile plumbing to it too. Inside `fast_triangular_solves()` such library calls on
CUDA float32 tensors whose systems are 16..128 rows in steps of 16 come here, so candidate mixers, which
call the library function, get the fast form without an edit; anything else goes to the library.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import threading
from typing import Iterator

import torch

from .members import members_first

BLOCK = 16  # rows of a diagonal block (tl.dot needs at least 16)
MAX_ROWS = 128
# Launch settings, chosen on an H200 by `benchmarks/speed/step_anatomy.py --solve` (results/step_anatomy.md): warps
# per program, right-hand-side columns per tile, and the precision of the in-kernel products. "tf32x3" (three
# TF32 tensor-core products that recover float32's mantissa) was fastest at every size and as accurate as
# float32 there (3e-7 relative to the library, "ieee" 2e-7).
NUM_WARPS = 2
RHS_TILE = 32
PRECISION = "tf32x3"


@functools.cache
def _kernels():
    """The Triton kernels, imported on first use (Triton is optional: only CUDA training needs it)."""
    from . import tril_solve_kernels

    return tril_solve_kernels.forward, tril_solve_kernels.backward


def kernel_available(device: torch.device | str) -> bool:
    """Whether the kernel can run on `device` (a CUDA device, with Triton installed)."""
    return torch.device(device).type == "cuda" and importlib.util.find_spec("triton") is not None


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *t.shape[-2:]).contiguous()


def solve_with_kernel(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: (X, inverses of the 16 x 16 diagonal blocks [..., C/16, 16, 16]) for
    a [..., C, C], b [..., C, N] of one batch shape (float32)."""
    forward, _ = _kernels()
    rows, cols = b.shape[-2], b.shape[-1]
    a2, b2 = _flat(a), _flat(b)
    x = torch.empty_like(b2)
    diagonal = a2.new_empty(len(a2), rows // BLOCK, BLOCK, BLOCK)
    if len(a2):
        forward[(len(a2),)](a2, b2, x, diagonal, N=cols, C=rows, BC=BLOCK, BN=_rhs_block(cols),
                            PRECISION=PRECISION, num_warps=NUM_WARPS)
    return x.view(b.shape), diagonal.view(*a.shape[:-2], rows // BLOCK, BLOCK, BLOCK)


def gradients_with_kernel(a: torch.Tensor, diagonal: torch.Tensor, x: torch.Tensor,
                          grad_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: (dA, dB) from A, the saved diagonal inverses and X, and the gradient of X."""
    _, backward = _kernels()
    rows, cols = x.shape[-2], x.shape[-1]
    a2, x2, gx2 = _flat(a), _flat(x), _flat(grad_x.float())
    d2 = diagonal.reshape(-1, rows // BLOCK, BLOCK, BLOCK).contiguous()
    grad_a, grad_b = torch.empty_like(a2), torch.empty_like(x2)
    if len(a2):
        backward[(len(a2),)](a2, d2, x2, gx2, grad_a, grad_b, N=cols, C=rows, BC=BLOCK, BN=_rhs_block(cols),
                             PRECISION=PRECISION, num_warps=NUM_WARPS)
    return grad_a.view(a.shape), grad_b.view(x.shape)


def _rhs_block(cols: int) -> int:
    return max(16, min(RHS_TILE, 1 << (cols - 1).bit_length()))


def _diagonal_blocks(matrix: torch.Tensor) -> torch.Tensor:
    """[..., C, C] -> its C/16 diagonal blocks [..., C/16, 16, 16]."""
    n = matrix.shape[-1] // BLOCK
    blocks = matrix.unflatten(-2, (n, BLOCK)).unflatten(-1, (n, BLOCK))  # [..., n, 16, n, 16]
    return torch.stack([blocks[..., i, :, i, :] for i in range(n)], -3)


# --- the op: autograd, vmap and torch.compile see one opaque operator ----------------------------------

_library_solve = torch.linalg.solve_triangular
_solve = functools.partial(_library_solve, upper=False, unitriangular=True)


@torch.library.custom_op("mixerlab::unit_lower_solve", mutates_args=())
def unit_lower_solve(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, diagonal-block inverses) with (I + strictly_lower(A)) X = B; a [..., C, C], b [..., C, N] of one
    batch shape, C a multiple of 16. The second output is what backward needs; it has no gradient."""
    return solve_with_kernel(a, b)


@unit_lower_solve.register_kernel("cpu")
def _(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # the library on the CPU: the same op, so autograd, vmap and compile of it are testable without a GPU
    eye = torch.eye(a.shape[-1], dtype=a.dtype).expand_as(a)
    return _solve(a, b).contiguous(), _diagonal_blocks(_solve(a, eye)).contiguous()


@unit_lower_solve.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return b.new_empty(b.shape), a.new_empty(*a.shape[:-2], a.shape[-1] // BLOCK, BLOCK, BLOCK)


@torch.library.custom_op("mixerlab::unit_lower_solve_backward", mutates_args=())
def unit_lower_solve_backward(a: torch.Tensor, diagonal: torch.Tensor, x: torch.Tensor,
                              grad_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dA, dB) of `unit_lower_solve`."""
    return gradients_with_kernel(a, diagonal, x, grad_x)


@unit_lower_solve_backward.register_kernel("cpu")
def _(a: torch.Tensor, diagonal: torch.Tensor, x: torch.Tensor,
      grad_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grad_b = _library_solve(a.transpose(-1, -2), grad_x, upper=True, unitriangular=True)
    return (-(grad_b @ x.transpose(-1, -2)).tril(-1)).contiguous(), grad_b.contiguous()


@unit_lower_solve_backward.register_fake
def _(a: torch.Tensor, diagonal: torch.Tensor, x: torch.Tensor,
      grad_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return a.new_empty(a.shape), x.new_empty(x.shape)


def _setup_context(ctx, inputs, output) -> None:
    x, diagonal = output
    ctx.save_for_backward(inputs[0], diagonal, x)
    ctx.mark_non_differentiable(diagonal)


def _backward(ctx, grad_x: torch.Tensor, _grad_diagonal: torch.Tensor | None):
    a, diagonal, x = ctx.saved_tensors
    return unit_lower_solve_backward(a, diagonal, x, grad_x)


unit_lower_solve.register_autograd(_backward, setup_context=_setup_context)


@unit_lower_solve.register_vmap
def _(info, in_dims, a, b):
    return unit_lower_solve(*members_first(info, in_dims, a, b)), (0, 0)


@unit_lower_solve_backward.register_vmap
def _(info, in_dims, a, diagonal, x, grad_x):
    return unit_lower_solve_backward(*members_first(info, in_dims, a, diagonal, x, grad_x)), (0, 0)


# --- routing the library call here ------------------------------------------------------------------

KERNEL_DEVICE = "cuda"  # where routed calls go to the op (tests route CPU calls to its CPU form)


def fits_kernel(a: torch.Tensor, b: torch.Tensor, upper: bool, left: bool, unitriangular: bool) -> bool:
    """Whether a `solve_triangular` call is one the kernel computes (anything else goes to the library)."""
    rows = a.shape[-1]
    return (
        not upper and left and unitriangular and a.device.type == b.device.type == KERNEL_DEVICE
        and a.dtype == b.dtype == torch.float32 and a.dim() == b.dim() >= 2
        and a.shape[-2] == rows and b.shape[-2] == rows and rows % BLOCK == 0 and rows <= MAX_ROWS
        and a.shape[:-2] == b.shape[:-2]
    )


def routed_solve_triangular(A: torch.Tensor, B: torch.Tensor, *, upper: bool, left: bool = True,
                            unitriangular: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """`torch.linalg.solve_triangular` with the unit-lower-triangular case on the kernel."""
    if out is None and fits_kernel(A, B, upper, left, unitriangular):
        return unit_lower_solve(A, B)[0]
    return _library_solve(A, B, upper=upper, left=left, unitriangular=unitriangular, out=out)


_routing_lock = threading.Lock()
_routing_depth = 0  # blocks inside fast_triangular_solves, in any thread (the loop trains in several)


@contextlib.contextmanager
def fast_triangular_solves(enabled: bool = True) -> Iterator[None]:
    """Route `torch.linalg.solve_triangular` through the kernel inside the block (where it fits). The library
    function comes back when the last such block, in any thread, ends."""
    global _routing_depth
    if not enabled:
        yield
        return
    with _routing_lock:
        _routing_depth += 1
        torch.linalg.solve_triangular = routed_solve_triangular
    try:
        yield
    finally:
        with _routing_lock:
            _routing_depth -= 1
            if not _routing_depth:
                torch.linalg.solve_triangular = _library_solve
