"""CUDA-only checks, run on the device machine (`make test-gpu`; deselected on CPU by `-m "not gpu"`)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mixerlab.config import TrainConfig
from mixerlab.mixers import resolve_mixer
from mixerlab.mixers.delta_net import delta_rule_chunkwise
from mixerlab.mixers.gated_delta_net import gated_delta_rule_chunkwise
from mixerlab.ops import delta_rule_recurrent, gated_delta_rule_recurrent
from mixerlab.tasks import Task, TaskSetting
from mixerlab.train.batched import BatchedTrainer
from mixerlab.train.job import TrainJob
from mixerlab.train.single import train_single

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt()).item()


def inputs(length: int, dk: int = 32, dv: int = 32, heads: int = 4, batch: int = 4):
    gen = torch.Generator(device=CUDA).manual_seed(length)
    q = F.normalize(torch.randn(batch, heads, length, dk, device=CUDA, generator=gen), dim=-1)
    k = F.normalize(torch.randn(batch, heads, length, dk, device=CUDA, generator=gen), dim=-1)
    v = torch.randn(batch, heads, length, dv, device=CUDA, generator=gen)
    beta = torch.rand(batch, heads, length, device=CUDA, generator=gen)
    g = -torch.rand(batch, heads, length, device=CUDA, generator=gen) * 0.5
    return q, k, v, beta, g


@pytest.mark.parametrize("length", [63, 128, 300])
def test_chunk_forms_equal_recurrences_on_cuda(length: int) -> None:
    q, k, v, beta, g = inputs(length)
    assert rel_rms(delta_rule_chunkwise(q, k, v, beta), delta_rule_recurrent(q, k, v, beta)[0]) < 1e-3
    assert rel_rms(gated_delta_rule_chunkwise(q, k, v, beta, g), gated_delta_rule_recurrent(q, k, v, beta, g)[0]) < 1e-3


@pytest.mark.parametrize("name", ["delta_net", "gated_delta_net"])
def test_fla_kernels_match_the_pytorch_layers(name: str) -> None:
    pytest.importorskip("fla", reason="fla kernels need flash-linear-attention on the device")
    torch.manual_seed(0)
    ours = resolve_mixer(name).load_class()(d_model=128).to(CUDA)
    theirs = resolve_mixer(name + "_fla").load_class()(d_model=128).to(CUDA)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(8, 256, 128, device=CUDA, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_ours = ours(x)
        try:
            y_fla = theirs(x)
            y_fla.float().sum().backward(retain_graph=True)
        except RuntimeError as err:  # fla refuses its gated backward on Hopper with Triton < 3.7.1 (fla #640)
            assert name == "gated_delta_net" and "Triton" in str(err)
            return
    assert rel_rms(y_fla, y_ours) < 2e-2
    grad_ours = torch.autograd.grad(y_ours.float().square().sum(), [x, ours.q_proj.weight])
    grad_fla = torch.autograd.grad(y_fla.float().square().sum(), [x, theirs.q_proj.weight])
    for a, b in zip(grad_fla, grad_ours):
        assert rel_rms(a, b) < 3e-2


def test_fla_op_under_vmap_and_compile_matches_the_pytorch_form() -> None:
    """The custom op folds members into fla's batch and compiles as one graph; outputs and gradients per member
    match the PyTorch chunkwise form (bfloat16 kernel against float32)."""
    pytest.importorskip("fla", reason="fla kernels need flash-linear-attention on the device")
    from mixerlab.mixers.fla_ops import fla_delta_rule

    tensors = inputs(200, batch=6)[:4]  # 3 members of batch 2, length 200 (not a multiple of the chunk)
    members = [[t[2 * m: 2 * m + 2] for t in tensors] for m in range(3)]
    stacked = [torch.stack([m[i] for m in members]).requires_grad_() for i in range(4)]

    def mix(q, k, v, beta):  # head-first in and out, as the mixers call it
        o, _ = fla_delta_rule(*(t.transpose(1, 2).bfloat16() for t in (q, k, v, beta)))
        return o.transpose(1, 2).float()

    torch._dynamo.reset()
    out = torch.compile(torch.vmap(mix), fullgraph=True)(*stacked)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), stacked)
    for m, member in enumerate(members):
        member = [t.detach().requires_grad_() for t in member]
        ref = delta_rule_chunkwise(*member)
        assert rel_rms(out[m], ref) < 2e-2
        for got, want in zip(grads, torch.autograd.grad((ref * weights[m]).sum(), member)):
            assert rel_rms(got[m], want) < 3e-2


def test_compiled_batched_training_with_fla_tracks_the_pytorch_layer() -> None:
    """`eval --mixer delta_net_fla --compile` trains like `--mixer delta_net`: the step compiles with the fla op
    inside (no eager fallback) and losses and accuracies follow the PyTorch layer's."""
    pytest.importorskip("fla", reason="fla kernels need flash-linear-attention on the device")
    setting = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=128, num_train=512, num_test=128)
    train = TrainConfig(d_model=64, batch_size=64, max_epochs=3)
    jobs = [TrainJob(setting=setting, lr=lr, weight_decay=0.0) for lr in (1e-3, 3e-3)]
    runs = []
    for name in ("delta_net", "delta_net_fla"):
        torch._dynamo.reset()
        trainer = BatchedTrainer(jobs, ["k"] * 2, train, resolve_mixer(name).factory(), "cuda", compile_step=True,
                                 compile_after_tokens=0)
        runs.append(trainer.run())
        assert trainer.compiled_logits is not None, f"{name}: the step fell back to eager"
    for a, b in zip(*runs):
        for x, y in zip(a.history, b.history):
            assert x.train_loss == pytest.approx(y.train_loss, rel=3e-2, abs=3e-2)
            assert x.test_acc == pytest.approx(y.test_acc, abs=5e-2)


def test_cuda_graph_training_equals_eager_training() -> None:
    setting = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=64, num_train=300, num_test=128)
    train = TrainConfig(d_model=64, batch_size=64, max_epochs=4)
    jobs = [TrainJob(setting=setting, lr=lr, weight_decay=wd) for lr in (1e-3, 3e-3) for wd in (0.0, 0.1)]
    factory = resolve_mixer("delta_net").factory()
    graph = BatchedTrainer(jobs, ["k"] * 4, train, factory, "cuda", cuda_graph=True)
    graphed = graph.run()
    assert graph.graph is not None or graph.cuda_graph, "the step was captured"
    eager = BatchedTrainer(jobs, ["k"] * 4, train, factory, "cuda", cuda_graph=False).run()
    for a, b in zip(graphed, eager):
        for x, y in zip(a.history, b.history):
            assert x.train_loss == pytest.approx(y.train_loss, rel=2e-3, abs=2e-3)
            assert x.test_acc == pytest.approx(y.test_acc, abs=2e-2)
    reference = train_single(jobs[1], train, factory, "cuda")
    assert reference.history[-1].train_loss == pytest.approx(graphed[1].history[-1].train_loss, rel=5e-2, abs=5e-2)


def test_compiled_step_trains_like_the_eager_step() -> None:
    """--compile fuses kernels but must train the same models (bf16 rounding aside), graph-captured and after
    the group shrinks (the member count changes; the compiled step must follow without failing)."""
    setting = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=64, num_train=300, num_test=128)
    train = TrainConfig(d_model=64, batch_size=64, max_epochs=4)
    jobs = [TrainJob(setting=setting, lr=lr, weight_decay=wd) for lr in (1e-3, 3e-3) for wd in (0.0, 0.1)]
    factory = resolve_mixer("delta_net").factory()
    compiled_trainer = BatchedTrainer(jobs, ["k"] * 4, train, factory, "cuda", compile_step=True, compile_after_tokens=0)
    compiled = compiled_trainer.run()
    assert compiled_trainer.compiled_logits is not None, "the compiled step did not fall back to eager"
    eager = BatchedTrainer(jobs, ["k"] * 4, train, factory, "cuda", cuda_graph=False).run()
    assert len(compiled) == len(eager) == 4
    for a, b in zip(compiled, eager):
        assert len(a.history) == len(b.history)
        for x, y in zip(a.history, b.history):
            assert x.train_loss == pytest.approx(y.train_loss, rel=5e-3, abs=5e-3)
            assert x.test_acc == pytest.approx(y.test_acc, abs=2e-2)


def test_compiled_groups_of_different_lengths_in_one_process() -> None:
    """A second group of another sequence length once made dynamo trace the length symbolically and fail."""
    train = TrainConfig(d_model=64, batch_size=32, max_epochs=1)
    factory = resolve_mixer("gated_delta_net").factory()
    for task, length in ((Task.fuzzy_recall, 64), (Task.compress, 16)):
        setting = TaskSetting(task=task, vocab_size=16, seq_len=length, num_train=64, num_test=32)
        jobs = [TrainJob(setting=setting, lr=1e-3, weight_decay=0.0, seed=s) for s in range(3)]
        trainer = BatchedTrainer(jobs, ["k"] * 3, train, factory, "cuda", compile_step=True, compile_after_tokens=0)
        assert len(trainer.run()) == 3
        assert trainer.compiled_logits is not None, f"{task.value}: the compiled step fell back to eager"


@pytest.mark.parametrize("rows, cols", [(64, 64), (64, 96), (32, 64), (48, 20)])
def test_triangular_solve_kernel_equals_the_library_on_cuda(rows: int, cols: int) -> None:
    from mixerlab.ops.tril_solve import unit_lower_solve

    gen = torch.Generator(device=CUDA).manual_seed(rows + cols)
    k = F.normalize(torch.randn(512, rows, 32, device=CUDA, generator=gen), dim=-1)
    beta = torch.rand(512, rows, 1, device=CUDA, generator=gen)
    a = (torch.eye(rows, device=CUDA) + ((k * beta) @ k.mT).tril(-1)).requires_grad_()  # a chunk's WY system
    b = torch.randn(512, rows, cols, device=CUDA, generator=gen).requires_grad_()
    g = torch.randn(512, rows, cols, device=CUDA, generator=gen)
    ref = torch.linalg.solve_triangular(a.double(), b.double(), upper=False, unitriangular=True)
    ref_grads = torch.autograd.grad(ref, [a, b], g.double())
    out = unit_lower_solve(a, b)[0]
    for got, want in zip([out, *torch.autograd.grad(out, [a, b], g)], [ref, *ref_grads]):
        assert rel_rms(got, want) < 1e-5


def test_training_with_the_solve_kernel_follows_the_library() -> None:
    setting = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=130, num_train=512, num_test=128)
    train = TrainConfig(d_model=64, batch_size=64, max_epochs=3)
    jobs = [TrainJob(setting=setting, lr=lr, weight_decay=0.0) for lr in (1e-3, 3e-3)]
    factory = resolve_mixer("delta_net").factory()
    kernel = BatchedTrainer(jobs, ["k"] * 2, train, factory, "cuda", fast_solves=True).run()
    library = BatchedTrainer(jobs, ["k"] * 2, train, factory, "cuda", fast_solves=False).run()
    for a, b in zip(kernel, library):
        for x, y in zip(a.history, b.history):
            assert x.train_loss == pytest.approx(y.train_loss, rel=2e-3, abs=2e-3)
            assert x.test_acc == pytest.approx(y.test_acc, abs=2e-2)


# --- the research loop's evaluation path on CUDA: sandboxed, scored on the trusted side -------------------


def test_discover_runs_the_loop_on_cuda(tmp_path) -> None:
    """`discover --device cuda` trains the baselines and a candidate inside the sandbox on the GPU, with the Triton
    solve kernel (it starts under the sandbox's lock-down), and records where every training ran."""
    import sqlite3
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mixerlab.cli", "discover", "--device", "cuda", "--profile", "tiny",
                           "--iterations", "1", "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    db = sqlite3.connect(run_dir / "mixerlab.db")
    rows = db.execute("select name, kind, status, failure_reason from experiments").fetchall()
    assert [(kind, status) for _, kind, status, _ in rows] == [("baseline", "done")] * 2 + [("candidate", "done")], rows
    devices = {row[0] for row in sqlite3.connect(run_dir / "cache.sqlite").execute("select json_extract(payload, '$.device') from results")}
    assert devices == {"cuda:0"}, devices


def test_compiled_training_inside_the_sandbox_on_cuda() -> None:
    """Every GPU profile but tiny compiles its training step: torch.compile patches `nn.Module.__init__` as it
    starts, so the worker must set that up before its integrity snapshot or the candidate is refused, and the
    compilers it starts run confined. A tiny evaluation compiled at once (a threshold of 0 tokens; by default
    tiny's groups are too short to earn a compile) runs that path end to end in minutes; two groups at once, each
    compiling and capturing while the other may be replaying, in threads sharing the worker's channel."""
    from mixerlab.config import get_profile
    from mixerlab.evaluate.runner import EvalOptions
    from mixerlab.evaluate.sandboxed import evaluate_untrusted
    from mixerlab.mixers import builtin_spec
    from mixerlab.sandbox import SandboxLimits

    options = EvalOptions(tasks=(Task.context_recall, Task.compress), device="cuda", compile_step=True,
                          time_parts=True, train_overrides={"compile_after_tokens": 0}, concurrent_groups=2)
    limits = SandboxLimits(timeout_s=1200, memory_gb=16.0, output_bytes=20_000_000, cuda_device=0, gpu_memory_fraction=0.5)
    result = evaluate_untrusted(builtin_spec("delta_net"), get_profile("tiny"), options, limits, cuda_device=0)
    assert result.ok, result.error
    assert result.report.incomplete == 0 and result.trainings and all(t.device == "cuda:0" for t in result.trainings)
    assert result.parts["warm-up"] > 5.0, result.parts  # a compile (tens of seconds), not two eager steps


def test_cuda_only_leaks_are_rejected_under_cuda_conditions() -> None:
    from pathlib import Path

    from mixerlab.check import Conditions, check_candidate
    from mixerlab.config import get_profile
    from mixerlab.mixers.loading import spec_from_file
    from mixerlab.sandbox import SandboxLimits

    hostile = Path(__file__).parent / "candidates" / "hostile"
    conditions = Conditions.for_profile(get_profile("tiny"), "cuda")
    limits = SandboxLimits(timeout_s=600, cuda_device=0, gpu_memory_fraction=0.3)
    for name in ("leak_on_cuda.py", "leak_under_autocast.py"):
        report = check_candidate(spec_from_file(hostile / name), limits=limits, conditions=conditions)
        assert report.first_failure is not None and report.first_failure.name == "causality", report.summary()
    good = check_candidate(resolve_mixer("delta_net"), limits=limits, conditions=conditions, check_novelty=False)
    assert good.passed, good.summary()


def test_a_vocabulary_wider_than_the_model_ships_the_head_on_cuda_and_scores_as_in_process() -> None:
    """At width 32, tiny's memorize (64 classes) sends the head and its bf16 inputs, not the logits; the parent
    applies the head on its GPU. Same trainings in-process: the scores agree to within bf16 rounding of the head
    (a different matmul may round a few logits the other way)."""
    from mixerlab.config import get_profile
    from mixerlab.evaluate.runner import EvalOptions, evaluate_mixer
    from mixerlab.evaluate.sandboxed import evaluate_untrusted
    from mixerlab.mixers import builtin_spec
    from mixerlab.sandbox import SandboxLimits

    options = EvalOptions(tasks=(Task.memorize,), device="cuda", train_overrides={"d_model": 32})
    limits = SandboxLimits(timeout_s=600, memory_gb=16.0, output_bytes=20_000_000, cuda_device=0, gpu_memory_fraction=0.5)
    spec, profile = builtin_spec("delta_net"), get_profile("tiny")
    there = evaluate_untrusted(spec, profile, options, limits, cuda_device=0)
    here = evaluate_mixer(spec, profile, options)
    assert there.ok, there.error
    assert there.audit["probes_checked"] > 0
    assert abs(there.report.row()["memorize"] - here.row()["memorize"]) < 0.01, (there.report.row(), here.row())


def test_groups_trained_at_once_on_cuda_train_as_one_at_a_time() -> None:
    """Three groups at once, each on its own CUDA stream, compiled at once (a compile and a capture overlap the
    other groups' replays). The compiled backward adds with atomics, so two runs of the same code drift apart over
    the epochs even one group at a time: the runs with three at once must stay as close to a run one at a time as
    a second run one at a time does (measured on an H100: see the printed drifts), and start equal."""
    from mixerlab.config import get_profile
    from mixerlab.evaluate.runner import EvalOptions, evaluate_mixer
    from mixerlab.mixers import builtin_spec

    spec, profile = builtin_spec("delta_net"), get_profile("tiny")
    options = EvalOptions(tasks=(Task.compress, Task.context_recall, Task.selective_copy), device="cuda",
                          compile_step=True, train_overrides={"compile_after_tokens": 0})
    runs: dict[str, dict] = {}
    for name, concurrent in (("alone", 1), ("again", 1), ("together", 3)):
        found: list = []
        evaluate_mixer(spec, profile, replace(options, concurrent_groups=concurrent), on_result=found.append)
        runs[name] = {r.key: r for r in found}
    assert len(runs["alone"]) == len(runs["again"]) == len(runs["together"]) == 3

    def drift(a: dict, b: dict) -> float:
        return max(abs(x.train_loss - y.train_loss) / abs(x.train_loss)
                   for key in a for x, y in zip(a[key].history, b[key].history))  # a stop may come an epoch apart

    def first_epoch(a: dict, b: dict) -> float:
        return max(abs(a[k].history[0].train_loss - b[k].history[0].train_loss) / a[k].history[0].train_loss for k in a)

    noise, together = drift(runs["alone"], runs["again"]), drift(runs["alone"], runs["together"])
    print(f"relative train-loss drift over 8 epochs: run to run {noise:.2e}, three groups at once {together:.2e}")
    assert first_epoch(runs["alone"], runs["together"]) < 2e-3
    assert together <= 3 * noise + 2e-3, (noise, together)


def test_a_spare_that_trained_its_warm_up_ahead_on_cuda_scores_as_a_fresh_worker() -> None:
    """On a GPU a spare evaluation worker trains the DeltaNet template at the profile's shapes while it waits
    (SandboxLimits.for_evaluation, evaluate/remote.py warm_up_training); the candidate's evaluation after it
    scores as a fresh worker's (within run-to-run drift: CUDA's atomics make two runs differ in the last bits)."""
    from mixerlab.config import get_profile
    from mixerlab.evaluate.runner import EvalOptions
    from mixerlab.evaluate.sandboxed import evaluate_untrusted
    from mixerlab.mixers import builtin_spec
    from mixerlab.sandbox import SandboxLimits, close_spares

    options = EvalOptions(tasks=(Task.context_recall, Task.compress), device="cuda")
    spec, profile = builtin_spec("delta_net"), get_profile("tiny")
    fresh = evaluate_untrusted(spec, profile, options, SandboxLimits.for_evaluation(600, 0), cuda_device=0)
    warmed = SandboxLimits.for_evaluation(600, 0, spare=True, profile="tiny")
    assert warmed.ahead == ("train-warm-up:tiny",)
    close_spares()
    try:
        runs = [evaluate_untrusted(spec, profile, options, warmed, cuda_device=0) for _ in range(2)]  # then a spare's
    finally:
        close_spares()
    assert fresh.ok and all(run.ok for run in runs), [fresh.error] + [run.error for run in runs]
    for run in runs:
        assert run.audit["probes_checked"] > 0
        for task, score in fresh.report.row().items():
            assert abs(run.report.row()[task] - score) < 0.02, (task, run.report.row(), fresh.report.row())
