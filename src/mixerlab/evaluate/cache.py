"""A durable store of finished trainings, so a sweep can be split across runs, resumed, and never repeated.

One SQLite file (WAL mode); a row per training, keyed by `TrainJob.cache_key` (mixer code hash, task
setting, lr, weight decay, seed, training config, protocol version). A row is written the moment its
training finishes, in its own transaction: a killed run loses at most the trainings in flight.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
import zlib
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mixerlab.config import is_sqlite_file, read_only_sqlite
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
    """`read_only`: open an existing cache without writing a byte (mode=ro, and immutable when no writer has it
    open or its folder is read-only); a file that is not a cache is refused, not given a table."""

    def __init__(self, path: str | Path | None = None, read_only: bool = False) -> None:
        self.path = Path(path) if path else default_cache_path()
        self.read_only = read_only
        self._lock = threading.Lock()  # one connection shared by the loop's worker threads
        try:
            if read_only:
                self._db = self._connect_read_only()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = self._connect()
        except (OSError, sqlite3.Error) as err:
            if "not a database" in str(err):
                raise ValueError(f"{str(self.path)!r} is not a SQLite database; pass --cache with a mixerlab result "
                                 "cache") from None
            raise ValueError(f"cannot open the result cache {str(self.path)!r} ({err}); pass a writable --cache path") from None

    def _connect_read_only(self) -> sqlite3.Connection:
        db = read_only_sqlite(self.path)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "results" not in tables:
            db.close()
            raise ValueError(f"{str(self.path)!r} is not a mixerlab result cache (it has no results table; a run's "
                             "mixerlab.db is not a cache: its cache is cache.sqlite beside it)")
        return db

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

    def export_jsonl(self, path: str | Path, mixer_hash: str | None = None, gzipped: bool | None = None) -> int:
        """Write JSON lines (gzip-compressed if `gzipped`, by default when the name ends in .gz)."""
        query, args = "SELECT mixer_hash, mixer_name, payload FROM results", ()
        if mixer_hash:
            query, args = query + " WHERE mixer_hash = ?", (mixer_hash,)
        rows = self._db.execute(query + " ORDER BY key", args).fetchall()
        with _open(path, "w", gzipped) as fh:
            for h, name, payload in rows:
                fh.write(json.dumps({"mixer_hash": h, "mixer_name": name, "result": json.loads(payload)}) + "\n")
        return len(rows)

    def import_file(self, path: str | Path) -> int:
        """Add the trainings of an exported JSON lines file or of another cache's SQLite file."""
        return self.import_sqlite(path) if is_sqlite_file(path) else self.import_jsonl(path)

    def import_jsonl(self, path: str | Path) -> int:
        """Every line is checked before any is written: a bad file imports nothing. Lines are bounded in size
        (MAX_LINE_BYTES, read as such, so a huge line inside a small .gz never reaches memory) and in depth."""
        rows: list[tuple[TrainResult, str, str]] = []
        try:
            with _open(path, "r") as fh:
                line_no = 0
                while line := fh.readline(MAX_LINE_BYTES + 1):
                    line_no += 1
                    if len(line) > MAX_LINE_BYTES:
                        raise ValueError(f"{path}:{line_no}: a line of more than {MAX_LINE_BYTES >> 20} MB; not a "
                                         "mixerlab result line")
                    if line.strip():
                        rows.append(_import_row(line, f"{path}:{line_no}"))
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as err:
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
        results = [_import_row(json.dumps({"mixer_hash": h, "mixer_name": name, "result": json.loads(payload)}),
                               f"{path}: row {i + 1}") for i, (h, name, payload) in enumerate(rows)]
        self.put_many(results)
        return len(results)

    def close(self) -> None:
        self._db.close()


MAX_LINE_BYTES = 8 << 20  # one exported training is ~10-50 kB


class ImportedRow(BaseModel):
    """One exported training, as `cache import` accepts it: every field typed and bounded."""

    model_config = ConfigDict(extra="forbid")

    mixer_hash: str = Field(min_length=1, max_length=128, pattern=r"^[0-9a-zA-Z_-]+$")
    mixer_name: str = Field(min_length=1, max_length=300)
    result: TrainResult


def _import_row(line: str, where: str) -> tuple[TrainResult, str, str]:
    try:
        row = ImportedRow.model_validate_json(line)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: not a mixerlab result line ({field or 'line'}: {first['msg']})") from None
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{where}: not a mixerlab result line ({type(err).__name__})") from None
    r = row.result
    scores = {"score": r.score, "score_last": r.score_last, "token_acc": r.token_acc}
    # an accuracy, up to float32 rounding (a perfect score is stored as 1.0000001 by some trainings)
    bad = [name for name, value in scores.items() if not (math.isfinite(value) and -1e-6 <= value <= 1.0 + 1e-5)]
    if bad:
        raise ValueError(f"{where}: {', '.join(bad)} must be an accuracy between 0 and 1 (got "
                         f"{', '.join(repr(scores[b]) for b in bad)}); not a result mixerlab wrote")
    return r, row.mixer_hash, row.mixer_name


def _open(path: str | Path, mode: str, gzipped: bool | None = None):
    """Plain or gzip-compressed JSON lines, by file name unless `gzipped` says."""
    if gzipped if gzipped is not None else str(path).endswith(".gz"):
        return gzip.open(path, mode + "t")
    return open(path, mode)
