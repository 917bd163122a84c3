"""A durable store of finished trainings, so a sweep can be split across runs, resumed, and never repeated.

One SQLite file (WAL mode); a row per training, keyed by `TrainJob.cache_key` (mixer code hash, task
setting, lr, weight decay, seed, training config, protocol version). A row is written the moment its
training finishes, in its own transaction: a killed run loses at most the trainings in flight.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from mixerlab.train.result import TrainResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    mixer_hash TEXT NOT NULL,
    mixer_name TEXT NOT NULL,
    task TEXT NOT NULL,
    created REAL NOT NULL,
    payload TEXT NOT NULL
)
"""


def default_cache_path() -> Path:
    root = os.environ.get("MIXERLAB_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mixerlab" / "results.sqlite"


class ResultCache:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_cache_path()
        self._lock = threading.Lock()  # one connection shared by the loop's worker threads
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
        except (OSError, sqlite3.Error) as err:
            raise ValueError(f"cannot open the result cache {str(self.path)!r} ({err}); pass a writable --cache path") from None

    def _connect(self, attempts: int = 8) -> sqlite3.Connection:
        """Open the file in WAL mode with its table. Several processes opening a new file at once (Ray workers,
        the loop's evaluators) can get "database is locked" at once, without the busy timeout: try again."""
        for attempt in range(attempts):
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(SCHEMA)
                return db
            except sqlite3.OperationalError as err:
                db.close()
                if "locked" not in str(err) or attempt == attempts - 1:
                    raise
                time.sleep(0.02 * 2**attempt * (1 + random.random()))
        raise AssertionError("unreachable")

    def get_many(self, keys: Iterable[str]) -> dict[str, TrainResult]:
        keys = list(keys)
        found: dict[str, TrainResult] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, payload FROM results WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            found.update({key: TrainResult.model_validate_json(payload) for key, payload in rows})
        return found

    def put(self, result: TrainResult, mixer_hash: str, mixer_name: str) -> None:
        self.put_many([(result, mixer_hash, mixer_name)])

    def put_many(self, rows: list[tuple[TrainResult, str, str]]) -> None:
        """Write (result, mixer hash, mixer name) rows in one transaction: all of them or none."""
        values = [(r.key, h, name, r.task, time.time(), r.model_dump_json()) for r, h, name in rows]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)", values)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def count(self, mixer_hash: str | None = None) -> int:
        if mixer_hash is None:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM results WHERE mixer_hash = ?", (mixer_hash,)).fetchone()[0]

    def mixers(self) -> list[tuple[str, str, int]]:
        """(code hash, name, trainings) of every mixer with trainings here, by name."""
        return self._db.execute("SELECT mixer_hash, mixer_name, COUNT(*) FROM results "
                                "GROUP BY mixer_hash, mixer_name ORDER BY mixer_name, mixer_hash").fetchall()

    def export_jsonl(self, path: str | Path, mixer_hash: str | None = None) -> int:
        query, args = "SELECT mixer_hash, mixer_name, payload FROM results", ()
        if mixer_hash:
            query, args = query + " WHERE mixer_hash = ?", (mixer_hash,)
        rows = self._db.execute(query + " ORDER BY key", args).fetchall()
        with _open(path, "w") as fh:
            for h, name, payload in rows:
                fh.write(json.dumps({"mixer_hash": h, "mixer_name": name, "result": json.loads(payload)}) + "\n")
        return len(rows)

    def import_file(self, path: str | Path) -> int:
        """Add the trainings of an exported JSON lines file or of another cache's SQLite file."""
        with open(path, "rb") as fh:
            is_sqlite = fh.read(16) == b"SQLite format 3\x00"
        return self.import_sqlite(path) if is_sqlite else self.import_jsonl(path)

    def import_jsonl(self, path: str | Path) -> int:
        """Every line is checked before any is written: a bad file imports nothing."""
        rows: list[tuple[TrainResult, str, str]] = []
        try:
            with _open(path, "r") as fh:
                for line_no, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        result = TrainResult.model_validate(row["result"])
                    except (ValueError, KeyError, TypeError) as err:
                        raise ValueError(f"{path}:{line_no}: not a mixerlab result line ({err})") from None
                    rows.append((result, row["mixer_hash"], row["mixer_name"]))
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
            raise ValueError(
                f"{path}: not a JSON lines file ({err}); pass a file written by `mixerlab cache export` or a cache's .sqlite"
            ) from None
        self.put_many(rows)
        return len(rows)

    def import_sqlite(self, path: str | Path) -> int:
        """Copy every training of another result cache (e.g. one brought back from a GPU machine)."""
        try:
            other = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
            try:
                rows = other.execute("SELECT mixer_hash, mixer_name, payload FROM results").fetchall()
            finally:
                other.close()
        except sqlite3.Error as err:
            raise ValueError(f"{path}: not a mixerlab result cache ({err}); pass a .sqlite written by `mixerlab eval --cache`") from None
        try:
            results = [(TrainResult.model_validate_json(payload), h, name) for h, name, payload in rows]
        except ValueError as err:
            raise ValueError(f"{path}: a row is not a mixerlab training result ({err})") from None
        self.put_many(results)
        return len(results)

    def close(self) -> None:
        self._db.close()


def _open(path: str | Path, mode: str):
    """Plain or gzip-compressed JSON lines, by file name."""
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t")
    return open(path, mode)
