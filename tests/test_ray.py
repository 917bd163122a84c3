"""The Ray executor on a real local Ray cluster (started on 127.0.0.1 by the test): identical results to the
local executor, and a worker killed mid-task is retried with nothing lost or duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mixerlab.evaluate import ResultCache
from mixerlab.executor import EvaluationJob, LocalExecutor
from mixerlab.mixers import builtin_spec
from mixerlab.store import Store

pytestmark = pytest.mark.slow


def options(tasks: list[str], profile: str = "smoke") -> EvaluationJob:
    return EvaluationJob(profile=profile, tasks=tasks, seeds=1, timeout_s=900)


def test_ray_and_local_executors_give_identical_results() -> None:
    from mixerlab.executor.ray import RayExecutor

    spec = builtin_spec("delta_net")
    tasks = ["memorize", "context_recall", "selective_copy"]
    local = LocalExecutor(workers=2)  # one thread per training on this 2-core machine
    got_local: list = []
    first = local.evaluate(spec, options(tasks), got_local.append, 0)
    ray_executor = RayExecutor(num_cpus=2, threads=1)
    try:
        got_ray: list = []
        second = ray_executor.evaluate(spec, options(tasks), got_ray.append, 0)
    finally:
        ray_executor.close()
    assert first.ok and second.ok, (first.error, second.error)
    assert len(got_local) == len(got_ray) == 3
    by_key = {t.key: t for t in got_local}
    for t in got_ray:
        assert t.score == by_key[t.key].score and t.history == by_key[t.key].history  # bit for bit
    assert first.report.tasks == second.report.tasks


def ray_task_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ray::_evaluation_task" in line]


def test_a_killed_worker_is_retried_and_nothing_is_lost(tmp_path: Path, smoke_baseline_cache: Path) -> None:
    run_dir, cache = tmp_path / "run", smoke_baseline_cache  # the baselines' trainings are in: the candidate's run on Ray
    killed: list[int] = []

    def killer() -> None:  # kill the first Ray worker seen evaluating, once, while it still is
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            pids = ray_task_pids()
            if pids:
                time.sleep(1)  # inside its sandbox's start or its training (smoke: about 3 s in all)
                if pids[0] in ray_task_pids():
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    proc = subprocess.run([sys.executable, "-m", "mixerlab.cli", "discover", "--device", "cpu", "--executor", "ray",
                           "--profile", "smoke", "--run-dir", str(run_dir), "--iterations", "1", "--cache", str(cache),
                           "--threads", "1"],
                          capture_output=True, text=True, timeout=1800)
    thread.join(timeout=5)
    assert killed, "a Ray worker was killed during training"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = Store(f"sqlite:///{run_dir / 'mixerlab.db'}").experiments()
    assert [r.status for r in rows] == ["done", "done", "done"] and len({r.name for r in rows}) == 3
    assert ResultCache(cache).count() == 18, "every training recorded exactly once (2 baselines + 1 candidate x 6 tasks)"
    candidate = rows[-1].name
    assert {name: n for _, name, n in ResultCache(cache).mixers()}[candidate] == 6
