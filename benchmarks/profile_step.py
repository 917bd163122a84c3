"""Where the time of one batched training step goes, on the GPU: `python benchmarks/profile_step.py`.

Prints the CUDA kernels and aten ops that dominate a few eager steps of a batched group (torch.profiler),
so speed work starts from a measurement rather than a guess.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixerlab.config import TrainConfig  # noqa: E402
from mixerlab.mixers import resolve_mixer  # noqa: E402
from mixerlab.tasks import parse_task, baseline_setting  # noqa: E402
from mixerlab.train.batched import BatchedTrainer  # noqa: E402
from mixerlab.train.job import TrainJob  # noqa: E402


def seconds_per_step(trainer: BatchedTrainer, steps: int) -> float:
    """Mean wall time of `steps` optimizer steps, with the GPU drained before and after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer._run_step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def graph_step(trainer: BatchedTrainer, label: str, steps: int = 10) -> None:
    """Capture the trainer's step as a CUDA graph and time its replays."""
    trainer.cuda_graph = True
    trainer.eager_steps_since_build = 2
    trainer._run_step()
    print(f"{label}: {seconds_per_step(trainer, steps) * 1e3:.1f} ms (captured: {trainer.graph is not None})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="fuzzy_recall")
    parser.add_argument("--members", type=int, default=24)
    parser.add_argument("--mixer", default="delta_net")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq-len", type=int, help="override the setting's sequence length")
    parser.add_argument("--chunk-size", type=int, help="the mixer's chunk_size argument")
    parser.add_argument("--graph", action="store_true", help="time graph replays too")
    parser.add_argument("--compile", action="store_true", help="time steps with the forward under torch.compile "
                        "(and, with --graph, compiled steps replayed as a CUDA graph)")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    setting = baseline_setting(parse_task(args.task))
    if args.seq_len:
        setting = setting.model_copy(update={"seq_len": args.seq_len})
    jobs = [TrainJob(setting=setting, lr=5e-4, weight_decay=0.0, seed=i) for i in range(args.members)]
    spec = resolve_mixer(args.mixer)
    factory = functools.partial(spec.load_class(), chunk_size=args.chunk_size) if args.chunk_size else spec.factory()
    trainer = BatchedTrainer(jobs, ["p"] * len(jobs), TrainConfig(), factory, "cuda", cuda_graph=False)
    for _ in range(3):
        trainer._run_step()
    eager = seconds_per_step(trainer, args.steps)
    print(f"eager step: {eager * 1e3:.1f} ms for {args.members} members x {setting.input_len} tokens x 128")
    if args.graph:
        graph_step(trainer, "graph step")
    if args.compile:
        trainer = BatchedTrainer(jobs, ["p"] * len(jobs), TrainConfig(), factory, "cuda", cuda_graph=False,
                                 compile_step=True)
        start = time.perf_counter()
        trainer._run_step()
        torch.cuda.synchronize()
        print(f"compile + first step: {time.perf_counter() - start:.1f} s")
        print(f"compiled step: {seconds_per_step(trainer, args.steps) * 1e3:.1f} ms")
        if args.graph:
            graph_step(trainer, "compiled graph step")
    if not args.no_profile:  # the last trainer built: the compiled one with --compile
        trainer.cuda_graph = False
        trainer.graph = None
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                trainer._run_step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
