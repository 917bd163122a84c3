"""The `mixerlab` command line, one module per command group: evaluate.py (`eval`), check.py, discover.py,
results.py (`history`, `serve`, `report`) and cache.py. Every user error is one line naming the problem and
the fix, exit status 2 (base.py)."""

from __future__ import annotations

import logging
import sys

import typer
from rich.markup import escape

from . import cache, cards, check, discover, evaluate, results  # noqa: F401 - each registers its commands on `app`
from .base import UserError, app, console, err_console, fail

__all__ = ["UserError", "app", "console", "err_console", "fail", "main"]


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="log what happens")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    from typer.core import _click

    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except _click.exceptions.ClickException as err:  # a bad option: one line, not a box
        if type(err).__name__ == "NoArgsIsHelpError" or err.exit_code == 0:
            err.show()
            sys.exit(err.exit_code)
        command = err.ctx.command_path if getattr(err, "ctx", None) else "mixerlab"
        err_console.print(f"[bold red]error:[/] {escape(err.format_message())} (`{escape(command)} --help` lists "
                          "the options)", highlight=False)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        err_console.print("interrupted; finished trainings are in the cache and will not be repeated")
        sys.exit(130)
    except Exception as err:  # a fault of the machine or of a file, not of mixerlab: one line with the fix
        message = explain_fault(err, sys.argv[1:])
        if message is None:
            raise
        try:
            fail(message)
        except typer.Exit as exit_:
            sys.exit(exit_.exit_code)


def explain_fault(err: BaseException, argv: list[str]) -> str | None:
    """One line for the faults a user can fix (a locked, damaged or foreign database; a full disk or output);
    None for anything else (a bug: its traceback is shown). Finished work is never lost to these: the line
    says how to continue."""
    import errno
    import shlex
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    again = f"then run `{shlex.join(['mixerlab', *argv])}` again" + (
        " (it continues where it stopped)" if "discover" in argv or "eval" in argv else "")
    text = str(getattr(err, "orig", None) or err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, (SQLAlchemyError, sqlite3.Error)):
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return (f"the database is locked by another process that is writing it ({text}); wait for that process "
                    f"to finish or stop it, {again}")
        if "no such column" in lowered or "no such table" in lowered or "has no column" in lowered:
            return (f"the database was written by a different mixerlab version ({text}); open it with that version, "
                    "or start a new run with another --run-dir")
        if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
            return (f"the database file is damaged ({text}); restore it from a copy, or start a new run with "
                    "another --run-dir")
        if "disk" in lowered and ("full" in lowered or "i/o" in lowered):
            return f"the disk holding the database is full or failing ({text}); free space, {again}"
        return None
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {err.filename!r}" if err.filename else ""
        return f"no space left on the device{where}; free space, {again}"
    if isinstance(err, (BrokenPipeError,)) or (isinstance(err, OSError) and err.errno == errno.EPIPE):
        return "the output was closed before everything was written (a pipe that stopped reading)"
    return None
