"""What every command shares: the Typer app, the consoles, and one-line user errors (exit status 2)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn, Optional

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Autonomous discovery of linear-attention sequence mixers on MAD.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """A mistake in the user's input; printed as one line, exit status 2."""


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2. The message is printed as is: brackets in it (setting labels, pydantic's
    `[type=...]`) are text, not rich markup."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def validated(model: type[BaseModel], flags: dict[str, str] | None = None, **values) -> BaseModel:
    """`model(**values)`, a range or type error turned into one line naming the option (`--seeds: ...`)."""
    try:
        return model(**values)
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = (flags or {}).get(field, "--" + field.replace("_", "-"))
        got = first.get("input")
        raise UserError(f"{option} {got!r}: {first['msg'].lower()}; give a value in that range") from None


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}; use cpu or cuda")
    return device


def parse_tasks(tasks: Optional[str]):
    from mixerlab.tasks import TASK_ORDER, parse_task

    if tasks is None:
        return TASK_ORDER
    parsed = [parse_task(name) for name in tasks.replace(" ", ",").split(",") if name]
    if not parsed:
        raise UserError(f"no task in --tasks {tasks!r}; give one or more of {', '.join(t.value for t in TASK_ORDER)}")
    return tuple(dict.fromkeys(parsed))


def writable_file(path: Optional[Path], option: str) -> None:
    """Fail now, not after the work, if `path` cannot be written: a folder, or in a folder that does not exist."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a folder; give a file path")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {option} {str(path)!r}: folder {str(path.parent)!r} does not exist")


def output_file(path: Optional[Path], option: str, reads: list[Optional[Path]] = ()) -> None:
    """`writable_file`, and never a file this command reads (or one of its SQLite companions), nor any existing
    SQLite database (a run's record or a cache): an export is written beside them, never over them."""
    from mixerlab.config import is_sqlite_file

    writable_file(path, option)
    if path is None or not path.exists():
        return
    for source in filter(None, reads):
        for companion in (source, *(source.with_name(source.name + end) for end in ("-wal", "-shm", "-journal"))):
            if companion.exists() and path.samefile(companion):
                raise UserError(f"{option} {str(path)!r} is the file this command reads; give another file")
    try:
        sqlite = is_sqlite_file(path)  # not open in this process (checked above): no lock of ours is dropped
    except OSError:
        return
    if sqlite:
        raise UserError(f"{option} {str(path)!r} is a SQLite database (a run's record or a cache); exports never "
                        "overwrite one: give another file")


def write_atomically(path: Path, write) -> None:
    """`write(temporary_path)`, then rename it onto `path`: a reader sees the old file or the whole new one, and a
    failed or interrupted write leaves the old file as it was."""
    import os
    import tempfile

    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mixerlab-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"run directory {str(path)!r} is not writable ({err.strerror}); choose another --run-dir") from None


def db_from(db: Optional[str], run_dir: Optional[Path]) -> str:
    """The database URL of a read-only command: --db, or the run directory's mixerlab.db, which must exist."""
    if db:
        return db
    if run_dir is None:
        fail("give --db URL or --run-dir DIR")
    path = run_dir / "mixerlab.db"
    if not path.is_file():
        fail(f"no database at {str(path)!r}; pass the --run-dir of a discover run or --db")
    from mixerlab.config import sqlite_url

    return sqlite_url(path)
