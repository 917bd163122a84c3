"""Opening the database: SQLite (a file, WAL mode) by default, PostgreSQL by URL."""

from __future__ import annotations

import random
import time
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mixerlab.config import read_only_sqlite, sqlite_url  # noqa: F401 - sqlite_url re-exported for the store's callers

from .models import Base


class DatabaseError(ValueError):
    """The database cannot be used; the message says what to fix."""


def without_password(url: str) -> str:
    """The URL as it may be stored and shown: no password (it comes back from the environment, PGPASSWORD, or
    ~/.pgpass when the URL is used again). Not a URL: returned as it is."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if not parsed.password:
        return url
    bare = URL.create(parsed.drivername, username=parsed.username, host=parsed.host, port=parsed.port,
                      database=parsed.database, query=parsed.query)  # URL.set(password=None) keeps the password
    return bare.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for other databases or a bad URL)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def reason(err: SQLAlchemyError) -> str:
    """The database's own first line of an error, without SQLAlchemy's "Background on this error" link."""
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def open_engine(url: str, read_only: bool = False, follow_writers: bool = False) -> Engine:
    """Create the engine (and the tables, unless `read_only`); raise DatabaseError with a fix for bad URLs,
    unreachable servers, in-memory databases and files that are not a database. A read-only open never writes:
    a SQLite file must exist and is opened with mode=ro."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"bad database URL {url!r}: use sqlite:///path/to/run.db or postgresql://user@host:port/db") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database {backend!r} in {url!r}: use sqlite:/// or postgresql://")
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or (parsed.query.get("mode") == "memory"):
            raise DatabaseError(f"{url!r} is an in-memory database: every result would be lost when the process ends; "
                                "give a file, e.g. sqlite:///runs/demo/mixerlab.db")
        path = Path(parsed.database).resolve()
        if read_only:
            _readable_sqlite(path)
        elif not path.parent.exists():
            raise DatabaseError(f"folder {str(path.parent)!r} for the database does not exist; create it or use --run-dir")
    try:
        if backend == "sqlite" and read_only:
            engine = create_engine("sqlite://", creator=lambda: read_only_sqlite(path, follow_writers),
                                   pool_pre_ping=True, future=True)
        else:
            engine = create_engine(parsed, pool_pre_ping=True, future=True)
    except (ArgumentError, ModuleNotFoundError) as err:
        raise DatabaseError(f"cannot use {url!r}: {err}; for PostgreSQL install psycopg (pip install 'psycopg[binary]')") from None
    if backend == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # durability with concurrent readers (the web view)
            # a damaged text column reads as text with replacement characters instead of failing every query
            dbapi_connection.text_factory = lambda data: data.decode("utf-8", errors="replace")
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL waits for another opener's lock
            if not read_only:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    try:
        if not read_only:
            _create_tables(engine)
            _add_new_columns(engine)
        tables = set(inspect(engine).get_table_names())
    except OperationalError as err:
        hint = "is the server running and the URL right?" if backend == "postgresql" else \
            "is it a mixerlab database?" if read_only else "is the folder writable?"
        raise DatabaseError(f"cannot open database {parsed.render_as_string(hide_password=True)!r}: {reason(err)}; "
                            f"{hint}") from None
    except SQLAlchemyError as err:
        if backend == "sqlite" and "file is not a database" in reason(err):
            raise DatabaseError(f"{url.removeprefix('sqlite:///')!r} is not a SQLite database; point --db at a "
                                "discover run's mixerlab.db or a new file") from None
        raise DatabaseError(f"cannot open database {url!r}: {reason(err)}") from None
    missing = {"runs", "experiments", "attempts", "events"} - tables
    if missing:
        raise DatabaseError(f"database {url!r} lacks tables {sorted(missing)}; it is not a mixerlab database")
    if read_only and not all(map(_deferred, older := _missing_columns(engine))):  # a deferred one is never read here
        raise _other_version(parsed.render_as_string(hide_password=True), older)
    return engine


def _deferred(name: str) -> bool:
    """Whether the models read this column only when asked (a read-only open of a database without it still works)."""
    from sqlalchemy import inspect as inspect_mapper

    from .models import Experiment

    table_name, column_name = name.split(".")
    if table_name != Experiment.__tablename__:
        return False
    prop = inspect_mapper(Experiment).attrs.get(column_name)
    return bool(prop is not None and getattr(prop, "deferred", False))


def _addable(name: str) -> bool:
    table_name, column_name = name.split(".")
    return Base.metadata.tables[table_name].columns[column_name].nullable


def _other_version(where: str, missing: list[str]) -> DatabaseError:
    fix = ("open it once for writing with this version to add them (e.g. `mixerlab discover --resume --run-dir <its "
           "run folder>`), then read it again" if all(map(_addable, missing)) else
           "open it with the version that wrote it, or start a new run with another --run-dir")
    return DatabaseError(f"database {where!r} was written by a different mixerlab version (it lacks "
                         f"{', '.join(missing)}); {fix}")


def _missing_columns(engine: Engine) -> list[str]:
    """Columns the models have and the database's tables lack (`table.column`)."""
    inspector = inspect(engine)
    missing = []
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    return missing


def _add_new_columns(engine: Engine) -> None:
    """Bring a database written by an older mixerlab up to the models: every column added since is nullable (or
    has a default), so adding it keeps every recorded row as it was. A race with another opener adding the same
    column is harmless: the second ALTER fails and the column is there."""
    missing = _missing_columns(engine)
    if not all(map(_addable, missing)):
        raise _other_version(engine.url.render_as_string(hide_password=True), missing)
    for name in missing:
        table_name, column_name = name.split(".")
        column = Base.metadata.tables[table_name].columns[column_name]
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(f'ALTER TABLE {table_name} ADD COLUMN {column_name} {kind}')
        except SQLAlchemyError:
            if name in _missing_columns(engine):
                raise
        if name == "experiments.fingerprint":  # before it had a column, the fingerprint was kept in the check report
            _fingerprints_from_check_reports(engine)


def _fingerprints_from_check_reports(engine: Engine) -> None:
    from sqlalchemy import select, update

    from .models import Experiment

    with Session(engine) as session, session.begin():
        for ident, report in session.execute(select(Experiment.id, Experiment.check_report)).all():
            if isinstance(report, dict) and isinstance(report.get("fingerprint"), list):
                session.execute(update(Experiment).where(Experiment.id == ident).values(fingerprint=report["fingerprint"]))


def _readable_sqlite(path: Path) -> None:
    if path.is_dir():
        raise DatabaseError(f"{str(path)!r} is a folder; point --db at a run's mixerlab.db (or use --run-dir)")
    if not path.is_file():
        raise DatabaseError(f"no database at {str(path)!r}; point --db at a discover run's mixerlab.db")
    if path.stat().st_size == 0:
        raise DatabaseError(f"{str(path)!r} is not a SQLite database; point --db at a discover run's mixerlab.db")


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
