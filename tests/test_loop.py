"""`mixerlab discover` end to end, through the real command: the catalog loop, the printed blocks, the
record, resuming after kill -9 (SQLite and PostgreSQL), the LLM loop on a real llama.cpp server, and
bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixerlab.insights import parse_block
from mixerlab.store import DatabaseError, Store
from services import free_port, llama_server, postgres_server

pytestmark = pytest.mark.slow


def discover(*args: str, wait: bool = True):
    command = [sys.executable, "-m", "mixerlab.cli", "discover", "--device", "cpu", *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=1800)


def blocks(text: str) -> list[str]:
    parts = text.split("\nsuccess: ")
    out = []
    for i, part in enumerate(parts[:-1]):
        start = part.rfind("Unnamed: 0")
        out.append(part[start:] + "\nsuccess: " + parts[i + 1].split("\n")[0] + "\n")
    return out


def test_catalog_loop_records_everything_and_prints_the_seed_blocks(tmp_path: Path, tiny_run) -> None:
    run_dir, proc = tiny_run
    store = Store(f"sqlite:///{run_dir / 'mixerlab.db'}")
    rows = store.experiments()
    assert [r.name for r in rows[:2]] == ["delta_net_4layer", "gated_delta_net_4layer"]
    candidates = [r for r in rows if r.kind == "candidate"]
    assert len(candidates) == 2 and len({c.name for c in candidates}) == 2
    for c in candidates:
        assert c.status == "done" and c.success is True and c.name.startswith("delta_net_4layer_")
        assert c.parent_id is not None and c.diff.startswith("--- parent.py") and c.code and c.edits
        assert set(c.insights) == {"observations", "code_issues", "reasoning", "expected", "lessons"}
        assert set(c.scores) == {"compress", "context_recall", "fuzzy_recall", "memorize", "noisy_recall", "selective_copy"}
        assert all(len(s["seeds"]) == 1 for s in c.scores.values())
        assert c.check_report["checks"][0]["status"] == "pass" and c.expected
        assert c.timings["check_s"] > 0 and c.timings["eval_s"] > 0 and "vs_parent" in c.judgement
        first = store.attempts(c.id)[0]
        assert first.passed and c.curves, first.reason
        assert len(c.timestamp) == 15 and c.profile == "tiny"
    printed = blocks(proc.stdout)
    assert len(printed) == 2
    names = set()
    for text in printed:
        block = parse_block(text)
        row = next(c for c in candidates if c.name == block.name)
        names.add(block.name)
        assert block.success is True and block.timestamp == row.timestamp
        assert block.insights.model_dump() == row.insights
        before = {r.name for r in rows if r.id < row.id and r.status == "done"}
        assert set(block.table["Unnamed: 0"]) == before  # the table the proposal was made from
        for _, table_row in block.table.iterrows():
            source = next(r for r in rows if r.name == table_row["Unnamed: 0"])
            assert table_row["Compress"] == pytest.approx(source.scores["compress"]["mean"], abs=1e-6)
    assert names == {c.name for c in candidates}
    assert len(list((run_dir / "iterations").glob("*.txt"))) == 2
    assert "mixerlab serve --db" in proc.stdout

    history = subprocess.run([sys.executable, "-m", "mixerlab.cli", "history", "--run-dir", str(run_dir)], capture_output=True, text=True)
    assert history.returncode == 0 and all(c.name in history.stdout for c in candidates)
    for fmt in ("csv", "json", "markdown"):
        out = tmp_path / f"h.{fmt}"
        done = subprocess.run([sys.executable, "-m", "mixerlab.cli", "history", "--run-dir", str(run_dir), "--format", fmt,
                               "--out", str(out)], capture_output=True, text=True)
        assert done.returncode == 0 and candidates[0].name in out.read_text()
    assert len(json.loads((tmp_path / "h.json").read_text())) == 4


def wait_for_status(proc: subprocess.Popen, db_url: str, status: str, timeout: float = 600) -> str:
    """The name of the first candidate seen in `status`; fails at once, with the run's output, if the run ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            for e in Store(db_url).experiments():
                if e.kind == "candidate" and e.status == status:
                    return e.name
        except DatabaseError:  # the run folder does not exist yet
            pass
        time.sleep(0.2)
    output = proc.stdout.read() if proc.poll() is not None else "(still running)"
    raise AssertionError(f"no candidate reached {status!r} (exit status {proc.poll()}):\n{output[-3000:]}")


def kill_and_resume(run_dir: Path, db_url: str, status: str, cache: Path, extra: list[str], iterations: int = 2):
    """On the `smoke` profile (plumbing, seconds per mixer): the kill, the refusal and the resume are what is tested."""
    args = ["--run-dir", str(run_dir), "--profile", "smoke", "--iterations", str(iterations), "--cache", str(cache), *extra]
    proc = discover(*args, wait=False)
    interrupted = wait_for_status(proc, db_url, status)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    row = next(e for e in Store(db_url).experiments() if e.name == interrupted)
    assert row.status == status, "the kill left the experiment visibly unfinished"
    again = discover(*args)  # without --resume the run refuses to start over
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = discover(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    rows = Store(db_url).experiments()
    names = [r.name for r in rows]
    assert len(names) == len(set(names)), "no experiment recorded twice"
    assert sum(r.kind == "baseline" for r in rows) == 2
    assert sum(r.kind == "candidate" for r in rows) == iterations
    assert all(r.status in ("done", "failed") for r in rows), [(r.name, r.status) for r in rows]
    finished = next(r for r in rows if r.name == interrupted)
    assert finished.status == "done" and finished.scores
    return interrupted, resumed


def test_resume_after_kill_9_on_sqlite(tmp_path: Path, smoke_baseline_cache: Path) -> None:
    run_dir, cache = tmp_path / "run", smoke_baseline_cache
    db = f"sqlite:///{run_dir / 'mixerlab.db'}"
    # only the baselines are in the cache: the kill lands in the middle of a candidate's real evaluation
    interrupted, resumed = kill_and_resume(run_dir, db, "evaluating", cache, [])
    # by default the catalog proposes only after the previous result (it proposes instantly, so nothing is proposed
    # ahead): the resumed run finishes iteration 1, then iteration 2 is proposed and sees its scores
    first, second = sorted((e for e in Store(db).experiments() if e.kind == "candidate"), key=lambda e: e.iteration)
    assert first.name == interrupted and second.created >= first.updated
    second_block = parse_block(blocks(resumed.stdout)[-1])
    assert second_block.name == second.name and "3 architectures evaluated" in second_block.insights.observations
    from mixerlab.evaluate import ResultCache

    store = ResultCache(cache)
    assert store.count() == 6 * 4, "every training exactly once: 2 baselines + 2 candidates x 6 tasks"
    assert {name: n for _, name, n in store.mixers()}[interrupted] == 6


def test_resume_after_kill_9_on_postgresql(tmp_path: Path, smoke_baseline_cache: Path) -> None:
    with postgres_server() as url:
        # one iteration: the kill lands in its checks (what a PostgreSQL record must survive); the SQLite test above
        # covers what a second iteration sees after a resume
        kill_and_resume(tmp_path / "run", url, "checking", smoke_baseline_cache, ["--db", url], iterations=1)


def test_llm_loop_on_a_real_server_records_failures_with_reasons(tmp_path: Path, shared_cache: Path) -> None:
    with llama_server() as url:
        # one iteration (a proposal and its repair), no knowledge card: SmolLM2 on 2 CPUs reads ~40 tokens/s, and at
        # temperature 0 its reply depends on the whole prompt: with the audited cards (2026-12-06) the one retrieved
        # card led it to write past 600 tokens before any code, so this test, about the server path and how failures
        # are recorded, leaves the cards out (retrieval has its own tests: test_knowledge.py)
        proc = discover("--proposer", "llm", "--base-url", url, "--iterations", "1", "--max-repairs", "1",
                        "--max-tokens", "400", "--temperature", "0", "--cards", "0", "--run-dir", str(tmp_path / "run"),
                        "--cache", str(shared_cache))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    store = Store(f"sqlite:///{tmp_path / 'run' / 'mixerlab.db'}")
    candidates = [e for e in store.experiments() if e.kind == "candidate"]
    assert len(candidates) == 1
    for c in candidates:
        assert c.success is False and c.status == "failed" and c.failure_reason
        if c.code:  # the model answered: its code was checked, the report sent back for repair, every attempt kept
            attempts = store.attempts(c.id)
            assert attempts and not any(a.passed for a in attempts) and attempts[0].reason.startswith("check '")
            if len(attempts) == 2:  # the repair came back as code, and failed its checks too
                assert c.failure_reason.startswith("checks failed after 2 attempt(s): check '")
            else:  # the repair reply itself was unusable: recorded as such
                assert len(attempts) == 1 and "the repair failed:" in c.failure_reason
            assert c.tokens["prompt"] > 0 and c.tokens["calls"] >= 1
    assert any(c.code for c in candidates), "at least one reply reached the checker"
    assert len(blocks(proc.stdout)) == 1 and all(parse_block(b).success is False for b in blocks(proc.stdout))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--proposer", "gpt"], "unknown proposer 'gpt'"),
        (["--profile", "huge"], "unknown profile 'huge'"),
        (["--db", "mysql://x/y"], "unsupported database 'mysql'"),
        (["--db", "not a url"], "bad database URL"),
        (["--proposer", "llm", "--base-url", "http://127.0.0.1:{port}/v1"], "cannot reach the model endpoint"),
        (["--proposer", "llm", "--base-url", "https://api.example.invalid/v1", "--api-key-env", "NO_SUCH_KEY_VAR"],
         "set the environment variable NO_SUCH_KEY_VAR"),
        (["--language", "fr"], "unknown language 'fr'"),
        (["--proposer", "llm", "--llm-format", "diff"], "unknown --llm-format 'diff'"),
        (["--proposer", "search", "--search-seed", "-1"], "--search-seed"),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    """In-process through typer's CliRunner: the same command and exit status without a Python start per case."""
    from typer.testing import CliRunner

    from mixerlab.cli import app

    args = [a.replace("{port}", str(free_port())) for a in args]
    result = CliRunner().invoke(app, ["discover", "--device", "cpu", "--run-dir", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run" / "mixerlab.db").exists() or not Store(f"sqlite:///{tmp_path / 'run' / 'mixerlab.db'}").runs()


def test_unwritable_run_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = discover("--run-dir", str(blocker / "run"))
    assert proc.returncode == 2 and "is not writable" in proc.stderr and "--run-dir" in proc.stderr


def test_a_patience_run_cuts_the_baselines_trainings_where_perplexity_stalls(tmp_path: Path, tiny_run,
                                                                              shared_cache: Path) -> None:
    """`--patience` reaches every evaluation of the run; its trainings are read off the cached ones without it."""
    full_dir, _ = tiny_run
    run_dir = tmp_path / "run"
    proc = discover("--run-dir", str(run_dir), "--iterations", "0", "--patience", "1", "--cache", str(shared_cache))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    whole = {e.name: e for e in Store(f"sqlite:///{full_dir / 'mixerlab.db'}").experiments() if e.kind == "baseline"}
    patient = {e.name: e for e in Store(f"sqlite:///{run_dir / 'mixerlab.db'}").experiments() if e.kind == "baseline"}
    assert set(patient) == set(whole) == {"delta_net_4layer", "gated_delta_net_4layer"}
    assert {row.profile for row in patient.values()} == {"tiny+patience1"}, "a patience run's scores say so"
    cut = 0
    for name, row in patient.items():
        for task, curve in row.curves.items():
            longer = whole[name].curves[task]
            assert curve["test_acc"] == longer["test_acc"][: len(curve["test_acc"])], (name, task)
            cut += len(curve["test_acc"]) < len(longer["test_acc"])
    assert cut > 0, "patience 1 stopped some of tiny's trainings before their last epoch"
