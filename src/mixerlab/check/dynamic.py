"""Checks 2-7, which run the candidate. They execute inside the sandbox worker (mixerlab.sandbox.worker),
never in the caller's process. Each returns a CheckResult whose reason says what to fix."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .contract import CAUSALITY_TOLERANCE, COST_EXPONENT_LIMIT, COST_LENGTHS, COST_RELATIVE_LIMIT, DEFAULT_PARAM_BUDGET
from .report import CheckResult

FORWARD_SHAPES = ((1, 1), (2, 37), (3, 64), (2, 130))
MEASURABLE_SECONDS = 0.25  # below this (CPU s at the longest length), a fitted time exponent is mostly timer noise
COST_ROUNDS = 3  # a failing or borderline time exponent is measured up to this many times before it counts
COST_BORDER = 0.15  # an excess over DeltaNet's exponent this close to the limit, either side, is measured again
MAX_COST_LENGTH = 32768  # a steep fit on unmeasurably short times is re-measured on doubled lengths up to this


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


def check_instantiate(cls: type[nn.Module], d_model: int, reference_params: int, budget: float = DEFAULT_PARAM_BUDGET):
    try:
        module = cls(d_model=d_model)
    except Exception as err:
        return CheckResult.fail("instantiate", f"{cls.__name__}(d_model={d_model}) raised {type(err).__name__}: {err}; "
                                "the constructor must take d_model and default every other argument"), None
    if not isinstance(module, nn.Module):
        return CheckResult.fail("instantiate", f"{cls.__name__} is not an nn.Module"), None
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    low, high = (1 - budget) * reference_params, (1 + budget) * reference_params
    if params == 0:
        return CheckResult.fail("instantiate", "the mixer has no trainable parameters"), None
    if not low <= params <= high:
        return CheckResult.fail(
            "instantiate",
            f"{params:,} trainable parameters at d_model={d_model}; the budget is {int(low):,}..{int(high):,} "
            f"(reference {reference_params:,} +-{budget:.0%}); shrink or grow the layer",
            params=params, reference=reference_params,
        ), None
    return CheckResult.ok("instantiate", f"{params:,} parameters (reference {reference_params:,}, +-{budget:.0%} allowed)",
                          params=params, reference=reference_params), module


def check_forward(module: nn.Module, d_model: int) -> CheckResult:
    gen = torch.Generator().manual_seed(0)
    module = module.train()
    bf16_module = None
    for batch, length in FORWARD_SHAPES:
        x = torch.randn(batch, length, d_model, generator=gen)
        cases: list[tuple[str, Callable[[], torch.Tensor], torch.dtype | None]] = [
            ("float32", lambda: module(x), torch.float32),
            ("bf16 autocast", lambda: _autocast_bf16(module, x), None),
        ]
        if bf16_module is None:
            bf16_module = _bf16_copy(module)
        cases.append(("bfloat16", lambda: bf16_module(x.bfloat16()), torch.bfloat16))
        for label, run, dtype in cases:
            try:
                with torch.no_grad():
                    y = run()
            except Exception as err:
                return CheckResult.fail("forward", f"{label} forward on [{batch}, {length}, {d_model}] raised "
                                        f"{type(err).__name__}: {_short(err)}")
            if not isinstance(y, torch.Tensor):
                return CheckResult.fail("forward", f"forward returned {type(y).__name__}; return one tensor [batch, length, d_model]")
            if y.shape != x.shape:
                return CheckResult.fail("forward", f"{label} forward mapped {tuple(x.shape)} to {tuple(y.shape)}; "
                                        "the output must have the input's shape [batch, length, d_model]")
            if dtype is not None and y.dtype != dtype:
                return CheckResult.fail("forward", f"{label} forward returned {y.dtype}; return the input's dtype")
            if not y.is_floating_point():
                return CheckResult.fail("forward", f"{label} forward returned {y.dtype}; return floating point")
            if not _finite(y):
                return CheckResult.fail("forward", f"{label} forward on [{batch}, {length}, {d_model}] produced NaN or Inf; "
                                        "bound the values that overflow (exp, division, large products)")
    return CheckResult.ok("forward", f"shapes {[f'{b}x{t}' for b, t in FORWARD_SHAPES]} in float32, bf16 autocast and bfloat16")


def _autocast_bf16(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return module(x)


def _bf16_copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(torch.bfloat16)


def _short(err: Exception, limit: int = 300) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text[:limit]


def check_backward(module: nn.Module, d_model: int) -> CheckResult:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 70, d_model, generator=gen, requires_grad=True)
    weights = torch.randn(2, 70, d_model, generator=gen)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    def grads() -> dict[str, torch.Tensor | None]:
        module.zero_grad(set_to_none=True)
        (module(x) * weights).sum().backward()
        return {n: p.grad for n, p in named}

    try:
        first = grads()
    except Exception as err:
        return CheckResult.fail("backward", f"backward raised {type(err).__name__}: {_short(err)}")
    missing = [n for n, g in first.items() if g is None]
    if missing:
        return CheckResult.fail("backward", f"no gradient reaches {', '.join(missing[:6])}: the parameter is unused or "
                                "detached from the output; use it or remove it", parameters=missing)
    bad = [n for n, g in first.items() if not _finite(g)]
    if bad:
        return CheckResult.fail("backward", f"non-finite gradients in {', '.join(bad[:6])}", parameters=bad)
    if x.grad is None or not _finite(x.grad):
        return CheckResult.fail("backward", "the input gets no finite gradient")
    zero = [n for n, g in first.items() if g.abs().max() == 0]
    if zero:  # zero-initialised gates legitimately zero their inputs' gradients at init: perturb and retry
        with torch.no_grad():
            for _, p in named:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        second = grads()
        zero = [n for n in zero if second[n] is None or second[n].abs().max() == 0]
        if zero:
            return CheckResult.fail("backward", f"{', '.join(zero[:6])} always get a zero gradient: they cannot learn "
                                    "(detached, multiplied by zero, or cut off); fix the data flow", parameters=zero)
    return CheckResult.ok("backward", f"finite gradients for all {len(named)} parameter tensors")


def check_causality(module: nn.Module, d_model: int) -> CheckResult:
    module = module.eval()
    gen = torch.Generator().manual_seed(2)
    length = 100
    x = torch.randn(3, length, d_model, generator=gen)
    with torch.no_grad():
        base = module(x)
        scale = base.abs().max().item() + 1e-6
        for t in (0, 15, 31, 63, 64, 98):
            y = x.clone()
            y[:, t + 1 :] = torch.randn(3, length - t - 1, d_model, generator=gen) * 2
            out = module(y)
            leak = (out[:, : t + 1] - base[:, : t + 1]).abs().max().item() / scale
            if leak > CAUSALITY_TOLERANCE:
                return CheckResult.fail(
                    "causality",
                    f"changing tokens after position {t} changed the output at positions <= {t} "
                    f"(relative change {leak:.2e}); the mixer looks ahead (reversed cumsum, centred convolution, "
                    "full attention, flip): make every output depend on earlier tokens only",
                    position=t, leak=leak,
                )
        other = x.clone()
        other[0] = torch.randn(length, d_model, generator=gen)
        out = module(other)
        leak = (out[1:] - base[1:]).abs().max().item() / scale
        if leak > CAUSALITY_TOLERANCE:
            return CheckResult.fail("causality", f"changing batch element 0 changed the others (relative {leak:.2e}); "
                                    "sequences in a batch must not interact (no mixing over the batch dimension)")
    return CheckResult.ok("causality", "outputs up to t ignore tokens after t (6 cut points, across chunk boundaries); "
                          "batch elements independent")


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces, and whether any has two dimensions >= the length."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self.largest = 0
        self.square: tuple[int, ...] | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if self.square is None and sum(d >= self.length for d in t.shape) >= 2:
                    self.square = tuple(t.shape)
        return out


def check_cost(module: nn.Module, d_model: int, lengths: tuple[int, ...] = COST_LENGTHS) -> CheckResult:
    """Fit how forward time and the largest intermediate tensor grow with the length.

    Time is the CPU time of the calling thread with one intra-op thread, not wall time: a busy machine
    (other workers training beside the check) deschedules the check but does not add CPU time. Even so a
    linear mixer does not time as T^1.0 on every CPU (plain DeltaNet measured T^1.11 on one machine and
    T^1.43 on another, from cache and page costs that grow with the input), so the time exponent is judged
    against the reference DeltaNet timed beside the candidate in the same rounds: the candidate may grow at
    most T^0.5 faster. A failing or borderline fit is measured again (fastest time per length over the
    rounds) before it counts, and a steep fit on times too short to trust is not waved through: the input is doubled until
    the longest takes measurable time.
    """
    module = module.eval()
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, length, d_model, generator=gen) for length in lengths]
    largest = []
    for length, x in zip(lengths, inputs):
        probe = _LargestTensor(length)
        with torch.no_grad(), probe:
            module(x)
        if probe.square is not None and length >= 1024:
            return CheckResult.fail(
                "cost", f"at length {length} the mixer builds a {probe.square} tensor (length x length): that is "
                "quadratic attention; use a recurrent state or chunks", shape=list(probe.square), length=length)
        largest.append(probe.largest)
    top = slice(-3, None)
    mem_exp = _slope([math.log(n) for n in lengths[top]], [math.log(max(m, 1)) for m in largest[top]])
    if mem_exp > COST_EXPONENT_LIMIT:
        return CheckResult.fail("cost", f"the largest intermediate tensor grows like T^{mem_exp:.2f} "
                                f"(limit T^{COST_EXPONENT_LIMIT}); avoid length x length intermediates",
                                lengths=list(lengths), largest_tensor=largest, memory_exponent=mem_exp)
    reference = _reference_mixer(d_model)
    lengths = list(lengths)
    times, ref_times = [math.inf] * len(lengths), [math.inf] * len(lengths)
    rounds = 0
    while True:
        times = [min(old, _cpu_seconds(module, x)) for old, x in zip(times, inputs)]
        ref_times = [min(old, _cpu_seconds(reference, x)) for old, x in zip(ref_times, inputs)]
        logs = [math.log(n) for n in lengths[top]]
        time_exp = _slope(logs, [math.log(max(t, 1e-6)) for t in times[top]])
        ref_exp = _slope(logs, [math.log(max(t, 1e-6)) for t in ref_times[top]])
        steep = time_exp - ref_exp > COST_RELATIVE_LIMIT
        if steep and times[-1] <= MEASURABLE_SECONDS and lengths[-1] < MAX_COST_LENGTH:
            lengths.append(2 * lengths[-1])  # too fast to judge: time a longer input instead of passing it
            inputs.append(torch.randn(2, lengths[-1], d_model, generator=gen))
            times.append(math.inf)
            ref_times.append(math.inf)
            continue
        rounds += 1
        failing = steep and times[-1] > MEASURABLE_SECONDS
        # a pass just under the limit is as uncertain as a fail just over it: a noisy reference once let a
        # quadratic mixer through at T^1.80 against DeltaNet's T^1.31 (excess 0.49, limit 0.5) in one round
        borderline = abs(time_exp - ref_exp - COST_RELATIVE_LIMIT) < COST_BORDER and times[-1] > MEASURABLE_SECONDS
        if not (failing or borderline) or rounds >= COST_ROUNDS:
            break
    details = dict(lengths=lengths, seconds=times, reference_seconds=ref_times, largest_tensor=largest,
                   time_exponent=time_exp, reference_time_exponent=ref_exp, memory_exponent=mem_exp, rounds=rounds)
    if failing:
        return CheckResult.fail(
            "cost", f"forward time grows like T^{time_exp:.2f} from {lengths[-3]} to {lengths[-1]} tokens, "
            f"T^{time_exp - ref_exp:.2f} faster than DeltaNet's T^{ref_exp:.2f} on this machine (limit "
            f"+{COST_RELATIVE_LIMIT}); the mixer must be sub-quadratic", **details)
    return CheckResult.ok("cost", f"time ~ T^{time_exp:.2f} (DeltaNet here: T^{ref_exp:.2f}), largest tensor ~ "
                          f"T^{mem_exp:.2f} over T={lengths[0]}..{lengths[-1]} ({times[-1]:.2f} CPU s at {lengths[-1]})",
                          **details)


def _reference_mixer(d_model: int) -> nn.Module:
    """The DeltaNet template at the candidate's width: the yardstick for how time grows on this machine."""
    from mixerlab.mixers.delta_net import DeltaNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DeltaNet(d_model=d_model, num_heads=4 if d_model % 4 == 0 else 1).eval()


def _cpu_seconds(module: nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """The fastest of `repeats` forwards (after one warm-up), in CPU seconds of this thread, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # all the work then runs on this thread, where thread_time can see it
    try:
        with torch.no_grad():
            module(x)
            runs = []
            for _ in range(repeats):
                start = time.thread_time()
                module(x)
                runs.append(time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return min(runs)


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-12, sum((x - mx) ** 2 for x in xs))


def check_determinism(module: nn.Module, d_model: int) -> CheckResult:
    module = module.eval()
    x = torch.randn(2, 80, d_model, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = module(x), module(x)
    if not torch.equal(a, b):
        diff = (a - b).abs().max().item()
        return CheckResult.fail("determinism", f"two eval-mode forwards of the same input differ (max {diff:.2e}); "
                                "remove randomness from forward (torch.rand, dropout outside training)")
    return CheckResult.ok("determinism", "eval-mode forward is deterministic")
