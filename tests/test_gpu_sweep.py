"""benchmarks/tools/gpu_sweep.sh: the commands that continue a `full` sweep on a lent GPU refuse what would lose work."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "gpu_sweep.sh"


def sweep(*args: str, tmp_path: Path, timeout: float = 60, **settings: str) -> subprocess.CompletedProcess[str]:
    # this interpreter's folder first: the script's python3 is the one with mixerlab's dependencies
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    env = {"PATH": path, "HOME": str(tmp_path), "SWEEP_DIR": str(tmp_path / "sweep"), "OUT": str(tmp_path / "out"),
           **settings}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_poll_on_a_fresh_machine_stops_without_creating_a_cache(tmp_path: Path) -> None:
    # an empty cache left behind would make the next `start` skip importing the committed results
    result = sweep("poll", "5", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "run start first" in result.stdout
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "out").exists()


def test_unknown_command_prints_usage_and_exits_2(tmp_path: Path) -> None:
    result = sweep("pol", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "gpu_sweep.sh poll SECONDS" in result.stdout


COMMITTED = SCRIPT.parents[2] / "benchmarks" / "results" / "cache" / "gpu_results.jsonl.gz"


def write_records(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as out:
        out.writelines(lines)


def keys(path: Path) -> set[str]:
    with gzip.open(path, "rt") as lines:
        return {json.loads(line)["result"]["key"] for line in lines}


@pytest.mark.slow
def test_home_merges_returned_results_and_refreshes_the_carry(tmp_path: Path) -> None:
    with gzip.open(COMMITTED, "rt") as lines:
        records = [line for _, line in zip(range(15), lines)]
    probe = json.loads(records[-1])
    probe.update(mixer_name="a_probe", mixer_hash="0123456789abcdef")
    probe["result"]["key"] = "f" * 24
    records.append(json.dumps(probe) + "\n")  # a probe's one training: counted, but no sweep table
    committed, returned = tmp_path / "committed.jsonl.gz", tmp_path / "returned"
    write_records(committed, records[:10])
    write_records(returned / "results.jsonl.gz", records[5:])  # five known, five new
    (returned / "checkpoints").mkdir()
    (returned / "checkpoints" / "group.pt").write_bytes(b"state")
    carry = tmp_path / "carry"
    (carry / "checkpoints").mkdir(parents=True)
    (carry / "checkpoints" / "stale.pt").write_bytes(b"older poll")

    result = sweep("home", str(returned), tmp_path=tmp_path, COMMITTED=str(committed), CARRY=str(carry))
    assert result.returncode == 0, result.stdout + result.stderr
    assert keys(committed) == {json.loads(line)["result"]["key"] for line in records}
    assert keys(carry / "results.jsonl.gz") == keys(returned / "results.jsonl.gz")
    assert sorted(p.name for p in (carry / "checkpoints").iterdir()) == ["group.pt"]  # the previous poll's replaced
    assert ": 16 trainings" in result.stdout and "can end in" in result.stdout, result.stdout  # where they stand
    assert "a_probe (0123456789abcdef): 1" in result.stdout
    assert "delta_net_4layer (" in result.stdout and "a_probe (0123456789abcdef): `full` sweep" not in result.stdout
    assert "gated_delta_net_4layer" in result.stdout and "`full` sweep" in result.stdout


def test_home_without_a_returned_folder_names_the_fix(tmp_path: Path) -> None:
    result = sweep("home", str(tmp_path / "missing"), tmp_path=tmp_path, COMMITTED=str(tmp_path / "c.jsonl.gz"))
    assert result.returncode == 2
    assert "pass the folder a poll returned" in result.stdout
    assert not (tmp_path / "c.jsonl.gz").exists()


@pytest.mark.slow
def test_cycle_on_a_fresh_machine_starts_trains_and_returns_results(tmp_path: Path) -> None:
    # the whole round of one lent-GPU call, on the CPU with the tiny profile: import, train detached, export
    with gzip.open(COMMITTED, "rt") as lines:
        records = [line for _, line in zip(range(3), lines)]
    committed = tmp_path / "committed.jsonl.gz"
    write_records(committed, records)
    # poll returns once the sweep is done: the generous SECONDS only matter on a slow, loaded machine
    result = sweep("cycle", "400", "delta_net:context_recall", tmp_path=tmp_path, timeout=480, COMMITTED=str(committed),
                   CARRY=str(tmp_path / "carry"), PROFILE="tiny", DEVICE="cpu", SAVE_WAIT="5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SWEEP-DONE" in result.stdout
    exported = tmp_path / "out" / "results.jsonl.gz"
    with gzip.open(exported, "rt") as lines:
        new = [json.loads(line) for line in lines if line not in records]
    assert len(new) == 1 and new[0]["mixer_name"] == "delta_net_4layer"
    assert new[0]["result"]["task"] == "context_recall" and new[0]["result"]["device"] == "cpu"
    assert keys(committed) <= keys(exported)
