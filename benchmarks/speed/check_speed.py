"""How long `mixerlab check` takes end to end (process start included) on typical candidates, where the time
goes check by check, and how the team's hostile corpus fares (tests/candidates/hostile: one attack a file).

    python benchmarks/speed/check_speed.py   ->  benchmarks/results/check_speed.{json,md}   (goal: <= 30 s each)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT.parent / "tests"))

from test_check import HOSTILE, HOSTILE_EXPECTED, SCORED_AUDIT, layernorm_on_qk, tanh_on_error  # noqa: E402


def run_check(target: str, *flags: str) -> tuple[float, int, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mixerlab.cli", "check", target, "--json", *flags],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, proc.returncode, json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    candidates = {"delta_net (builtin)": "delta_net", "gated_delta_net (builtin)": "gated_delta_net"}
    for make in (tanh_on_error, layernorm_on_qk):
        spec = make()
        path = folder / f"{spec.name}.py"
        path.write_text(spec.source)
        candidates[spec.name] = str(path)
    good = []
    for label, target in candidates.items():
        seconds, code, report = run_check(target)
        by_check = {c["name"]: round(c["seconds"], 2) for c in report.get("checks", [])}
        good.append({"candidate": label, "seconds": seconds, "exit": code, "checks": by_check})
        print(f"{label}: {seconds:.1f} s, exit {code}")
    hostile = []
    for name, (expected, _, kind) in sorted(HOSTILE_EXPECTED.items()):
        flags = ("--profile", "quick") if kind == "quick" else ()
        if kind == "autocast":  # bf16 autocast is CUDA's; tests/test_check.py checks it on the CPU in-process
            continue
        seconds, code, report = run_check(str(HOSTILE / name), *flags)
        failed = next((c["name"] for c in report.get("checks", []) if c["status"] == "fail"), None)
        hostile.append({"file": name, "seconds": seconds, "rejected": code == 1, "by": failed, "expected": expected})
        print(f"{name}: {'rejected by ' + str(failed) if code == 1 else 'PASSED'} in {seconds:.1f} s")
    audited = [scored_audit(name) for name in sorted(SCORED_AUDIT)]
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    summary = {"machine": machine, "good": good, "hostile": hostile, "scored_audit": audited,
               "hostile_rejected": sum(h["rejected"] for h in hostile), "hostile_total": len(hostile),
               "hostile_rejected_as_expected": sum(h["by"] == h["expected"] for h in hostile)}
    (ROOT / "results" / "check_speed.json").write_text(json.dumps(summary, indent=2))
    names = list(good[0]["checks"])
    lines = ["# `mixerlab check` speed and the hostile corpus", "",
             f"Measured on {machine} with `python benchmarks/speed/check_speed.py` (goal: at most 30 s per candidate; "
             "checks under the `tiny` profile's conditions on the CPU).", "",
             "| candidate | seconds (end to end) | exit | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    lines += [f"| {r['candidate']} | {r['seconds']:.1f} | {r['exit']} | " + " | ".join(f"{r['checks'].get(n, 0):.2f}" for n in names)
              + " |" for r in good]
    lines += ["", f"Hostile corpus (`tests/candidates/hostile/`): {summary['hostile_rejected']} of {len(hostile)} rejected, "
              f"{summary['hostile_rejected_as_expected']} by the check expected for their attack (`leak_on_cuda.py` "
              "and `leak_under_autocast.py` need CUDA conditions: tests/test_gpu.py).", "",
              "| file | rejected by | expected | seconds |", "|---|---|---|---|"]
    lines += [f"| {h['file']} | {h['by'] or 'PASSED'} | {h['expected']} | {h['seconds']:.1f} |" for h in hostile]
    lines += ["", "Passing every check by design (the leak waits for trained weights), stopped by the scored evaluation's "
              "causality audit instead (`mixerlab eval FILE.py`'s path: `tiny` Context Recall, sandboxed, scored here):", "",
              "| file | checks | check seconds | scored evaluation | evaluation seconds |", "|---|---|---|---|---|"]
    lines += [f"| {a['file']} | {'passed' if a['checks_passed'] else 'rejected'} | {a['check_seconds']:.1f} | "
              f"{a['evaluation'][:160]} | {a['evaluation_seconds']:.1f} |" for a in audited]
    (ROOT / "results" / "check_speed.md").write_text("\n".join(lines) + "\n")


def scored_audit(name: str) -> dict:
    """Check a file, then evaluate it as `mixerlab eval FILE.py` does: what stopped it, and when."""
    from mixerlab.config import get_profile
    from mixerlab.evaluate.runner import EvalOptions
    from mixerlab.evaluate.sandboxed import evaluate_untrusted
    from mixerlab.mixers.loading import spec_from_file
    from mixerlab.sandbox import SandboxLimits
    from mixerlab.tasks import Task

    check_seconds, code, _ = run_check(str(HOSTILE / name))
    start = time.perf_counter()
    result = evaluate_untrusted(spec_from_file(HOSTILE / name), get_profile("tiny"), EvalOptions(tasks=(Task.context_recall,)),
                                SandboxLimits(timeout_s=900, memory_gb=6.0, output_bytes=10_000_000))
    seconds = time.perf_counter() - start
    outcome = "recorded (not stopped)" if result.ok else result.error.splitlines()[0]
    print(f"{name}: checks {'passed' if code == 0 else 'rejected'} in {check_seconds:.1f} s; evaluation: {outcome[:120]}")
    return {"file": name, "checks_passed": code == 0, "check_seconds": check_seconds, "evaluation": outcome,
            "evaluation_seconds": seconds}


if __name__ == "__main__":
    main()
