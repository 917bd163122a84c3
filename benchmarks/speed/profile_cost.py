"""What a candidate's evaluation on a profile costs, and where the time goes: the loop's own path (a .py file,
checked, trained in the sandbox, scored here), one task at a time, with the trainer's parts timed
(train/timing.py: the device is synchronised at each change of part, so each part holds its own GPU time).

    python benchmarks/speed/profile_cost.py --profile quick --tasks memorize --label before
    python benchmarks/speed/profile_cost.py --profile quick --label after          # every task, then the total
    python benchmarks/speed/profile_cost.py --together --concurrent-groups 8 --label c8  # all tasks in one evaluation

Each run appends to benchmarks/results/profile_cost.json (keyed by device, profile, mixer, task and label) and
rewrites profile_cost.md from all runs: per task, seconds, training tokens per second, the share of each part,
and how close the training tokens came to the arithmetic and memory floors of the device (see `floors`).
A run labelled `after` shows the `before` run of the same device, profile, mixer and task beside it.

The parts (seconds of the worker's wall clock): setup (data, model init, stacking, the memory probe), warm-up
(compiling, the eager steps before a CUDA graph is captured, the capture), steps (graph replays: the training
itself), test forward (the per-epoch test set), ship logits (the scored positions' logits to the parent),
scores (waiting for the parent's metrics), host sync (epoch metrics to the host), rebuild (a group shrinking).
Beside them: worker start (launch to the worker's first frame, in the parent) and parent scoring (the parent
reading and scoring frames, concurrent with the worker), and check (the nine checks, in their own sandbox).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from mixerlab.check import Conditions
from mixerlab.config import get_profile
from mixerlab.evaluate.plan import select_settings
from mixerlab.evaluate.runner import EvalOptions
from mixerlab.evaluate import sandboxed

# the code of an older commit (a "before" run through PYTHONPATH) names it evaluate_sandboxed
evaluate_untrusted = getattr(sandboxed, "evaluate_untrusted", None) or sandboxed.evaluate_sandboxed
from mixerlab.executor.base import KnownResults
from mixerlab.executor.local import LocalExecutor
from mixerlab.mixers import resolve_mixer, template_source
from mixerlab.propose.edits import EDITS_BY_NAME
from mixerlab.sandbox import SandboxLimits
from mixerlab.tasks import TASK_ORDER, parse_task

RESULTS = Path(__file__).resolve().parents[1] / "results"
PARTS = ("setup", "warm-up", "steps", "test forward", "ship logits", "scores", "host sync", "rebuild")
# the device's measured ceilings (docs of the lent machines: a bf16 8192^3 product, a device-to-device copy)
CEILINGS = {"H200": (790e12, 4.3e12), "H100": (790e12, 3.0e12)}


def candidate_file(edit: str, folder: Path) -> Path:
    """A catalog edit of the DeltaNet template, written as the loop writes a candidate."""
    path = folder / f"delta_net_4layer_{edit}.py"
    path.write_text(EDITS_BY_NAME[edit].apply(template_source("delta_net")))
    return path


def floors(tokens: int, d_model: int, device_name: str) -> dict[str, float]:
    """Seconds the training tokens need at the device's ceilings, for a 4-layer width-d model: arithmetic at
    6 x (4 layers x ~16 d^2 weights: mixer projections and a 4x MLP) FLOPs per token, bf16; memory at reading
    and writing each layer's activations (~40 d bf16 values per token per layer, forward and backward) once.
    Rough by design: they say how far the step is from the hardware, not what it could reach."""
    flops = 6 * 4 * 16 * d_model * d_model * tokens
    bytes_moved = 4 * 40 * d_model * 2 * tokens
    peak, bandwidth = next((v for k, v in CEILINGS.items() if k in device_name), (None, None))
    if peak is None:
        return {}
    return {"arithmetic_floor_s": flops / peak, "memory_floor_s": bytes_moved / bandwidth}


def run_task(executor: LocalExecutor, spec, profile: str, task: str, compile_step: bool,
             time_limit: float | None, concurrent: int | None = None, settings: str | None = None) -> dict:
    """Check the file, then evaluate it on one task (or several, joined by '+': one evaluation) as the loop's
    executor does (its sandbox limits), with the parts timed; `time_limit` stops the evaluation cleanly (the row
    then says how many trainings finished); `settings` picks some of the profile's settings (plan.select_settings)."""
    prof = get_profile(profile)
    conditions = Conditions.for_profile(prof, executor.device)
    began = time.perf_counter()
    check = executor.check(spec, known={}, slot=0, conditions=conditions)
    check_s = time.perf_counter() - began
    if not check.passed:
        raise SystemExit(f"{spec.filename} failed its checks: {check.summary()}")
    gpu = 0 if executor.device.startswith("cuda") else None
    limits = SandboxLimits(timeout_s=(time_limit or 3 * 3600) + 600, memory_gb=executor.eval_memory_gb,
                           output_bytes=20_000_000, cpu_threads=executor.cpu_threads, cuda_device=gpu,
                           gpu_memory_fraction=0.9 if gpu is not None else None)  # as LocalExecutor.evaluate
    tasks = tuple(parse_task(t) for t in task.split("+"))
    chosen = select_settings(prof, tasks, settings.split(",")) if settings else None
    # `concurrent` only where given: this script also times older mixerlab trees (PYTHONPATH) for a "before"
    options = EvalOptions(tasks=tasks, device="cuda" if gpu is not None else "cpu", settings=chosen,
                          compile_step=compile_step, time_parts=True, time_limit=time_limit,
                          **({"concurrent_groups": concurrent} if concurrent and concurrent > 1 else {}))
    began = time.perf_counter()
    result = evaluate_untrusted(spec, prof, options, limits, cache=KnownResults([]), cuda_device=gpu)
    seconds = time.perf_counter() - began
    if not result.ok:
        raise SystemExit(f"the evaluation failed: {result.error}")
    report = result.report
    tokens = sum(t.steps * prof.train.batch_size * _input_len(prof, t.task, t.setting) for t in result.trainings)
    present = [t.value for t in tasks if t.value in report.tasks]  # with --settings: the tasks that have them
    score = sum(report.tasks[t].mean for t in present) / len(present) if present else None
    planned = report.trainings if chosen is None else sum(1 for t in tasks for s in prof.settings[t] if s.label in chosen) \
        * len(prof.lrs) * len(prof.weight_decays)
    return {"task": task, "settings": settings, "concurrent_groups": getattr(options, "concurrent_groups", None) or 1,
            "seconds": seconds, "check_s": check_s, "score": score, "planned": planned,
            "trainings": len(result.trainings), "stopped_at_time_limit": report.incomplete > report.trainings - planned,
            "training_tokens": tokens, "tokens_per_s": tokens / seconds, "parts": result.parts,
            **floors(tokens, prof.train.d_model, device_name(executor.device))}


def _task_cell(row: dict) -> str:
    """The task(s) of a row, with the settings and the groups at once where the run chose them."""
    cell = row["task"].replace("+", " + ")
    if row.get("settings"):
        cell += f" [{row['settings']}]"
    if row.get("concurrent_groups", 1) > 1:
        cell += f", {row['concurrent_groups']} groups at once"
    return cell


def _input_len(prof, task: str, label: str) -> int:
    return next(s.input_len for s in prof.settings[parse_task(task)] if s.label == label)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({platform.machine()})"


def write_tables(runs: list[dict]) -> str:
    lines = ["# A candidate's evaluation: cost by part", "",
             "Written by `python benchmarks/speed/profile_cost.py` (its docstring defines the parts). Each row is one",
             "task of one candidate evaluated on the loop's path: checked, trained in the sandbox, scored outside it.",
             "Parts are seconds of the worker's clock with the device synchronised at each change of part; worker",
             "start and parent scoring are the parent's (the latter concurrent with the worker).", ""]
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["device"], run["profile"], run["mixer"], run["compile"]), []).append(run)
    for (device, profile, mixer, compiled), rows in groups.items():
        lines += [f"## {device}: `{profile}`, {mixer}" + (" (compiled)" if compiled else ""), "",
                  "| task | label | date | seconds | before | check s | score | trainings | Mtokens/s | "
                  + " | ".join(PARTS) + " | worker start | parent scoring | floors (arith / memory s) |",
                  "|---|---|---|---|---|---|---|---|---|" + "---|" * len(PARTS) + "---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["task"], r["label"] != "before", r["date"])):
            parts = r["parts"]
            worker = sum(parts.get(p, 0.0) for p in PARTS) or 1.0
            share = " | ".join(f"{parts.get(p, 0.0):.1f} ({100 * parts.get(p, 0.0) / worker:.0f}%)" for p in PARTS)
            before = r.get("seconds_before")
            score = "-" if r["score"] is None else f"{r['score']:.4f}"
            done = f"{r['trainings']} of {r['planned']}" + (" (time limit)" if r["stopped_at_time_limit"] else "")
            lines.append(
                f"| {_task_cell(r)} | {r['label']} | {r['date']} | {r['seconds']:.1f} | "
                f"{'' if before is None else f'{before:.1f}'} | {r['check_s']:.1f} | {score} | {done} | "
                f"{r['tokens_per_s'] / 1e6:.2f} | {share} | {parts.get('worker start', 0):.1f} | "
                f"{parts.get('parent scoring', 0):.1f} | "
                f"{r.get('arithmetic_floor_s', float('nan')):.1f} / {r.get('memory_floor_s', float('nan')):.1f} |")
        lines.append("")
    return "\n".join(lines)


def rewrite(out: Path) -> None:
    """The markdown again from the JSON (after a change to the table's layout)."""
    data = json.loads((out / "profile_cost.json").read_text())
    for row in data["runs"]:
        if row.get("stopped_at_time_limit"):
            row.pop("seconds_before", None)
    (out / "profile_cost.json").write_text(json.dumps(data, indent=1))
    (out / "profile_cost.md").write_text(write_tables(data["runs"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--tasks", default=",".join(t.value for t in TASK_ORDER))
    parser.add_argument("--edit", default="output_gate", help="the catalog edit the candidate file makes")
    parser.add_argument("--mixer", help="a candidate .py file instead of a catalog edit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="auto: as the loop does (compiled on CUDA for every profile but tiny and smoke)")
    parser.add_argument("--label", default="after", help="before | after | any name")
    parser.add_argument("--time-limit", type=float, help="seconds per task; stop there (a partial row says so)")
    parser.add_argument("--together", action="store_true", help="all the tasks in one evaluation (one row)")
    parser.add_argument("--concurrent-groups", type=int, help="groups training at once (default: by device)")
    parser.add_argument("--settings", help="only these settings, e.g. num_train=800,num_train=1600")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tables-only", action="store_true", help="rewrite profile_cost.md from the JSON, run nothing")
    args = parser.parse_args()
    if args.tables_only:
        return rewrite(args.out)

    folder = Path(tempfile.mkdtemp(prefix="profile-cost-"))
    path = Path(args.mixer) if args.mixer else candidate_file(args.edit, folder)
    spec = resolve_mixer(str(path))
    compile_step = args.device.startswith("cuda") and (args.compile == "on" or (
        args.compile == "auto" and args.profile not in ("tiny", "smoke")))
    executor = LocalExecutor(device=args.device, gpus=torch.cuda.device_count() if args.device.startswith("cuda") else 0)
    json_path = args.out / "profile_cost.json"
    data = json.loads(json_path.read_text()) if json_path.exists() else {"runs": []}
    device = device_name(args.device)
    for task in ["+".join(args.tasks.split(","))] if args.together else args.tasks.split(","):
        row = run_task(executor, spec, args.profile, task, compile_step, args.time_limit, args.concurrent_groups,
                       args.settings)
        row.update(device=device, profile=args.profile, mixer=spec.name, compile=compile_step, label=args.label,
                   date=dt.date.today().isoformat(), torch=torch.__version__)
        same = ("device", "profile", "mixer", "task", "compile", "settings")
        before = [r for r in data["runs"] if r["label"] == "before" and all(r.get(k) == row[k] for k in same)]
        # a before figure only where both runs finished: a time-limited run's seconds are its limit, not its cost
        if args.label != "before" and before and not (before[-1]["stopped_at_time_limit"] or row["stopped_at_time_limit"]):
            row["seconds_before"] = before[-1]["seconds"]
        data["runs"] = [r for r in data["runs"] if not all(r.get(k) == row[k] for k in (*same, "label"))] + [row]
        print(json.dumps({k: v for k, v in row.items() if k != "parts"}), json.dumps(row["parts"]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=1))
        (args.out / "profile_cost.md").write_text(write_tables(data["runs"]))
    print((args.out / "profile_cost.md").read_text())


if __name__ == "__main__":
    main()
