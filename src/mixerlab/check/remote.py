"""The checks that run the candidate, on the worker's side of the sandbox (the parent's side: check/__init__.py).

The sandbox worker calls `run_checks` after its lock-down, as the entry point the parent names in its request
(sandbox/worker.py); `integrity` (sandbox/integrity.py) is verified after the candidate's module is loaded and after
every check. Each result goes back as a `check` frame; the parent validates it as hostile data."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from mixerlab.check import dynamic
from mixerlab.check.report import CheckResult
from mixerlab.mixers.loading import MixerSpec
from mixerlab.sandbox.channel import WorkerChannel
from mixerlab.sandbox.integrity import Integrity
from mixerlab.sandbox.entry import ahead_of_request, entry_point


@entry_point
def run_checks(spec: MixerSpec, options: dict[str, Any], channel: WorkerChannel, integrity: Integrity) -> None:
    send = channel.send
    request = dynamic.CheckRequest.model_validate(options)
    cond, d_model = request.conditions, request.d_model

    def emit(result: CheckResult, started: float) -> bool:
        result = result.model_copy(update={"seconds": time.perf_counter() - started})
        send({"type": "check", "result": result.model_dump()})
        return result.passed

    send({"type": "start", "name": "instantiate"})
    started = time.perf_counter()
    try:
        cls = spec.load_class()
        integrity.verify("while its module was loaded")
    except Exception as err:  # a MixerLoadError, an IntegrityError, or anything the module's top level raised
        emit(CheckResult.fail("instantiate", str(err)), started)
        return
    result, module = dynamic.check_instantiate(cls, d_model, request.reference_params, request.budget)
    if not emit(result, started):
        return
    trained = _at_conditions(cls, cond)  # the width and device the evaluation trains at
    checks: tuple[tuple[str, Callable[[], CheckResult]], ...] = (
        ("forward", lambda: _both(dynamic.check_forward(module, d_model), lambda: dynamic.check_forward_as_trained(trained, cond))),
        ("backward", lambda: dynamic.check_backward(module, d_model)),
        ("state", lambda: dynamic.check_state(trained, cond)),
        ("causality", lambda: dynamic.check_causality(trained, cond)),
        ("determinism", lambda: dynamic.check_determinism(module, d_model)),
        ("cost", lambda: dynamic.check_cost(module, d_model)),
    )
    for name, check in checks:
        send({"type": "start", "name": name})
        started = time.perf_counter()
        try:
            result = check()
            integrity.verify(f"during the {name} check")
        except Exception as err:
            result = CheckResult.fail(name, f"raised {type(err).__name__}: {str(err)[:400]}")
        if not emit(result, started):
            return
    send({"type": "fingerprint", "values": dynamic.fingerprint(cls, cond)})
    integrity.verify("while its fingerprint was taken")


@ahead_of_request("cost-reference")
def _time_cost_reference(_: str | None = None) -> None:
    dynamic.time_reference_ahead()  # the cost check's first reference timing, before any candidate is loaded


def _at_conditions(cls: type, cond: dynamic.Conditions) -> torch.nn.Module:
    """The mixer at the evaluation's width on its device, seeded like the budget check's instance."""
    torch.manual_seed(0)
    return cls(d_model=cond.d_model).to(cond.device)


def _both(first: CheckResult, second: Callable[[], CheckResult]) -> CheckResult:
    if not first.passed:
        return first
    then = second()
    return then if not then.passed else first.model_copy(update={"reason": f"{first.reason}; {then.reason}"})
