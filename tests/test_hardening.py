"""Bad input, concurrent runs and read-only commands: each case one clear line (exit 2), nothing written by a
command that only reads, nothing lost. In-process through typer's CliRunner (fast); the subprocess smoke tests
of each command live in test_cli.py."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixerlab.cli import app
from mixerlab.store import Store
from mixerlab.store.lock import RunDirectoryInUse, RunLock

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in result.output, result.output


def made_run_db(path: Path, run: str = "demo", experiments: int = 1) -> Path:
    store = Store(f"sqlite:///{path}")
    run_id = store.create_run(run, {}).id
    for i in range(experiments):
        store.add_experiment(run_id=run_id, name=f"exp{i}", kind="candidate", iteration=i + 1, code="x = 1\n",
                             code_hash="h", novelty_hash=f"n{i}", status="done", success=True,
                             scores={"memorize": {"mean": 0.5, "std": 0.0, "seeds": [0.5]}}, mean_score=0.5)
    store.engine.dispose()
    return path


# 1. numbers out of range, checked before any work (seeds 1e20 once grew to 20.8 GB)
@pytest.mark.parametrize("args, fragment", [
    (["--seeds", "100000000000000000000"], "--seeds"),
    (["--tasks", ","], "no task in --tasks"),
    (["--max-group-tokens", "0"], "--max-group-tokens"),
    (["--max-group-tokens", "-1"], "--max-group-tokens"),
    (["--time-limit", "0"], "--time-limit"),
    (["--time-limit", "-5", "--no-cache"], "--time-limit"),
    (["--patience", "0"], "--patience"),
])
def test_eval_rejects_values_out_of_range(args: list[str], fragment: str) -> None:
    one_line_error(invoke("eval", "--device", "cpu", *args), fragment)


def test_eval_json_into_a_folder_fails_before_training(tmp_path: Path) -> None:
    start = time.monotonic()
    one_line_error(invoke("eval", "--device", "cpu", "--json", str(tmp_path)), "is a folder")
    assert time.monotonic() - start < 30  # before the training, not after it


# 2. one run per run directory
def test_a_second_run_in_the_same_directory_names_the_first(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mixerlab.store.lock import RunLock\n"
                               f"RunLock({str(tmp_path)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryInUse, match=f"process {holder.pid}"):
            RunLock(tmp_path).acquire()
        result = invoke("discover", "--device", "cpu", "--run-dir", str(tmp_path), "--iterations", "0")
        one_line_error(result, "is in use by process", str(holder.pid))
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # released when its process died (kill -9 included)
        pass


# 3. tracebacks that became one line
def test_check_on_a_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.py"
    path.write_bytes(bytes(range(256)) * 4)
    one_line_error(invoke("check", str(path)), "not UTF-8 text")


def test_a_folder_named_like_a_file(tmp_path: Path) -> None:
    (tmp_path / "x.py").mkdir()
    one_line_error(invoke("check", str(tmp_path / "x.py")), "is a folder")


def test_history_out_into_a_missing_folder_or_a_folder(tmp_path: Path) -> None:
    db = made_run_db(tmp_path / "run.db")
    one_line_error(invoke("history", "--db", f"sqlite:///{db}", "--out", str(tmp_path / "nope" / "t.txt")), "does not exist")
    one_line_error(invoke("history", "--db", f"sqlite:///{db}", "--out", str(tmp_path)), "is a folder")


def test_cache_export_into_a_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    from mixerlab.evaluate import ResultCache

    ResultCache(cache)
    one_line_error(invoke("cache", "export", str(tmp_path), "--cache", str(cache)), "is a folder")


def garble(db: Path) -> None:
    """What a bad disk or a hand edit leaves: a JSON column that does not parse and text that is not UTF-8."""
    with sqlite3.connect(db) as c:
        c.execute("update experiments set scores = '{broken', summary = '{broken' where name = 'exp0'")
        c.execute("update experiments set code = cast(x'fffe41' as text) where name = 'exp1'")


def test_a_damaged_row_is_reported_and_skipped(tmp_path: Path) -> None:
    db = made_run_db(tmp_path / "run.db", experiments=3)
    garble(db)
    result = invoke("history", "--db", f"sqlite:///{db}", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "1 damaged rows skipped" in result.output and "exp0" in result.output
    names = [r["name"] for r in json.loads(result.stdout[result.stdout.index("["):])]
    assert names == ["exp1", "exp2"]


def test_the_dashboard_shows_damaged_rows_and_bounds_ids(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from mixerlab.web.app import create_app

    db = made_run_db(tmp_path / "run.db", experiments=3)
    garble(db)
    client = TestClient(create_app(f"sqlite:///{db}"))
    assert client.get("/").status_code == 200
    board = client.get("/api/experiments").json()
    assert [r["status"] for r in board["items"] if r["name"] == "exp0"] == ["damaged"]
    assert client.get("/experiments/1").status_code == 200  # the damaged one, shown as such
    assert client.get("/api/experiments/1").json()["status"] == "damaged"
    assert client.get("/api/experiments/2").status_code == 200  # the one with undecodable text
    assert client.get("/experiments/99999999999999999999999").status_code in (404, 422)
    assert client.get("/api/experiments/9223372036854775808").status_code in (404, 422)
    many = client.get("/api/compare", params={"ids": ",".join(str(i) for i in range(1, 5001))})
    assert many.status_code == 422 and "at most 20" in many.json()["detail"]


# 4. and 5. databases: no in-memory runs, and read-only commands write nothing
def test_an_in_memory_database_is_refused(tmp_path: Path) -> None:
    one_line_error(invoke("history", "--db", "sqlite:///"), "in-memory")
    one_line_error(invoke("discover", "--device", "cpu", "--db", "sqlite:///", "--run-dir", str(tmp_path / "r")), "in-memory")
    assert not (tmp_path / "r").exists()


def test_read_only_commands_write_nothing(tmp_path: Path) -> None:
    missing, empty_py, zero = tmp_path / "missing.db", tmp_path / "empty.py", tmp_path / "zero.db"
    empty_py.write_text("")
    zero.write_bytes(b"")
    one_line_error(invoke("history", "--db", f"sqlite:///{missing}"), "no database at")
    one_line_error(invoke("history", "--db", f"sqlite:///{empty_py}"), "not a SQLite database")
    one_line_error(invoke("report", "--db", f"sqlite:///{zero}", "--out", str(tmp_path / "rep")), "not a SQLite database")
    one_line_error(invoke("cache", "info", "--cache", str(tmp_path / "missing.sqlite")), "no cache at")
    one_line_error(invoke("discover", "--device", "cpu", "--resume", "--run-dir", str(tmp_path / "MISSING")),
                   "nothing to resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.py", "zero.db"]
    assert empty_py.read_text() == "" and zero.read_bytes() == b""


def test_serve_on_a_zero_byte_file_fails_without_writing(tmp_path: Path) -> None:
    zero = tmp_path / "zero.db"
    zero.write_bytes(b"")
    one_line_error(invoke("serve", "--db", f"sqlite:///{zero}"), "not a SQLite database")
    assert zero.read_bytes() == b""


# 6. see test_the_dashboard_shows_damaged_rows_and_bounds_ids

# 7. a run's identity lives in its database
def test_a_moved_run_directory_resumes_its_run(tmp_path: Path) -> None:
    from mixerlab.config import LoopConfig
    from mixerlab.loop import ResearchLoop, RunExists

    moved = tmp_path / "renamed"
    moved.mkdir()
    made_run_db(moved / "mixerlab.db", run="original-name")
    loop = ResearchLoop(LoopConfig(run_dir=str(moved)), proposer=None, executor=None)
    loop.open_run(resume=True)
    assert loop.store.runs()[loop.run_id - 1].name == "original-name"
    two = tmp_path / "two"
    two.mkdir()
    store = Store(f"sqlite:///{made_run_db(two / 'mixerlab.db', run='a')}")
    store.create_run("b", {})
    with pytest.raises(RunExists, match="runs there: a, b"):
        ResearchLoop(LoopConfig(run_dir=str(two)), proposer=None, executor=None).open_run(resume=True)


# 9. values without sense
def test_too_many_workers_and_a_report_of_no_run(tmp_path: Path) -> None:
    one_line_error(invoke("discover", "--device", "cpu", "--workers", "1000", "--run-dir", str(tmp_path / "w")),
                   "--workers 1000")
    assert not (tmp_path / "w").exists()
    db = made_run_db(tmp_path / "run.db")
    one_line_error(invoke("report", "--db", f"sqlite:///{db}", "--run", "nosuch", "--out", str(tmp_path / "rep")),
                   "no run 'nosuch'", "demo")
    assert not (tmp_path / "rep").exists()


# 10. messages that said the wrong thing
def test_serve_fails_before_announcing_a_port_it_cannot_bind(tmp_path: Path) -> None:
    import socket

    db = made_run_db(tmp_path / "run.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", "--db", f"sqlite:///{db}", "--port", str(port))
    one_line_error(result, f"cannot serve on 127.0.0.1:{port}")
    assert "dashboard on" not in result.output


def test_a_url_that_is_not_one_and_database_errors_without_background(tmp_path: Path) -> None:
    one_line_error(invoke("discover", "--device", "cpu", "--proposer", "llm", "--base-url", "notaurl",
                          "--run-dir", str(tmp_path / "u")), "is not an http(s) URL")
    result = invoke("history", "--db", "postgresql://nobody@127.0.0.1:1/none")
    one_line_error(result, "cannot open database")
    assert "Background on this error" not in result.output


def test_an_empty_run_prints_a_table_header_not_pandas_internals(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'run.db'}")
    store.create_run("empty", {})
    result = invoke("history", "--db", f"sqlite:///{tmp_path / 'run.db'}")
    assert result.exit_code == 0 and "Empty DataFrame" not in result.output
    assert "(no finished experiments yet)" in result.output


# 11. discover says where it is, and stops cleanly (the tiny run's log and a SIGTERM)
def test_discover_logs_its_progress_in_plain_lines_and_stops_resumably(tmp_path: Path, baseline_cache: Path) -> None:
    import signal

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mixerlab.cli", "discover", "--device", "cpu", "--run-dir", str(run_dir),
                             "--iterations", "2", "--cache", str(baseline_cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # not a terminal: plain timestamped lines from the start
        lines.append(line)
        if "evaluating delta_net_4layer_" in line:
            break
    assert any(re.match(r"\d\d:\d\d:\d\d evaluating delta_net_4layer\b", line) for line in lines), lines
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in rest and f"--run-dir {run_dir} --resume" in rest
    status = sqlite3.connect(run_dir / "mixerlab.db").execute("select status from runs").fetchone()[0]
    assert status == "stopped"


# issue 43: a candidate that cannot differ from its parent at the run's profile is recorded, not trained
def test_an_inert_candidate_is_recorded_as_such_and_not_trained(tmp_path: Path, baseline_cache: Path) -> None:
    from mixerlab.config import LoopConfig
    from mixerlab.evaluate import ResultCache
    from mixerlab.executor import LocalExecutor
    from mixerlab.insights import Insights
    from mixerlab.loop import ResearchLoop
    from mixerlab.mixers import template_source
    from mixerlab.mixers.loading import MixerSpec
    from mixerlab.propose import Proposal
    from mixerlab.propose.edits import EDITS_BY_NAME

    class ClampOnce:  # proposes the norm clamp, which acts only between 64-token chunks: never at `tiny`'s 32 tokens
        name = "fixed"

        def propose(self, context):
            text = "x"
            return Proposal(name="delta_net_4layer_state_norm_clamp", edits=["state_norm_clamp"],
                            code=EDITS_BY_NAME["state_norm_clamp"].apply(template_source("delta_net")),
                            insights=Insights(observations=text, code_issues=text, reasoning=text, expected=text, lessons=text))

        def repair(self, context, proposal, report):
            raise AssertionError("the clamp passes its checks")

    (tmp_path / "run").mkdir()
    config = LoopConfig(run_dir=str(tmp_path / "run"), iterations=1, cache_path=str(baseline_cache))
    loop = ResearchLoop(config, ClampOnce(), LocalExecutor(), None)
    loop.run()
    row = next(e for e in loop.store.experiments() if e.kind == "candidate")
    assert row.status == "inert" and row.success is False and "behaves exactly as `delta_net_4layer`" in row.failure_reason
    code_hash = MixerSpec(row.name, row.code).code_hash
    assert ResultCache(baseline_cache).count(code_hash) == 0  # six trainings saved
    assert len(list((tmp_path / "run" / "iterations").glob("001_*.txt"))) == 1  # its block, printed and saved
