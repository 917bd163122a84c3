"""Is a candidate a valid, causal, sub-quadratic, numerically sane mixer? (`mixerlab check`)

`check_candidate` runs the eight checks cheapest first: the static check here, checks 2-7 in the sandbox
(a separate, limited process: the candidate never runs in the caller), novelty here. The first failure
stops the chain; its reason is what a repair step is given.
"""

from __future__ import annotations

import time

from mixerlab.mixers import builtin_spec
from mixerlab.mixers.loading import MixerSpec, normalized_code
from mixerlab.sandbox import SandboxLimits, run_sandboxed

from .contract import DEFAULT_PARAM_BUDGET
from .report import CHECK_ORDER, CHECK_TITLES, CheckReport, CheckResult
from .static import static_check

__all__ = ["CHECK_ORDER", "CHECK_TITLES", "CheckReport", "CheckResult", "check_candidate", "known_baselines", "novelty_hash"]


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
) -> CheckReport:
    """Run the checks on `spec`. `known` maps novelty hashes to experiment names (duplicates fail)."""
    start = time.perf_counter()
    checks: list[CheckResult] = []

    def report() -> CheckReport:
        return CheckReport(candidate=spec.name, code_hash=spec.code_hash, checks=checks,
                           seconds=time.perf_counter() - start).completed()

    t0 = time.perf_counter()
    result, _ = static_check(spec.source, spec.filename)
    checks.append(result.model_copy(update={"seconds": time.perf_counter() - t0}))
    if not result.passed:
        return report()

    in_progress: list[str] = []

    def on_message(message: dict) -> None:
        if message.get("type") == "start":
            in_progress.append(message["name"])
        elif message.get("type") == "check":
            checks.append(CheckResult.model_validate(message["result"]))

    request = {
        "kind": "check",
        "spec": {"name": spec.name, "source": spec.source, "filename": spec.filename, "class_name": spec.class_name},
        "options": {"d_model": d_model, "budget": budget,
                    "reference_params": _reference_params(reference_for(spec.source), d_model)},
    }
    outcome = run_sandboxed(request, limits, on_message)
    done = {c.name for c in checks}
    if outcome.status != "ok" or any(m.get("type") == "error" for m in outcome.messages):
        current = next((n for n in reversed(in_progress) if n not in done), None) or "instantiate"
        error = next((m["error"] for m in outcome.messages if m.get("type") == "error"), None)
        reason = outcome.reason(limits) if outcome.status != "ok" else f"the worker failed: {error}"
        if outcome.status == "crash" and error:
            reason = f"{error}"
        checks.append(CheckResult.fail(current, reason, sandbox=outcome.status))
        return report()
    if not all(c.passed for c in checks) or len(checks) < len(CHECK_ORDER) - 1:
        return report()

    if check_novelty:
        t0 = time.perf_counter()
        known = {**known_baselines(), **(known or {})}
        digest = novelty_hash(spec.source)
        if digest in known:
            checks.append(CheckResult.fail("novelty", f"the same code as the existing experiment {known[digest]!r} "
                                           "(ignoring comments and formatting); change the mechanism", duplicate_of=known[digest]))
        else:
            checks.append(CheckResult.ok("novelty", f"new code ({digest})"))
        checks[-1] = checks[-1].model_copy(update={"seconds": time.perf_counter() - t0})
    else:
        checks.append(CheckResult.ok("novelty", "not checked (a baseline)"))
    return report()
