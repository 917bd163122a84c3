"""Every speed benchmark, one after another: `python benchmarks/run.py [--only NAME ...] [--list]` (`make bench`).

benchmarks/ is split by kind:

  speed/          how fast mixerlab is (this command runs them): evaluation, checks, dashboard, driver costs,
                  and on a GPU the anatomy of a training step
  reproduction/   the seed baselines and measured noise, regenerated from committed trainings
  research/       how well the loop's parts do their job: retrieval, design space, small models, search
  probes/         one-off experiments behind findings in docs/reproduction.md
  tools/          operations scripts (continuing a sweep on a lent GPU)

Each script writes JSON and a markdown table to benchmarks/results/ and says on what hardware it ran.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

SPEED = Path(__file__).resolve().parent / "speed"

# name -> (script, arguments, needs CUDA)
BENCHMARKS: dict[str, tuple[str, list[str], bool]] = {
    "eval": ("eval_speed.py", [], False),
    "check": ("check_speed.py", [], False),
    "web": ("web_speed.py", [], False),
    "scale": ("scale_sim.py", [], False),
    "step": ("step_anatomy.py", [], True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME", help=f"some of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--list", action="store_true", help="print the benchmarks and exit")
    args = parser.parse_args()
    if args.list:
        for name, (script, _, cuda) in BENCHMARKS.items():
            print(f"{name:6} speed/{script}{'  (CUDA only)' if cuda else ''}")
        return
    unknown = sorted(set(args.only or ()) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in args.only or BENCHMARKS:
        script, extra, cuda = BENCHMARKS[name]
        if cuda and not torch.cuda.is_available():
            print(f"== {name}: skipped, needs a CUDA device", flush=True)
            continue
        print(f"== {name}: python benchmarks/speed/{script}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(SPEED / script), *extra])
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
