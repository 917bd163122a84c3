"""`mixerlab eval --devices`: one evaluation spread over worker processes, one per device (evaluate/devices.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixerlab.config import get_profile
from mixerlab.evaluate import ResultCache
from mixerlab.evaluate.devices import parse_devices, split_jobs
from mixerlab.evaluate.plan import plan_jobs
from mixerlab.table import parse_table
from mixerlab.tasks import Task
from mixerlab.train.checkpoint import CheckpointStore


def mixerlab(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixerlab.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_parse_devices_accepts_lists_and_all() -> None:
    assert parse_devices("cuda:0,cuda:1", cuda_count=2) == ["cuda:0", "cuda:1"]
    assert parse_devices("all", cuda_count=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert parse_devices(" cpu, cpu ,cpu", cuda_count=0) == ["cpu"] * 3


@pytest.mark.parametrize("text, count, fragment", [
    ("cuda:0", 4, "fewer than two devices"),
    ("all", 0, "no CUDA GPU is visible"),
    ("cuda:0,cuda:2", 2, "use cuda:0 to cuda:1"),
    ("cuda:0,cuda:1", 0, "no CUDA GPU is visible; use cpu"),
    ("gpu0,gpu1", 2, "unknown device 'gpu0'"),
    ("cuda:1,cuda:1", 2, "names a GPU twice"),
    ("cpu,cuda:0", 1, "mixes cpu and cuda"),
])
def test_parse_devices_names_the_problem(text: str, count: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_devices(text, cuda_count=count)


def test_split_jobs_balances_tokens_and_keeps_checkpointed_settings_together() -> None:
    jobs = plan_jobs(get_profile("full"), (Task.fuzzy_recall,), seeds=1)
    cost = lambda job: job.setting.input_len * job.setting.num_train  # noqa: E731
    shares = split_jobs(jobs, cost, [], workers=4)
    assert len(shares) == 4
    assert sorted(map(id, (job for share in shares for job in share))) == sorted(map(id, jobs)), "every job once"
    loads = sorted(sum(map(cost, share)) for share in shares)
    assert loads[-1] <= 1.25 * sum(map(cost, jobs)) / 4, "no worker far above its fair share"
    longest = [job for job in jobs if job.setting.label == "fuzzy_recall[seq_len=1024]"]
    assert sum(any(job in share for job in longest) for share in shares) == 2, "the 1024-token setting is cut in two"
    assert sum(len({j.setting.label for j in share}) for share in shares) <= 11 + 3, "other settings stay whole"

    linked = {"fuzzy_recall[baseline]", "fuzzy_recall[seq_len=1024]", "fuzzy_recall[seq_len=512]"}
    shares = split_jobs(jobs, cost, [linked, {"unrelated[x]"}], workers=4)
    holders = [share for share in shares if any(job.setting.label in linked for job in share)]
    assert len(holders) == 1 and sum(j.setting.label in linked for j in holders[0]) == 18, "a checkpoint's settings whole"
    assert len(split_jobs(jobs[:6], lambda job: 1, [], workers=8)) == 6, "a small plan cut into single jobs"
    assert len(split_jobs(jobs[:6], lambda job: 1, [{jobs[0].setting.label}], workers=8)) == 1, "but not a checkpoint's"


@pytest.mark.parametrize("args, fragment", [
    (["--devices", "cpu,cpu", "--no-cache"], "drop --no-cache"),
    (["--devices", "cpu,cpu", "--device", "cpu"], "not both"),
    (["--devices", "cuda:0,cuda:1"], "no CUDA GPU is visible"),
    (["--devices", "cpu"], "fewer than two devices"),
])
def test_eval_devices_rejects_bad_input(args: list[str], fragment: str, tmp_path: Path) -> None:
    proc = mixerlab("eval", "--profile", "tiny", "--tasks", "memorize", "--cache", str(tmp_path / "c.sqlite"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_workers_train_each_setting_once_and_match_one_process(tmp_path: Path) -> None:
    """Plumbing, on `smoke`: the split of the settings over the workers, and the same numbers as one process."""
    tasks = "context_recall,memorize,selective_copy"
    spread = mixerlab("eval", "--profile", "smoke", "--tasks", tasks, "--devices", "cpu,cpu",
                      "--cache", str(tmp_path / "spread.sqlite"))
    assert spread.returncode == 0, spread.stderr
    logs = sorted((tmp_path / "spread.sqlite.logs").glob("*.log"))
    assert len(logs) == 2 and all("trainings" in log.read_text() for log in logs), "both workers trained"
    assert ResultCache(tmp_path / "spread.sqlite").count() == 3, "each training once"

    # one process with the workers' thread count (1 of 2 cores each) trains the same numbers
    alone = mixerlab("eval", "--profile", "smoke", "--tasks", tasks, "--device", "cpu",
                     "--cache", str(tmp_path / "alone.sqlite"), env={"OMP_NUM_THREADS": "1"})
    assert alone.returncode == 0, alone.stderr
    row = lambda out: parse_table(out.split("\nsmoke profile")[0]).iloc[0]  # noqa: E731
    for column in ("Context Recall", "Memorize", "Selective Copy"):
        assert row(spread.stdout)[column] == pytest.approx(row(alone.stdout)[column], abs=1e-6), column


def workers_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
def test_sigterm_stops_every_worker_resumably(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    command = [sys.executable, "-m", "mixerlab.cli", "eval", "--profile", "tiny", "--tasks", "fuzzy_recall,compress",
               "--devices", "cpu,cpu", "--cache", str(cache), "--checkpoint-every", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    folder = CheckpointStore.beside(cache).folder
    deadline = time.monotonic() + 400
    while len(list(folder.glob("*.pt"))) < 2 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)  # both workers are training (each saves at every sync point)
    workers = workers_of(run.pid)
    assert len(workers) == 2 and run.poll() is None
    run.send_signal(signal.SIGTERM)
    output, _ = run.communicate(timeout=400)
    assert run.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "the workers stopped too"
    assert list(folder.glob("*.pt")), "unfinished groups were saved"

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert ResultCache(cache).count() == 2 and not list(folder.glob("*.pt"))
    logs = " ".join(log.read_text() for log in (tmp_path / "c.sqlite.logs").glob("*.log"))
    assert "continued from a checkpoint" in logs


def test_threads_are_sized_by_the_cpus_the_process_may_use() -> None:
    """Under a one-CPU affinity mask (a cpuset, `taskset`, a test worker's share) trainings get one thread
    each, not the whole machine's count, which would oversubscribe that CPU."""
    probe = ("from mixerlab.config import available_cpus\n"
             "from mixerlab.evaluate.devices import worker_env\n"
             "from mixerlab.executor.local import LocalExecutor\n"
             "print(available_cpus(), worker_env('cpu', 1)['OMP_NUM_THREADS'], LocalExecutor(workers=1).cpu_threads)")
    one = sorted(os.sched_getaffinity(0))[:1]
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, one)).stdout.split()
    assert out == ["1", "1", "1"], out
