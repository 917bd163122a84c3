"""Shared fixtures. Tests never touch the user's result cache.

`make test` runs the suite on two pytest-xdist workers, each pinned to its share of the CPUs. What the whole
run shares (the tiny discovery run and its result cache) lives in a folder common to the workers and is made
once, in the background from the session's start; without xdist the folder is the session's own.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from mixerlab.config import available_cpus

# the CPUs the test run may use, before an xdist worker pins itself to its share of them
MACHINE_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _take_this_workers_share_of_the_cpus() -> None:
    """Under xdist, pin each worker (and every process it starts) to its own share of the CPUs. mixerlab sizes
    its threads by the CPUs it may run on, so two workers never run 2-thread trainings on the same core: torch's
    and llama.cpp's threads busy-wait, and oversubscribed they slowed a training several times over."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= count:
        os.sched_setaffinity(0, cpus[int(worker.removeprefix("gw")) % count :: count])


_take_this_workers_share_of_the_cpus()
torch.set_num_threads(available_cpus())


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache.sqlite"))
    yield


@pytest.fixture(scope="session")
def run_root(tmp_path_factory) -> Path:
    """A folder every xdist worker of this test run shares (each worker's base folder sits in it)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "shared"
    root.mkdir(exist_ok=True)
    return root


def _needs_the_tiny_run(item: pytest.Item) -> bool:
    return bool({"tiny_run", "shared_cache"} & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items) -> None:
    """Tests on the tiny run last: the run starts in the background with the session and is done by the time
    the workers reach them (both workers then share them out)."""
    items.sort(key=_needs_the_tiny_run)


TINY_RUN_TIMEOUT_S = 1800


def _tiny_run_files(root: Path) -> dict[str, Path]:
    return {name: root / f"tiny-run.{name}" for name in ("started", "stdout", "stderr", "status")}


def _start_tiny_run(root: Path) -> None:
    """Start the tiny discovery run once per test run, in the background, on every CPU of the machine (not
    just the starting worker's share); its output and exit status land in files any worker can read."""
    files = _tiny_run_files(root)
    with FileLock(str(root / "tiny-run.lock")):
        if files["started"].exists():
            return
        files["started"].touch()
    command = shlex.join([sys.executable, "-m", "mixerlab.cli", "discover", "--device", "cpu", "--run-dir",
                          str(root / "tiny-run"), "--iterations", "2", "--workers", "2", "--cache",
                          str(root / "results.sqlite")])
    status = shlex.quote(str(files["status"]))
    script = (f"{command} > {shlex.quote(str(files['stdout']))} 2> {shlex.quote(str(files['stderr']))}; "
              f"echo $? > {status}.part && mv {status}.part {status}")
    subprocess.Popen(["sh", "-c", script], preexec_fn=lambda: os.sched_setaffinity(0, MACHINE_CPUS) if MACHINE_CPUS else None)


@pytest.fixture(scope="session", autouse=True)
def _tiny_run_in_background(request: pytest.FixtureRequest, run_root: Path) -> None:
    if any(_needs_the_tiny_run(item) for item in request.session.items):
        _start_tiny_run(run_root)


@pytest.fixture(scope="session")
def tiny_run(run_root: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """A real discovery run (catalog, tiny profile, 2 iterations, 2 workers): its directory and output."""
    _start_tiny_run(run_root)
    files = _tiny_run_files(run_root)
    deadline = time.monotonic() + TINY_RUN_TIMEOUT_S
    while not files["status"].exists():
        assert time.monotonic() < deadline, f"the tiny run did not finish within {TINY_RUN_TIMEOUT_S} s"
        time.sleep(1.0)
    proc = subprocess.CompletedProcess("mixerlab discover (tiny run)", int(files["status"].read_text()),
                                       files["stdout"].read_text(), files["stderr"].read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_root / "tiny-run", proc


@pytest.fixture(scope="session")
def shared_cache(tiny_run, run_root: Path) -> Path:
    """The tiny run's result cache, shared by the session: its baselines and candidates are trained once (as
    across a user's runs)."""
    return run_root / "results.sqlite"


def _baselines_only(source_path: Path, path: Path, trainings_each: int) -> Path:
    """A new cache at `path` with only the two baselines' trainings of `source_path`."""
    from mixerlab.evaluate import ResultCache
    from mixerlab.mixers import builtin_spec

    source, target = ResultCache(source_path), ResultCache(path)
    for name in ("delta_net", "gated_delta_net"):
        rows = path.with_name(f"{path.stem}.{name}.jsonl")
        source.export_jsonl(rows, builtin_spec(name).code_hash)
        target.import_jsonl(rows)
    assert target.count() == 2 * trainings_each, f"expected {trainings_each} trainings per baseline"
    source.close()
    target.close()
    return path


@pytest.fixture
def baseline_cache(shared_cache: Path, tmp_path: Path) -> Path:
    """A new cache holding only the two baselines' tiny trainings: a run on it trains its candidates cold."""
    return _baselines_only(shared_cache, tmp_path / "baseline-cache.sqlite", 6)


@pytest.fixture(scope="session")
def smoke_baselines(run_root: Path) -> Path:
    """Both baselines' `smoke` trainings on this CPU, trained once per test run (the first worker to ask trains
    them, the other waits on the lock)."""
    path, done = run_root / "smoke-baselines.sqlite", run_root / "smoke-baselines.done"
    with FileLock(str(run_root / "smoke-baselines.lock")):
        if not done.exists():
            for name in ("delta_net", "gated_delta_net"):
                proc = subprocess.run([sys.executable, "-m", "mixerlab.cli", "eval", "--mixer", name, "--profile", "smoke",
                                       "--device", "cpu", "--cache", str(path)], capture_output=True, text=True, timeout=600)
                assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            done.touch()
    return path


@pytest.fixture
def smoke_baseline_cache(smoke_baselines: Path, tmp_path: Path) -> Path:
    """A new cache holding both baselines' `smoke` trainings: a discovery run on it trains only its candidates
    (the tests of a kill, a resume or a retry are about the candidates; the baselines' evaluations only cost time)."""
    return _baselines_only(smoke_baselines, tmp_path / "smoke-baselines.sqlite", 6)
