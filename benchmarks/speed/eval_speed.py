"""Speed benchmarks of the evaluation: `python benchmarks/speed/eval_speed.py [--device cpu|cuda] [--sections ...]`.

Writes benchmarks/results/eval_speed.json (one entry per device, merged with earlier runs on other devices)
and eval_speed.md. Ratios are taken within one run on one device; absolute times are only reported for
the device named beside them.

Sections:
  ops    forward+backward tokens/s of the DeltaNet mixer layer: per-step recurrence vs chunkwise vs fla
  train  optimizer steps/s: one training at a time (eager, torch.optim) vs the batched trainer
  tiny   wall time of the `tiny` profile for DeltaNet (the first-run experience on a CPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.config import PROFILES, TrainConfig  # noqa: E402
from mixerlab.evaluate import EvalOptions, evaluate_mixer  # noqa: E402
from mixerlab.mixers import resolve_mixer  # noqa: E402
from mixerlab.ops import delta_rule_recurrent  # noqa: E402
from mixerlab.tasks import Task, baseline_setting  # noqa: E402
from mixerlab.train.batched import BatchedTrainer  # noqa: E402
from mixerlab.train.job import TrainJob  # noqa: E402
from mixerlab.train.single import train_single  # noqa: E402


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device: str, repeats: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_ops(device: str) -> list[dict]:
    """Tokens/s of one DeltaNet layer (width 128, 4 heads), forward + backward."""
    rows = []
    lengths = [128, 256, 512, 1024, 2048, 4096]
    tokens = 65536 if device.startswith("cuda") else 8192
    forms = ["recurrence", "chunk"] + (["fla"] if device.startswith("cuda") and _has_fla() else [])
    for form in forms:
        name = "delta_net_fla" if form == "fla" else "delta_net"
        layer = resolve_mixer(name).load_class()(d_model=128).to(device)
        if form == "recurrence":
            layer.mix = lambda q, k, v, b: delta_rule_recurrent(q, k, v, b)[0]
        for length in lengths:
            if form == "recurrence" and length > (4096 if device.startswith("cuda") else 1024):
                continue
            batch = max(1, tokens // length)
            x = torch.randn(batch, length, 128, device=device, requires_grad=True)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)

            def step():
                with autocast:
                    y = layer(x)
                y.float().square().mean().backward()

            seconds = time_call(step, device, repeats=3 if form == "recurrence" else 10)
            rows.append({"form": form, "T": length, "batch": batch, "seconds": seconds, "tokens_per_s": batch * length / seconds})
            print(f"ops {form:10s} T={length:5d} {batch * length / seconds:12.0f} tokens/s", flush=True)
    return rows


def _has_fla() -> bool:
    try:
        import fla  # noqa: F401
        return True
    except ImportError:
        return False


MAX_MEMBER_TOKENS = 96 * 32  # members x sequence length per batched step in the benchmark (fits any GPU here)
STEP_REPEATS = 50


def bench_train(device: str, members_list: list[int]) -> list[dict]:
    """Optimizer steps/s on MAD baseline settings: one training at a time vs the batched trainer."""
    rows = []
    factory = resolve_mixer("delta_net").factory()
    tasks = [Task.compress, Task.fuzzy_recall] if device.startswith("cuda") else [Task.compress]
    for task in tasks:
        setting = baseline_setting(task)
        if not device.startswith("cuda"):
            setting = setting.model_copy(update={"num_train": 1280, "num_test": 256})
        train = TrainConfig(max_epochs=1) if device.startswith("cuda") else TrainConfig(max_epochs=1, d_model=64)
        job = TrainJob(setting=setting, lr=5e-4, weight_decay=0.0)
        train_single(job, train.model_copy(update={"max_epochs": 1}), factory, device)  # warm-up
        sync(device)
        start = time.perf_counter()
        single = train_single(job, train, factory, device)
        sync(device)
        single_rate = single.steps / (time.perf_counter() - start)
        rows.append({"task": task.value, "T": setting.input_len, "trainer": "single (eager, torch.optim)", "members": 1,
                     "member_steps_per_s": single_rate, "speedup": 1.0})
        print(f"train {task.value:15s} single      {single_rate:9.1f} steps/s", flush=True)
        allowed = [m for m in members_list if m * setting.input_len <= MAX_MEMBER_TOKENS] or members_list[:1]
        for members in allowed:
            jobs = [TrainJob(setting=setting, lr=5e-4 * (1 + i % 3), weight_decay=0.1 * (i % 2), seed=i // 6) for i in range(members)]
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            trainer = BatchedTrainer(jobs, ["b"] * members, train.model_copy(update={"max_epochs": 2}), factory, device)
            start = time.perf_counter()
            trainer.run()
            sync(device)
            rate = trainer.member_steps / (time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
            rows.append({"task": task.value, "T": setting.input_len, "trainer": "batched", "members": members,
                         "member_steps_per_s": rate, "speedup": rate / single_rate, "peak_gib": peak,
                         "cuda_graph": bool(getattr(trainer, "cuda_graph", False))})
            print(f"train {task.value:15s} batched x{members:<4d} {rate:9.1f} member-steps/s ({rate / single_rate:.1f}x) "
                  f"peak {peak} GiB", flush=True)
        if device.startswith("cuda"):  # the step alone, eager vs compiled, both replayed as CUDA graphs
            members = allowed[-1]
            jobs = [TrainJob(setting=setting, lr=5e-4, weight_decay=0.0, seed=i) for i in range(members)]
            for compiled in (False, True):
                trainer = BatchedTrainer(jobs, ["b"] * members, train, factory, device, compile_step=compiled)
                start = time.perf_counter()
                for _ in range(3):  # compile (if asked), warm up and capture the graph
                    trainer._run_step()
                sync(device)
                warmup = time.perf_counter() - start
                rate = members / time_call(trainer._run_step, device, STEP_REPEATS)  # median step time
                label = "batched step, torch.compile" if compiled else "batched step, eager"
                rows.append({"task": task.value, "T": setting.input_len, "trainer": f"{label} (CUDA graph)",
                             "members": members, "member_steps_per_s": rate, "speedup": rate / single_rate,
                             "warmup_s": warmup})
                print(f"train {task.value:15s} {label} x{members} {rate:9.1f} member-steps/s ({rate / single_rate:.1f}x),"
                      f" warm-up {warmup:.1f} s", flush=True)
    return rows


def bench_tiny(device: str) -> dict:
    start = time.perf_counter()
    report = evaluate_mixer(resolve_mixer("delta_net"), PROFILES["tiny"], EvalOptions(device=device))
    return {"seconds": time.perf_counter() - start, "row": report.row(), "trainings": report.trainings}


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Evaluation speed", "", "Written by `python benchmarks/speed/eval_speed.py`. Ratios compare runs on the same device in the same run.", ""]
    for device, entry in results.items():
        lines += [f"## {device}", "", f"torch {entry['torch']}, measured {entry['date']}", ""]
        if entry.get("ops"):
            lines += ["### DeltaNet layer, forward + backward (width 128, 4 heads)", "", "| form | T | tokens/s |", "|---|---|---|"]
            lines += [f"| {r['form']} | {r['T']} | {r['tokens_per_s']:,.0f} |" for r in entry["ops"]]
            lines.append("")
        if entry.get("train"):
            lines += ["### Training throughput, MAD baseline settings (one epoch+)", "",
                      "| task | T | trainer | members | member-steps/s | speed-up vs one at a time |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['task']} | {r['T']} | {r['trainer']} | {r['members']} | {r['member_steps_per_s']:,.1f} | {r['speedup']:.1f}x |"
                      for r in entry["train"]]
            lines.append("")
        if entry.get("tiny"):
            t = entry["tiny"]
            lines += [f"### `tiny` profile: {t['seconds']:.1f} s for {t['trainings']} trainings (goal: at most 90 s)", ""]
        for key in ("profiles", "notes"):
            if entry.get(key):
                lines += [f"### {key}", "", "```", json.dumps(entry[key], indent=2), "```", ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default="ops,train,tiny")
    parser.add_argument("--members", default="6,24,96")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "eval_speed.json"
    existing = ROOT / "results" / "eval_speed.json"
    results = json.loads(existing.read_text()) if existing.exists() else {}
    sections = args.sections.split(",")
    entry = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    if "ops" in sections:
        entry["ops"] = bench_ops(args.device)
    if "train" in sections:
        entry["train"] = bench_train(args.device, [int(m) for m in args.members.split(",")])
    if "tiny" in sections:
        entry["tiny"] = bench_tiny(args.device)
    name = device_name(args.device)
    results[name] = {**results.get(name, {}), **entry}
    json_path.write_text(json.dumps(results, indent=2))
    write_markdown(results, out / "eval_speed.md")
    print(f"wrote {json_path} and eval_speed.md")


if __name__ == "__main__":
    main()
