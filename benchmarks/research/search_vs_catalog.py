"""The searching offline proposer against the fixed-order catalog, with the same budget of iterations.

    python benchmarks/research/search_vs_catalog.py [--iterations 20] [--seeds 0 1 2] [--profile tiny]
        -> benchmarks/results/search_vs_catalog.{json,md}

Runs `mixerlab discover` once with `--proposer catalog` (deterministic: one run) and once per search seed with
`--proposer search --search-seed S`, all on one result cache (the baselines are trained once), on the CPU.
Reports each run's best six-task mean among its candidates after each iteration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.store import Store  # noqa: E402


def run(label: str, out: Path, iterations: int, profile: str, cache: Path, extra: list[str]) -> dict:
    run_dir = out / label
    args = [sys.executable, "-m", "mixerlab.cli", "discover", "--device", "cpu", "--profile", profile,
            "--iterations", str(iterations), "--run-dir", str(run_dir), "--cache", str(cache), *extra]
    if (run_dir / "mixerlab.db").exists():
        args.append("--resume")
    proc = subprocess.run(args, capture_output=True, text=True)
    return summarise(label, run_dir, proc.returncode)


def summarise(label: str, run_dir: Path, exit_code: int | None) -> dict:
    """A run's figures from its database: the best candidate mean after each iteration, and the compute its
    experiments recorded (check and training seconds; a run stopped and resumed counts each part once)."""
    rows = Store(f"sqlite:///{run_dir / 'mixerlab.db'}", read_only=True).experiments()
    best, curve = None, []
    for row in sorted((r for r in rows if r.kind == "candidate"), key=lambda r: r.iteration):
        if row.status == "done" and row.mean_score is not None:
            best = row.mean_score if best is None else max(best, row.mean_score)
        curve.append(None if best is None else round(best, 4))
    baseline = max((r.mean_score for r in rows if r.kind == "baseline" and r.mean_score is not None), default=None)
    seconds = sum(v for r in rows if r.kind == "candidate" for k, v in (r.timings or {}).items() if k.endswith("_s"))
    return {"label": label, "exit": exit_code, "minutes": round(seconds / 60, 1),
            "best_candidate_mean": best, "best_baseline_mean": baseline, "curve": curve,
            "done": sum(r.status == "done" for r in rows if r.kind == "candidate"),
            "inert": sum(r.status == "inert" for r in rows), "failed": sum(r.status == "failed" for r in rows)}


def write(results: list[dict], planned: list[str], args: argparse.Namespace) -> None:
    """The results so far (each run's JSON and row as it finishes: a long comparison can stop and resume)."""
    summary = {"date": str(date.today()), "profile": args.profile, "iterations": args.iterations,
               "planned_runs": planned, "runs": results}
    (ROOT / "results" / "search_vs_catalog.json").write_text(json.dumps(summary, indent=1) + "\n")
    missing = [label for label in planned if label not in {r["label"] for r in results}]
    lines = ["# Search proposer against the fixed-order catalog", "",
             f"Profile `{args.profile}` on a 2-core CPU, {args.iterations} iterations per run, {summary['date']}; "
             f"`python benchmarks/research/search_vs_catalog.py --iterations {args.iterations} --seeds {' '.join(map(str, args.seeds))}`. "
             "One seed per training, so differences within the profile's seed noise (data/noise.json: six-task mean "
             "std 0.015 on tiny) are not differences. Candidate minutes: the check and training time the run's candidates "
             "recorded (cache hits cost none).", ""]
    if missing:
        lines += [f"**Partial:** {len(results)} of {len(planned)} runs finished; not yet run: {', '.join(missing)} "
                  "(the same command resumes: finished runs and cached trainings are not repeated).", ""]
    lines += ["| run | exit | best candidate mean | best baseline mean | done / inert / failed | candidate minutes | best after each iteration |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        best = f"{r['best_candidate_mean']:.4f}" if r["best_candidate_mean"] is not None else "n/a"
        base = f"{r['best_baseline_mean']:.4f}" if r["best_baseline_mean"] is not None else "n/a"
        lines.append(f"| {r['label']} | {'-' if r['exit'] is None else r['exit']} | {best} | {base} | {r['done']} / {r['inert']} / {r['failed']} | "
                     f"{r['minutes']} | {' '.join('-' if v is None else f'{v:.3f}' for v in r['curve'])} |")
    (ROOT / "results" / "search_vs_catalog.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--out", type=Path, default=Path("runs/search_vs_catalog"))
    parser.add_argument("--report-only", action="store_true", help="write the tables from the runs so far, train nothing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache.sqlite"
    runs = [("catalog", ["--proposer", "catalog"])] + [
        (f"search_seed{seed}", ["--proposer", "search", "--search-seed", str(seed)]) for seed in args.seeds]
    planned = [label for label, _ in runs]
    if args.report_only:
        write([summarise(label, args.out / label, None) for label in planned
               if (args.out / label / "mixerlab.db").exists()], planned, args)
        return
    results: list[dict] = []
    for label, extra in runs:
        results.append(run(label, args.out, args.iterations, args.profile, cache, extra))
        write(results, planned, args)


if __name__ == "__main__":
    main()
