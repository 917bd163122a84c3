"""Where a cheap profile's candidate spends its seconds outside training: each check and the fingerprint timed in
one process (no sandbox), twice (the first pays CUDA's and the kernels' first-call costs), and one evaluation
profiled with cProfile. A probe for the loop's fixed costs (benchmarks/results/loop_speed.md), not a benchmark.

    python benchmarks/probes/tiny_costs.py --profile tiny --device cuda [--edit output_gate] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.check import dynamic  # noqa: E402
from mixerlab.check.remote import _at_conditions  # noqa: E402
from mixerlab.config import get_profile  # noqa: E402
from mixerlab.evaluate import EvalOptions, evaluate_mixer  # noqa: E402
from mixerlab.mixers import resolve_mixer, template_source  # noqa: E402
from mixerlab.propose.edits import EDITS_BY_NAME  # noqa: E402


def timed_checks(cls: type, cond: dynamic.Conditions, d_model: int = 128) -> dict[str, float]:
    """Seconds of each sandboxed check's work, in the worker's order, plus the fingerprint."""
    seconds: dict[str, float] = {}

    def clock(name: str, fn) -> None:
        if cond.device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        if cond.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds[name] = round(time.perf_counter() - began, 3)

    _, module = dynamic.check_instantiate(cls, d_model, sum(p.numel() for p in cls(d_model=d_model).parameters()))
    trained = _at_conditions(cls, cond)
    clock("forward", lambda: (dynamic.check_forward(module, d_model), dynamic.check_forward_as_trained(trained, cond)))
    clock("backward", lambda: dynamic.check_backward(module, d_model))
    clock("state", lambda: dynamic.check_state(trained, cond))
    clock("causality", lambda: dynamic.check_causality(trained, cond))
    clock("determinism", lambda: dynamic.check_determinism(module, d_model))
    clock("cost", lambda: dynamic.check_cost(module, d_model))
    clock("fingerprint", lambda: dynamic.fingerprint(cls, cond))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--edit", default="output_gate")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    prof = get_profile(args.profile)
    folder = Path(tempfile.mkdtemp())
    path = folder / f"delta_net_4layer_{args.edit}.py"
    path.write_text(EDITS_BY_NAME[args.edit].apply(template_source("delta_net")))
    spec = resolve_mixer(str(path))
    cls = spec.load_class()
    cond = dynamic.Conditions.for_profile(prof, args.device)
    for attempt in ("first", "second"):
        began = time.perf_counter()
        seconds = timed_checks(cls, cond)
        print(f"checks, {attempt} time: {time.perf_counter() - began:.2f} s {seconds}", flush=True)
    options = EvalOptions(device=args.device, time_parts=True)
    for attempt in ("first", "second"):
        profiler = cProfile.Profile()
        began = time.perf_counter()
        profiler.enable()
        report = evaluate_mixer(spec, prof, options)
        profiler.disable()
        print(f"evaluation, {attempt} time: {time.perf_counter() - began:.2f} s, "
              f"score {sum(t.mean for t in report.tasks.values()) / len(report.tasks):.4f}", flush=True)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue()[-12000:], flush=True)


if __name__ == "__main__":
    main()
