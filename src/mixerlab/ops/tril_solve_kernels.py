"""Triton kernels of `mixerlab.ops.tril_solve` (imported only where they run: Triton is optional).

One program per system, by block rows of BC (16) rows. `forward` is block forward substitution:
X_i = D_i^-1 (B_i - sum_{j<i} A_ij X_j), where D_i^-1, the inverse of a unit lower-triangular 16 x 16
diagonal block, is the product (I - L)(I + L^2)(I + L^4)(I + L^8) of its strictly lower part L (L^16 = 0):
six small matrix products instead of sixteen dependent row updates. The diagonal inverses are saved for
`backward`, which solves A^T dB = dX by block back substitution and forms dA = -tril(dB X^T, -1). Products
run at PRECISION: "ieee" (float32 FMAs) or "tf32x3" (three TF32 tensor-core products, float32-level error).
"""

import triton
import triton.language as tl


@triton.jit
def _tile(ptr, row0, col0, stride, cols, BR: tl.constexpr, BCOL: tl.constexpr):
    """Rows [row0, row0 + BR) x columns [col0, col0 + BCOL) of a row-major matrix; columns >= cols read 0."""
    r = tl.arange(0, BR)
    c = col0 + tl.arange(0, BCOL)
    return tl.load(ptr + (row0 + r)[:, None] * stride + c[None, :], mask=c[None, :] < cols, other=0.0)


@triton.jit
def _put(ptr, row0, col0, stride, cols, value, BR: tl.constexpr, BCOL: tl.constexpr):
    r = tl.arange(0, BR)
    c = col0 + tl.arange(0, BCOL)
    tl.store(ptr + (row0 + r)[:, None] * stride + c[None, :], value, mask=c[None, :] < cols)


@triton.jit
def _diagonal_inverse(A, block, C: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr):
    """Inverse of diagonal block `block` of the unit lower-triangular A (its strictly lower part is read)."""
    r = tl.arange(0, BC)
    c = tl.arange(0, BC)
    offsets = (block * BC + r)[:, None] * C + (block * BC + c)[None, :]
    lower = tl.load(A + offsets, mask=r[:, None] > c[None, :], other=0.0)
    eye = tl.where(r[:, None] == c[None, :], 1.0, 0.0)
    inverse = eye - lower
    power = lower
    tl.static_assert(BC == 16)
    for _ in tl.static_range(3):  # L^2, L^4, L^8
        power = tl.dot(power, power, input_precision=PRECISION)
        inverse = tl.dot(inverse, eye + power, input_precision=PRECISION)
    return inverse


@triton.jit
def forward(A, B, X, DIAG, N: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr,
            PRECISION: tl.constexpr):
    system = tl.program_id(0).to(tl.int64)
    A += system * C * C
    B += system * C * N
    X += system * C * N
    DIAG += system * C * BC
    NB: tl.constexpr = C // BC
    for i in tl.static_range(NB):
        _put(DIAG, i * BC, 0, BC, BC, _diagonal_inverse(A, i, C, BC, PRECISION), BC, BC)
    tl.debug_barrier()
    for n0 in tl.static_range(0, N, BN):  # columns are independent systems
        for i in tl.static_range(NB):
            rhs = _tile(B, i * BC, n0, N, N, BC, BN)
            for j in tl.static_range(i):
                a_ij = _tile(A, i * BC, j * BC, C, C, BC, BC)
                rhs -= tl.dot(a_ij, _tile(X, j * BC, n0, N, N, BC, BN), input_precision=PRECISION)
            inverse = _tile(DIAG, i * BC, 0, BC, BC, BC, BC)
            _put(X, i * BC, n0, N, N, tl.dot(inverse, rhs, input_precision=PRECISION), BC, BN)
            tl.debug_barrier()  # X_i is read back by the next block rows


@triton.jit
def backward(A, DIAG, X, DX, DA, DB, N: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr,
             PRECISION: tl.constexpr):
    system = tl.program_id(0).to(tl.int64)
    A += system * C * C
    DA += system * C * C
    DIAG += system * C * BC
    X += system * C * N
    DX += system * C * N
    DB += system * C * N
    NB: tl.constexpr = C // BC
    # dB = A^-T dX, last block row first: dB_i = D_i^-T (dX_i - sum_{j>i} A_ji^T dB_j)
    for n0 in tl.static_range(0, N, BN):
        for i in tl.static_range(NB - 1, -1, -1):
            rhs = _tile(DX, i * BC, n0, N, N, BC, BN)
            for j in tl.static_range(i + 1, NB):
                a_ji = _tile(A, j * BC, i * BC, C, C, BC, BC)
                rhs -= tl.dot(tl.trans(a_ji), _tile(DB, j * BC, n0, N, N, BC, BN), input_precision=PRECISION)
            inverse = _tile(DIAG, i * BC, 0, BC, BC, BC, BC)
            _put(DB, i * BC, n0, N, N, tl.dot(tl.trans(inverse), rhs, input_precision=PRECISION), BC, BN)
            tl.debug_barrier()
    # dA = -tril(dB X^T, -1); blocks above the diagonal are zero
    r = tl.arange(0, BC)
    c = tl.arange(0, BC)
    for i in tl.static_range(NB):
        for j in tl.static_range(NB):
            grad = tl.zeros((BC, BC), dtype=tl.float32)
            if j <= i:
                for n0 in tl.static_range(0, N, BN):
                    db_i = _tile(DB, i * BC, n0, N, N, BC, BN)
                    grad -= tl.dot(db_i, tl.trans(_tile(X, j * BC, n0, N, N, BC, BN)), input_precision=PRECISION)
                if j == i:
                    grad = tl.where(r[:, None] > c[None, :], grad, 0.0)
            _put(DA, i * BC, j * BC, C, C, grad, BC, BC)
