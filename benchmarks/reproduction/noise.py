"""Measure a profile's seed-to-seed noise, the yardstick of the loop's verdicts (mixerlab/noise.py, judge.py).

    python benchmarks/reproduction/noise.py --profile tiny --device cpu --seeds 3
        -> src/mixerlab/data/noise.json (the measurement, merged with the other profiles')
        -> benchmarks/results/noise.md (per task and of the six-task mean, with each baseline's seeds)
    python benchmarks/reproduction/noise.py --profile quick --device cuda --tasks memorize --mixers delta_net --compile
        (a costly profile a task at a time: tasks measured earlier with as many seeds are kept, and the hardware label
        says which ran where; until all six are measured the six-task mean has no yardstick)
    python benchmarks/reproduction/noise.py --profile quick --device cuda --seeds 3 --tasks context_recall,noisy_recall
        --mixers delta_net --compile --concurrent-groups 4 --cache noise.sqlite --time-limit 480
        (in parts, e.g. across lent-GPU calls: each stops cleanly after --time-limit, and the same command with the
        same cache continues; the measurement is written once every training is in)

Both baselines are trained with `--seeds N` (each seed draws its own data, shuffles and initial weights);
finished trainings come from the result cache (`--cache`), so a measurement can be rerun for free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.config import get_profile  # noqa: E402
from mixerlab.evaluate import EvalOptions, ResultCache, evaluate_mixer  # noqa: E402
from mixerlab.mixers import builtin_spec  # noqa: E402
from mixerlab.noise import DATA, Measurement, from_measurement  # noqa: E402
from mixerlab.tasks import TASK_ORDER, parse_task  # noqa: E402


def hardware(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--cached-only", metavar="HARDWARE", default=None,
                        help="train nothing: read every training from --cache (e.g. the committed GPU trainings, "
                        "imported with `mixerlab cache import`) and record HARDWARE as where they ran")
    parser.add_argument("--tasks", default=",".join(t.value for t in TASK_ORDER), help="comma-separated tasks")
    parser.add_argument("--mixers", default="delta_net,gated_delta_net", help="comma-separated baselines")
    parser.add_argument("--compile", action="store_true", help="CUDA: torch.compile long groups, as `eval --compile`")
    parser.add_argument("--concurrent-groups", type=int, default=1,
                        help="groups training at once on the device, as `eval --concurrent-groups` (same results)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds: stop cleanly after it; finished trainings stay in --cache, so the same command "
                        "continues (on a lent GPU, carry the cache to the next call)")
    args = parser.parse_args()
    try:
        tasks = tuple(parse_task(t) for t in args.tasks.split(","))
        mixers = [builtin_spec(name) for name in args.mixers.split(",")]
    except ValueError as err:
        parser.error(str(err))
    except KeyError as err:
        parser.error(f"--mixers: {err} is not a baseline; use delta_net and/or gated_delta_net")
    if args.cached_only and not args.cache:
        parser.error("--cached-only reads the trainings from a cache: give --cache FILE.sqlite")
    if args.time_limit is not None and (args.time_limit <= 0 or not args.cache):
        parser.error("--time-limit needs a positive number of seconds and a --cache to keep what finished")
    if not 1 <= args.concurrent_groups <= 64:
        parser.error("--concurrent-groups: give 1-64 groups")
    profile = get_profile(args.profile)
    cache = ResultCache(args.cache) if args.cache else None
    numerics = "bf16" if args.device.startswith("cuda") else "fp32"
    scores = {}
    for spec in mixers:
        options = EvalOptions(tasks=tasks, seeds=args.seeds, device=args.device, train=not args.cached_only,
                              compile_step=args.compile, concurrent_groups=args.concurrent_groups,
                              time_limit=args.time_limit)
        report = evaluate_mixer(spec, profile, options, cache=cache)
        if report.incomplete:
            raise SystemExit(f"{spec.name}: {report.incomplete} trainings are missing"
                             + (" from the cache" if args.cached_only else " (did not finish); run the same command again"))
        scores[report.mixer] = {task: score.seeds for task, score in report.tasks.items()}
        print(f"{report.mixer}: " + ", ".join(f"{t} {s.mean:.4f}+-{s.std:.4f}" for t, s in report.tasks.items()))
    command = f"python benchmarks/reproduction/noise.py --profile {args.profile} --device {args.device} --seeds {args.seeds}"
    if tasks != TASK_ORDER:
        command += f" --tasks {args.tasks}"
    if args.mixers != parser.get_default("mixers"):
        command += f" --mixers {args.mixers}"
    if args.compile:
        command += " --compile"
    if args.cached_only:
        command += f" --cache CACHE --cached-only '{args.cached_only}'"
    measurement = Measurement(profile=args.profile, numerics=numerics, hardware=args.cached_only or hardware(args.device),
                              command=command,
                              date=date.today().isoformat(), seeds=args.seeds, scores=scores)
    stored = json.loads(DATA.read_text()) if DATA.is_file() else {"measurements": []}
    same = [Measurement.model_validate(m) for m in stored["measurements"] if (m["profile"], m["numerics"]) == (args.profile, numerics)]
    if same and tasks != TASK_ORDER:
        measurement = merged(same[0], measurement)
    stored["measurements"] = [m for m in stored["measurements"]
                              if (m["profile"], m["numerics"]) != (args.profile, numerics)] + [measurement.model_dump()]
    stored["measurements"].sort(key=lambda m: (m["profile"], m["numerics"]))
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(stored, indent=1) + "\n")
    write_markdown([Measurement.model_validate(m) for m in stored["measurements"]])


def merged(old: Measurement, new: Measurement) -> Measurement:
    """A measurement of some tasks added to an earlier one of other tasks with as many seeds (one table per profile).
    Where they ran on other hardware (e.g. a task finished on another lent GPU), the label says which tasks ran
    where. With other seeds the new one replaces it."""
    if old.seeds != new.seeds:
        return new
    scores = {mixer: dict(per_task) for mixer, per_task in old.scores.items()}
    for mixer, per_task in new.scores.items():
        scores.setdefault(mixer, {}).update(per_task)
    commands = old.command if new.command in old.command.split("; ") else f"{old.command}; {new.command}"
    where = hardware_per_task(old)
    where.update({task: new.hardware for per_task in new.scores.values() for task in per_task})
    machines = list(dict.fromkeys(where.values()))
    hardware = machines[0] if len(machines) == 1 else "; ".join(
        f"{', '.join(sorted(t for t, h in where.items() if h == machine))}: {machine}" for machine in machines)
    return new.model_copy(update={"scores": scores, "command": commands, "hardware": hardware})


def hardware_per_task(m: Measurement) -> dict[str, str]:
    """Where each task of `m` ran: its label split back per task (`TASKS: MACHINE; ...`) where `merged` wrote one."""
    tasks = [task for per_task in m.scores.values() for task in per_task]
    parts = [part.partition(": ") for part in m.hardware.split("; ")]
    named = {task.strip(): machine for names, sep, machine in parts if sep for task in names.split(",")}
    if set(named) == set(tasks):
        return named
    return {task: m.hardware for task in tasks}


def write_markdown(measurements: list[Measurement]) -> None:
    lines = ["# Seed noise per profile", "",
             "The yardstick of the research loop's verdicts (`src/mixerlab/noise.py`, `judge.py`): a difference is "
             "better or worse only beyond 2 standard deviations of the difference (one seed against one seed: "
             "2 x sqrt(2) x std). Written by the command under each table; the data is `src/mixerlab/data/noise.json`.",
             ""]
    for m in measurements:
        model = from_measurement(m)
        tasks = list(model.task_std)
        commands = " and ".join(f"`{c}`" for c in m.command.split("; "))
        lines += [f"## `{m.profile}`, {m.numerics} on {m.hardware} ({m.date})", "", commands, "",
                  "| | " + " | ".join(tasks) + " | six-task mean |", "|---|" + "---|" * (len(tasks) + 1)]
        for mixer, per_task in m.scores.items():
            cells = " | ".join(", ".join(f"{v:.3f}" for v in per_task[t]) if t in per_task else "-" for t in tasks)
            whole = all(t in per_task for t in tasks) and model.mean_std is not None
            means = ", ".join(f"{sum(per_task[t][s] for t in tasks) / len(tasks):.3f}" for s in range(m.seeds)) if whole else "-"
            lines.append(f"| {mixer}: seeds | {cells} | {means} |")
        mean_std, mean_threshold = model.mean_std, model.mean_threshold()
        lines.append("| **pooled std** | " + " | ".join(f"**{model.task_std[t]:.4f}**" for t in tasks)
                     + (f" | **{mean_std:.4f}** |" if mean_std is not None else " | not every task measured |"))
        lines.append("| threshold, one seed vs one | " + " | ".join(f"{model.threshold(t):.4f}" for t in tasks)
                     + (f" | {mean_threshold:.4f} |" if mean_threshold is not None else " | - |"))
        lines.append("")
    (ROOT / "results" / "noise.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
