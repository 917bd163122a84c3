"""Where the time of a batched training step goes, by leaving parts out: `python benchmarks/speed/step_anatomy.py`.

Times the compiled, CUDA-graphed step of the batched trainer (what `eval --compile` runs) for a few group
shapes and mixer variants in one process, so the ratios are comparable: the DeltaNet baseline with the
library triangular solve and with mixerlab's kernel (ops/tril_solve.py), DeltaNet without the solve, without
the delta rule (values straight to the output norm), a one-Linear mixer (the backbone's own cost), other
chunk sizes, Gated DeltaNet, and both with fla's kernels (mixers/fla_ops.py). Also times the solve alone and
profiles steps. Prints tables; merges its results into step_anatomy.json/.md.
GPU only. Variants that leave parts out compute something else: they are measurements, not mixers.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from mixerlab.config import TrainConfig  # noqa: E402
from mixerlab.mixers import resolve_mixer  # noqa: E402
from mixerlab.ops import tril_solve  # noqa: E402
from mixerlab.tasks import baseline_setting, parse_task  # noqa: E402
from mixerlab.train.batched import BatchedTrainer  # noqa: E402
from mixerlab.train.job import TrainJob  # noqa: E402

DeltaNet = resolve_mixer("delta_net").load_class()
GatedDeltaNet = resolve_mixer("gated_delta_net").load_class()
FlaDeltaNet = resolve_mixer("delta_net_fla").load_class()
FlaGatedDeltaNet = resolve_mixer("gated_delta_net_fla").load_class()


class ValuesOnly(DeltaNet):
    """DeltaNet's projections, convs, norms and output, without the delta rule (o = v)."""

    def mix(self, q, k, v, beta):  # type: ignore[override]
        return v + 0 * (q.sum() + k.sum() + beta.sum())


class OneLinear(nn.Module):
    """The cheapest mixer: one Linear; what is left is the backbone's cost."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _skip_solve(A, B, **kwargs):
    return B


# variant -> (mixer factory, solve routing: "library" | "kernel" | "skip")
VARIANTS = {
    "delta_net": (DeltaNet, "library"),
    "delta_net+kernel": (DeltaNet, "kernel"),
    "delta_net, no solve": (DeltaNet, "skip"),
    "delta_net, no delta rule": (ValuesOnly, "library"),
    "one linear": (OneLinear, "library"),
    "delta_net chunk 32+kernel": (functools.partial(DeltaNet, chunk_size=32), "kernel"),
    "delta_net chunk 32": (functools.partial(DeltaNet, chunk_size=32), "library"),
    "gated_delta_net": (GatedDeltaNet, "library"),
    "gated_delta_net+kernel": (GatedDeltaNet, "kernel"),
    "delta_net fla": (FlaDeltaNet, "library"),  # fla's kernels as custom ops (mixers/fla_ops.py), compiled around
    "gated_delta_net fla": (FlaGatedDeltaNet, "library"),
}


def parse_variant(spec: str) -> tuple[str, str | None]:
    """A row's `variant` or `variant@mode` -> (variant, torch.compile mode or None for the default)."""
    variant, _, mode = spec.partition("@")
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}, optionally @<compile mode>")
    return variant, mode or None


def build(task: str, seq_len: int, members: int, variant: str, mode: str | None = None) -> BatchedTrainer:
    """The trainer of one row, its step compiled in torch.compile's `mode`."""
    setting = baseline_setting(parse_task(task)).model_copy(update={"seq_len": seq_len})
    jobs = [TrainJob(setting=setting, lr=5e-4, weight_decay=0.0, seed=i) for i in range(members)]
    factory, solve = VARIANTS[variant]
    return BatchedTrainer(jobs, [f"m{i}" for i in range(members)], TrainConfig(), factory, "cuda",
                          cuda_graph=False, compile_step=True, compile_mode=mode, fast_solves=solve == "kernel")


def time_step(task: str, seq_len: int, members: int, spec: str, steps: int) -> dict:
    """Compile, capture the step as a CUDA graph, time `steps` replays of the row `spec` (`variant[@mode]`)."""
    torch._dynamo.reset()
    variant, mode = parse_variant(spec)
    skip = VARIANTS[variant][1] == "skip"
    original = torch.linalg.solve_triangular
    if skip:
        torch.linalg.solve_triangular = _skip_solve
    try:
        trainer = build(task, seq_len, members, variant, mode)
        start = time.perf_counter()
        for _ in range(3):
            trainer._run_step()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        trainer.cuda_graph = True
        trainer._run_step()  # captures
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            trainer._run_step()
        torch.cuda.synchronize()
        step_s = (time.perf_counter() - start) / steps
    finally:
        torch.linalg.solve_triangular = original
    tokens = members * trainer.train.batch_size * trainer.x_train.shape[1]
    row = {"task": task, "seq_len": seq_len, "members": members, "variant": spec, "step_ms": step_s * 1e3,
           "member_steps_per_s": members / step_s, "tokens_per_s": tokens / step_s, "compile_s": compile_s,
           "graph": trainer.graph is not None,
           "compiled": trainer.compiled_logits is not None, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    del trainer
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return row


def kernel_kind(name: str) -> str:
    """Which part of the step a CUDA kernel belongs to, from its name: what the profile totals are grouped by."""
    if "trsm" in name or name in ("forward", "backward"):  # the library's solve; ops/tril_solve_kernels.py's
        return "triangular solve"
    if any(tag in name for tag in ("gemm", "nvjet", "cutlass", "xmma", "cublas")):
        return "matmuls"
    if name.startswith("triton_"):
        return "fused elementwise and reductions (Inductor)"
    return "other kernels"


def profile_step(task: str, seq_len: int, members: int, spec: str, steps: int = 3) -> dict:
    """The CUDA kernels of `steps` compiled (not graphed) steps, per step, most expensive first."""
    torch._dynamo.reset()
    trainer = build(task, seq_len, members, *parse_variant(spec))
    for _ in range(3):
        trainer._run_step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            trainer._run_step()
        torch.cuda.synchronize()
    kernels = []
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
        if us > 0:
            kernels.append({"kernel": event.key, "ms_per_step": us / 1e3 / steps, "calls_per_step": event.count / steps})
    kernels.sort(key=lambda k: -k["ms_per_step"])
    del trainer
    torch.cuda.empty_cache()
    return {"run": f"{task}:{seq_len}:{members}:{spec}", "steps": steps,
            "cuda_ms_per_step": sum(k["ms_per_step"] for k in kernels), "kernels": kernels}


def profile_table(profile: dict, top: int = 12) -> list[str]:
    """Time per kind of kernel, then the most expensive kernels. A profile may list only its most expensive
    kernels (`kernels` short of `cuda_ms_per_step`); the kinds then cover the listed ones, as the line says."""
    total = profile["cuda_ms_per_step"]
    listed = sum(k["ms_per_step"] for k in profile["kernels"])
    kinds: defaultdict[str, float] = defaultdict(float)
    for k in profile["kernels"]:
        kinds[kernel_kind(k["kernel"])] += k["ms_per_step"]
    coverage = "all kernels" if listed >= 0.999 * total else f"the {len(profile['kernels'])} kernels listed, " \
        f"{listed / total:.0%} of the CUDA time"
    lines = [f"Profile of {profile['run']}: {total:.2f} ms of CUDA time per step ({profile['steps']} compiled steps, "
             f"not graphed). By kind ({coverage}):", "", "| kind | ms/step | share of CUDA time |", "|---|---|---|"]
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {ms:.2f} | {ms / total:.0%} |")
    lines += ["", "| kernel | ms/step | calls/step | share |", "|---|---|---|---|"]
    for k in profile["kernels"][:top]:
        name = k["kernel"] if len(k["kernel"]) <= 72 else k["kernel"][:69] + "..."
        lines.append(f"| `{name}` | {k['ms_per_step']:.3f} | {k['calls_per_step']:g} | "
                     f"{k['ms_per_step'] / total:.1%} |")
    return lines


def _fwd_bwd_ms(fn, a, b, g, reps: int = 20) -> float:
    for _ in range(3):
        torch.autograd.grad(fn(a, b), [a, b], g)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        torch.autograd.grad(fn(a, b), [a, b], g)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def time_solves(configs: list[tuple[int, int, str]]) -> list[dict]:
    """The solve alone, forward + backward: the library against the kernel under each (num_warps, rhs tile,
    precision), with the kernel's error against the library (both float32)."""
    library = functools.partial(torch.linalg.solve_triangular, upper=False, unitriangular=True)
    rows = []
    for systems, n, rhs in ((24576, 64, 64), (24576, 64, 96), (49152, 32, 64)):
        gen = torch.Generator(device="cuda").manual_seed(0)
        a = (torch.randn(systems, n, n, device="cuda", generator=gen) * 0.1).tril(-1).requires_grad_()
        b = torch.randn(systems, n, rhs, device="cuda", generator=gen).requires_grad_()
        g = torch.randn(systems, n, rhs, device="cuda", generator=gen)
        library_ms = _fwd_bwd_ms(library, a, b, g)
        x_ref = library(a, b)
        grads_ref = torch.autograd.grad(x_ref, [a, b], g)
        for warps, tile, precision in configs:
            tril_solve.NUM_WARPS, tril_solve.RHS_TILE, tril_solve.PRECISION = warps, tile, precision
            kernel = lambda a, b: tril_solve.unit_lower_solve(a, b)[0]  # noqa: E731
            kernel_ms = _fwd_bwd_ms(kernel, a, b, g)
            x = kernel(a, b)
            grads = torch.autograd.grad(x, [a, b], g)
            err = max(((u - v).norm() / v.norm()).item() for u, v in zip([x, *grads], [x_ref, *grads_ref]))
            rows.append({"systems": systems, "rows": n, "rhs": rhs, "num_warps": warps, "rhs_tile": tile,
                         "precision": precision, "library_ms": library_ms, "kernel_ms": kernel_ms,
                         "speedup": library_ms / kernel_ms, "rel_err": err})
            print(rows[-1], flush=True)
    return rows


FLOAT32_ERROR = 1e-6  # relative error against the library that still counts as float32 arithmetic


def best_config(rows: list[dict]) -> tuple[int, int, str]:
    """The configuration with the least total time over the sizes timed, among those whose every result
    (X, dA, dB) stays within float32-level error of the library."""
    totals: dict[tuple, float] = {}
    worst: dict[tuple, float] = {}
    for r in rows:
        key = (r["num_warps"], r["rhs_tile"], r["precision"])
        totals[key] = totals.get(key, 0.0) + r["kernel_ms"]
        worst[key] = max(worst.get(key, 0.0), r["rel_err"])
    return min((k for k in totals if worst[k] <= FLOAT32_ERROR), key=totals.get)


RESULTS = Path(__file__).resolve().parents[1] / "results"


def solve_table(solve: list[dict]) -> list[str]:
    lines = ["| systems x rows x rhs | warps | rhs tile | precision | library ms | kernel ms | speed-up | rel. error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in solve:
        lines.append(f"| {r['systems']} x {r['rows']} x {r['rhs']} | {r.get('num_warps', '')} | "
                     f"{r.get('rhs_tile', '')} | {r.get('precision', '')} | {r['library_ms']:.2f} | "
                     f"{r['kernel_ms']:.2f} | {r['speedup']:.2f} | {r['rel_err']:.1e} |")
    return lines


def steps_table(steps: list[dict]) -> list[str]:
    lines = ["| task | T | members | variant | ms/step | member-steps/s | Mtokens/s | compile s | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in steps:
        if "error" in r:
            lines.append(f"| {r['run']} | error: {r['error'][:120]} |")
            continue
        variant = r["variant"] + ("" if r.get("compiled", True) else " (compile failed: eager)")
        lines.append(f"| {r['task']} | {r['seq_len']} | {r['members']} | {variant} | {r['step_ms']:.1f} | "
                     f"{r['member_steps_per_s']:.0f} | {r['tokens_per_s'] / 1e6:.2f} | {r['compile_s']:.0f} | "
                     f"{r['peak_gib']:.1f} |")
    return lines


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Where a training step's time goes", "",
             "Written by `python benchmarks/speed/step_anatomy.py` (GPU). Every row times the compiled, CUDA-graphed batched "
             "step that `eval --compile` runs; rows of one run share a process and a GPU, so their ratios compare. "
             "Variants that leave a part out compute something else: they measure that part's cost.", ""]
    for device, entry in results.items():
        lines += [f"## {device}", ""]
        for finding in entry.get("findings", []):
            lines += [f"- {finding}"]
        lines.append("")
        for number, run in enumerate(entry["runs"], 1):
            lines += [f"### Run {number} ({run['date']}, torch {run['torch']})", "", run.get("note", ""), ""]
            if run.get("solve"):
                lines += ["The unit-lower-triangular solve alone, forward + backward:", "",
                          *solve_table(run["solve"]), ""]
            if run.get("steps"):
                lines += ["Training steps:", "", *steps_table(run["steps"]), ""]
            for profile in run.get("profiles", []):
                lines += [*profile_table(profile), ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[
        "fuzzy_recall:128:24:delta_net", "fuzzy_recall:128:24:delta_net+kernel"],
        help="task:seq_len:members:variant[@compile mode] ... (variants: " + ", ".join(VARIANTS) + "; a mode such "
             "as max-autotune-no-cudagraphs replaces the trainer's default torch.compile mode for that row)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--solve", action="store_true", help="time the solve alone first")
    parser.add_argument("--profile", nargs="*", default=[], help="task:seq_len:members:variant to profile")
    parser.add_argument("--solve-configs", nargs="*", default=[],
                        help="kernel configurations warps:rhs_tile:precision to compare (with --solve); the fastest "
                             "with float32-level error is used for the step timings")
    parser.add_argument("--budget", type=float, default=1e9, help="seconds; skip runs that would start after it")
    parser.add_argument("--note", default="", help="what this run is (kept with it in the results)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of step_anatomy.json/.md (merged per device)")
    parser.add_argument("--render", action="store_true", help="only rewrite step_anatomy.md from step_anatomy.json")
    args = parser.parse_args()
    json_path = args.out / "step_anatomy.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    if args.render:
        write_markdown(results, args.out / "step_anatomy.md")
        return
    for spec in [*args.profile, *args.runs]:  # a mistyped row stops here, not after the rows before it ran
        parse_variant(spec.split(":", 3)[-1])
    start = time.monotonic()
    run: dict = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "note": args.note, "solve": [],
                 "steps": []}
    device = torch.cuda.get_device_name()
    entry = results.setdefault(device, {"runs": []})
    entry["runs"].append(run)

    def save() -> None:  # after every measurement: a call cut short keeps what it measured
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
        write_markdown(results, args.out / "step_anatomy.md")

    if args.solve:
        default = (tril_solve.NUM_WARPS, tril_solve.RHS_TILE, tril_solve.PRECISION)
        configs = [(int(w), int(t), p) for w, t, p in (c.split(":") for c in args.solve_configs)] or [default]
        run["solve"] = time_solves(configs)
        tril_solve.NUM_WARPS, tril_solve.RHS_TILE, tril_solve.PRECISION = run["best_config"] = best_config(run["solve"])
        print(f"kernel configuration for the steps: {run['best_config']}")
        save()
    for spec in args.profile:
        task, seq_len, members, variant = spec.split(":", 3)
        run.setdefault("profiles", []).append(profile_step(task, int(seq_len), int(members), variant))
        print("\n" + "\n".join(profile_table(run["profiles"][-1])), flush=True)
        save()
    for spec in args.runs:
        if time.monotonic() - start > args.budget:
            print(f"skipped (budget): {spec}")
            continue
        task, seq_len, members, variant = spec.split(":", 3)
        try:
            row = time_step(task, int(seq_len), int(members), variant, args.steps)
        except Exception as err:  # one failed variant should not lose the others
            row = {"run": spec, "error": f"{type(err).__name__}: {err}"[:500]}
        run["steps"].append(row)
        print(json.dumps(row), flush=True)
        save()
    print("\n".join([f"\n{device}, torch {torch.__version__}", *solve_table(run["solve"]), *steps_table(run["steps"])]))


if __name__ == "__main__":
    main()
