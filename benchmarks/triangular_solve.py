"""The chunk WY solve on its own: `torch.linalg.solve_triangular` vs batched products (ops/triangular.py).

`python benchmarks/triangular_solve.py [--device cuda]` times forward+backward of `(I + L) X = B` at the
shapes of a batched DeltaNet step (members x batch x heads x chunks systems of 64 unknowns, right-hand side
of value and key width), eagerly and under torch.compile, and writes
benchmarks/results/triangular_solve.{json,md}. Ratios are measured in the same run on the same device.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixerlab.ops.triangular import unit_lower_solve  # noqa: E402
from run import device_name, time_call  # noqa: E402  (benchmarks/run.py: the shared timer)

RESULTS = Path(__file__).resolve().parent / "results"


def library_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve_triangular(a, b, upper=False, unitriangular=True)


def forward_backward(solve: Callable, a: torch.Tensor, b: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        a.grad = b.grad = None
        solve(a, b).square().sum().backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--systems", type=int, nargs="+", default=[24 * 128 * 4 * 2, 6 * 128 * 4 * 4],
                        help="number of 64 x 64 systems (members x batch x heads x chunks)")
    parser.add_argument("--rhs", type=int, default=64, help="right-hand-side width (value + key head width)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    ms = lambda fn: 1e3 * time_call(fn, args.device, args.repeats)  # noqa: E731  median over the repeats
    rows = []
    for systems in args.systems:
        gen = torch.Generator(device=device).manual_seed(0)
        k = torch.nn.functional.normalize(torch.randn(systems, 64, 32, device=device, generator=gen), dim=-1)
        a = (torch.eye(64, device=device) + 0.5 * (k @ k.transpose(-1, -2)).tril(-1)).requires_grad_()
        b = torch.randn(systems, 64, args.rhs, device=device, generator=gen).requires_grad_()
        row = {"systems": systems, "size": 64, "rhs": args.rhs}
        for label, solve in (("library", library_solve), ("products", unit_lower_solve)):
            row[f"{label}_ms"] = ms(forward_backward(solve, a, b))
            if device.type == "cuda":
                compiled = torch.compile(solve, dynamic=False)
                row[f"{label}_compiled_ms"] = ms(forward_backward(compiled, a, b))
        row["eager_speedup"] = row["library_ms"] / row["products_ms"]
        if device.type == "cuda":
            row["compiled_speedup"] = row["library_compiled_ms"] / row["products_compiled_ms"]
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    name = device_name(args.device)
    report = {"device": name, "torch": torch.__version__, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "triangular_solve.json").write_text(json.dumps(report, indent=2) + "\n")
    cols = [c for c in rows[0] if c not in ("size",)]
    lines = [f"# Chunk WY solve, forward + backward ({name}, torch {torch.__version__})", "",
             "Systems of 64 unknowns; times are medians in ms; speed-up = library / products.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    (RESULTS / "triangular_solve.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
