"""Check results: one pass/fail line per check with a reason a human or a model can act on."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from mixerlab.text import shown

# cheapest first: the first failure stops the chain
CHECK_ORDER = ("static", "novelty", "instantiate", "forward", "backward", "state", "causality", "determinism", "cost")
CHECK_TITLES = {
    "static": "parses; only allowed imports, names and attributes",
    "novelty": "not a copy of an existing experiment",
    "instantiate": "instantiates; parameter budget",
    "forward": "forward: shapes, dtypes, finite (fp32, bf16)",
    "backward": "backward: finite gradients to every parameter",
    "causality": "causal, batch elements independent (as trained)",
    "state": "no state kept from call to call",
    "determinism": "deterministic forward in eval mode",
    "cost": "sub-quadratic time and memory in sequence length",
}
SANDBOXED_CHECKS = CHECK_ORDER[2:]  # those that run the candidate, in the sandbox


class CheckResult(BaseModel):
    name: str
    status: str  # "pass" | "fail" | "not run"
    reason: str
    seconds: float = 0.0
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("reason")
    @classmethod
    def _shown(cls, reason: str) -> str:  # it quotes the candidate's own messages: no control characters, bounded
        return shown(reason)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @classmethod
    def ok(cls, name: str, reason: str, **details: Any) -> "CheckResult":
        return cls(name=name, status="pass", reason=reason, details=details)

    @classmethod
    def fail(cls, name: str, reason: str, **details: Any) -> "CheckResult":
        return cls(name=name, status="fail", reason=reason, details=details)


class CheckReport(BaseModel):
    candidate: str
    code_hash: str
    checks: list[CheckResult]
    seconds: float = 0.0
    fingerprint: list[float] | None = None  # what it does (check.dynamic.fingerprint), once every check passed
    conditions: str = ""  # what the checks reproduced (Conditions.describe): a pass holds for those only

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and len(self.checks) == len(CHECK_ORDER)

    @property
    def first_failure(self) -> CheckResult | None:
        return next((c for c in self.checks if c.status == "fail"), None)

    def summary(self) -> str:
        """The text a repair step receives: what failed and why."""
        failure = self.first_failure
        if failure is None:
            return "all checks passed"
        return f"check '{failure.name}' ({CHECK_TITLES[failure.name]}) failed: {failure.reason}"

    def completed(self) -> "CheckReport":
        """The report with every check that did not run listed as such, in order."""
        have = {c.name for c in self.checks}
        missing = [CheckResult(name=n, status="not run", reason="an earlier check failed") for n in CHECK_ORDER if n not in have]
        ordered = sorted(self.checks + missing, key=lambda c: CHECK_ORDER.index(c.name))
        return self.model_copy(update={"checks": ordered})
