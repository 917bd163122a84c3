"""benchmarks/gpu_sweep.sh: the commands that continue a `full` sweep on a lent GPU refuse what would lose work."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_sweep.sh"


def sweep(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "SWEEP_DIR": str(tmp_path / "sweep"), "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


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
