"""Run untrusted candidate code in a separate, limited, confined process; get results back as data.

`run_sandboxed(request, limits)` starts `python -m mixerlab.sandbox.worker` in a scratch directory with a
minimal environment, sends it the request on stdin and reads signed frames (sandbox/channel.py) from a
dedicated pipe as they come (so finished work is never lost); a handler may answer a frame on a second pipe
(the trusted scorer does). It enforces:
- a wall-clock timeout (the process group is killed),
- a memory limit (resident memory polled; on CPU also an address-space rlimit), and a CPU-time rlimit,
- an output cap on stdout + stderr (a candidate that prints megabytes is stopped),
- OS-level confinement from the first instruction (sandbox/confine.py: Landlock, seccomp, a network
  namespace where allowed): no file writes outside scratch, no network, no ptrace or signals outward,
- an audit hook in the worker that refuses sockets, processes, native libraries and writes outside scratch
  to candidate code (trusted toolchains that Triton and torch.compile start are let through, confined),
- on CUDA, a cap on the process's share of GPU memory.
Whatever the candidate does, the caller gets a `SandboxOutcome` and carries on.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import json
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..config import available_cpus
from ..text import shown
from .channel import FrameReader, ProtocolError, encode
from .confine import Confinement
from .shared import SharedSlots

F_SETPIPE_SZ = 1031  # Linux: larger pipes move logits faster

# A handler gets each frame (header, payload) and may return a reply (header, payload) for the worker.
Handler = Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes] | None]


# The limits every caller shares (executors, `mixerlab check`, `mixerlab eval FILE.py`): SandboxLimits.for_checks
# and SandboxLimits.for_evaluation apply them
CHECK_GPU_FRACTION = 0.2  # a check runs small forwards; the evaluation beside it gets the rest
EVAL_GPU_FRACTION = 0.9
EVAL_MEMORY_GB = 16.0
EVAL_OUTPUT_BYTES = 20_000_000  # training logs of a long sweep


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 300.0  # a backstop for endless loops, with room for a busy machine
    memory_gb: float = 8.0
    output_bytes: int = 1_000_000
    cpu_threads: int = 2  # at most; never more than the CPUs the caller may run on (see `threads`)
    gpu_memory_fraction: float | None = None  # on CUDA: share of the GPU the worker may allocate
    cuda_device: int | None = None  # which GPU the worker sees (None: no GPU)
    isolate_network: bool = True
    confine: bool = True  # Landlock + seccomp (sandbox/confine.py); off only to test the layers one by one
    spare: bool = False  # keep a started worker of these limits waiting for the next run (a GPU worker's start is ~9 s)
    # trusted work the worker does before it reads its request (a spare: while it waits), by name (entry.AHEAD)
    ahead: tuple[str, ...] = ()

    @classmethod
    def for_checks(cls, base: "SandboxLimits | None" = None, cuda_device: int | None = None, gpu_share: float = 1.0,
                   spare: bool = False) -> "SandboxLimits":
        """The checks' limits (the time and memory of `base`): on a GPU, at most a fifth of it, divided among the
        workers that share the GPU (`gpu_share`: this worker's share)."""
        return replace(base or cls(), cuda_device=cuda_device, spare=spare, ahead=("cost-reference",),
                       gpu_memory_fraction=CHECK_GPU_FRACTION * gpu_share if cuda_device is not None else None)

    @classmethod
    def for_evaluation(cls, timeout_s: float, cuda_device: int | None = None, gpu_share: float = 1.0,
                       memory_gb: float = EVAL_MEMORY_GB, cpu_threads: int = 2, spare: bool = False,
                       profile: str | None = None) -> "SandboxLimits":
        """An evaluation's limits: room for training's memory and logs; on a GPU, most of its share of it. A spare
        on a GPU trains a few warm-up steps at `profile`'s shapes while it waits (evaluate/remote.py)."""
        ahead = (f"train-warm-up:{profile}",) if spare and cuda_device is not None and profile else ()
        return cls(timeout_s=timeout_s, memory_gb=memory_gb, output_bytes=EVAL_OUTPUT_BYTES, cpu_threads=cpu_threads,
                   cuda_device=cuda_device, spare=spare, ahead=ahead,
                   gpu_memory_fraction=EVAL_GPU_FRACTION * gpu_share if cuda_device is not None else None)

    @property
    def threads(self) -> int:
        """The worker's torch/OpenMP threads: `cpu_threads`, capped by the CPUs this process may run on (its
        affinity mask). OpenMP threads busy-wait: two of them on one CPU made a check's forwards 15x slower."""
        return max(1, min(self.cpu_threads, available_cpus()))


@dataclass
class SandboxOutcome:
    status: str  # "ok" | "timeout" | "memory" | "output" | "crash" | "error"
    messages: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    seconds: float = 0.0
    output_tail: str = ""
    network_isolated: bool = False
    confinement: dict[str, Any] = field(default_factory=dict)  # Confinement.summary(): what held the worker
    protocol_error: str = ""  # a frame the trusted worker code would not write: the worker was stopped

    @property
    def error(self) -> str:
        """The worker's own error message (its exception, as the worker reported it), if any."""
        return shown(next((str(m.get("error", "")) for m in self.messages if m.get("type") == "error"), ""))

    @property
    def traceback_tail(self) -> str:
        """The last lines of the worker's traceback, or of its output: what a user needs to see why it failed."""
        text = next((str(m.get("traceback", "")) for m in self.messages if m.get("type") == "error"), "") or self.output_tail
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return shown("\n".join(lines[-6:])[-1500:])

    def reason(self, limits: SandboxLimits) -> str:
        """Why the worker stopped, in words a repair step can act on."""
        if self.status == "timeout":
            return f"did not finish within {limits.timeout_s:.0f} s (an endless loop, or far too slow); it was stopped"
        if self.status == "memory":
            return f"used more than {limits.memory_gb:g} GiB of memory (unbounded allocation); it was stopped"
        if self.status == "output":
            return f"printed more than {limits.output_bytes // 1000} kB; remove the prints"
        if self.status == "protocol":
            return f"the worker broke the sandbox protocol ({self.protocol_error}); it was stopped"
        if self.status == "crash":
            if self.error:
                return self.error[:500]
            sig = -self.returncode if self.returncode and self.returncode < 0 else None
            how = f"was killed by signal {signal.Signals(sig).name}" if sig else f"exited with status {self.returncode}"
            tail = f": {self.output_tail.strip().splitlines()[-1][:300]}" if self.output_tail.strip() else ""
            return f"the worker process {how}{tail}"
        if self.status == "error":
            return self.output_tail.strip().splitlines()[-1][:300] if self.output_tail.strip() else "worker error"
        return "ok"


def _preexec(limits: SandboxLimits, confinement: Confinement, cpu_seconds: float) -> Callable[[], None]:
    def setup() -> None:
        os.setsid()  # own process group: the whole tree can be killed at once
        try:  # and die with the parent, even when the parent is killed with SIGKILL (Linux)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - not Linux
            pass
        cpu = int(cpu_seconds)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20))
        if limits.cuda_device is None:  # CUDA needs a huge address space; on CPU it is a second memory fence
            space = int((limits.memory_gb + 6) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (space, space))
        confinement.apply()
    return setup


def import_paths() -> list[str]:
    """The parent's import path, as absolute folders: the worker imports exactly what the parent can (a
    virtual environment, PYTHONPATH entries, `pip install --target` folders alike)."""
    paths = [str(Path(__file__).resolve().parents[2])]
    for entry in sys.path:
        if not entry:
            continue
        path = os.path.abspath(entry)
        if path not in paths and os.path.exists(path):
            paths.append(path)
    return paths


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


@dataclass
class _Worker:
    """A started worker, waiting for its request on stdin (it imports torch and starts CUDA meanwhile)."""

    proc: subprocess.Popen
    scratch: Path
    read_fd: int
    reply_write: int
    shared: SharedSlots | None
    confinement: dict[str, Any]
    network_isolated: bool

    def discard(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()
        os.close(self.read_fd), os.close(self.reply_write)
        if self.shared:
            self.shared.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _launch(limits: SandboxLimits, shared_slot_bytes: int, cpu_seconds: float) -> _Worker | str:
    """Start a confined worker in a fresh scratch folder; the worker, or why it could not start."""
    scratch = Path(tempfile.mkdtemp(prefix="mixerlab-sandbox-"))
    read_fd, write_fd = os.pipe()
    reply_read, reply_write = os.pipe()
    for fd in (read_fd, reply_read):
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "PYTHONPATH": os.pathsep.join(import_paths()),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": str(limits.threads),
        "MKL_NUM_THREADS": str(limits.threads),
        "MIXERLAB_SANDBOX_FD": str(write_fd),
        "MIXERLAB_SANDBOX_REPLY_FD": str(reply_read),
        "MIXERLAB_SANDBOX_SCRATCH": str(scratch),
        "CUDA_VISIBLE_DEVICES": "" if limits.cuda_device is None else str(limits.cuda_device),
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    }
    if limits.gpu_memory_fraction:
        env["MIXERLAB_GPU_FRACTION"] = str(limits.gpu_memory_fraction)
    if limits.ahead:
        env["MIXERLAB_SANDBOX_AHEAD"] = ",".join(limits.ahead)
    shared = SharedSlots.create(slot_bytes=shared_slot_bytes) if shared_slot_bytes else None
    if shared:
        env.update(shared.environment())
    passed = (write_fd, reply_read) + ((shared.fd,) if shared else ())
    confinement = Confinement.prepare(scratch, isolate_network=limits.isolate_network,
                                      use_landlock=limits.confine, use_seccomp=limits.confine)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mixerlab.sandbox.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=scratch, env=env,
            pass_fds=passed, preexec_fn=_preexec(limits, confinement, cpu_seconds), close_fds=True,
        )
    except (OSError, subprocess.SubprocessError) as err:
        for fd in (read_fd, write_fd, reply_read, reply_write):
            os.close(fd)
        if shared:
            shared.close()
        confinement.close()
        shutil.rmtree(scratch, ignore_errors=True)
        return f"cannot start the sandbox worker: {err}"
    confinement.close()
    os.close(write_fd), os.close(reply_read)
    return _Worker(proc, scratch, read_fd, reply_write, shared, confinement.summary(), confinement.network_namespace)


# Spare workers (limits.spare): started workers of each kind of limits, waiting for the next requests of that kind.
# Each serves one request and is never reused, so no candidate sees another's process. A GPU worker takes ~9 s to
# start (more with its work ahead); one spare was not ready for every other candidate when the loop asks for a
# worker every ~10 s (benchmarks/results/loop_speed_notes.md), so each kind keeps two, the oldest taken first.
SPARES_PER_KIND = 2
_SPARES: dict[tuple, list[_Worker]] = {}
_SPARES_LOCK = threading.Lock()
SPARE_CPU_SECONDS = 24 * 3600.0  # a spare's CPU-time limit until it is taken (then its request's, see `_take`)


def _cpu_limit(limits: SandboxLimits) -> float:
    return limits.timeout_s * limits.threads + 30


def _take(limits: SandboxLimits, shared_slot_bytes: int) -> _Worker | str:
    """A worker for one request: the oldest waiting spare of these limits where there is one (then the spares are
    topped up for the next requests), else a fresh one."""
    if not limits.spare:
        return _launch(limits, shared_slot_bytes, _cpu_limit(limits))
    key = _spare_key(limits, shared_slot_bytes)
    while True:
        with _SPARES_LOCK:
            waiting = _SPARES.get(key)
            worker = waiting.pop(0) if waiting else None
        if worker is None or worker.proc.poll() is None:
            break
        worker.discard()  # it died waiting (killed from outside): try the next
    if worker is not None:
        try:  # the request's CPU-time limit, with room for what the spare spent starting
            cpu = int(_cpu_limit(limits) + 60)
            resource.prlimit(worker.proc.pid, resource.RLIMIT_CPU, (cpu, cpu + 5))
        except (OSError, AttributeError):  # the wall-clock limit still holds
            pass
    else:
        worker = _launch(limits, shared_slot_bytes, _cpu_limit(limits))
    _top_up(key, limits, shared_slot_bytes)
    return worker


def start_spares(limits: SandboxLimits, shared_slot_bytes: int = 0) -> None:
    """Start the spares of these limits now (up to SPARES_PER_KIND waiting), so that the first request of their
    kind finds one ready instead of waiting for a worker's start. Nothing for limits without `spare`."""
    if limits.spare:
        _top_up(_spare_key(limits, shared_slot_bytes), limits, shared_slot_bytes)


def _spare_key(limits: SandboxLimits, shared_slot_bytes: int) -> tuple:
    """What makes two requests' workers interchangeable (a request sets its own time limit when it takes one)."""
    return replace(limits, timeout_s=0.0), shared_slot_bytes


def _top_up(key: tuple, limits: SandboxLimits, shared_slot_bytes: int) -> None:
    with _SPARES_LOCK:
        missing = SPARES_PER_KIND - len(_SPARES.get(key, []))
    for _ in range(missing):
        spare = _launch(limits, shared_slot_bytes, SPARE_CPU_SECONDS)
        if not isinstance(spare, _Worker):
            break
        with _SPARES_LOCK:
            waiting = _SPARES.setdefault(key, [])
            extra = spare if len(waiting) >= SPARES_PER_KIND else None  # another thread topped it up meanwhile
            if extra is None:
                waiting.append(spare)
        if extra is not None:
            extra.discard()


def close_spares() -> None:
    """Stop every waiting spare worker (at exit, and when an executor closes)."""
    with _SPARES_LOCK:
        spares = [worker for waiting in _SPARES.values() for worker in waiting]
        _SPARES.clear()
    for worker in spares:
        worker.discard()


atexit.register(close_spares)


def _drain(stream) -> bytes:
    """What a pipe holds now, without waiting for more."""
    os.set_blocking(stream.fileno(), False)
    try:
        return stream.read() or b""
    except OSError:
        return b""


def _stop_after_closing(proc: subprocess.Popen) -> int:
    """The worker sent its closing message (sandbox/worker.py exits right after it): its exit status is taken as
    0 and its process is not waited for. A worker on a GPU spends seconds releasing the device as it exits; it is
    killed and reaped in the background instead, so the caller goes on at once."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    threading.Thread(target=proc.wait, daemon=True, name="sandbox-reaper").start()
    return 0


def run_sandboxed(
    request: dict[str, Any],
    limits: SandboxLimits = SandboxLimits(),
    on_message: Handler | None = None,
    files: dict[str, bytes] | None = None,
    shared_slot_bytes: int = 0,
) -> SandboxOutcome:
    """Run `request` in a worker. `on_message(header, payload)` sees every frame as it arrives (validated as
    frames; its contents are the handler's to validate) and may return a reply; raising `ProtocolError`
    stops the worker. `files` are written into the scratch directory before the worker reads its request.
    `shared_slot_bytes`: payloads up to this size may come through shared memory (sandbox/shared.py; 0: only
    the pipe); the handler sees them as payloads all the same."""
    worker = _take(limits, shared_slot_bytes)
    if isinstance(worker, str):
        return SandboxOutcome(status="error", output_tail=worker)
    proc, scratch, read_fd, reply_write, shared = worker.proc, worker.scratch, worker.read_fd, worker.reply_write, worker.shared
    for name, data in (files or {}).items():
        (scratch / name).write_bytes(data)
    key = secrets.token_bytes(32)
    start = time.monotonic()
    outcome = SandboxOutcome(status="ok", network_isolated=worker.network_isolated, confinement=worker.confinement)

    def feed() -> None:
        try:
            proc.stdin.write(json.dumps({**request, "channel_key": key.hex()}).encode())
            proc.stdin.close()
        except OSError:
            pass

    threading.Thread(target=feed, daemon=True).start()
    output = bytearray()
    reader = FrameReader(key)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "out")
    selector.register(read_fd, selectors.EVENT_READ, "msg")
    open_streams = 2
    killed_for: str | None = None
    closed = False  # the worker's closing message came: its outcome is known, its exit is not waited for

    def kill(reason: str) -> None:
        nonlocal killed_for
        if killed_for is None:
            killed_for = reason
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    os.set_blocking(reply_write, False)  # a worker that stops reading its replies must not stall this process

    def reply(message: dict[str, Any], payload: bytes) -> None:
        data = memoryview(encode(key, message, payload))
        try:
            while data:
                data = data[os.write(reply_write, data):]
        except BlockingIOError:
            raise ProtocolError("the worker left a megabyte of the parent's replies unread") from None
        except OSError:  # the worker is gone; its exit status tells the rest
            pass

    while open_streams:
        remaining = limits.timeout_s - (time.monotonic() - start)
        if remaining <= 0:
            kill("timeout")
        for sel_key, _ in selector.select(timeout=min(0.05, max(remaining, 0.01))):
            if sel_key.data == "out":
                chunk = os.read(sel_key.fileobj.fileno(), 1 << 20)
                if not chunk:
                    selector.unregister(sel_key.fileobj)
                    open_streams -= 1
                    continue
                output += chunk
                if len(output) > limits.output_bytes:
                    kill("output")
                    del output[: len(output) - limits.output_bytes]
                continue
            fd = sel_key.fileobj
            try:
                # straight into the frame's buffer: a payload of logits is copied once (channel.FrameReader);
                # after a kill the pipe is only drained
                frames = reader.read_from(fd) if not killed_for else ([] if os.read(fd, 1 << 20) else None)
            except ProtocolError as err:
                outcome.protocol_error = str(err)[:500]
                kill("protocol")
                continue
            if frames is None:
                selector.unregister(fd)
                open_streams -= 1
                continue
            try:
                for message, payload in frames:
                    if shared and "slot" in message:  # copied out first: the worker may reuse the slot at once
                        message, payload, slot = shared.take(message, len(payload))
                        reply({"type": "freed", "slot": slot}, b"")
                    elif "slot" in message:
                        raise ProtocolError("a frame names a shared slot, and this worker was given none")
                    outcome.messages.append(message)
                    answer = on_message(message, payload) if on_message else None
                    if answer is not None:
                        reply(*answer)
                    closed = closed or message.get("type") == "done"
            except ProtocolError as err:
                outcome.protocol_error = str(err)[:500]
                kill("protocol")
        if closed and not killed_for:
            break
        if killed_for is None and _rss_bytes(proc.pid) > limits.memory_gb * 2**30:
            kill("memory")
    os.close(read_fd), os.close(reply_write)
    if shared:
        shared.close()
    if closed and not killed_for:
        output += _drain(proc.stdout)
        returncode = _stop_after_closing(proc)
    else:
        returncode = proc.wait()
    outcome.returncode = returncode
    outcome.seconds = time.monotonic() - start
    outcome.output_tail = shown(output[-4000:].decode(errors="replace"), 4000)  # the candidate's prints: no controls
    if killed_for:
        outcome.status = killed_for
    elif returncode != 0:
        text = outcome.output_tail + outcome.error
        memory_words = ("MemoryError", "can't allocate memory", "out of memory", "Cannot allocate memory")
        outcome.status = "memory" if any(w in text for w in memory_words) else "crash"
    elif not any(m.get("type") == "done" for m in outcome.messages):
        outcome.status = "crash"  # exit 0 without the worker's closing message: it did not finish its work
        outcome.messages.append({"type": "error", "error": "the worker exited before it finished (no closing "
                                 "message): the candidate ended the process"})
    shutil.rmtree(scratch, ignore_errors=True)
    return outcome
