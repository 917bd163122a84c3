"""Run untrusted candidate code in a separate, limited process; get results back as data.

`run_sandboxed(request, limits)` starts `python -m mixerlab.sandbox.worker` in a scratch directory with a
minimal environment, sends it the request on stdin and reads JSON messages from a dedicated pipe as they
come (so finished work is never lost). It enforces:
- a wall-clock timeout (the process group is killed),
- a memory limit (resident memory polled; on CPU also an address-space rlimit), and a CPU-time rlimit,
- an output cap on stdout + stderr (a candidate that prints megabytes is stopped),
- no network (a fresh network namespace where the kernel allows it; always an audit hook in the worker
  that refuses sockets, process creation, native libraries and writes outside the scratch directory),
- on CUDA, a cap on the process's share of GPU memory.
Whatever the candidate does, the caller gets a `SandboxOutcome` and carries on.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 300.0  # a backstop for endless loops, with room for a busy machine
    memory_gb: float = 8.0
    output_bytes: int = 1_000_000
    cpu_threads: int = 2
    gpu_memory_fraction: float | None = None  # on CUDA: share of the GPU the worker may allocate
    cuda_device: int | None = None  # which GPU the worker sees (None: no GPU)
    isolate_network: bool = True


@dataclass
class SandboxOutcome:
    status: str  # "ok" | "timeout" | "memory" | "output" | "crash" | "error"
    messages: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    seconds: float = 0.0
    output_tail: str = ""
    network_isolated: bool = False

    def reason(self, limits: SandboxLimits) -> str:
        """Why the worker stopped, in words a repair step can act on."""
        if self.status == "timeout":
            return f"did not finish within {limits.timeout_s:.0f} s (an endless loop, or far too slow); it was stopped"
        if self.status == "memory":
            return f"used more than {limits.memory_gb:g} GiB of memory (unbounded allocation); it was stopped"
        if self.status == "output":
            return f"printed more than {limits.output_bytes // 1000} kB; remove the prints"
        if self.status == "crash":
            sig = -self.returncode if self.returncode and self.returncode < 0 else None
            how = f"was killed by signal {signal.Signals(sig).name}" if sig else f"exited with status {self.returncode}"
            tail = f": {self.output_tail.strip().splitlines()[-1][:300]}" if self.output_tail.strip() else ""
            return f"the worker process {how}{tail}"
        if self.status == "error":
            return self.output_tail.strip().splitlines()[-1][:300] if self.output_tail.strip() else "worker error"
        return "ok"


def _preexec(limits: SandboxLimits, isolate: bool) -> Callable[[], None]:
    def setup() -> None:
        os.setsid()  # own process group: the whole tree can be killed at once
        try:  # and die with the parent, even when the parent is killed with SIGKILL (Linux)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - not Linux
            pass
        cpu = int(limits.timeout_s * max(1, limits.cpu_threads) + 30)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20))
        if limits.cuda_device is None:  # CUDA needs a huge address space; on CPU it is a second memory fence
            space = int((limits.memory_gb + 6) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (space, space))
        if isolate:
            try:
                ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
            except Exception:  # noqa: BLE001 - best effort; the audit hook still refuses sockets
                pass
    return setup


def _network_isolation_available() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


def _rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (Linux /proc), 0 if unknown."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def run_sandboxed(
    request: dict[str, Any],
    limits: SandboxLimits = SandboxLimits(),
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> SandboxOutcome:
    scratch = Path(tempfile.mkdtemp(prefix="mixerlab-sandbox-"))
    read_fd, write_fd = os.pipe()
    src_root = str(Path(__file__).resolve().parents[2])
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "PYTHONPATH": os.pathsep.join([src_root, *[p for p in sys.path if p and "site-packages" in p]]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(limits.cpu_threads),
        "MKL_NUM_THREADS": str(limits.cpu_threads),
        "MIXERLAB_SANDBOX_FD": str(write_fd),
        "MIXERLAB_SANDBOX_SCRATCH": str(scratch),
        "CUDA_VISIBLE_DEVICES": "" if limits.cuda_device is None else str(limits.cuda_device),
        "NCCL_NVLS_ENABLE": "0",
    }
    if limits.gpu_memory_fraction:
        env["MIXERLAB_GPU_FRACTION"] = str(limits.gpu_memory_fraction)
    isolate = limits.isolate_network and _network_isolation_available()
    start = time.monotonic()
    outcome = SandboxOutcome(status="ok", network_isolated=isolate)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mixerlab.sandbox.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=scratch, env=env,
            pass_fds=(write_fd,), preexec_fn=_preexec(limits, isolate), close_fds=True,
        )
    except OSError as err:
        os.close(read_fd), os.close(write_fd)
        shutil.rmtree(scratch, ignore_errors=True)
        return SandboxOutcome(status="error", output_tail=f"cannot start the sandbox worker: {err}")
    os.close(write_fd)

    def feed() -> None:
        try:
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
        except OSError:
            pass

    threading.Thread(target=feed, daemon=True).start()
    output = bytearray()
    buffer = b""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "out")
    selector.register(read_fd, selectors.EVENT_READ, "msg")
    open_streams = 2
    killed_for: str | None = None

    def kill(reason: str) -> None:
        nonlocal killed_for
        if killed_for is None:
            killed_for = reason
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    while open_streams:
        remaining = limits.timeout_s - (time.monotonic() - start)
        if remaining <= 0:
            kill("timeout")
        for key, _ in selector.select(timeout=min(0.05, max(remaining, 0.01))):
            fd = key.fileobj if key.data == "msg" else key.fileobj.fileno()
            chunk = os.read(fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.data == "out":
                output += chunk
                if len(output) > limits.output_bytes:
                    kill("output")
                    del output[: len(output) - limits.output_bytes]
            else:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue
                    outcome.messages.append(message)
                    if on_message:
                        on_message(message)
        if killed_for is None and _rss_bytes(proc.pid) > limits.memory_gb * 2**30:
            kill("memory")
    os.close(read_fd)
    returncode = proc.wait()
    outcome.returncode = returncode
    outcome.seconds = time.monotonic() - start
    outcome.output_tail = output[-4000:].decode(errors="replace")
    if killed_for:
        outcome.status = killed_for
    elif returncode != 0:
        text = outcome.output_tail
        memory_words = ("MemoryError", "can't allocate memory", "out of memory", "Cannot allocate memory")
        outcome.status = "memory" if any(w in text for w in memory_words) else "crash"
    shutil.rmtree(scratch, ignore_errors=True)
    return outcome
