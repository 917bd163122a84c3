"""benchmarks/reproduction/fla_parity.py: DeltaNet on fla's kernels against the PyTorch form, from the committed results."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from benchmarks.reproduction import fla_parity as script
from mixerlab.evaluate import ResultCache
from mixerlab.mixers import resolve_mixer
from mixerlab.reproduction import fla_parity

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
COMMITTED = BENCHMARKS / "results" / "cache" / "gpu_results.jsonl.gz"


def test_the_written_comparison_is_what_the_committed_trainings_give(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["fla_parity.py", "--out", str(tmp_path)])
    script.main()
    results = BENCHMARKS / "results"
    assert (tmp_path / "fla_parity.md").read_text() == (results / "fla_parity.md").read_text()
    assert json.loads((tmp_path / "fla_parity.json").read_text()) == json.loads((results / "fla_parity.json").read_text())


@pytest.mark.slow
def test_a_setting_missing_one_training_drops_out_of_the_comparison(tmp_path) -> None:
    """A task's score is the mean over settings whose `quick` trainings are all in on both sides: with one fla
    training of a compared setting gone (cut off by the device time, say), that setting leaves the comparison
    and the others stay as they were."""
    full = ResultCache(tmp_path / "full.sqlite")
    full.import_file(COMMITTED)
    before = fla_parity(full)["tasks"]["noisy_recall"]
    dropped = before["settings"][0]["setting"]
    fla_hash = resolve_mixer("delta_net_fla").code_hash
    kept, removed = tmp_path / "kept.jsonl.gz", 0
    with gzip.open(COMMITTED, "rt") as src, gzip.open(kept, "wt") as dst:
        for line in src:
            row = json.loads(line)
            if not removed and row["mixer_hash"] == fla_hash and row["result"]["setting"] == dropped:
                removed += 1
                continue
            dst.write(line)
    assert removed == 1
    partial = ResultCache(tmp_path / "partial.sqlite")
    partial.import_file(kept)
    after = fla_parity(partial)["tasks"]["noisy_recall"]
    assert after["settings_compared"] == before["settings_compared"] - 1
    assert [s for s in before["settings"] if s["setting"] != dropped] == after["settings"]
    assert abs(after["fla"] - sum(s["fla"] for s in after["settings"]) / len(after["settings"])) < 1e-12
