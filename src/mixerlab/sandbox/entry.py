"""What the sandbox worker runs for its parent: a trusted function marked `@entry_point`, named in a typed request.

The sandbox knows nothing of checks or evaluations: it is the jail (confine.py), the wire (channel.py, shared.py)
and the integrity fence (integrity.py). The code that runs a candidate's checks lives in `check/remote.py`, the code
that trains it in `evaluate/remote.py`; each marks its function with `@entry_point`, and the parent names it in its
`WorkerRequest` as "module:function". The worker imports it before its lock-down and refuses any name that is not
a mixerlab function marked so (the request comes from the trusted parent; this is a second fence, not the first).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

_MARK = "__mixerlab_sandbox_entry__"

# the entry points a spare worker imports while it waits (before it knows which one it will run)
KNOWN_MODULES = ("mixerlab.check.remote", "mixerlab.evaluate.remote")


# Trusted work a worker may do before it reads its request, by the name SandboxLimits.ahead gives it (a spare
# worker has it done by the time a candidate comes); the entry points' modules register theirs. A name may carry
# one argument after a colon ("train-warm-up:tiny").
AHEAD: dict[str, Callable[[str | None], None]] = {}


def ahead_of_request(name: str) -> Callable[[Callable[[str | None], None]], Callable[[str | None], None]]:
    """Register `function(argument)` as the work `name` in SandboxLimits.ahead asks a worker to do before its
    request."""
    def register(function: Callable[[str | None], None]) -> Callable[[str | None], None]:
        AHEAD[name] = function
        return function
    return register


def do_ahead(names: str) -> None:
    """The work SandboxLimits.ahead named (comma-separated `name` or `name:argument`), in order."""
    for item in filter(None, names.split(",")):
        name, _, argument = item.partition(":")
        AHEAD[name](argument or None)


def entry_point(function: Callable) -> Callable:
    """Mark `function(spec, options, channel, integrity)` as one the sandbox worker may run."""
    setattr(function, _MARK, True)
    return function


class CandidateSource(BaseModel):
    """The candidate's file, as the worker loads it (mixers.loading.MixerSpec without what only the parent needs)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200)
    source: str
    filename: str = Field(default="<mixer>", max_length=4096)
    class_name: str | None = Field(default=None, max_length=200)


class WorkerRequest(BaseModel):
    """One request to a sandbox worker: which trusted entry point runs, on which candidate, with what options
    (validated again by the entry point's own model: check.dynamic.CheckRequest, evaluate.remote.EvaluationRequest)."""

    model_config = ConfigDict(extra="forbid")

    entry: str = Field(pattern=r"^mixerlab(\.[a-z_]+)+:[a-z_]+$")
    spec: CandidateSource
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d{1,2})?)$")
    options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, entry: Callable, spec: Any, device: str, options: dict[str, Any]) -> "WorkerRequest":
        """The request that runs `entry` (a function marked `@entry_point`) on `spec` (a MixerSpec)."""
        if not getattr(entry, _MARK, False):
            raise ValueError(f"{entry.__module__}.{entry.__name__} is not a sandbox entry point")
        return cls(entry=f"{entry.__module__}:{entry.__name__}", device=device, options=options,
                   spec=CandidateSource(name=spec.name, source=spec.source, filename=spec.filename,
                                        class_name=spec.class_name))


def resolve(name: str) -> Callable:
    """The function a request names, imported; ValueError unless it is a mixerlab function marked `@entry_point`."""
    module, _, function = name.partition(":")
    found = getattr(importlib.import_module(module), function, None) if module.startswith("mixerlab.") else None
    if found is None or not getattr(found, _MARK, False):
        raise ValueError(f"{name!r} is not a sandbox entry point")
    return found
