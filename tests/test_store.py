"""The database opens safely when several processes open a new one at the same moment (the loop and
`mixerlab serve`, or a test polling a run that is starting), on SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from mixerlab.store import Store
from services import postgres_server

OPENERS = 4


def open_after(barrier, url: str, answers) -> None:
    barrier.wait()  # all openers reach create_all together: the window where one creates a table another just checked
    try:
        Store(url).runs()
        answers.put("ok")
    except Exception as err:  # reported to the parent, which asserts on it
        answers.put(f"{type(err).__name__}: {err}")


def open_together(url: str) -> list[str]:
    context = multiprocessing.get_context("fork")
    barrier, answers = context.Barrier(OPENERS), context.Queue()
    openers = [context.Process(target=open_after, args=(barrier, url, answers)) for _ in range(OPENERS)]
    for p in openers:
        p.start()
    for p in openers:
        p.join(timeout=60)
    return [answers.get(timeout=5) for _ in openers]


def test_processes_opening_a_new_sqlite_file_together_all_succeed(tmp_path: Path) -> None:
    for round_ in range(8):  # before the fix, 17 of 20 such rounds lost an opener to "table ... already exists"
        url = f"sqlite:///{tmp_path / f'new-{round_}.db'}"
        assert open_together(url) == ["ok"] * OPENERS
        assert Store(url).runs() == []


def test_processes_opening_a_new_postgresql_database_together_all_succeed() -> None:
    with postgres_server() as url:
        assert open_together(url) == ["ok"] * OPENERS
        assert Store(url).runs() == []
