"""Reading a run's record: `mixerlab history`, `serve` (the dashboard) and `report` (static HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import UserError, app, console, db_from, err_console, fail, output_file, write_atomically


@app.command("history")
def history_command(
    db: Optional[str] = typer.Option(None, help="database URL"),
    run_dir: Optional[Path] = typer.Option(None, help="a run directory (its mixerlab.db)"),
    run: Optional[str] = typer.Option(None, help="run name (default: every run)"),
    fmt: str = typer.Option("table", "--format", help="table | csv | json | markdown"),
    out: Optional[Path] = typer.Option(None, help="write to this file instead of the terminal"),
) -> None:
    """Print the history table (the seeds' format) or export it."""
    import json as _json

    from mixerlab.store import DatabaseError, Store
    from mixerlab.store.db import sqlite_path
    from mixerlab.table import accuracies_df, format_table, to_csv

    if fmt not in ("table", "csv", "json", "markdown"):
        fail(f"unknown format {fmt!r}; use table, csv, json or markdown")
    db = db_from(db, run_dir)
    try:
        output_file(out, "--out", [sqlite_path(db)])
    except UserError as err:
        fail(str(err))
    try:
        store = Store(db, read_only=True)
    except DatabaseError as err:
        fail(str(err))
    runs = store.runs()
    if run is not None:
        runs = [r for r in runs if r.name == run]
        if not runs:
            fail(f"no run {run!r} in {db}; runs there: {', '.join(r.name for r in store.runs()) or 'none'}")
    rows, records = {}, []
    for r in runs:
        for e in store.experiments(r.id):
            if e.status == "done" and e.scores:
                rows[e.name] = {t: s["mean"] for t, s in e.scores.items()}
            records.append({"run": r.name, "name": e.name, "kind": e.kind, "iteration": e.iteration, "status": e.status,
                            "success": e.success, "mean_score": e.mean_score, "scores": e.scores,
                            "failure_reason": e.failure_reason, "edits": e.edits})
    df = accuracies_df(rows)
    if fmt == "table":
        text = format_table(df)
    elif fmt == "csv":
        text = to_csv(df)
    elif fmt == "json":
        text = _json.dumps(records, indent=2)
    else:
        text = df.rename(columns={"Unnamed: 0": "architecture"}).to_markdown(index=False)
    if store.damaged:
        err_console.print(f"[yellow]{len(store.damaged)} damaged rows skipped (a column does not parse): "
                          f"{', '.join(f'{name} (id {i})' for i, name in list(store.damaged.items())[:5])}[/]",
                          highlight=False)
    if out:
        try:
            write_atomically(out, lambda temporary: temporary.write_text(text + "\n"))
        except OSError as err:
            fail(f"cannot write --out {str(out)!r} ({err.strerror}); choose another file")
        console.print(f"wrote {out}")
    else:
        typer.echo(text)


@app.command("serve")
def serve_command(
    db: Optional[str] = typer.Option(None, help="database URL of a run (sqlite:///... or postgresql://...)"),
    run_dir: Optional[Path] = typer.Option(None, help="or a run directory"),
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback requires a token"),
    port: int = typer.Option(8000, min=1, max=65535),
    token: Optional[str] = typer.Option(None, help="access token (generated when binding beyond loopback)"),
) -> None:
    """Serve the research dashboard (read-only): leaderboard, experiments, lineage, live view, compare."""
    import uvicorn

    from mixerlab.store import DatabaseError
    from mixerlab.web.app import create_app, default_token

    url = db_from(db, run_dir)
    token = default_token(host, token)
    try:
        application = create_app(url, token, host)
    except DatabaseError as err:
        fail(str(err))
    _port_free(host, port)
    shown = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    console.print(f"mixerlab dashboard on [bold]{shown}[/] (read-only; Ctrl-C to stop)", highlight=False)
    uvicorn.run(application, host=host, port=port, log_level="warning")


def _port_free(host: str, port: int) -> None:
    """Fail before printing the address if the server could not bind it (in use, or not this machine's)."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        fail(f"cannot serve on {host}:{port} ({err.strerror or err}); choose another --port or --host")


@app.command("report")
def report_command(
    out: Path = typer.Option(..., help="folder for index.html and report.md"),
    db: Optional[str] = typer.Option(None, help="database URL"),
    run_dir: Optional[Path] = typer.Option(None, help="or a run directory"),
    run: Optional[str] = typer.Option(None, help="only this run"),
    top: int = typer.Option(5, min=1, help="experiments shown in full"),
) -> None:
    """Write a static, self-contained HTML report (and Markdown) that opens from disk."""
    from mixerlab.store import DatabaseError, Store
    from mixerlab.web.report import write_report

    url = db_from(db, run_dir)
    try:
        store = Store(url, read_only=True)
        runs = [r.name for r in store.runs()]
    except DatabaseError as err:
        fail(str(err))
    if run is not None and run not in runs:
        fail(f"no run {run!r} in {url}; runs there: {', '.join(runs) or 'none'}")
    if out.exists() and not out.is_dir():
        fail(f"--out {str(out)!r} is a file; give a folder for index.html and report.md")
    try:
        html, md = write_report(url, out, run, top)
    except DatabaseError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot write the report to {str(out)!r} ({err.strerror}); choose another --out")
    console.print(f"wrote {html} and {md}")
