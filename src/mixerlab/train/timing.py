"""Where an evaluation's wall time goes, by part (setup, compile, steps, test forwards, shipping logits, ...).

A `PartClock` attributes host wall time to the part that is running: `switch(name)` closes the current part and
opens the next. On CUDA the work is asynchronous, so with `sync=True` every switch first waits for the thread's
current stream (the trainer's steps, evaluations and side-stream warm-ups all join it): each part then holds the GPU
time its own kernels took, not whatever the next synchronising call waited for. Groups that train at once
(EvalOptions.concurrent_groups) keep a clock each, on their own streams; their parts are summed, so the parts can add
up to more than the wall time.
Switches happen only where the part changes (a run of training steps is one part), so the syncs it adds are few.
Off by default: `benchmarks/speed/profile_cost.py` turns it on (`EvalOptions.time_parts`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

# The parts a trainer reports, in the order of a training's life (benchmarks/speed/profile_cost.py explains each).
TRAINER_PARTS = ("setup", "warm-up", "steps", "test forward", "ship logits", "scores", "host sync", "rebuild")


class PartClock:
    """Seconds per part; `switch` moves the clock to another part (see the module docstring)."""

    def __init__(self, device: torch.device | str | None = None, sync: bool = True) -> None:
        self.device = torch.device(device) if device is not None else None
        self.sync = sync and self.device is not None and self.device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self.since = time.perf_counter()

    def switch(self, name: str | None) -> None:
        """Close the running part and start `name` (None: stop the clock)."""
        if name == self.current:
            return
        if self.sync:
            torch.cuda.current_stream(self.device).synchronize()
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self.since
        self.current, self.since = name, now

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Run a block as `name`, then return to the part that ran before it."""
        before = self.current
        self.switch(name)
        try:
            yield
        finally:
            self.switch(before)

    def add(self, other: dict[str, float]) -> None:
        for name, seconds in other.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class NoClock(PartClock):
    """The clock that measures nothing (the default): no syncs, no bookkeeping."""

    def __init__(self) -> None:
        super().__init__(None, sync=False)

    def switch(self, name: str | None) -> None:
        return

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        yield
