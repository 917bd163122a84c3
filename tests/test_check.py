"""The candidate checker and sandbox: every bad candidate rejected for the right reason, good ones
accepted, and the calling process unharmed."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixerlab.check import CHECK_ORDER, Conditions, check_candidate
from mixerlab.check.dynamic import check_cost
from mixerlab.mixers import builtin_spec, template_source
from mixerlab.mixers.loading import MixerSpec, spec_from_file
from mixerlab.sandbox import SandboxLimits, run_sandboxed

CANDIDATES = Path(__file__).parent / "candidates"
# Checks 2-7 share one sandbox run, torch's import included. Good candidates get room for a slow host (CI once
# took over 25 s for Gated DeltaNet's checks); the endless loop gets a short limit so that its test stays quick.
LIMITS = SandboxLimits(timeout_s=300, memory_gb=3.0)
LOOP_LIMITS = SandboxLimits(timeout_s=30, memory_gb=3.0)

pytestmark = pytest.mark.slow

# file -> (check that must fail, words its reason must contain)
BAD = {
    "syntax_error.py": ("static", ["syntax error", "line 8"]),
    "missing_class.py": ("static", ["no mixer class", "Mixer"]),
    "forbidden_import.py": ("static", ["imports 'os'"]),
    "file_access.py": ("static", ["builtin 'open'"]),
    "network_access.py": ("static", ["imports 'socket'"]),
    "wrong_shape.py": ("forward", ["(1, 1, 128)", "(1, 1, 64)", "shape"]),
    "infinite_loop.py": ("forward", ["did not finish within 30 s"]),
    "memory_bomb.py": ("forward", ["memory"]),
    "prints_megabytes.py": ("forward", ["printed more than"]),
    "nan_in_bf16_only.py": ("forward", ["bf16", "NaN or Inf"]),
    "no_gradient_to_projection.py": ("backward", ["k_proj.weight", "no gradient"]),
    "reversed_cumsum.py": ("causality", ["after position", "looks ahead"]),
    "centred_convolution.py": ("causality", ["after position"]),
    "hidden_quadratic_attention.py": ("cost", ["length x length", "quadratic"]),
}


def variant(old: str, new: str, name: str) -> MixerSpec:
    source = template_source("delta_net")
    assert old in source, f"template anchor missing: {old!r}"
    return MixerSpec(name=name, source=source.replace(old, new), filename=f"{name}.py")


def tanh_on_error() -> MixerSpec:
    return variant("u_i = u[:, :, i] - w[:, :, i] @ state", "u_i = torch.tanh(u[:, :, i] - w[:, :, i] @ state)",
                   "delta_net_4layer_tanh_on_error_before_state_update")


def layernorm_on_qk() -> MixerSpec:
    return variant(
        "q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)",
        "q = F.normalize(F.layer_norm(q, q.shape[-1:], eps=1e-5), dim=-1)\n"
        "        k = F.normalize(F.layer_norm(k, k.shape[-1:], eps=1e-5), dim=-1)",
        "delta_net_4layer_affine_free_layernorm_qk",
    )


@pytest.mark.parametrize("filename", sorted(BAD))
def test_bad_candidates_are_rejected_for_the_right_reason(filename: str) -> None:
    check, words = BAD[filename]
    limits = LOOP_LIMITS if filename == "infinite_loop.py" else LIMITS
    pid = os.getpid()
    report = check_candidate(spec_from_file(CANDIDATES / filename), limits=limits)
    assert os.getpid() == pid and torch.ones(3).sum().item() == 3.0, "the caller survives the candidate, unharmed"
    assert not report.passed
    failure = report.first_failure
    assert failure is not None and failure.name == check, report.summary()
    for word in words:
        assert word in failure.reason, failure.reason
    assert report.summary().startswith(f"check '{check}'")
    later = report.checks[[c.name for c in report.checks].index(check) + 1 :]
    assert all(c.status == "not run" for c in later if c.name != "novelty")


def test_time_quadratic_mixer_with_linear_memory_fails_the_cost_check() -> None:
    """Block-wise full attention never builds a length x length tensor; only its time gives it away."""
    module = spec_from_file(CANDIDATES / "chunked_full_attention.py").load_class()(d_model=128)
    result = check_cost(module, 128, lengths=(256, 512, 1024, 2048, 4096))
    assert result.status == "fail" and "forward time grows like T^" in result.reason, result.reason
    d = result.details
    assert d["memory_exponent"] < 1.2 and d["time_exponent"] - d["reference_time_exponent"] > 0.5
    assert d["rounds"] == 3  # measured again before it counted
    # where 4,096 tokens ran too fast to judge, longer inputs were timed instead of letting it pass
    assert d["seconds"][-1] > 0.25 and d["lengths"][-1] >= 4096


def scripted_timer(candidate: torch.nn.Module, candidate_exp: float, reference_exps: list[float]):
    """A stand-in for the check's CPU timer (real timings cannot be made noisy on demand): the candidate's
    forward takes 0.3 s x (T/4096)^candidate_exp every round, DeltaNet's 0.05 s x (T/4096)^e in round r, with
    e = reference_exps[r] (the last repeating) and each round a little faster than the one before."""
    calls: dict[int, int] = {}

    def seconds(module: torch.nn.Module, x: torch.Tensor) -> float:
        scale = x.shape[1] / 4096
        if module is candidate:
            return 0.3 * scale**candidate_exp
        r = calls[x.shape[1]] = calls.get(x.shape[1], -1) + 1
        return 0.05 * 0.8**r * scale ** reference_exps[min(r, len(reference_exps) - 1)]
    return seconds


@pytest.mark.parametrize(("candidate_exp", "reference_exps", "status", "rounds"), [
    (1.80, [1.31, 1.10], "fail", 3),  # CI once passed this in one round: excess 0.49 against a noisy reference
    (1.55, [1.10], "pass", 3),  # 0.45, steady: measured again, then passed
    (1.20, [1.10], "pass", 1),  # clearly linear: one round
    (2.00, [1.10], "fail", 3),  # clearly quadratic: fails every round
])
def test_borderline_time_exponents_are_measured_again(monkeypatch, candidate_exp, reference_exps, status, rounds) -> None:
    candidate = torch.nn.Linear(128, 128)  # a real module for the memory probe; only its timing is scripted
    monkeypatch.setattr("mixerlab.check.dynamic._cpu_seconds", scripted_timer(candidate, candidate_exp, reference_exps))
    result = check_cost(candidate, 128, lengths=(256, 512, 1024, 2048, 4096))
    assert (result.status, result.details["rounds"]) == (status, rounds), result.reason
    assert result.details["time_exponent"] == pytest.approx(candidate_exp)


BUSY_LOOP = "import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1500, 1500)\nwhile True:\n    a @ a\n"


def test_cost_check_is_steady_on_a_machine_busy_with_other_work() -> None:
    """CI failed once because a loop worker training beside the check inflated its wall-clock times
    (DeltaNet measured as T^2.67). The check times CPU work on one thread, which other processes do not inflate,
    and judges growth against the reference DeltaNet timed in the same rounds."""
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
    try:
        time.sleep(2.0)
        module = builtin_spec("delta_net").load_class()(d_model=128)
        excess = []
        for _ in range(3):
            result = check_cost(module, 128)
            assert result.passed, result.reason
            excess.append(result.details["time_exponent"] - result.details["reference_time_exponent"])
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    # the template against itself: its growth beyond the reference's is timer and cache noise only, centred on
    # zero. One round under load has measured -0.253 (thirty-third session's CI rehearsal), so the median of three
    # is held to 0.25 (a check biased by a quarter of a power of T still fails) and every round to the pass margin.
    assert abs(statistics.median(excess)) < 0.25, excess
    assert all(abs(e) < 0.5 for e in excess), excess


def test_a_copy_of_the_baseline_is_not_novel() -> None:
    source = template_source("delta_net").replace('"""DeltaNet sequence mixer.', '"""My brand new mixer (really DeltaNet).')
    source = source.replace("# values corrected by what the state already predicts", "# reformatted comment")
    report = check_candidate(MixerSpec(name="copy", source=source, filename="copy.py"), limits=LIMITS)
    assert report.first_failure is not None and report.first_failure.name == "novelty"
    assert "delta_net_4layer" in report.first_failure.reason


@pytest.mark.parametrize("spec", [builtin_spec("delta_net"), builtin_spec("gated_delta_net")], ids=lambda s: s.name)
def test_baselines_pass(spec: MixerSpec) -> None:
    report = check_candidate(spec, limits=LIMITS, check_novelty=False)
    assert report.passed, report.summary()
    assert [c.status for c in report.checks] == ["pass"] * len(CHECK_ORDER)


@pytest.mark.parametrize("make", [tanh_on_error, layernorm_on_qk], ids=lambda f: f.__name__)
def test_seed_described_variants_pass(make) -> None:
    report = check_candidate(make(), limits=LIMITS)  # its speed (goal: 30 s) is benchmarks/speed/check_speed.py's
    assert report.passed, report.summary()


def test_parameter_budget_is_enforced() -> None:
    spec = variant("self.o_proj = nn.Linear(d_model, d_model, bias=False)",
                   "self.o_proj = nn.Sequential(nn.Linear(d_model, 8 * d_model, bias=False), nn.Linear(8 * d_model, d_model, bias=False))",
                   "too_big")
    report = check_candidate(spec, limits=LIMITS)
    assert report.first_failure.name == "instantiate" and "budget" in report.first_failure.reason


HOSTILE = Path(__file__).parent / "candidates" / "hostile"
# every file of the team's hostile corpus (one attack each, its docstring says which) -> the check that must
# reject it, words its reason must contain, and the conditions it is checked under (default: tiny on the CPU)
HOSTILE_EXPECTED = {
    "leak_in_train_mode.py": ("causality", ["train mode", "looks ahead"], None),
    "leak_in_eval_mode.py": ("causality", ["eval mode as scored", "looks ahead"], None),
    "leak_with_grad.py": ("causality", ["gradients on", "looks ahead"], None),
    "leak_large_batch.py": ("causality", ["batch 64", "looks ahead"], None),
    "leak_long_sequences.py": ("causality", ["looks ahead"], "quick"),
    "leak_under_autocast.py": ("causality", ["bf16 autocast", "looks ahead"], "autocast"),
    "leak_after_many_calls.py": ("state", ["calls", "state"], None),
    "counter_in_module_list.py": ("static", ["CALLS.append", "module-level"], None),
    "batch_interaction.py": ("causality", ["must not interact"], None),
    "carried_state_buffer.py": ("state", ["memory"], None),
    "patch_argmax.py": ("static", ["assigns an attribute of 'torch'"], None),
    "patch_cross_entropy_alias.py": ("static", ["assigns an attribute of 'functional'"], None),
    "patch_through_a_method.py": ("instantiate", ["torch.Tensor.argmax was added"], None),
    "patch_with_update_wrapper.py": ("static", ["functools.update_wrapper"], None),
    "frame_walk.py": ("static", ["'f_back'", "'tb_frame'"], None),
    "function_mode_in_generator.py": ("static", ["torch.overrides"], None),
    "global_forward_hook.py": ("static", ["register_module_forward_hook"], None),
    "forged_verdict.py": ("static", ["`torch.os` reaches the module 'os'"], None),
    "module_attribute_escape.py": ("static", ["`torch.sys` reaches the module 'sys'"], None),
    "file_write_through_torch.py": ("static", ["'from_file'"], None),
    "getattr_as_a_value.py": ("static", ["passes the builtin 'getattr' as a value"], None),
    "quadratic_in_train_mode.py": ("cost", ["length x length", "train mode"], None),
}
GPU_ONLY = {"leak_on_cuda.py"}  # harmless on the CPU; tests/test_gpu.py checks it under CUDA conditions
# they pass every check by design (their leak waits for trained weights); the scored evaluation's audit stops
# them (tests/test_sandbox.py)
SCORED_AUDIT = {"batch_aware_leak.py"}


def test_the_hostile_corpus_is_covered() -> None:
    assert {p.name for p in HOSTILE.glob("*.py")} == set(HOSTILE_EXPECTED) | GPU_ONLY | SCORED_AUDIT


def conditions_for(kind: str | None) -> Conditions:
    from mixerlab.config import get_profile

    if kind == "quick":  # its 256-token settings reach the leak's trigger (160); tiny's never do
        return Conditions.for_profile(get_profile("quick"), "cpu")
    if kind == "autocast":  # the bf16 autocast CUDA trains in, here on the CPU
        return Conditions(autocast=True)
    return Conditions()


@pytest.mark.parametrize("filename", sorted(HOSTILE_EXPECTED))
def test_hostile_candidates_are_rejected_for_their_reason(filename: str) -> None:
    check, words, kind = HOSTILE_EXPECTED[filename]
    report = check_candidate(spec_from_file(HOSTILE / filename), limits=LIMITS, conditions=conditions_for(kind))
    failure = report.first_failure
    assert failure is not None and failure.name == check, report.summary()
    for word in words:
        assert word in failure.reason, failure.reason
    assert not Path("/tmp/mixerlab-hostile-from-file.bin").exists()


def test_sandbox_contains_crashes_forks_writes_and_sockets(tmp_path: Path) -> None:
    # raw code straight into the worker (no static checks): the sandbox alone must hold
    crash = run_sandboxed({"kind": "run", "source": "import os\nos.abort()"}, LIMITS)
    assert crash.status == "crash" and "SIGABRT" in crash.reason(LIMITS)
    fork = run_sandboxed({"kind": "run", "source": "import os\nos.fork()"}, LIMITS)
    assert fork.status == "crash" and any("os.fork is not allowed" in m.get("error", "") for m in fork.messages)
    target = tmp_path / "written.txt"
    write = run_sandboxed({"kind": "run", "source": f"open({str(target)!r}, 'w').write('x')"}, LIMITS)
    assert write.status == "crash" and not target.exists()
    net = run_sandboxed({"kind": "run", "source": "import socket\nsocket.create_connection(('127.0.0.1', 9))"}, LIMITS)
    assert net.status == "crash" and any("socket" in m.get("error", "") for m in net.messages)
    scratch = run_sandboxed({"kind": "run", "source": "open('inside.txt', 'w').write('ok')\nsend({'type': 'wrote'})"}, LIMITS)
    assert scratch.status == "ok" and {"type": "wrote"} in scratch.messages
