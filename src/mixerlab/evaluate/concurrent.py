"""Several training groups at once on one device: a thread and a CUDA stream per group (`--concurrent-groups`).

Why it exists: the groups of a profile are independent, and one at a time a group's host work (evaluations,
syncs, shipping test outputs) leaves the GPU idle. Each group replays its own CUDA graph on its own stream, so
another group's kernels can fill those gaps. What it gains is measured, not assumed: on an H100, 20 of `quick`'s
short trainings in 5 groups took 110.8 s with 5 at once against 118.7 s one at a time (7%), because at quick's
sizes a group's steps already keep the GPU busy (benchmarks/results/profile_cost_notes.md). Off by default.

Results do not depend on it: a member trains the same steps on the same data whichever group runs beside it
(tests/test_concurrent.py: bit for bit on a CPU, in process and in the sandbox; tests/test_gpu.py on CUDA).

What must not overlap another thread's device work (tracing for torch.compile, the eager steps before a graph
capture, the capture, freeing a graph's memory) is serialised by `train.batched.DEVICE_SETUP_LOCK`; models are
seeded under a lock of their own (train/common.py). Callbacks (recording a result, counting steps) run under one
lock, so the cache, the progress bar and the sandbox's channel see one caller at a time. A group that raises
stops the others at their next sync point, and its error is raised here once they have stopped.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import nullcontext
from typing import Callable, Sequence, TypeVar

import torch

from mixerlab.train.interrupts import should_stop

Group = TypeVar("Group")


def run_groups(groups: Sequence[Group], train_one: Callable[[Group, threading.Event], None], concurrency: int,
               device: str, deadline: float | None = None) -> None:
    """Call `train_one(group, halt)` for every group, up to `concurrency` at a time, in order; a group not yet
    started when the deadline passes (or a stop signal came, or a group failed) is skipped."""
    halt = threading.Event()
    if concurrency <= 1 or len(groups) <= 1:
        for group in groups:
            if should_stop(deadline):
                break
            train_one(group, halt)
        return
    cuda = device.startswith("cuda")

    def in_thread(group: Group) -> None:
        if should_stop(deadline) or halt.is_set():
            return
        stream = torch.cuda.Stream(torch.device(device)) if cuda else None
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                train_one(group, halt)
            if stream is not None:
                stream.synchronize()  # the group's last work is done before its stream is dropped
        except BaseException:
            halt.set()
            raise

    with ThreadPoolExecutor(min(concurrency, len(groups)), thread_name_prefix="group") as pool:
        futures = [pool.submit(in_thread, group) for group in groups]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            halt.set()
        wait(futures)
    for future in futures:  # the first failure, in group order
        if future.exception() is not None:
            raise future.exception()  # type: ignore[misc]


def locked(callback: Callable | None, lock: threading.Lock) -> Callable | None:
    """`callback` run under `lock` (None stays None): one group thread at a time reaches it."""
    if callback is None:
        return None

    def call(*args):
        with lock:
            return callback(*args)

    return call
