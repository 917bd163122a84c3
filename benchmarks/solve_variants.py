"""Micro-benchmark: the C x C unit lower-triangular solve inside the chunkwise delta rule, on the GPU.

Compares torch.linalg.solve_triangular with a blocked inverse (forward substitution on 16 x 16 diagonal
blocks, then 2 x 2 block merges with matmuls), forward + backward, at the shapes a batched step sees.
"""

from __future__ import annotations

import time

import torch


def unit_lower_inverse(strict: torch.Tensor, block: int = 16) -> torch.Tensor:
    """(I + L)^-1 for strictly lower-triangular L [..., C, C] (C a multiple of `block`)."""
    c = strict.shape[-1]
    eye = torch.eye(block, device=strict.device, dtype=strict.dtype)
    nb = c // block
    # diagonal blocks by forward substitution, all blocks at once
    diag = torch.stack([strict[..., i * block:(i + 1) * block, i * block:(i + 1) * block] for i in range(nb)], -3)
    rows = [eye[0].expand(diag.shape[:-2] + (block,))]
    for i in range(1, block):
        prev = torch.stack(rows, -2)  # [..., i, block]
        rows.append(eye[i] - (diag[..., i:i + 1, :i] @ prev).squeeze(-2))
    inv = torch.stack(rows, -2)  # [..., nb, block, block]
    size = block
    blocks = [inv[..., i, :, :] for i in range(nb)]
    while len(blocks) > 1:
        merged = []
        for j in range(0, len(blocks), 2):
            a_inv, d_inv = blocks[j], blocks[j + 1]
            r0 = (j // 2) * 2 * size
            lower = strict[..., r0 + size:r0 + 2 * size, r0:r0 + size]
            off = -(d_inv @ lower @ a_inv)
            top = torch.cat([a_inv, torch.zeros_like(a_inv)], -1)
            bottom = torch.cat([off, d_inv], -1)
            merged.append(torch.cat([top, bottom], -2))
        blocks = merged
        size *= 2
    return blocks[0]


def bench(fn, *args, reps=20):
    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    torch.manual_seed(0)
    for chunk in (64, 32):
        n = 512 * 4 * (128 // chunk)  # batch 512 sequences of 128 tokens, 4 heads
        k = torch.nn.functional.normalize(torch.randn(n, chunk, 32, device="cuda"), dim=-1)
        beta = torch.rand(n, chunk, 1, device="cuda")
        rhs = torch.randn(n, chunk, 64, device="cuda")
        strict = ((k * beta) @ k.transpose(-1, -2)).tril(-1).requires_grad_()
        rhs.requires_grad_()
        eye = torch.eye(chunk, device="cuda")

        def solve(s, r):
            out = torch.linalg.solve_triangular(eye + s, r, upper=False, unitriangular=True)
            out.sum().backward()

        def blocked(s, r):
            out = unit_lower_inverse(s) @ r
            out.sum().backward()

        ref = torch.linalg.solve_triangular(eye + strict, rhs, upper=False, unitriangular=True)
        err = ((unit_lower_inverse(strict) @ rhs - ref).norm() / ref.norm()).item()
        print(f"C={chunk}: solve_triangular {bench(solve, strict, rhs):.2f} ms, blocked inverse "
              f"{bench(blocked, strict, rhs):.2f} ms (rel err {err:.1e}) for {n} systems")


if __name__ == "__main__":
    main()
