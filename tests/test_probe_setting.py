"""benchmarks/probes/probe_setting.py: one job of one `full` setting for a few epochs, its history printed and saved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "probes" / "probe_setting.py"


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_a_probe_trains_the_named_setting_and_writes_its_history(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    run = probe("--mixer", "delta_net", "--setting", "memorize[baseline]", "--epochs", "2", "--threads", "1",
                "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "on memorize[baseline], lr 0.001" in run.stdout
    saved = json.loads(out.read_text())
    assert [e["epoch"] for e in saved["history"]] == [0, 1]
    assert saved["history"][1]["train_loss"] < saved["history"][0]["train_loss"], "two epochs should already learn"
    assert f"{saved['history'][1]['test_acc']:8.3f}" in run.stdout


def test_an_unknown_setting_names_the_choices() -> None:
    run = probe("--setting", "memorize[vocab=3]")
    assert run.returncode == 2
    assert "unknown setting 'memorize[vocab=3]'" in run.stderr and "vocab_size=8192" in run.stderr
