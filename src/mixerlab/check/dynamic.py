"""The checks that run the candidate. They execute inside the sandbox worker (mixerlab.sandbox.worker),
never in the caller's process. Each returns a CheckResult whose reason says what to fix.

Causality, batch independence, carried state and cost are tested under the conditions the evaluation will
train and score in (`Conditions`: the profile's batch size and lengths plus random ones, train mode with
gradients, the evaluation's device, bf16 autocast on CUDA, after warm-up calls): a mixer that behaves only
when it looks checked gains nothing. The scored evaluation audits causality once more on its own test rows
(evaluate/audit.py).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .contract import (
    CAUSALITY_TOLERANCE,
    COST_EXPONENT_LIMIT,
    COST_LENGTHS,
    COST_RELATIVE_LIMIT,
    DEFAULT_PARAM_BUDGET,
    WARMUP_CALLS,
)
from .report import CheckResult


class Conditions(BaseModel):
    """Where and how the candidate will be trained: the checks reproduce it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    d_model: int = Field(default=64, ge=8, le=4096)  # the evaluation's width (the budget is checked at 128)
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    autocast: bool = False  # bf16 autocast, as training on CUDA runs
    batch_size: int = Field(default=64, ge=1, le=4096)
    lengths: tuple[int, ...] = Field(default=(8, 32), min_length=1)  # the profile's input lengths
    seed: int = 0  # which random lengths and cut points (the caller draws it; a candidate cannot predict it)
    profile: str = ""  # the profile these conditions are of ("": set by hand)

    @classmethod
    def for_profile(cls, profile, device: str = "cpu", seed: int = 0) -> "Conditions":
        lengths = sorted({s.input_len for settings in profile.settings.values() for s in settings})
        cuda = device.startswith("cuda")
        return cls(d_model=profile.train.d_model, device=device, autocast=cuda and profile.train.precision != "fp32",
                   batch_size=profile.train.batch_size, lengths=tuple(lengths), seed=seed, profile=profile.name)

    def describe(self) -> str:
        """What the checks ran under, in words (`mixerlab check` prints it; the report keeps it)."""
        source = f"the `{self.profile}` profile's conditions" if self.profile else "these conditions"
        lengths = ", ".join(map(str, self.lengths))
        return (f"{source}: width {self.d_model}, batch {self.batch_size}, lengths {lengths}, "
                f"{'bf16 autocast' if self.autocast else 'fp32'} on {self.device}")

    def amp(self):
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.autocast)

    @property
    def tolerance(self) -> float:
        return 2e-2 if self.autocast else CAUSALITY_TOLERANCE

FORWARD_SHAPES = ((1, 1), (2, 37), (3, 64), (2, 130))
MEASURABLE_SECONDS = 0.25  # below this (CPU s at the longest length), a fitted time exponent is mostly timer noise
COST_ROUNDS = 3  # a failing or borderline time exponent is measured up to this many times before it counts
COST_BORDER = 0.15  # an excess over DeltaNet's exponent this close to the limit, either side, is measured again
MAX_COST_LENGTH = 32768  # a steep fit on unmeasurably short times is re-measured on doubled lengths up to this


class CheckRequest(BaseModel):
    """What the sandboxed checks get (check/__init__.py builds it)."""

    model_config = ConfigDict(extra="forbid")

    d_model: int = 128  # width of the parameter budget and of the shape checks
    budget: float = 0.5
    reference_params: int
    conditions: Conditions = Conditions()



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


def check_forward_as_trained(module: nn.Module, cond: Conditions) -> CheckResult:
    """One forward as the evaluation will run it: its batch, its longest input, its width and device."""
    shape = (cond.batch_size, max(cond.lengths), cond.d_model)
    try:
        y = _run(module, torch.randn(*shape, generator=torch.Generator().manual_seed(5)).to(cond.device), cond, 0)
    except Exception as err:
        return CheckResult.fail("forward", f"forward as training runs it ({list(shape)}, train mode, {cond.device}"
                                f"{', bf16 autocast' if cond.autocast else ''}) raised {type(err).__name__}: {_short(err)}")
    if not _finite(y):
        return CheckResult.fail("forward", f"forward as training runs it ({list(shape)}) produced NaN or Inf; bound "
                                "the values that overflow (exp, division, large products)")
    return CheckResult.ok("forward", f"{list(shape)} as trained on {cond.device}")


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


def _inputs(cond: Conditions, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, length, cond.d_model, generator=gen).to(cond.device)


def _run(module: nn.Module, x: torch.Tensor, cond: Conditions, seed: int, training: bool = True) -> torch.Tensor:
    """One forward as training runs it (train mode, gradients on, the input needing grad, autocast on CUDA), or
    as scoring runs it (eval mode, no gradients); the random state fixed so that dropout draws alike across
    compared calls."""
    torch.manual_seed(seed)
    module.train(training)
    with torch.set_grad_enabled(training), cond.amp():
        y = module(x.detach().requires_grad_(training))
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise ValueError(f"forward mapped {tuple(x.shape)} to {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    return y.detach().float()


def check_lengths(cond: Conditions, gen: torch.Generator) -> list[int]:
    """The profile's lengths, and two random ones up to twice the longest (a leak may wait for unseen lengths)."""
    top = max(cond.lengths)
    extra = [int(torch.randint(2, 2 * top + 2, (1,), generator=gen)) for _ in range(2)]
    return sorted(set(cond.lengths) | set(extra))


def _causal_at(module: nn.Module, cond: Conditions, gen: torch.Generator, length: int, training: bool,
               tolerance: float) -> CheckResult | None:
    """One length, one mode: half the batch replaced (the rest must not move), then each element's own cut (its
    outputs up to the cut must not move); a failure, or None."""
    batch = cond.batch_size
    mode = (f"train mode, gradients on, batch {batch}, length {length}" if training else
            f"eval mode as scored, batch {batch}, length {length}") + (", bf16 autocast" if cond.autocast else "") \
        + f", {cond.device}"
    x = _inputs(cond, batch, length, gen)
    base = _run(module, x, cond, 0, training)
    scale = base.abs().max().item() + 1e-6
    replaced = torch.zeros(batch, dtype=torch.bool)
    replaced[torch.randperm(batch, generator=gen)[: batch // 2]] = True
    replaced = replaced.to(cond.device)
    for changed in (replaced, ~replaced):  # every element is changed once and watched once
        if not changed.any() or changed.all():
            continue
        z = torch.where(changed[:, None, None], _inputs(cond, batch, length, gen), x)
        moved_others = (_run(module, z, cond, 0, training) - base)[~changed].abs().max().item() / scale
        if moved_others > tolerance:
            return CheckResult.fail(
                "causality", f"in {mode}: changing some sequences of the batch changed the others (relative "
                f"{moved_others:.2e}); sequences in a batch must not interact (no mixing over the batch dimension, no "
                "statistics across it)", length=length, batch=batch, training=training, leak=moved_others)
    cuts = torch.randint(0, length - 1, (batch,), generator=gen).to(cond.device)
    after = torch.arange(length, device=cond.device)[None, :] > cuts[:, None]  # [B, T]
    y = torch.where(after[..., None], _inputs(cond, batch, length, gen) * 2, x)
    moved = ((_run(module, y, cond, 0, training) - base).abs() * (~after)[..., None]).amax(dim=(1, 2)) / scale
    worst = int(moved.argmax())
    if moved[worst] > tolerance:
        t = int(cuts[worst])
        return CheckResult.fail(
            "causality", f"in {mode}: changing the tokens after position {t} of sequence {worst} changed its output at "
            f"positions <= {t} (relative change {float(moved[worst]):.2e}); the mixer looks ahead (reversed cumsum, "
            "centred convolution, full attention, flip): make every output depend on earlier tokens only",
            position=t, length=length, batch=batch, training=training, leak=float(moved[worst]))
    return None


def check_causality(module: nn.Module, cond: Conditions) -> CheckResult:
    """Under training conditions: every batch element gets its own cut t and new tokens after it, and the
    outputs up to t must not move; then half the batch is replaced, and the other half must not move."""
    module = module.train()
    gen = torch.Generator().manual_seed(1000 + cond.seed)
    batch = cond.batch_size
    warm = _inputs(cond, batch, cond.lengths[0], gen)
    for i in range(WARMUP_CALLS):  # a leak that waits for the n-th call has to show within the checks
        _run(module, warm, cond, i)
    tolerance = cond.tolerance
    lengths = check_lengths(cond, gen)
    for length in lengths:
        if length < 2:
            continue
        for training in (True, False):  # as trained, and as scored
            if failure := _causal_at(module, cond, gen, length, training, tolerance):
                return failure
    module.train()
    return CheckResult.ok(
        "causality", f"outputs up to t ignore tokens after t and batch elements are independent, in train mode with "
        f"gradients and in eval mode, at batch {batch}, lengths {lengths}"
        f"{', bf16 autocast' if cond.autocast else ''} on {cond.device}, after {WARMUP_CALLS} warm-up calls")


def _state(module: nn.Module) -> dict[str, object]:
    """Everything a forward could keep between calls: parameters, buffers, tensor and plain attributes."""
    found: dict[str, object] = {}
    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if name in ("_parameters", "_buffers"):
                for key, tensor in value.items():
                    if tensor is not None:
                        found[f"{prefix}.{key}"] = tensor.detach().clone()
            elif name in ("_modules", "training") or name.endswith("hooks") or name.startswith("_forward") \
                    or name.startswith("_backward") or name.startswith("_state_dict") or name.startswith("_load_state"):
                continue
            elif isinstance(value, torch.Tensor):
                found[f"{prefix}.{name}"] = value.detach().clone()
            elif isinstance(value, (int, float, bool, str, bytes, type(None), tuple, list, dict, set)):
                try:
                    found[f"{prefix}.{name}"] = copy.deepcopy(value)
                except Exception:  # noqa: BLE001 - a value that cannot be copied is compared by identity
                    found[f"{prefix}.{name}"] = id(value)
            else:
                found[f"{prefix}.{name}"] = id(value)
    return found


def _state_changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    changed = [name for name in after if name not in before]
    for name, old in before.items():
        new = after.get(name, "<gone>")
        if isinstance(old, torch.Tensor):
            if not (isinstance(new, torch.Tensor) and new.shape == old.shape and torch.equal(new, old)):
                changed.append(name)
        elif type(old) is not type(new) or old != new:
            changed.append(name)
    return [n.lstrip(".") for n in changed]


def check_state(module: nn.Module, cond: Conditions) -> CheckResult:
    """forward keeps nothing from call to call: parameters, buffers and attributes are unchanged by it (train
    and eval mode, with a backward), and an input gives the same output before and after other calls."""
    gen = torch.Generator().manual_seed(2000 + cond.seed)
    before = _state(module)
    length = max(cond.lengths)
    x = _inputs(cond, min(cond.batch_size, 8), length, gen)
    module.train()
    torch.manual_seed(0)
    with cond.amp():
        module(x.requires_grad_(True)).float().square().mean().backward()
    module.zero_grad(set_to_none=True)
    module.eval()
    with torch.no_grad(), cond.amp():
        first = module(x.detach()).float()
        for other in (3, max(2, length // 2), 2 * length):
            module(_inputs(cond, 2, other, gen))
        again = module(x.detach()).float()
    changed = _state_changes(before, _state(module))
    module.train()
    if changed:
        return CheckResult.fail("state", f"forward changed {', '.join(changed[:6])}: a mixer must not keep state from "
                                "call to call (counters, caches, running statistics); compute everything from the input",
                                changed=changed)
    tolerance = 0.0 if cond.device == "cpu" else 1e-5
    diff = (first - again).abs().max().item() / (first.abs().max().item() + 1e-6)
    if diff > tolerance:
        return CheckResult.fail("state", f"the same input gave a different output after other calls (relative {diff:.2e}); "
                                "a mixer must not carry state between calls")
    return CheckResult.ok("state", "forward and backward leave parameters, buffers and attributes unchanged; the same "
                          "input gives the same output after other calls")


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


def check_cost(module: nn.Module, d_model: int, lengths: tuple[int, ...] = COST_LENGTHS, train_mode: bool = True) -> CheckResult:
    """Fit how forward time and the largest intermediate tensor grow with the length.

    Time is the CPU time of the calling thread with one intra-op thread, not wall time: a busy machine
    (other workers training beside the check) deschedules the check but does not add CPU time. Even so a
    linear mixer does not time as T^1.0 on every CPU (plain DeltaNet measured T^1.11 on one machine and
    T^1.43 on another, from cache and page costs that grow with the input), so the time exponent is judged
    against the reference DeltaNet timed beside the candidate in the same rounds: the candidate may grow at
    most T^0.5 faster. A failing or borderline fit is measured again (fastest time per length over the
    rounds) before it counts, and a steep fit on times too short to trust is not waved through: the input is doubled until
    the longest takes measurable time.

    Time is measured as training runs (train mode, recording the graph for a backward), the largest tensor in
    both modes: a mixer cannot be linear only where it is looked at.
    """
    gen, inputs = _cost_inputs(d_model, lengths)
    largest = []
    for length, x in zip(lengths, inputs):
        sizes = []
        for training in (False, True):
            module.train(training)
            probe = _LargestTensor(length)
            with torch.set_grad_enabled(training), probe:
                module(x.detach().requires_grad_(training))
            if probe.square is not None and length >= 1024:
                return CheckResult.fail(
                    "cost", f"at length {length} the mixer builds a {probe.square} tensor (length x length) in "
                    f"{'train' if training else 'eval'} mode: that is quadratic attention; use a recurrent state or "
                    "chunks", shape=list(probe.square), length=length, training=training)
            sizes.append(probe.largest)
        largest.append(max(sizes))
    module.train(train_mode)
    top = slice(-COST_FITTED, None)
    mem_exp = _slope([math.log(n) for n in lengths[top]], [math.log(max(m, 1)) for m in largest[top]])
    if mem_exp > COST_EXPONENT_LIMIT:
        return CheckResult.fail("cost", f"the largest intermediate tensor grows like T^{mem_exp:.2f} "
                                f"(limit T^{COST_EXPONENT_LIMIT}); avoid length x length intermediates",
                                lengths=list(lengths), largest_tensor=largest, memory_exponent=mem_exp)
    reference = _reference_mixer(d_model).train(train_mode)
    ahead = _REFERENCE_TIMES.pop((d_model, tuple(lengths), train_mode), None)  # round one's, timed while waiting
    lengths = list(lengths)
    times, ref_times = [math.inf] * len(lengths), [math.inf] * len(lengths)
    rounds = 0
    while True:
        # only the longest three lengths enter the fits: the shorter ones are not timed
        times = _fastest(module, inputs, times)
        ref_times = list(ahead) if ahead and rounds == 0 and len(ahead) == len(inputs) else _fastest(reference, inputs, ref_times)
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
    shown = lambda values: [v if math.isfinite(v) else None for v in values]  # noqa: E731 - None: not timed
    details = dict(lengths=lengths, seconds=shown(times), reference_seconds=shown(ref_times), largest_tensor=largest,
                   time_exponent=time_exp, reference_time_exponent=ref_exp, memory_exponent=mem_exp, rounds=rounds)
    if failing:
        return CheckResult.fail(
            "cost", f"forward time grows like T^{time_exp:.2f} from {lengths[-3]} to {lengths[-1]} tokens, "
            f"T^{time_exp - ref_exp:.2f} faster than DeltaNet's T^{ref_exp:.2f} on this machine (limit "
            f"+{COST_RELATIVE_LIMIT}); the mixer must be sub-quadratic", **details)
    return CheckResult.ok("cost", f"time ~ T^{time_exp:.2f} (DeltaNet here: T^{ref_exp:.2f}), largest tensor ~ "
                          f"T^{mem_exp:.2f} over T={lengths[0]}..{lengths[-1]} ({times[-1]:.2f} CPU s at {lengths[-1]})",
                          **details)


COST_INPUT_SEED = 3
COST_FITTED = 3  # the longest lengths the time and memory exponents are fitted over
_REFERENCE_TIMES: dict[tuple[int, tuple[int, ...], bool], list[float]] = {}


def time_reference_ahead(d_model: int = 128, lengths: tuple[int, ...] = COST_LENGTHS, train_mode: bool = True) -> None:
    """Time the reference DeltaNet for the cost check's first round before any candidate exists: a check worker
    does it while it waits for its request (sandbox/worker.py), so a candidate's check times only the candidate.
    A failing or borderline first round times both again, side by side (check_cost)."""
    _, inputs = _cost_inputs(d_model, lengths)
    reference = _reference_mixer(d_model).train(train_mode)
    _REFERENCE_TIMES[(d_model, tuple(lengths), train_mode)] = _fastest(reference, inputs, [math.inf] * len(inputs))


def _cost_inputs(d_model: int, lengths: tuple[int, ...]) -> tuple[torch.Generator, list[torch.Tensor]]:
    """The cost check's inputs (the same for the candidate and the reference timed ahead), and the generator that
    draws any longer ones."""
    gen = torch.Generator().manual_seed(COST_INPUT_SEED)
    return gen, [torch.randn(2, length, d_model, generator=gen) for length in lengths]


def _fastest(module: nn.Module, inputs: list[torch.Tensor], best: list[float]) -> list[float]:
    """`best` with the longest COST_FITTED inputs timed once more (the fastest time kept); the rest as they were."""
    first = len(inputs) - COST_FITTED
    return [old if i < first else min(old, _cpu_seconds(module, x)) for i, (old, x) in enumerate(zip(best, inputs))]


def _reference_mixer(d_model: int) -> nn.Module:
    """The DeltaNet template at the candidate's width: the yardstick for how time grows on this machine."""
    from mixerlab.mixers.delta_net import DeltaNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DeltaNet(d_model=d_model, num_heads=4 if d_model % 4 == 0 else 1)


def _cpu_seconds(module: nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """The fastest of `repeats` forwards (after one warm-up), in CPU seconds of this thread, on one thread, in
    the module's current mode (train mode records the graph for a backward, as training does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # all the work then runs on this thread, where thread_time can see it
    try:
        with torch.set_grad_enabled(module.training):
            x = x.detach().requires_grad_(module.training)
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


FINGERPRINT_SEED = 20240901
FINGERPRINT_VALUES = 256  # sampled output and input-gradient values per length
FINGERPRINT_TOLERANCE = 1e-6  # relative: float32 forms of the same computation agree far closer on the CPU
# weights as initialised, then every parameter scaled up: an edit that acts only on large states or activations
# (a norm clamp) must show before it is called inert
WEIGHT_SCALES = (1.0, 4.0)


def fingerprint(cls: type[nn.Module], cond: Conditions) -> list[float]:
    """What the mixer does, as numbers: built from a fixed seed at the evaluation's width, run in train mode on
    fixed inputs at the profile's lengths (up to 256) on the CPU in float32, with the weights as built and then
    scaled up 4x (the large states training can reach); sampled outputs and gradients of the input. Two mixers whose fingerprints agree start training identically: a candidate whose edit never acts at
    these lengths (a clamp that never fires) has its parent's fingerprint, and training it again teaches nothing
    (the loop records it as inert instead: loop/stages.py). Same seed, same parameter order: the same initial weights wherever
    the parameters match."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FINGERPRINT_SEED)
        module = cls(d_model=cond.d_model).train()
        gen = torch.Generator().manual_seed(FINGERPRINT_SEED)
        values: list[float] = []
        for scale in WEIGHT_SCALES:  # the initial weights, and weights grown as training can grow them
            if scale != 1.0:
                with torch.no_grad():
                    for param in module.parameters():
                        param.mul_(scale)
            for length in sorted({min(256, max(2, t)) for t in cond.lengths}):
                x = torch.randn(2, length, cond.d_model, generator=gen, requires_grad=True)
                weights = torch.randn(2, length, cond.d_model, generator=gen)
                torch.manual_seed(FINGERPRINT_SEED)  # dropout, if any, draws alike
                out = module(x)
                (grad,) = torch.autograd.grad((out * weights).sum(), x)
                picks = torch.randperm(out.numel(), generator=gen)[:FINGERPRINT_VALUES]
                values += out.detach().flatten()[picks].tolist() + grad.flatten()[picks].tolist()
    return values


def same_behaviour(a: list[float], b: list[float]) -> float | None:
    """The largest relative difference of two fingerprints, or None if they are not comparable (other lengths)."""
    if len(a) != len(b) or not a:
        return None
    ta, tb = torch.tensor(a), torch.tensor(b)
    if not (torch.isfinite(ta).all() and torch.isfinite(tb).all()):
        return None
    return ((ta - tb).abs().max() / (tb.abs().max() + 1e-12)).item()
