"""Opening the database: SQLite (a file, WAL mode) by default, PostgreSQL by URL."""

from __future__ import annotations

import random
import time
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .models import Base


class DatabaseError(ValueError):
    """The database cannot be used; the message says what to fix."""


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def open_engine(url: str) -> Engine:
    """Create the engine and the tables; raise DatabaseError with a fix for bad URLs and unreachable servers."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"bad database URL {url!r}: use sqlite:///path/to/run.db or postgresql://user@host:port/db") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database {backend!r} in {url!r}: use sqlite:/// or postgresql://")
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).resolve().parent
        if not folder.exists():
            raise DatabaseError(f"folder {str(folder)!r} for the database does not exist; create it or use --run-dir")
    try:
        engine = create_engine(parsed, pool_pre_ping=True, future=True)
    except (ArgumentError, ModuleNotFoundError) as err:
        raise DatabaseError(f"cannot use {url!r}: {err}; for PostgreSQL install psycopg (pip install 'psycopg[binary]')") from None
    if backend == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # durability with concurrent readers (the web view)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL waits for another opener's lock
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    try:
        _create_tables(engine)
    except OperationalError as err:
        hint = "is the server running and the URL right?" if backend == "postgresql" else "is the folder writable?"
        raise DatabaseError(f"cannot open database {parsed.render_as_string(hide_password=True)!r}: "
                            f"{str(err.orig).strip().splitlines()[0]}; {hint}") from None
    except SQLAlchemyError as err:
        raise DatabaseError(f"cannot open database {url!r}: {err}") from None
    missing = {"runs", "experiments", "attempts", "events"} - set(inspect(engine).get_table_names())
    if missing:
        raise DatabaseError(f"database {url!r} lacks tables {sorted(missing)}; it is not a mixerlab database")
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, future=True)


RACES = ("already exists", "duplicate key", "database is locked")


def _create_tables(engine: Engine, attempts: int = 8) -> None:
    """create_all, tolerating other processes that open the same new database at the same moment.

    create_all checks for each table, then creates it; a second process (the loop and `mixerlab serve`, or a
    test polling a run that is just starting) can create it in between, and the loser's CREATE TABLE fails
    with "already exists" (PostgreSQL: "duplicate key"); SQLite also answers "database is locked" without
    waiting when a read snapshot must turn into a write. Trying again finds the tables and creates nothing."""
    for attempt in range(attempts):
        try:
            Base.metadata.create_all(engine)
            return
        except SQLAlchemyError as err:
            if not any(race in str(err) for race in RACES) or attempt == attempts - 1:
                raise
            engine.dispose()  # drop the connection that lost, with its stale snapshot
            time.sleep(0.02 * 2**attempt * (1 + random.random()))
