"""Signals a running evaluation answers, so that nothing trained is lost to a kill or a stale checkpoint.

- SIGUSR1: checkpoint the unfinished groups now (each at its next sync point), and go on training. A
  machine that must ship its state out at a moment of its choosing (a lent GPU whose call ends) asks for a
  fresh checkpoint instead of taking one up to `--checkpoint-every` seconds old, or none at all when a new
  group has not reached its first save (`benchmarks/tools/gpu_sweep.sh poll` sends it).
- SIGTERM, SIGINT (Ctrl-C), SIGHUP (a closed terminal): checkpoint and stop at the next sync point; finished trainings are already in the
  cache, so running the same command again continues where this one stopped. A second Ctrl-C stops at once.

The handlers only set flags (the one thing a Python signal handler should do); the trainer reads them at
its sync points, where the state on the GPU is consistent and saving costs one host copy.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass
class _Requests:
    saves: int = 0  # checkpoint requests (SIGUSR1) so far
    served: int = 0  # the last of them that some group has saved for
    stop: signal.Signals | None = None


_requests = _Requests()


class SaveRequests:
    """One training group's view of the checkpoint requests: every group that trains at once (several groups in
    threads) saves once per request; a group that starts after a request nobody has served yet serves it."""

    def __init__(self) -> None:
        self.seen = _requests.served

    def take(self) -> bool:
        """Whether a checkpoint was asked for since this group last saved for one (then it counts as served)."""
        asked = _requests.saves
        if asked <= self.seen:
            return False
        self.seen = asked
        _requests.served = max(_requests.served, asked)
        return True


def stop_requested() -> signal.Signals | None:
    """The signal that asked this process to stop, if one did."""
    return _requests.stop


def should_stop(deadline: float | None) -> bool:
    """Whether a run must stop now: its `deadline` (time.monotonic()) passed, or a signal asked it to."""
    return (deadline is not None and time.monotonic() > deadline) or _requests.stop is not None


def _on_save(signum, frame) -> None:
    _requests.saves += 1


def _on_stop(signum, frame) -> None:
    _requests.stop = signal.Signals(signum)
    now = " (Ctrl-C again to stop now)" if signum == signal.SIGINT else ""
    # said at once, since the next sync point can be seconds away on a CPU; os.write, not print: a buffered
    # stream that the interrupted code was writing to (a progress bar) refuses a second, reentrant write
    os.write(2, f"\n{_requests.stop.name}: checkpointing and stopping at the next sync point{now}\n".encode())
    if signum == signal.SIGINT:  # the next Ctrl-C is Python's own: an immediate KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def answering_signals() -> Iterator[None]:
    """Install the handlers for the duration of one evaluation (main thread only; elsewhere a no-op),
    then restore the previous ones and clear the flags."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signal.SIGUSR1: _on_save, signal.SIGTERM: _on_stop, signal.SIGINT: _on_stop, signal.SIGHUP: _on_stop}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    _requests.saves, _requests.served, _requests.stop = 0, 0, None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requests.saves, _requests.served, _requests.stop = 0, 0, None
