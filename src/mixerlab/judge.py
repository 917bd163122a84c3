"""Comparing a candidate with its parent, the baselines and its own Expected Improvements, counting noise.

Per task, the noise of a difference is sqrt(std_a^2 + std_b^2) over seeds, never below a floor (with one
seed there is no estimate, so the floor alone applies). A change is an improvement or a regression only
when it exceeds that noise; otherwise it is "within noise". The mean MAD score is judged the same way,
with the noise of a mean of six tasks.
"""

from __future__ import annotations

import math
from typing import Any

from mixerlab.tasks import TASK_ORDER

TASKS = [t.value for t in TASK_ORDER]


def _noise(a: dict, b: dict, floor: float) -> float:
    return max(floor, math.sqrt(a.get("std", 0.0) ** 2 + b.get("std", 0.0) ** 2))


def compare(scores: dict[str, dict], other: dict[str, dict], floor: float) -> dict[str, Any]:
    per_task = {}
    for task in TASKS:
        if task not in scores or task not in other:
            continue
        delta = scores[task]["mean"] - other[task]["mean"]
        noise = _noise(scores[task], other[task], floor)
        verdict = "better" if delta > noise else "worse" if delta < -noise else "within noise"
        per_task[task] = {"delta": delta, "noise": noise, "verdict": verdict}
    if not per_task:
        return {"tasks": {}, "mean_delta": 0.0, "mean_noise": floor, "verdict": "within noise"}
    mean_delta = sum(v["delta"] for v in per_task.values()) / len(per_task)
    mean_noise = math.sqrt(sum(v["noise"] ** 2 for v in per_task.values())) / len(per_task)
    verdict = "better" if mean_delta > mean_noise else "worse" if mean_delta < -mean_noise else "within noise"
    return {"tasks": per_task, "mean_delta": mean_delta, "mean_noise": mean_noise, "verdict": verdict}


def judge(scores: dict[str, dict], parent: dict[str, dict] | None, baselines: dict[str, dict[str, dict]],
          expected: dict[str, float], floor: float) -> dict[str, Any]:
    result: dict[str, Any] = {"noise_floor": floor}
    if parent:
        result["vs_parent"] = compare(scores, parent, floor)
    result["vs_baselines"] = {name: compare(scores, base, floor) for name, base in baselines.items() if base}
    met = {}
    for task, target in expected.items():
        if task in scores:
            met[task] = {"target": target, "actual": scores[task]["mean"], "met": scores[task]["mean"] >= target - floor}
    result["expected"] = met
    result["expected_met"] = sum(v["met"] for v in met.values())
    return result


def improves(judgement: dict[str, Any]) -> bool:
    return judgement.get("vs_parent", {}).get("verdict") == "better"
