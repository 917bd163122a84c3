"""The committed GPU results (benchmarks/results/cache) still belong to the current baselines.

If this fails, a baseline's code changed in a way that changes what it computes: its cached trainings no
longer apply, and the reproduction in benchmarks/results/baselines.md must be re-run (or the change undone).
"""

from __future__ import annotations

from pathlib import Path

from mixerlab.config import PROFILES
from mixerlab.evaluate import ResultCache
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
