"""The committed GPU results (benchmarks/results/cache) still belong to the current baselines.

If this fails, a baseline's code changed in a way that changes what it computes: its cached trainings no
longer apply, and the reproduction in benchmarks/results/baselines.md must be re-run (or the change undone).
"""

from __future__ import annotations

import json
from xml.etree import ElementTree
from pathlib import Path

import pytest

from mixerlab.config import PROFILES
from mixerlab.evaluate import ResultCache
from mixerlab.evaluate.coverage import sweep_coverage
from mixerlab.evaluate.plan import plan_jobs
from mixerlab.mixers import resolve_mixer
from mixerlab.tasks import Task

COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cache" / "gpu_results.jsonl.gz"


def test_committed_memorize_sweeps_are_found_under_the_current_code(tmp_path) -> None:
    cache = ResultCache(tmp_path / "c.sqlite")
    assert cache.import_jsonl(COMMITTED) >= 72
    profile = PROFILES["full"]
    for mixer in ("delta_net", "gated_delta_net"):
        spec = resolve_mixer(mixer)
        keys = [j.cache_key(spec.code_hash, profile.train, "bf16") for j in plan_jobs(profile, (Task.memorize,), 1)]
        found = cache.get_many(keys)
        assert len(found) == 36, f"{mixer}: {len(found)}/36 committed Memorize trainings match the current code"
        assert all(r.device.startswith("cuda") and r.epochs_trained >= 1 for r in found.values())


def test_sweep_coverage_agrees_with_the_written_baselines(tmp_path) -> None:
    """`mixerlab cache info --profile` and benchmarks/reproduction/baselines.py count and score the same trainings, and give
    partial cells the same range."""
    written = json.loads((COMMITTED.parents[1] / "baselines.json").read_text())
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.import_jsonl(COMMITTED)
    for profile_name, seeds in (("full", 1), ("baseline", 3)):
        for mixer in ("delta_net", "gated_delta_net"):
            spec = resolve_mixer(mixer)
            for row in sweep_coverage(cache, PROFILES[profile_name], spec.code_hash, seeds, "bf16"):
                cell = written[profile_name][spec.name].get(row.task)
                assert row.done == (cell["trainings_done"] if cell else 0), (profile_name, mixer, row.task)
                if cell:
                    assert row.planned == cell["trainings_planned"] and row.score == pytest.approx(cell["mean"])
                    assert row.score_range == pytest.approx(tuple(cell["final_range"]))
                    assert row.score_range[0] <= row.score <= row.score_range[1]
                assert (row.tokens_left == 0) == row.complete


def test_per_setting_scores_and_their_chart_add_up_to_the_written_means(tmp_path) -> None:
    """baselines.json's per-setting rows are the task means taken apart, and baselines_settings.svg shows
    exactly them: one cell per model and `full` setting, grey ("not run") where no training finished."""
    results = COMMITTED.parents[1]
    written = json.loads((results / "baselines.json").read_text())
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.import_jsonl(COMMITTED)
    shown = 0
    for mixer in ("delta_net", "gated_delta_net"):
        spec = resolve_mixer(mixer)
        coverage = {row.task: row for row in sweep_coverage(cache, PROFILES["full"], spec.code_hash, 1, "bf16")}
        for task, cell in written["full"][spec.name].items():
            settings = cell["settings"]
            assert sum(s["score"] for s in settings) / len(settings) == pytest.approx(cell["mean"])
            assert sum(s["trainings_done"] for s in settings) == cell["trainings_done"]
            complete = sum(s["trainings_done"] == s["trainings_planned"] == 6 for s in settings)
            assert complete == coverage[task].settings_complete, (mixer, task)
            shown += len(settings)
    svg = ElementTree.parse(results / "baselines_settings.svg").getroot()
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    n_settings = sum(len(s) for s in PROFILES["full"].settings.values())
    assert len(titles) == 2 * n_settings == 132
    assert sum(t.endswith(": not run") for t in titles) == 2 * n_settings - shown


def test_written_patience_rows_are_the_committed_histories_cut_by_the_rule(tmp_path) -> None:
    """baselines.json's `full --patience P` cells, recomputed here straight from each committed training's epoch
    history (cut where the rule stops it, scored at its best-perplexity epoch, best (lr, wd) per setting, mean
    over settings): what `evaluate/prefix.py` reads off must be what the rule gives. A smaller P never costs more."""
    from collections import defaultdict

    from mixerlab.train.result import best_epoch, select_epochs

    written = json.loads((COMMITTED.parents[1] / "baselines.json").read_text())["patience_vs_full"]
    assert written, "baselines.py wrote no patience comparison"
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.import_jsonl(COMMITTED)
    full = PROFILES["full"]
    for mixer in ("delta_net", "gated_delta_net"):
        spec = resolve_mixer(mixer)
        for task in Task:
            jobs = {j.cache_key(spec.code_hash, full.train, "bf16"): j for j in plan_jobs(full, (task,), 1)}
            found = cache.get_many(jobs)
            by_setting = defaultdict(list)
            for key, result in found.items():
                by_setting[jobs[key].setting.label].append(result)
            complete = {label: rs for label, rs in by_setting.items() if len(rs) == 6}
            tokens_by_p = []
            for p, cells in sorted(written.items(), key=lambda kv: int(kv[0])):
                cell = cells[spec.name].get(task.value)
                if not complete:
                    assert cell is None
                    continue
                scores = [max(best_epoch(select_epochs(r.history, full.train.stop_accuracy, int(p))[0]).test_acc
                              for r in rs) for rs in complete.values()]
                assert cell["mean"] == pytest.approx(sum(scores) / len(scores)), (mixer, task, p)
                assert cell["settings_compared"] == len(complete)
                tokens_by_p.append(cell["tokens"])
            if tokens_by_p:
                assert tokens_by_p == sorted(tokens_by_p) and tokens_by_p[-1] <= cell["full_tokens"]
