"""Is a candidate a valid, causal, sub-quadratic, numerically sane mixer? (`mixerlab check`)

`check_candidate` runs the checks cheapest first: the static rules and novelty here (nothing of the
candidate runs), then instantiate .. cost in the sandbox (a separate, limited, confined process: the
candidate never runs in the caller), under the conditions its evaluation will train in. The first failure
stops the chain; its reason is what a repair step is given.
"""

from __future__ import annotations

import time

from pydantic import ValidationError

from mixerlab.mixers import builtin_spec
from mixerlab.mixers.loading import MixerSpec, normalized_code
from mixerlab.sandbox import SandboxLimits, run_sandboxed
from mixerlab.sandbox.channel import ProtocolError
from mixerlab.sandbox.entry import WorkerRequest

from .contract import DEFAULT_PARAM_BUDGET
from .dynamic import CheckRequest, Conditions
from .report import CHECK_ORDER, CHECK_TITLES, SANDBOXED_CHECKS, CheckReport, CheckResult
from .static import static_check

__all__ = ["CHECK_ORDER", "CHECK_TITLES", "CheckReport", "CheckResult", "Conditions", "check_candidate", "known_baselines",
           "novelty_hash"]


def novelty_hash(source: str) -> str:
    """Identity of a candidate for duplicate detection: its AST without docstrings, comments or layout."""
    import hashlib

    return hashlib.sha256(normalized_code(source).encode()).hexdigest()[:16]


def known_baselines() -> dict[str, str]:
    return {novelty_hash(builtin_spec(n).source): builtin_spec(n).name for n in ("delta_net", "gated_delta_net")}


def reference_for(source: str) -> str:
    """The baseline a candidate is measured against: Gated DeltaNet for GatedDeltaNet files, else DeltaNet."""
    return "gated_delta_net" if "class GatedDeltaNet" in source and "class DeltaNet(" not in source else "delta_net"


def _reference_params(name: str, d_model: int) -> int:
    module = builtin_spec(name).load_class()(d_model=d_model)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_candidate(
    spec: MixerSpec,
    known: dict[str, str] | None = None,
    d_model: int = 128,
    budget: float = DEFAULT_PARAM_BUDGET,
    limits: SandboxLimits = SandboxLimits(),
    check_novelty: bool = True,
    conditions: Conditions | None = None,
) -> CheckReport:
    """Run the checks on `spec`, cheapest first. `known` maps novelty hashes to experiment names (duplicates
    fail). `conditions`: how the evaluation will train it (default: the `tiny` profile on the CPU)."""
    start = time.perf_counter()
    checks: list[CheckResult] = []

    fingerprint: list[float] = []

    def report() -> CheckReport:
        return CheckReport(candidate=spec.name, code_hash=spec.code_hash, checks=checks, seconds=time.perf_counter() - start,
                           fingerprint=fingerprint or None, conditions=(conditions or Conditions()).describe()).completed()

    t0 = time.perf_counter()
    result, _ = static_check(spec.source, spec.filename)
    checks.append(result.model_copy(update={"seconds": time.perf_counter() - t0}))
    if not result.passed:
        return report()

    t0 = time.perf_counter()
    if check_novelty:
        known = {**known_baselines(), **(known or {})}
        digest = novelty_hash(spec.source)
        if digest in known:
            checks.append(CheckResult.fail("novelty", f"the same code as the existing experiment {known[digest]!r} "
                                           "(ignoring comments and formatting); change the mechanism", duplicate_of=known[digest]))
            return report()
        checks.append(CheckResult.ok("novelty", f"new code ({digest})"))
    else:
        checks.append(CheckResult.ok("novelty", "not checked (a baseline)"))
    checks[-1] = checks[-1].model_copy(update={"seconds": time.perf_counter() - t0})

    expected = list(SANDBOXED_CHECKS)
    in_progress: list[str] = []

    def on_message(message: dict, payload: bytes) -> None:
        # from a process that ran candidate code: data to validate, in the order the worker's code sends it
        kind = message.get("type")
        if kind == "start":
            if message.get("name") not in expected:
                raise ProtocolError(f"a check {message.get('name')!r} out of order")
            in_progress.append(message["name"])
        elif kind == "check":
            try:
                result = CheckResult.model_validate(message.get("result"))
            except ValidationError:
                raise ProtocolError("a malformed check result") from None
            if not expected or result.name != expected[0] or not in_progress or in_progress[-1] != result.name \
                    or result.status not in ("pass", "fail"):
                raise ProtocolError(f"a result for check {result.name!r} out of order")
            expected.pop(0)
            checks.append(result)
        elif kind == "fingerprint":
            values = message.get("values")
            if expected or fingerprint or not isinstance(values, list) or len(values) > 20_000 \
                    or not all(isinstance(v, float) for v in values):
                raise ProtocolError("a malformed or early fingerprint")
            fingerprint.extend(values)
        elif kind not in ("error", "done"):
            raise ProtocolError(f"an unexpected message {kind!r} from a check")

    from mixerlab.check.remote import run_checks

    options = CheckRequest(d_model=d_model, budget=budget, conditions=conditions or Conditions(),
                           reference_params=_reference_params(reference_for(spec.source), d_model))
    request = WorkerRequest.of(run_checks, spec, (conditions or Conditions()).device, options.model_dump(mode="json"))
    outcome = run_sandboxed(request.model_dump(mode="json"), limits, on_message)
    failed = any(not c.passed for c in checks)
    if outcome.status != "ok" or (not failed and expected):
        # the check that was running when the worker stopped; after the last one, the last one (the worker
        # verifies trusted code once more before it says it is done)
        current = next((n for n in reversed(in_progress) if n in expected), None) or (expected[0] if expected else checks[-1].name)
        reason = outcome.error if outcome.status == "crash" and outcome.error else outcome.reason(limits) \
            if outcome.status != "ok" else f"the worker stopped before the {current} check finished"
        checks[:] = [c for c in checks if c.name != current]
        checks.append(CheckResult.fail(current, reason, sandbox=outcome.status, traceback=outcome.traceback_tail))
    return report()
