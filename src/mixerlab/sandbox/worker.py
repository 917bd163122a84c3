"""The sandbox worker: `python -m mixerlab.sandbox.worker`, started by `run_sandboxed`, never by hand.

Imports everything trusted it needs (torch; on a GPU also CUDA and Triton's driver, warmed up), then reads one
JSON request on stdin (a spare worker waits there, warm, for the next candidate), snapshots the torch functions
that training and scoring rely on (sandbox/integrity.py), then locks itself
down (audit hook) before any candidate code runs. It talks to its parent in signed frames
(sandbox/channel.py). A request is a `sandbox.entry.WorkerRequest`: the trusted entry point to run (the checks,
check/remote.py; the training, evaluate/remote.py) and its candidate; {"kind": "run", "source": ...} executes
code (the sandbox's own tests only).
The process itself is already confined by the OS (sandbox/confine.py) from before this module's first line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback

from mixerlab.sandbox.channel import WorkerChannel
from mixerlab.sandbox.shared import WorkerSlots

SCRATCH = os.environ.get("MIXERLAB_SANDBOX_SCRATCH", os.getcwd())
CHANNEL = WorkerChannel(int(os.environ.get("MIXERLAB_SANDBOX_FD", "1")),
                        int(os.environ["MIXERLAB_SANDBOX_REPLY_FD"]) if "MIXERLAB_SANDBOX_REPLY_FD" in os.environ else None,
                        b"", WorkerSlots(os.environ["MIXERLAB_SANDBOX_SLOTS"]) if "MIXERLAB_SANDBOX_SLOTS" in os.environ else None)

# programs that trusted code starts after the lock-down: Triton finds libcuda with ldconfig and `file`, and
# compiles kernels (a new shape of the solve kernel, torch.compile's kernels) with its ptxas and a C compiler
TOOLCHAIN = frozenset({"ldconfig", "file", "ptxas", "gcc", "cc", "clang", "cuobjdump", "nvdisasm"})
# native libraries trusted code opens with ctypes after the lock-down (torch's NVML queries)
NATIVE_LIBRARIES = frozenset({"libnvidia-ml.so.1", "libnvidia-ml.so", "libcuda.so.1", "libcuda.so"})


def send(message: dict, payload: bytes = b"") -> None:
    CHANNEL.send(message, payload)


def _tool_name(name: str) -> bool:
    """`gcc`, `gcc-12`, `x86_64-linux-gnu-gcc-12`: a toolchain program under any of its usual names."""
    parts = name.split("-")
    return any(part in TOOLCHAIN for part in parts) and (parts[0] in TOOLCHAIN or len(parts) > 2 or parts[-1].isdigit())


def _trusted_program(path: object) -> bool:
    """A toolchain program, from outside the scratch directory (Landlock would refuse to run one from it)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False
    name = os.fsdecode(path)
    resolved = shutil.which(name) if os.sep not in name else name
    if not resolved:
        return False
    real = os.path.realpath(resolved)
    known = _tool_name(os.path.basename(name)) or _tool_name(os.path.basename(real))
    return known and not real.startswith(os.path.realpath(SCRATCH))


def _program(event: str, args: tuple) -> str:
    """The program a process event would start, for the refusal's message."""
    if event == "subprocess.Popen" and args:
        return str(args[0] or (args[1][0] if args[1] else "?"))
    return str(args[0]) if args else "?"


def lock_down() -> None:
    """Refuse sockets, new processes, native libraries and writes outside the scratch directory."""
    blocked_prefixes = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "pty.")
    # (sys._getframe, code.__new__ and the like stay open: logging, warnings and torch.compile use them)
    blocked = {"os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "ctypes.dlopen",
               "sys.setrecursionlimit", "urllib.Request", "webbrowser.open", "os.startfile", "sys.settrace",
               "sys.setprofile", "sys.addaudithook",
               "cpython.PyInterpreterState_New", "cpython.run_command", "cpython.run_file", "cpython.run_module"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.chmod", "os.chown", "os.mkdir", "shutil.rmtree",
                   "os.symlink", "os.link", "os.truncate", "os.utime"}
    scratch = os.path.realpath(SCRATCH)

    def inside_scratch(path: object) -> bool:
        if isinstance(path, int):  # a file descriptor or dir_fd: already opened under the same rules
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real.startswith(scratch) or real == os.devnull  # subprocess opens /dev/null to discard output

    def hook(event: str, args: tuple) -> None:
        if event == "subprocess.Popen" and args and _trusted_program(args[0] or (args[1][0] if args[1] else None)):
            return
        if event == "os.posix_spawn" and args and _trusted_program(args[0]):
            return
        if event == "ctypes.dlopen" and args and isinstance(args[0], str) and os.path.basename(args[0]) in NATIVE_LIBRARIES:
            return
        if event in blocked or event.startswith(blocked_prefixes):
            what = f" ({_program(event, args)[:200]})" if event.startswith(("subprocess.", "os.posix_spawn", "os.exec")) else ""
            raise PermissionError(f"sandbox: {event}{what} is not allowed for a mixer")
        if event in path_events and args and isinstance(args[0], (str, bytes, os.PathLike, int)):
            if not all(inside_scratch(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
                raise PermissionError(f"sandbox: {event} outside the scratch directory is not allowed for a mixer")
        if event == "open" and args:
            path, mode = args[0], args[1] if len(args) > 1 else "r"
            flags = args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
            if writing and isinstance(path, (str, bytes, os.PathLike)) and not inside_scratch(path):
                raise PermissionError(f"sandbox: writing {os.fsdecode(path)} is not allowed for a mixer")

    sys.addaudithook(hook)


def warm_up(device: str) -> None:
    """Start, before the lock-down, what trusted code would otherwise start lazily under it: Triton's CUDA
    driver (ldconfig, a compiled helper), a first launch of the solve kernel, cuBLAS and the allocator."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.init()
        torch.ones(8, 8, device="cuda").matmul(torch.ones(8, 8, device="cuda"))
        from mixerlab.ops.tril_solve import kernel_available, solve_with_kernel

        if kernel_available("cuda"):
            eye = torch.eye(64, device="cuda").expand(2, 64, 64).contiguous()
            solve_with_kernel(eye, torch.ones(2, 64, 32, device="cuda"))
        torch.cuda.synchronize()
        try:  # torch.compile's kernels compile in this process, not in a pool of subprocesses
            import torch._inductor.config as inductor_config

            inductor_config.compile_threads = 1
        except ImportError:
            pass


def main() -> None:
    # everything up to the request is the same for every candidate: a spare worker (sandbox/__init__.py) does it
    # while it waits, so a candidate's checks or evaluation start on a warm process
    import torch  # noqa: F401 - imported before the lock-down, with everything torch loads lazily
    import torch._dynamo  # noqa: F401 - it wraps torch.manual_seed & co. on first import: before the snapshot
    from torch._dynamo.mutation_guard import install_generation_tagging_init

    install_generation_tagging_init()  # what torch.compile's first trace patches into nn.Module: before the snapshot

    import importlib

    from mixerlab.mixers.loading import MixerSpec
    from mixerlab.sandbox.entry import KNOWN_MODULES, WorkerRequest, do_ahead, resolve
    from mixerlab.sandbox.integrity import Integrity

    for module in KNOWN_MODULES:  # the entry points and all they train and check with, before the snapshot
        importlib.import_module(module)

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    if os.environ.get("MIXERLAB_GPU_FRACTION") and torch.cuda.is_available():
        torch.cuda.init()
        torch.cuda.set_per_process_memory_fraction(float(os.environ["MIXERLAB_GPU_FRACTION"]))
    if os.environ.get("CUDA_VISIBLE_DEVICES"):  # a worker that sees no GPU has nothing to warm up
        warm_up("cuda")
    do_ahead(os.environ.get("MIXERLAB_SANDBOX_AHEAD", ""))  # trusted work (SandboxLimits.ahead): a spare's while it waits
    request = json.loads(sys.stdin.read())
    CHANNEL.key = bytes.fromhex(request.pop("channel_key", ""))
    if request.get("kind") == "run":  # for the sandbox's own tests: raw code, no static checks
        lock_down() if request.get("lock_down", True) else None
        exec(compile(request["source"], "<sandbox-test>", "exec"),
             {"__name__": "__sandbox__", "send": send, "channel": CHANNEL})
        send({"type": "done"})
        return
    typed = WorkerRequest.model_validate(request)
    entry = resolve(typed.entry)
    integrity = Integrity.snapshot()
    spec = MixerSpec(**typed.spec.model_dump())
    lock_down()
    entry(spec, typed.options, CHANNEL, integrity)
    integrity.verify("at the end of the run")
    send({"type": "done"})
    sys.stdout.flush()
    os._exit(0)  # nothing is left to do: skip the interpreter's and CUDA's teardown (the parent does not wait for it)


if __name__ == "__main__":
    try:
        main()
    except BaseException as err:  # report, then exit non-zero: the parent turns it into a reason
        try:
            send({"type": "error", "error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-3000:]})
        finally:
            sys.exit(3)
