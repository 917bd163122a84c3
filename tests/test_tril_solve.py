"""The unit-lower-triangular solve kernel (ops/tril_solve.py) against torch.linalg.solve_triangular: the
Triton kernel itself (Triton's interpreter, on the CPU), the op's autograd, vmap and torch.compile plumbing,
the routing of library calls, and a batched training with the solves routed through the op."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from mixerlab.ops import tril_solve
from mixerlab.ops.tril_solve import fast_triangular_solves, fits_kernel, routed_solve_triangular, unit_lower_solve
from mixerlab.tasks import Task, TaskSetting
from mixerlab.train.batched import BatchedTrainer
from mixerlab.train.job import TrainJob
from mixerlab.config import TrainConfig
from mixerlab.mixers import resolve_mixer

LIBRARY = torch.linalg.solve_triangular

KERNEL_CHECK = textwrap.dedent("""
    import json, sys
    import torch
    from mixerlab.ops.tril_solve import solve_with_kernel, gradients_with_kernel, _diagonal_blocks
    torch.manual_seed(0)
    errors = []
    for rows, cols in [(16, 32), (32, 64), (64, 64), (64, 96), (48, 20), (128, 40)]:
        a = torch.randn(3, rows, rows) * 0.3 + torch.randn(3, rows, rows).triu() * 5  # junk on and above the diagonal
        b = torch.randn(3, rows, cols)
        x, diagonal = solve_with_kernel(a, b)
        a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
        ref = torch.linalg.solve_triangular(a64, b64, upper=False, unitriangular=True)
        g = torch.randn_like(ref)
        ga, gb = torch.autograd.grad((ref * g).sum(), [a64, b64])
        ka, kb = gradients_with_kernel(a, diagonal, x, g.float())
        inverse = torch.linalg.inv(torch.eye(rows, dtype=torch.float64) + a64.detach().tril(-1))
        rel = lambda u, v: ((u.double() - v).norm() / v.norm()).item()
        errors.append([rows, cols, rel(x, ref), rel(diagonal, _diagonal_blocks(inverse)), rel(ka, ga), rel(kb, gb)])
    print(json.dumps(errors))
""")


@pytest.mark.slow
def test_triton_kernel_equals_the_library_solve_in_float64() -> None:
    """The kernels as written (not the CPU stand-in), run by Triton's interpreter: X, the saved diagonal-block
    inverses, dA and dB within float32 rounding of a float64 solve, with junk on and above the diagonal
    ignored (unitriangular semantics), sizes 16..128 rows and right-hand sides not a multiple of the tile."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(errors) == 6
    for rows, cols, *rel in errors:
        assert max(rel) < 1e-5, (rows, cols, rel)


def random_system(*batch: int, rows: int = 32, cols: int = 48):
    gen = torch.Generator().manual_seed(rows * cols)
    a = (torch.randn(*batch, rows, rows, generator=gen) * 0.3).requires_grad_()
    b = torch.randn(*batch, rows, cols, generator=gen).requires_grad_()
    return a, b


def grads(out: torch.Tensor, inputs: list[torch.Tensor], weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad((out * weight).sum(), inputs)


@pytest.mark.parametrize("transform", ["plain", "vmap", "compile"])
def test_op_matches_the_library_under_autograd_vmap_and_compile(transform: str) -> None:
    a, b = random_system(4, 2, 3)
    ref = LIBRARY(a, b, upper=False, unitriangular=True)
    w = torch.randn_like(ref)
    ref_grads = grads(ref, [a, b], w)

    def solve(a, b):
        return unit_lower_solve(a, b)[0]

    fn = {"plain": solve, "vmap": torch.vmap(solve),
          "compile": torch.compile(torch.vmap(torch.vmap(solve)), backend="aot_eager", fullgraph=True)}[transform]
    out = fn(a, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(out, [a, b], w), ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_gradient_of_a_is_strictly_lower() -> None:
    a, b = random_system(2)
    grad_a, _ = grads(unit_lower_solve(a, b)[0], [a, b], torch.randn(2, 32, 48))
    assert grad_a.triu().abs().max() == 0 and grad_a.tril(-1).abs().max() > 0


def test_only_the_kernels_case_is_routed(monkeypatch) -> None:
    a, b = torch.randn(2, 64, 64), torch.randn(2, 64, 32)
    assert not fits_kernel(a, b, upper=False, left=True, unitriangular=True)  # CPU tensors: the library
    monkeypatch.setattr(tril_solve, "KERNEL_DEVICE", "cpu")
    assert fits_kernel(a, b, upper=False, left=True, unitriangular=True)
    refused = {
        "upper": (a, b, dict(upper=True, left=True, unitriangular=True)),
        "not unit": (a, b, dict(upper=False, left=True, unitriangular=False)),
        "right side": (a, b.mT.contiguous(), dict(upper=False, left=False, unitriangular=True)),
        "float64": (a.double(), b.double(), dict(upper=False, left=True, unitriangular=True)),
        "40 rows": (a[:, :40, :40], b[:, :40], dict(upper=False, left=True, unitriangular=True)),
        "144 rows": (torch.randn(144, 144), torch.randn(144, 3), dict(upper=False, left=True, unitriangular=True)),
        "broadcast batch": (a[:1], b, dict(upper=False, left=True, unitriangular=True)),
    }
    for why, (x, y, flags) in refused.items():
        assert not fits_kernel(x, y, **flags), why
        # and the routed call still gives the library's answer
        torch.testing.assert_close(routed_solve_triangular(x, y, **flags), LIBRARY(x, y, **flags))


def test_routing_is_scoped_and_survives_errors_and_threads() -> None:
    assert torch.linalg.solve_triangular is LIBRARY
    with pytest.raises(RuntimeError):
        with fast_triangular_solves():
            assert torch.linalg.solve_triangular is routed_solve_triangular
            raise RuntimeError("boom")
    assert torch.linalg.solve_triangular is LIBRARY
    with fast_triangular_solves(enabled=False):
        assert torch.linalg.solve_triangular is LIBRARY
    # another thread leaving its block does not unroute this one's
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with fast_triangular_solves():
            inside.set()
            release.wait(5)

    with fast_triangular_solves():
        thread = threading.Thread(target=other)
        thread.start()
        inside.wait(5)
        release.set()
        thread.join()
        assert torch.linalg.solve_triangular is routed_solve_triangular
    assert torch.linalg.solve_triangular is LIBRARY


def test_batched_training_with_routed_solves_equals_the_library(monkeypatch) -> None:
    """The trainer's path end to end on the CPU: the template DeltaNet under vmap, its solves routed to the op
    (its CPU form: library solve forward, the kernel's backward formulas), against an unrouted run."""
    setting = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=66, num_train=96, num_test=64)  # 65 tokens
    train = TrainConfig(d_model=32, batch_size=32, max_epochs=2)
    jobs = [TrainJob(setting=setting, lr=lr, weight_decay=0.0) for lr in (1e-3, 3e-3)]
    factory = resolve_mixer("delta_net").factory()
    plain = BatchedTrainer(jobs, ["a", "b"], train, factory, fast_solves=False).run()
    monkeypatch.setattr(tril_solve, "KERNEL_DEVICE", "cpu")
    calls = []
    op = tril_solve.unit_lower_solve
    monkeypatch.setattr(tril_solve, "unit_lower_solve", lambda a, b: calls.append(a.shape[-1]) or op(a, b))
    routed = BatchedTrainer(jobs, ["a", "b"], train, factory, fast_solves=True).run()
    assert calls and set(calls) == {64}  # two chunks of 64 (65 tokens, padded), in training and evaluation
    assert torch.linalg.solve_triangular is LIBRARY
    for x, y in zip(plain, routed):
        assert len(x.history) == len(y.history) == 2
        for p, q in zip(x.history, y.history):
            assert p.train_loss == pytest.approx(q.train_loss, rel=1e-4)
            assert p.test_loss == pytest.approx(q.test_loss, rel=1e-4)
