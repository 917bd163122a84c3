"""The sandbox worker: `python -m mixerlab.sandbox.worker`, started by `run_sandboxed`, never by hand.

Reads one JSON request on stdin, imports what it needs, then locks itself down (audit hook) before any
candidate code runs, and writes JSON lines to the file descriptor in $MIXERLAB_SANDBOX_FD.
Requests: {"kind": "check", ...} runs checks 2-7; {"kind": "evaluate", ...} trains the candidate on a
profile and sends each finished training; {"kind": "run", "source": ...} executes code (tests only).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

FD = int(os.environ.get("MIXERLAB_SANDBOX_FD", "1"))
SCRATCH = os.environ.get("MIXERLAB_SANDBOX_SCRATCH", os.getcwd())


def send(message: dict) -> None:
    os.write(FD, (json.dumps(message) + "\n").encode())


def lock_down() -> None:
    """Refuse sockets, new processes, native libraries and writes outside the scratch directory."""
    blocked_prefixes = ("socket.", "subprocess.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn", "pty.")
    blocked = {"os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg",
               "sys.setrecursionlimit", "urllib.Request", "webbrowser.open", "os.startfile"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.chmod", "os.chown", "os.mkdir", "shutil.rmtree",
                   "os.symlink", "os.link", "os.truncate", "os.utime"}
    scratch = os.path.realpath(SCRATCH)

    def inside_scratch(path: object) -> bool:
        if isinstance(path, int):  # a file descriptor or dir_fd: already opened under the same rules
            return True
        return os.path.realpath(os.fsdecode(path)).startswith(scratch)

    def hook(event: str, args: tuple) -> None:
        if event in blocked or event.startswith(blocked_prefixes):
            raise PermissionError(f"sandbox: {event} is not allowed for a mixer")
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


def main() -> None:
    request = json.loads(sys.stdin.read())
    import torch  # noqa: F401 - imported before the lock-down, with everything torch loads lazily

    import mixerlab.check.dynamic  # noqa: F401
    import mixerlab.evaluate.runner  # noqa: F401
    from mixerlab.mixers.loading import MixerSpec

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    if os.environ.get("MIXERLAB_GPU_FRACTION") and torch.cuda.is_available():
        torch.cuda.init()
        torch.cuda.set_per_process_memory_fraction(float(os.environ["MIXERLAB_GPU_FRACTION"]))
    kind = request["kind"]
    if kind == "run":  # for the sandbox's own tests: raw code, no static checks
        lock_down() if request.get("lock_down", True) else None
        exec(compile(request["source"], "<sandbox-test>", "exec"), {"__name__": "__sandbox__", "send": send})
        send({"type": "done"})
        return
    spec = MixerSpec(**request["spec"])
    if kind == "check":
        from mixerlab.sandbox.tasks import run_checks

        lock_down()
        run_checks(spec, request["options"], send)
    elif kind == "evaluate":
        from mixerlab.sandbox.tasks import run_evaluation

        lock_down()
        run_evaluation(spec, request["options"], send)
    else:
        raise ValueError(f"unknown request kind {kind!r}")
    send({"type": "done"})


if __name__ == "__main__":
    try:
        main()
    except BaseException as err:  # report, then exit non-zero: the parent turns it into a reason
        send({"type": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]})
        sys.exit(3)
