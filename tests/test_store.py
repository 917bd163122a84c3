"""Several processes opening a new database at the same moment all succeed: the run database (the loop and
`mixerlab serve`, or a test polling a run that is starting) on SQLite and PostgreSQL, and the result cache
(Ray workers, the loop's evaluators)."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path
from typing import Callable

import pytest

from mixerlab.evaluate import ResultCache
from mixerlab.store import Store
from services import postgres_server

OPENERS = 4


def open_after(barrier, opener: Callable[[], object], answers) -> None:
    barrier.wait()  # all openers start together: the window where one creates what another just looked for
    try:
        opener()
        answers.put("ok")
    except Exception as err:  # reported to the parent, which asserts on it
        answers.put(f"{type(err).__name__}: {err}")


def open_together(opener: Callable[[], object]) -> list[str]:
    context = multiprocessing.get_context("fork")  # fork: the opener needs no pickling
    barrier, answers = context.Barrier(OPENERS), context.Queue()
    processes = [context.Process(target=open_after, args=(barrier, opener, answers)) for _ in range(OPENERS)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    return [answers.get(timeout=5) for _ in processes]


def test_processes_opening_a_new_sqlite_file_together_all_succeed(tmp_path: Path) -> None:
    for round_ in range(8):  # before the fix, 17 of 20 such rounds lost an opener to "table ... already exists"
        url = f"sqlite:///{tmp_path / f'new-{round_}.db'}"
        assert open_together(lambda: Store(url).runs()) == ["ok"] * OPENERS
        assert Store(url).runs() == []


def test_processes_opening_a_new_postgresql_database_together_all_succeed() -> None:
    with postgres_server() as url:
        assert open_together(lambda: Store(url).runs()) == ["ok"] * OPENERS
        assert Store(url).runs() == []


def test_processes_opening_a_new_result_cache_together_all_succeed(tmp_path: Path) -> None:
    for round_ in range(16):  # before the fix, 3 of 20 rounds lost an opener to "database is locked"
        path = tmp_path / f"cache-{round_}.sqlite"
        assert open_together(lambda: ResultCache(path).count()) == ["ok"] * OPENERS
        assert ResultCache(path).count() == 0


def test_statuses_are_the_documented_ones(tmp_path) -> None:
    """Every status the loop writes is one of the documented sets; anything else is refused with the choices."""
    from mixerlab.store.models import EXPERIMENT_STATUSES, RUN_STATUSES

    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    run = store.create_run("r", {})
    for status in RUN_STATUSES:
        store.set_run_status(run.id, status)
    with pytest.raises(ValueError, match="unknown run status 'paused'; use one of running, finished"):
        store.set_run_status(run.id, "paused")
    loop_source = "\n".join(f.read_text() for f in (Path(__file__).parents[1] / "src" / "mixerlab" / "loop").glob("*.py"))
    assert 'status="inert"' in loop_source and 'set_run_status(self.run_id, "finished")' in loop_source
    written = set(re.findall(r'status="(\w+)"|"status": "(\w+)"|set_run_status\([^,]+, "(\w+)"\)', loop_source))
    assert {w for group in written for w in group if w} <= set(EXPERIMENT_STATUSES) | set(RUN_STATUSES)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_from_before_the_fingerprint_column_is_upgraded_on_a_write_open(tmp_path, backend) -> None:
    """An older mixerlab kept an experiment's fingerprint inside its check report. Such a database reads as it is
    (the column is read only when asked for); a write open adds it, every row kept, filled from the reports. A
    database lacking a column that cannot be added is another version's, and says so."""
    import sqlalchemy as sa

    from mixerlab.store.db import DatabaseError

    def older(url: str) -> None:
        Store(url)
        with sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://")).begin() as connection:
            connection.exec_driver_sql("ALTER TABLE experiments DROP COLUMN fingerprint")
            connection.exec_driver_sql(
                "INSERT INTO runs (name, config, status, created, updated) VALUES ('r', '{}', 'finished', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
            for name, report in (("a", '{"fingerprint": [0.25, 0.5]}'), ("b", '{}')):
                connection.exec_driver_sql(
                    "INSERT INTO experiments (run_id, name, kind, iteration, proposer, edits, code, code_hash, novelty_hash, "
                    "diff, insights, expected, status, failure_reason, check_report, profile, scores, promoted, judgement, "
                    "curves, summary, timings, tokens, timestamp, created, updated) VALUES (1, '" + name + "', 'candidate', 1, "
                    "'catalog', '[]', 'code', 'h', 'n', '', '{}', '{}', 'done', '', '" + report + "', 'tiny', '{}', '{}', '{}', "
                    "'{}', '{}', '{}', '{}', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")

    def check(url: str) -> None:
        older(url)
        assert [e.name for e in Store(url, read_only=True).experiments()] == ["a", "b"]  # read as it is
        store = Store(url)  # the write open adds the column
        rows = {e.name: e.id for e in store.experiments()}
        assert store.fingerprints(1) == {rows["a"]: [0.25, 0.5]} and store.experiments()[0].code == "code"
        assert Store(url, read_only=True).fingerprints(1) == {rows["a"]: [0.25, 0.5]}
        with sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://")).begin() as connection:
            connection.exec_driver_sql("ALTER TABLE experiments DROP COLUMN summary")  # not addable: another version
        with pytest.raises(DatabaseError, match=r"written by a different mixerlab version \(it lacks "
                                                r"experiments.summary\); open it with the version that wrote it"):
            Store(url, read_only=True)

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        with postgres_server() as url:
            check(url)
