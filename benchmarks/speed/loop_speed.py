"""The research loop's own speed on a GPU: candidates per GPU-hour, seconds per stage, GPU utilisation.

Summarises a finished `discover` run from its database and a utilisation log sampled beside it, and merges the
summary into benchmarks/results/loop_speed.{json,md} under LABEL:

    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > util.txt &
    mixerlab discover --device cuda --profile tiny --proposer catalog --iterations 6 --promote-to none --run-dir R
    kill %1
    python benchmarks/speed/loop_speed.py --label LABEL --db R/mixerlab.db --util util.txt --device "NVIDIA H200" \\
        --command "the discover command above"

The candidates' span runs from the first candidate's record to the last one's end, so the baselines (trained
once per run) are not charged to the candidates.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
from datetime import datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
STAGES = ("propose_s", "check_s", "eval_s")


def summarise(db: Path, util: Path, device: str, command: str) -> dict:
    rows = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
        "select name, kind, status, profile, timings, created, updated, check_report from experiments order by id").fetchall()
    candidates = [r for r in rows if r[1] == "candidate"]
    if not candidates:
        raise SystemExit(f"{db}: no candidates recorded; run discover with --iterations >= 1 first")
    stamp = datetime.fromisoformat
    span = (max(stamp(r[6]) for r in candidates) - min(stamp(r[5]) for r in candidates)).total_seconds()
    timings = [json.loads(r[4] or "{}") for r in candidates]
    samples = [int(x) for x in util.read_text().split() if x.strip().isdigit()]
    return {
        "device": device,
        "command": command,
        "profile": candidates[0][3],
        "candidates": len(candidates),
        "statuses": sorted({r[2] for r in candidates}),
        "candidate_span_s": round(span, 1),
        "seconds_per_candidate": round(span / len(candidates), 1),
        "candidates_per_gpu_hour": round(3600 * len(candidates) / span, 1),
        "stage_seconds_mean": {s: round(statistics.mean(t.get(s, 0.0) for t in timings), 2) for s in STAGES},
        "stage_seconds_max": {s: round(max(t.get(s, 0.0) for t in timings), 2) for s in STAGES},
        "check_seconds_mean": _check_seconds(r[7] for r in candidates),
        "baseline_eval_s": [round(json.loads(r[4] or "{}").get("eval_s", 0.0), 1) for r in rows if r[1] == "baseline"],
        "gpu_utilisation_mean_pct": round(statistics.mean(samples), 1) if samples else None,
        "gpu_busy_sample_share": round(sum(s > 0 for s in samples) / len(samples), 3) if samples else None,
        "utilisation_samples": len(samples),
    }


def _check_seconds(reports) -> dict[str, float]:
    """Mean seconds of each check over the candidates that ran it (from their check reports), and of the whole
    check stage's report (`total`: the worker's start and the checks' own bookkeeping are the difference)."""
    per: dict[str, list[float]] = {}
    for text in reports:
        report = json.loads(text or "{}")
        for check in report.get("checks", []):
            per.setdefault(check["name"], []).append(check.get("seconds") or 0.0)
        if "seconds" in report:
            per.setdefault("total", []).append(report["seconds"])
    return {name: round(statistics.mean(values), 2) for name, values in per.items()}


def _check_split(checks: dict[str, float] | None) -> str:
    """The check stage's mean split: the cost check, the other checks, and the rest of the stage (the worker's
    start or hand-over, its integrity snapshots and verifications, the fingerprint, the parent's side)."""
    if not checks or "total" not in checks:
        return "-"
    timed = sum(v for k, v in checks.items() if k != "total")
    cost = checks.get("cost", 0.0)
    return f"{cost:.2f} / {timed - cost:.2f} / {checks['total'] - timed:.2f}"


def write_markdown(runs: dict) -> None:
    lines = ["# The research loop's speed on a GPU", "",
             "Written by `python benchmarks/speed/loop_speed.py` from a `discover` run's database and `nvidia-smi` "
             "utilisation sampled every 0.5 s beside it. Candidates per GPU-hour count the candidates' span only "
             "(the baselines train once per run). Stage seconds are per candidate, from the run's own timings "
             "(the judge is not timed separately: it takes milliseconds).", "",
             "| run | device | profile | candidates | s per candidate | candidates per GPU-hour | propose s | check s | "
             "of which cost check / other checks / outside the checks | evaluate s | GPU utilisation (mean, busy samples) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        stage = r["stage_seconds_mean"]
        lines.append(f"| {label} | {r['device']} | `{r['profile']}` | {r['candidates']} | {r['seconds_per_candidate']} | "
                     f"{r['candidates_per_gpu_hour']} | {stage['propose_s']} | {stage['check_s']} | "
                     f"{_check_split(r.get('check_seconds_mean'))} | {stage['eval_s']} | "
                     f"{r['gpu_utilisation_mean_pct']}%, {100 * r['gpu_busy_sample_share']:.0f}% |")
    lines += ["", "Commands:", ""] + [f"- {label}: `{r['command']}`" for label, r in runs.items()]
    notes = RESULTS / "loop_speed_notes.md"  # what the figures mean and the idle gap they show
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    (RESULTS / "loop_speed.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--util", type=Path, help="nvidia-smi utilisation samples, one per line")
    parser.add_argument("--device", help="the GPU's name, as nvidia-smi gives it")
    parser.add_argument("--command", help="the discover command that made the run")
    parser.add_argument("--tables-only", action="store_true", help="rewrite loop_speed.md from the JSON, add nothing")
    args = parser.parse_args()
    path = RESULTS / "loop_speed.json"
    if args.tables_only:
        write_markdown(json.loads(path.read_text()))
        return
    missing = [f"--{name}" for name in ("label", "db", "util", "device", "command") if getattr(args, name) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --tables-only)")
    for path in (args.db, args.util):
        if not path.is_file():
            parser.error(f"{path} does not exist")
    path = RESULTS / "loop_speed.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[args.label] = summarise(args.db, args.util, args.device, args.command)
    path.write_text(json.dumps(runs, indent=1) + "\n")
    write_markdown(runs)
    print((RESULTS / "loop_speed.md").read_text())


if __name__ == "__main__":
    main()
