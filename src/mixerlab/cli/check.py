"""`mixerlab check FILE`: the candidate checks, in the sandbox, under the conditions it will be trained in."""

from __future__ import annotations

import typer

from mixerlab.sandbox import SandboxLimits

from .base import UserError, app, console, fail, resolve_device


@app.command("check")
def check_command(
    candidate: str = typer.Argument(..., help="a candidate .py file (or a builtin mixer name)"),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON instead of a checklist"),
    budget: float = typer.Option(0.5, min=0.0, help="allowed relative parameter difference from the reference baseline"),
    timeout: float = typer.Option(SandboxLimits.timeout_s, min=1.0, help="seconds the sandboxed checks may take"),
    memory_gb: float = typer.Option(8.0, min=0.5, help="memory the sandbox may use"),
    profile: str = typer.Option("tiny", help="the profile the candidate will be trained on: causality, state and the "
                                "forward are checked at its width, batch size and lengths (full: the longest)"),
    device: str = typer.Option("cpu", help="cpu | cuda: where the candidate will be trained (cuda: bf16 autocast)"),
) -> None:
    """Check a candidate mixer: contract, causality, sub-quadratic cost, numerics, novelty. Exit 0 pass, 1 fail."""
    from rich.markup import escape

    from mixerlab.check import CHECK_TITLES, Conditions, check_candidate
    from mixerlab.config import get_profile
    from mixerlab.mixers import BUILTINS, MixerLoadError, resolve_mixer

    try:
        spec = resolve_mixer(candidate)
        dev = resolve_device(device)
        conditions = Conditions.for_profile(get_profile(profile), "cuda" if dev.startswith("cuda") else "cpu")
    except (MixerLoadError, UserError, ValueError) as err:
        fail(str(err))
    gpu = (int(dev.split(":")[1]) if ":" in dev else 0) if dev.startswith("cuda") else None
    limits = SandboxLimits.for_checks(SandboxLimits(timeout_s=timeout, memory_gb=memory_gb), gpu)
    report = check_candidate(spec, budget=budget, limits=limits, check_novelty=candidate not in BUILTINS,
                             conditions=conditions)
    if json_out:
        typer.echo(report.model_dump_json(indent=2))
    else:
        marks = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "not run": "[dim]skip[/]"}
        console.print(f"[bold]{escape(spec.name)}[/] ({spec.code_hash}), checked under {report.conditions}",
                      highlight=False)
        for c in report.checks:
            console.print(f"  {marks[c.status]}  {CHECK_TITLES[c.name]:<48} [dim]{c.seconds:5.2f}s[/]", highlight=False)
            if c.status == "fail":
                # a reason quotes candidate text (its error messages, names): shown literally, never as markup
                console.print(f"        {escape(c.reason)}", highlight=False, soft_wrap=True)
        verdict = "[green]accepted[/]" if report.passed else "[bold red]rejected[/]"
        console.print(f"{verdict} in {report.seconds:.1f}s")
    raise typer.Exit(0 if report.passed else 1)
