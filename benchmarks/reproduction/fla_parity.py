"""Does DeltaNet on fla's kernels score what the PyTorch form scores? `python benchmarks/reproduction/fla_parity.py`.

`delta_net_fla` (mixers/fla_kernels.py) is the same layer and parameters as `delta_net`, with fla's bf16
chunkwise kernels in place of mixerlab's float32 chunk math; it trains about 1.5x faster per step
(step_anatomy.md). Its `quick` trainings were run on a GPU; `delta_net`'s `quick` is read off its committed
`full` trainings (evaluate/prefix.py: same jobs, init and data, first 100 epochs). Only settings with all
their `quick` trainings in on both sides are compared. Writes benchmarks/results/fla_parity.{md,json}.

    python benchmarks/reproduction/fla_parity.py [--import FILE.jsonl.gz ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.config import PROFILES  # noqa: E402
from mixerlab.evaluate import ResultCache, aggregate  # noqa: E402
from mixerlab.evaluate.plan import plan_jobs  # noqa: E402
from mixerlab.evaluate.prefix import find_finished  # noqa: E402
from mixerlab.mixers import resolve_mixer  # noqa: E402
from mixerlab.tasks import TASK_ORDER  # noqa: E402
from mixerlab.train.result import TrainResult  # noqa: E402

PROFILE = PROFILES["quick"]


def complete_settings(results: dict[str, TrainResult], per_setting: int) -> set[str]:
    counts = Counter(r.setting for r in results.values())
    return {setting for setting, n in counts.items() if n == per_setting}


def compare(cache: ResultCache) -> dict:
    """Per task: both `quick` scores over the settings complete on both sides, and per setting."""
    fla, ref = resolve_mixer("delta_net_fla"), resolve_mixer("delta_net")
    per_setting = len(PROFILE.lrs) * len(PROFILE.weight_decays)
    out: dict = {"profile": PROFILE.name, "fla_code_hash": fla.code_hash, "tasks": {}}
    for task in TASK_ORDER:
        jobs = plan_jobs(PROFILE, (task,), 1)
        fla_got = find_finished(cache, jobs, fla.code_hash, PROFILE.train, "bf16")
        ref_got = find_finished(cache, jobs, ref.code_hash, PROFILE.train, "bf16")
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
        tokens = sum(r.steps * PROFILE.train.batch_size * inputs[r.setting] for r in fla_runs)
        seconds = sum(r.seconds for r in fla_runs)  # each training's share of its group's wall time
        out["tasks"][task.value] = {
            "fla": fla_score.mean, "pytorch": ref_score.mean, "difference": fla_score.mean - ref_score.mean,
            "settings_compared": len(both), "settings_planned": len({j.setting.label for j in jobs}),
            "mean_abs_setting_difference": statistics.fmean(abs(s["difference"]) for s in settings),
            "settings": settings, "fla_tokens": tokens, "fla_seconds": seconds,
            "fla_tokens_per_s": tokens / seconds if seconds else None,
        }
    return out


def markdown(report: dict) -> str:
    lines = ["# DeltaNet on fla's kernels against the PyTorch form (`quick`)", "",
             "Written by `python benchmarks/reproduction/fla_parity.py` from the committed GPU results. `fla` is "
             "`delta_net_fla` trained with `quick` on an H200 (fla-core 0.6, bf16 kernels); `pytorch` is "
             "`delta_net`'s `quick` read off its `full` trainings (float32 chunk math). Same jobs, "
             "initialisation and data; only settings with both of their `quick` trainings in on both sides "
             "are compared. Seconds are the fla trainings' shares of their groups' wall time (compiles and "
             "per-epoch evaluation included).", "",
             "| task | settings | fla | pytorch | fla - pytorch | mean abs. difference per setting | fla tokens | fla s | Mtokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, t in report["tasks"].items():
        rate = f"{t['fla_tokens_per_s'] / 1e6:.2f}" if t["fla_tokens_per_s"] else "-"
        lines.append(f"| {task} | {t['settings_compared']}/{t['settings_planned']} | {t['fla']:.4f} | "
                     f"{t['pytorch']:.4f} | {t['difference']:+.4f} | {t['mean_abs_setting_difference']:.4f} | "
                     f"{t['fla_tokens'] / 1e9:.2f}G | {t['fla_seconds']:.0f} | {rate} |")
    lines += ["", "Per setting (best over the two learning rates on each side):", "",
              "| task | setting | fla | pytorch | fla - pytorch |", "|---|---|---|---|---|"]
    for task, t in report["tasks"].items():
        for s in t["settings"]:
            lines.append(f"| {task} | {s['setting']} | {s['fla']:.4f} | {s['pytorch']:.4f} | {s['difference']:+.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import", dest="imports", nargs="*",
                        default=[str(ROOT / "results" / "cache" / "gpu_results.jsonl.gz")])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    cache = ResultCache(Path(tempfile.mkdtemp()) / "cache.sqlite")
    for path in args.imports:
        cache.import_file(path)
    report = compare(cache)
    notes = ROOT / "results" / "fla_parity_notes.md"  # what the runs were and what the figures mean
    text = markdown(report) + ("\n" + notes.read_text() if notes.exists() else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fla_parity.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "fla_parity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
