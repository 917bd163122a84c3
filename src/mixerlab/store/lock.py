"""One process per run: OS file locks (flock) held for as long as a `discover` process uses a run.

Two locks, because a run can be reached two ways: `RunLock` on the run directory (its files: iterations,
cache), and `RecordLock` on the run's record in the database, whichever folder or URL reached it (SQLite: a lock
file beside the database, one per run; PostgreSQL: a session advisory lock keyed by the run's id). The kernel
(or the server, when the connection drops) releases them however the process ends (exit, crash, kill -9), so a
stale lock cannot block the next run. A lock file also says who holds it, so a second run can name the process.
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
    def __init__(self, run_dir: str | Path, lock_file: Path | None = None, what: str | None = None) -> None:
        self.path = lock_file or Path(run_dir) / LOCK_NAME
        self.what = what or f"run directory {str(self.path.parent)!r}"
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
            raise RunDirectoryInUse(f"{self.what} is in use by {who}; wait for it to finish, stop it, or choose "
                                    "another --run-dir") from None
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


class RecordLock:
    """The lock on one run's record in its database (see the module docstring)."""

    ADVISORY_BASE = 0x6D69786C00000000  # "mixl" in the high bits: keys of mixerlab's runs, run id below

    def __init__(self, url: str, run_id: int, run_name: str, engine) -> None:
        from .db import sqlite_path, without_password

        self.run_id, self.engine = run_id, engine
        self.shown = f"run {run_name!r} in {without_password(url)}"
        path = sqlite_path(url)
        self.file = RunLock(path.parent, path.with_name(f"{path.name}.run{run_id}.lock"), self.shown) if path else None
        self.connection = None

    def acquire(self) -> "RecordLock":
        if self.file is not None:
            self.file.acquire()
            return self
        from sqlalchemy import text

        connection = self.engine.connect()
        key = self.ADVISORY_BASE + self.run_id
        if not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
            connection.close()
            raise RunDirectoryInUse(f"{self.shown} is in use by another process (it holds the run's advisory lock); "
                                    "wait for it to finish, or stop it")
        connection.commit()
        self.connection = connection
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.release()
        elif self.connection is not None:
            from sqlalchemy import text

            try:
                self.connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.ADVISORY_BASE + self.run_id})
                self.connection.commit()
            finally:
                self.connection.invalidate()  # never back into the pool: the next user must not inherit a lock
                self.connection.close()
                self.connection = None
