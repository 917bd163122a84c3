"""One evaluation spread over several devices of this host (`mixerlab eval --devices ...`).

A batched group already keeps one GPU busy (benchmarks/results/step_anatomy.md: more members train no more
tokens per second), so more GPUs help only by training different groups at once. Each device gets a worker
process, an ordinary `mixerlab eval` restricted to its share of the trainings (`--only-keys`), and all of them
write the one result cache (SQLite in WAL mode, made for several writers). Nothing new is recorded here: a
killed worker's trainings are cached or checkpointed like any run's, and the same command resumes them.

Shares are balanced by training tokens (largest first onto the least loaded device); a setting stays on one
device unless it alone exceeds a device's fair share. Settings whose unfinished trainings share a checkpoint
stay on one device, so each checkpoint is resumed once. Work that spans machines belongs to the Ray executor
(executor/ray.py), not here.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from mixerlab.config import available_cpus
from mixerlab.train.job import TrainJob


def parse_devices(text: str, cuda_count: int) -> list[str]:
    """`cuda:0,cuda:2`, `cuda:all` (every visible GPU) or `cpu,cpu` -> device names; ValueError names the fix."""
    if text.strip() in ("all", "cuda:all"):
        if cuda_count < 1:
            raise ValueError("--devices all but no CUDA GPU is visible; name devices, e.g. --devices cpu,cpu")
        return [f"cuda:{i}" for i in range(cuda_count)]
    devices = [part.strip() for part in text.split(",") if part.strip()]
    if len(devices) < 2:
        raise ValueError(f"--devices {text!r} names fewer than two devices; for one, use --device")
    for device in devices:
        if device == "cpu":
            continue
        index = device.removeprefix("cuda:")
        if not (device.startswith("cuda:") and index.isdigit()):
            raise ValueError(f"unknown device {device!r} in --devices; use cuda:N (N from 0), all, or cpu")
        if int(index) >= cuda_count:
            visible = f"use cuda:0 to cuda:{cuda_count - 1}" if cuda_count else "no CUDA GPU is visible; use cpu"
            raise ValueError(f"--devices names {device}, which this host lacks: {visible}")
    cuda = [d for d in devices if d != "cpu"]
    if len(set(cuda)) < len(cuda):
        raise ValueError("--devices names a GPU twice; each GPU takes one worker (a group fills it)")
    if cuda and len(cuda) < len(devices):
        raise ValueError("--devices mixes cpu and cuda: numerics (fp32 vs bf16) differ; use one kind")
    return devices


def split_jobs(todo: Sequence[TrainJob], cost: Callable[[TrainJob], int], together: Iterable[set[str]],
               workers: int) -> list[list[TrainJob]]:
    """Jobs per worker (at most `workers` non-empty lists). A unit is a setting's jobs, or the settings of one
    `together` set (a checkpoint's: resumed whole, by one worker); a setting costing more than a worker's fair
    share, and in no checkpoint, is cut into parts so that it does not hold the others up (the longest fuzzy
    recall setting alone is 42% of that task's tokens). Units go largest first to the least loaded worker."""
    parent = {job.setting.label: job.setting.label for job in todo}

    def root(label: str) -> str:
        while parent[label] != label:
            label = parent[label]
        return label

    linked: set[str] = set()
    for labels in together:
        present = sorted(label for label in labels if label in parent)
        linked.update(present)
        for label in present[1:]:
            parent[root(label)] = root(present[0])
    units: dict[str, list[TrainJob]] = {}
    for job in todo:
        units.setdefault(root(job.setting.label), []).append(job)
    fair = max(sum(cost(job) for job in todo) / workers, 1e-9)
    parts: list[list[TrainJob]] = []
    for label, jobs in units.items():
        pieces = 1 if label in linked else min(len(jobs), max(1, math.ceil(sum(map(cost, jobs)) / fair)))
        parts.extend(jobs[i::pieces] for i in range(pieces))
    shares: list[list[TrainJob]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for part in sorted(parts, key=lambda p: (-sum(map(cost, p)), p[0].setting.label)):
        least = min(range(workers), key=lambda i: (loads[i], i))
        shares[least].extend(part)
        loads[least] += sum(map(cost, part))
    return [share for share in shares if share]


@dataclass
class Worker:
    device: str
    keys: list[str]  # the cache keys of the trainings it runs
    log: Path
    process: subprocess.Popen | None = None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()


def worker_env(device: str, workers: int) -> dict[str, str]:
    """A GPU worker sees only its GPU (as cuda:0: CUDA graphs and kernels stay on the default device); CPU
    workers split the cores, as thread counts change float sums."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
    else:
        env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // workers))
    return env


def run_workers(base_args: list[str], workers: list[Worker], on_tick: Callable[[], None], tick: float = 2.0) -> None:
    """Start one `mixerlab eval` per worker (its device and its share of cache keys appended to `base_args`),
    pass SIGUSR1, SIGTERM and SIGINT on to them, call `on_tick` while they run, and wait for all of them."""
    for worker in workers:
        device = "cuda" if worker.device.startswith("cuda") else "cpu"
        worker.log.parent.mkdir(parents=True, exist_ok=True)
        share = worker.log.with_suffix(".keys")
        share.write_text("\n".join(worker.keys) + "\n")
        args = [sys.executable, "-m", "mixerlab.cli", "eval", *base_args, "--device", device, "--only-keys", str(share)]
        with open(worker.log, "w") as log:
            # a session of its own: a terminal's Ctrl-C reaches the workers once, through `forward`
            worker.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=worker_env(worker.device, len(workers)), start_new_session=True)

    def forward(signum, frame) -> None:
        for worker in workers:
            if worker.returncode is None:
                worker.process.send_signal(signum)
        if callable(previous.get(signum)):  # this process's own flags (train/interrupts.py): its report says why
            previous[signum](signum, frame)
        signal.signal(signum, forward)  # a second Ctrl-C is forwarded too (the workers then stop at once)

    previous: dict = {}
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, forward)
    try:
        while any(worker.returncode is None for worker in workers):
            on_tick()
            time.sleep(tick)
        on_tick()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
