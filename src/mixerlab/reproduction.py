"""Our numbers against the references they reproduce: the seed rows' baselines (`full` within 0.05 of each
task, the seeds' order between the two models, recall and copy near 1.0), and DeltaNet on fla's kernels against
the PyTorch form. benchmarks/reproduction/ writes the result pages from these; tests hold them to it."""

from __future__ import annotations

import statistics
from collections import Counter

from .config import PROFILES
from .evaluate import ResultCache, aggregate
from .evaluate.plan import plan_jobs
from .evaluate.prefix import find_finished
from .mixers import resolve_mixer
from .tasks import TASK_ORDER
from .train.result import TrainResult

# the seeds' rows for the two baselines (../shared/seeds: the `full` protocol's six-task scores)
SEED_ROWS = {
    "delta_net_4layer": {"compress": 0.487037, "context_recall": 0.999515, "fuzzy_recall": 0.189705,
                         "memorize": 0.337827, "noisy_recall": 0.999640, "selective_copy": 0.990733},
    "gated_delta_net_4layer": {"compress": 0.408180, "context_recall": 0.999918, "fuzzy_recall": 0.303293,
                               "memorize": 0.354294, "noisy_recall": 0.999928, "selective_copy": 0.999304},
}
TOLERANCE = 0.05  # the reproduction target: every `full` task within this of its seed row
NEAR_ONE = ("context_recall", "noisy_recall", "selective_copy")  # both models near 1.0 in the seeds
# the seeds' order between the two models: (task, the model ahead)
ORDER = (("fuzzy_recall", "gated_delta_net_4layer"), ("memorize", "gated_delta_net_4layer"),
         ("compress", "delta_net_4layer"))


def target_checks(full: dict) -> list[dict]:
    """The reproduction targets, each "met", "missed" or "pending": every task within TOLERANCE of its seed row,
    the seeds' order between the models, recall/copy near 1.0. A partial cell decides a target once every score
    in its `final_range` gives the same verdict; otherwise the target waits for the rest of the sweep."""
    def span(model: str, task: str) -> tuple[float, float] | None:
        c = full.get(model, {}).get(task)
        if not c:
            return None
        if c["complete"]:
            return c["mean"], c["mean"]
        return tuple(c["final_range"]) if "final_range" in c else None

    def verdict(s: tuple[float, float] | None, meets, misses) -> str:
        return "pending" if s is None else "met" if meets(*s) else "missed" if misses(*s) else "pending"

    def check(target: str, v: str, cells: list[tuple[str, str]], extra: tuple[float, ...] = ()) -> dict:
        found = {f"{m} {t}": full.get(m, {}).get(t) for m, t in cells}
        out = {"target": target, "verdict": v,
               "values": None if v == "pending" else [c["mean"] for c in found.values()] + list(extra)}
        partial = {name: c.get("final_range") for name, c in found.items() if c and not c["complete"]}
        if v != "pending" and partial:  # a verdict on a partial cell comes from its range, so it has one
            out["decided_by_range"] = partial  # the partial cells whose whole range gives this verdict
        return out

    checks = []
    for model in SEED_ROWS:
        for task in (t.value for t in TASK_ORDER):
            seed = SEED_ROWS[model][task]
            v = verdict(span(model, task), lambda lo, hi: lo >= seed - TOLERANCE and hi <= seed + TOLERANCE,
                        lambda lo, hi: hi < seed - TOLERANCE or lo > seed + TOLERANCE)
            checks.append(check(f"{model} {task} within {TOLERANCE} of the seed row", v, [(model, task)], (seed,)))
    for task, ahead in ORDER:
        behind = next(m for m in SEED_ROWS if m != ahead)
        a, b = span(ahead, task), span(behind, task)
        v = "pending" if a is None or b is None else "met" if a[0] > b[1] else "missed" if a[1] <= b[0] else "pending"
        checks.append(check(f"{ahead} ahead of {behind} on {task}", v, [(ahead, task), (behind, task)]))
    for model in SEED_ROWS:
        for task in NEAR_ONE:
            v = verdict(span(model, task), lambda lo, hi: lo >= 1 - TOLERANCE, lambda lo, hi: hi < 1 - TOLERANCE)
            checks.append(check(f"{model} {task} near 1.0 (at least {1 - TOLERANCE:.2f})", v, [(model, task)]))
    return checks


def target_lines(checks: list[dict]) -> list[str]:
    count = {v: sum(c["verdict"] == v for c in checks) for v in ("met", "missed", "pending")}
    lines = ["### Targets", "", f"Of {len(checks)} targets: {count['met']} met, {count['missed']} missed, "
             f"{count['pending']} pending (a cell they need is incomplete and could still go either way).",
             "A partial cell decides a target early when every score it can still end in gives the same verdict",
             "(its final range: each setting's best so far as the floor, 1 as the ceiling until it is done).", ""]
    for c in checks:
        values = "" if c["values"] is None else " (" + " vs ".join(f"{v:.4f}" for v in c["values"]) + ")"
        decided = "".join(f"; decided before the sweep ends: {name} can only end in {lo:.4f}-{hi:.4f}"
                          for name, (lo, hi) in c.get("decided_by_range", {}).items())
        lines.append(f"- {c['verdict']}: {c['target']}{values}{decided}")
    return lines + [""]


# fla's kernels were trained with `quick` as it was then: 100 epochs, no patience (quick's patience came later)
FLA_PROFILE = PROFILES["quick"].model_copy(update={"train": PROFILES["quick"].train.model_copy(update={"patience": None})})


def complete_settings(results: dict[str, TrainResult], per_setting: int) -> set[str]:
    counts = Counter(r.setting for r in results.values())
    return {setting for setting, n in counts.items() if n == per_setting}


def fla_parity(cache: ResultCache) -> dict:
    """Per task: both `quick` scores over the settings complete on both sides, and per setting."""
    fla, ref = resolve_mixer("delta_net_fla"), resolve_mixer("delta_net")
    per_setting = len(FLA_PROFILE.lrs) * len(FLA_PROFILE.weight_decays)
    out: dict = {"profile": FLA_PROFILE.name, "fla_code_hash": fla.code_hash, "tasks": {}}
    for task in TASK_ORDER:
        jobs = plan_jobs(FLA_PROFILE, (task,), 1)
        fla_got = find_finished(cache, jobs, fla.code_hash, FLA_PROFILE.train, "bf16")
        ref_got = find_finished(cache, jobs, ref.code_hash, FLA_PROFILE.train, "bf16")
        both = complete_settings(fla_got, per_setting) & complete_settings(ref_got, per_setting)
        if not both:
            continue
        fla_runs = [r for r in fla_got.values() if r.setting in both]
        ref_runs = [r for r in ref_got.values() if r.setting in both]
        fla_score, ref_score = aggregate(fla_runs)[task.value], aggregate(ref_runs)[task.value]
        ref_by_setting = {s.setting: s.score for s in ref_score.settings}
        settings = [{"setting": s.setting, "fla": s.score, "pytorch": ref_by_setting[s.setting],
                     "difference": s.score - ref_by_setting[s.setting]} for s in fla_score.settings]
        inputs = {j.setting.label: j.setting.input_len for j in jobs}
        tokens = sum(r.steps * FLA_PROFILE.train.batch_size * inputs[r.setting] for r in fla_runs)
        seconds = sum(r.seconds for r in fla_runs)  # each training's share of its group's wall time
        out["tasks"][task.value] = {
            "fla": fla_score.mean, "pytorch": ref_score.mean, "difference": fla_score.mean - ref_score.mean,
            "settings_compared": len(both), "settings_planned": len({j.setting.label for j in jobs}),
            "mean_abs_setting_difference": statistics.fmean(abs(s["difference"]) for s in settings),
            "settings": settings, "fla_tokens": tokens, "fla_seconds": seconds,
            "fla_tokens_per_s": tokens / seconds if seconds else None,
        }
    return out
