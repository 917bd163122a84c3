"""benchmarks/reproduction/noise.py: measuring a costly profile's noise in parts, and the committed `quick` entry."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.reproduction import noise as script
from mixerlab.evaluate import ResultCache
from mixerlab.noise import Measurement

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
QUICK_LABEL = "NVIDIA H200 (110 of the 126 trainings) and NVIDIA H100 80GB HBM3 (16)"


def measurement(hardware: str, scores: dict, seeds: int = 3) -> Measurement:
    return Measurement(profile="quick", numerics="bf16", hardware=hardware, command=f"measure on {hardware}",
                       date="2026-12-07", seeds=seeds, scores={"delta_net_4layer": scores})


def test_tasks_measured_on_other_hardware_are_kept_and_the_label_says_which_ran_where() -> None:
    old = measurement("H100", {"memorize": [0.30, 0.29, 0.31]})
    same = script.merged(old, measurement("H100", {"compress": [0.4, 0.5, 0.6]}))
    assert same.hardware == "H100" and set(same.scores["delta_net_4layer"]) == {"memorize", "compress"}

    other = script.merged(old, measurement("H200", {"context_recall": [0.99, 0.98, 0.97]}))
    assert set(other.scores["delta_net_4layer"]) == {"memorize", "context_recall"}
    assert other.hardware == "memorize: H100; context_recall: H200"
    assert other.command == "measure on H100; measure on H200"
    # a task measured again takes the new figures and the new machine's name
    third = script.merged(other, measurement("A100", {"memorize": [0.1, 0.2, 0.3], "compress": [0.4, 0.5, 0.6]}))
    assert third.hardware == "compress, memorize: A100; context_recall: H200"
    assert third.scores["delta_net_4layer"]["memorize"] == [0.1, 0.2, 0.3]
    back = script.merged(third, measurement("H200", {"compress": [0.4, 0.5, 0.6], "memorize": [0.3, 0.3, 0.3]}))
    assert back.hardware == "H200"  # every task now measured on one machine: a plain label again

    replaced = script.merged(old, measurement("H200", {"context_recall": [0.99, 0.98]}, seeds=2))
    assert replaced.hardware == "H200" and set(replaced.scores["delta_net_4layer"]) == {"context_recall"}


def test_the_committed_quick_noise_is_what_the_committed_trainings_give(tmp_path, monkeypatch) -> None:
    """The Context and Noisy Recall seeds in noise.json come from the 126 exported trainings, added to the
    memorize-only measurement made before them."""
    committed = json.loads((RESULTS.parents[1] / "src" / "mixerlab" / "data" / "noise.json").read_text())
    quick = next(m for m in committed["measurements"] if m["profile"] == "quick")
    before = {**quick, "hardware": "NVIDIA H100 80GB HBM3", "command": quick["command"].split("; ")[0],
              "scores": {"delta_net_4layer": {"memorize": quick["scores"]["delta_net_4layer"]["memorize"]}}}
    data = tmp_path / "noise.json"
    data.write_text(json.dumps({"measurements": [before]}))
    (tmp_path / "results").mkdir()
    cache = tmp_path / "cache.sqlite"
    ResultCache(cache).import_jsonl(RESULTS / "cache" / "quick_noise.jsonl.gz")
    monkeypatch.setattr(script, "DATA", data)
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["noise.py", "--profile", "quick", "--device", "cuda", "--seeds", "3",
                                     "--tasks", "context_recall,noisy_recall", "--mixers", "delta_net", "--compile",
                                     "--cache", str(cache), "--cached-only", QUICK_LABEL])
    script.main()
    (written,) = json.loads(data.read_text())["measurements"]
    assert {k: v for k, v in written.items() if k != "date"} == {k: v for k, v in quick.items() if k != "date"}
    assert "context_recall, noisy_recall: NVIDIA H200" in (tmp_path / "results" / "noise.md").read_text()
