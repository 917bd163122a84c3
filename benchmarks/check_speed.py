"""How long `mixerlab check` takes end to end (process start included) on typical candidates.

    python benchmarks/check_speed.py   ->  benchmarks/results/check_speed.{json,md}   (goal: <= 30 s each)
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT.parent / "tests"))

from test_check import layernorm_on_qk, tanh_on_error  # noqa: E402


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    candidates = {"delta_net (builtin)": "delta_net", "gated_delta_net (builtin)": "gated_delta_net"}
    for make in (tanh_on_error, layernorm_on_qk):
        spec = make()
        path = folder / f"{spec.name}.py"
        path.write_text(spec.source)
        candidates[spec.name] = str(path)
    rows = []
    for label, target in candidates.items():
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mixerlab.cli", "check", target], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        rows.append({"candidate": label, "seconds": seconds, "exit": proc.returncode})
        print(f"{label}: {seconds:.1f} s, exit {proc.returncode}")
    machine = f"{platform.machine()} CPU, {__import__('os').cpu_count()} cores"
    (ROOT / "results" / "check_speed.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = ["# `mixerlab check` speed", "", f"Measured on {machine} (goal: at most 30 s per candidate).", "",
             "| candidate | seconds (end to end) | exit |", "|---|---|---|"]
    lines += [f"| {r['candidate']} | {r['seconds']:.1f} | {r['exit']} |" for r in rows]
    (ROOT / "results" / "check_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
