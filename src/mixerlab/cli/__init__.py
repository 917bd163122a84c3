"""The `mixerlab` command line, one module per command group: evaluate.py (`eval`), check.py, discover.py,
results.py (`history`, `serve`, `report`) and cache.py. Every user error is one line naming the problem and
the fix, exit status 2 (base.py)."""

from __future__ import annotations

import logging
import sys

import typer

from . import cache, check, discover, evaluate, results  # noqa: F401 - each registers its commands on `app`
from .base import UserError, app, console, err_console, fail

__all__ = ["UserError", "app", "console", "err_console", "fail", "main"]


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="log what happens")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        err_console.print("interrupted; finished trainings are in the cache and will not be repeated")
        sys.exit(130)
