"""benchmarks/probes/probe_setting.py: one job of one `full` setting for a few epochs, its history printed and saved."""

from __future__ import annotations

import gzip
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


def committed_first_test_loss(setting: str, lr: float) -> float:
    """Epoch 0's test loss of the committed H100 training of `setting` (DeltaNet, wd 0, seed 0, `full`)."""
    cache = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cache" / "gpu_results.jsonl.gz"
    sys.path.insert(0, str(SCRIPT.parents[2] / "src"))
    from mixerlab.config import get_profile
    from mixerlab.tasks import parse_task
    from mixerlab.train.job import TrainJob

    full = get_profile("full")
    (match,) = [s for s in full.settings[parse_task("memorize")] if s.label == setting]
    key = TrainJob(setting=match, lr=lr, weight_decay=0.0, seed=0).cache_key("11effff5b95da416", full.train, "bf16")
    with gzip.open(cache, "rt") as lines:
        (record,) = [r["result"] for r in map(json.loads, lines) if r["result"]["key"] == key]
    return record["history"][0]["test_loss"]


def test_the_pre_december_draw_reproduces_a_committed_training_and_the_own_draw_does_not(tmp_path: Path) -> None:
    """The committed Memorize vocab-512 training was drawn in a group whose largest vocabulary was 1024."""
    committed = committed_first_test_loss("memorize[vocab_size=512]", 1e-3)
    first = {}
    for build in ("1024", "512"):
        out = tmp_path / f"{build}.json"
        run = probe("--mixer", "delta_net", "--setting", "memorize[vocab_size=512]", "--epochs", "1", "--threads", "1",
                    "--build-vocab", build, "--json", str(out))
        assert run.returncode == 0, run.stderr
        first[build] = json.loads(out.read_text())["history"][0]["test_loss"]
    assert abs(first["1024"] - committed) < 2e-3, (first, committed)  # fp32 here, bf16 on the H100
    assert abs(first["512"] - committed) > 1e-2, (first, committed)


def test_a_build_vocabulary_below_the_setting_is_refused() -> None:
    run = probe("--setting", "memorize[vocab_size=512]", "--build-vocab", "256")
    assert run.returncode == 2
    assert "--build-vocab 256 is below memorize[vocab_size=512]'s vocabulary (512)" in run.stderr
