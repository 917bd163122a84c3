"""One run per run directory: an OS file lock (flock) held for as long as a `discover` process uses it.

The kernel releases the lock however the process ends (exit, crash, kill -9), so a stale lock cannot block the
next run. The lock file also says who holds it, so a second run can name the process in its error.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".mixerlab.lock"


class RunDirectoryInUse(RuntimeError):
    """Another process runs in this directory; the message names it."""


class RunLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: "
                   f"{holder.get('command', '?')[:120]})") if holder else "another process"
            raise RunDirectoryInUse(f"run directory {str(self.path.parent)!r} is in use by {who}; wait for it to "
                                    "finish, stop it, or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(sys.argv)}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
