"""`mixerlab eval`: train a mixer on a profile's MAD tasks and print its accuracy row.

The command's options are one typed model, `EvalArgs` (ranges from config.py): the command builds it, the
`--devices` workers get it back as flags (`EvalArgs.flags`), the command's options and --help are generated from
it (`command_signature`), and `prepare` turns it into what the evaluation
engine takes. A builtin mixer trains in this process; a file is untrusted unless --trusted: checked, trained
in the sandbox and scored here (evaluate/sandboxed.py), as the research loop does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import inspect
from types import UnionType
from typing import Annotated, ClassVar, Optional, Union, get_args, get_origin

import typer
from rich.markup import escape
from pydantic import BaseModel, ConfigDict, Field

from mixerlab.config import ConcurrentGroups, GroupMembers, GroupTokens, Patience, SandboxWorkers, Seconds, Seeds, SequenceLength

from .base import UserError, app, console, err_console, fail, parse_tasks, resolve_device, validated, writable_file


class EvalArgs(BaseModel):
    """Every `eval` option, checked once (types and ranges); `flags()` writes them back for a worker process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mixer: str = Field("delta_net", description=(
        'delta_net | gated_delta_net | delta_net_fla | gated_delta_net_fla | PATH.py'))
    profile: str = Field("tiny", description='smoke | tiny | quick | baseline | full')
    tasks: Optional[str] = Field(None, description='comma-separated tasks (default: all six), e.g. memorize,compress')
    seeds: Seeds = Field(1, description='seeds per training (1-100); scores are mean and std over seeds')
    device: str = Field("auto", description='cpu | cuda | auto')
    json_out: Optional[Path] = Field(None, description='write the full report (per task, per setting) here')
    cache: Optional[Path] = Field(None, description='result cache (SQLite); default ~/.cache/mixerlab/results.sqlite')
    no_cache: bool = Field(False, description='neither read nor write the result cache')
    lr_schedule: Optional[str] = Field(None, description="override the profile's schedule: constant | cosine")
    max_group_tokens: Optional[GroupTokens] = Field(None, description=(
        'tokens per batched step (memory budget, >= 1024)'))
    max_group_members: Optional[GroupMembers] = Field(None, description=(
        "at most this many trainings per batched group (keeps each group's checkpoint small enough to carry)"))
    workers: SandboxWorkers = Field(1, description=(
        'a .py file: this many sandboxed workers share the device, each training its share of the trainings '
        "at the same time (1-8; overlaps one worker's compiles, evaluations and small groups with another's "
        'steps)'))
    concurrent_groups: ConcurrentGroups = Field(1, description=(
        'training groups at once on the device, a thread and CUDA stream each (1-64); same results as one at '
        'a time (docs/evaluation.md: what it gains where)'))
    name: Optional[str] = Field(None, description="row name in the table (default: the mixer's)")
    time_limit: Optional[Seconds] = Field(None, description=(
        'seconds (> 0); stop cleanly after it (finished trainings are cached)'))
    init: Optional[str] = Field(None, description=(
        'override the model init: mad-lab (as released) | normal (every Linear N(0, 0.02), mad-lab before Dec'
        " 2024) | fla-xavier (the mixers' Linears xavier-uniform, gain 2^-2.5, fla's layers before 2025)"))
    init_seed: Optional[str] = Field(None, description=(
        'setting (the six lr x wd runs of a setting share their initial weights) | run (each its own, as mad-'
        "lab's unseeded init)"))
    patience: Optional[Patience] = Field(None, description=(
        "also stop a training once its test perplexity has not improved for this many epochs (not MAD's "
        'protocol: cheaper, and read off cached trainings without it; benchmarks/results/baselines.md '
        'measures what it changes)'))
    compile_step: bool = Field(False, description=(
        "CUDA: torch.compile each group's training step once the group has trained 150M tokens eagerly "
        '(faster on long groups; tens of seconds to compile per shape)'))
    library_solves: bool = Field(False, description=(
        "CUDA: solve the chunkwise WY systems with torch.linalg.solve_triangular instead of mixerlab's Triton"
        ' kernel (same results within float32 rounding; for comparisons)'))
    checkpoint_every: float = Field(120.0, ge=0, le=86_400, description=(
        'seconds between saves of unfinished groups beside the cache (a kill or --time-limit resumes from '
        'there)'))
    max_seq_len: Optional[SequenceLength] = Field(None, description=(
        'train only the settings up to this sequence length now (run a long sweep in parts; the row stays '
        'partial until all ran)'))
    settings: Optional[str] = Field(None, description=(
        'train only these settings now, comma-separated, e.g. vocab_size=128,baseline or '
        'selective_copy[num_train=800] (a probe; the row covers what is cached)'))
    devices: Optional[str] = Field(None, description=(
        'spread the trainings over several devices of this host, one worker process each: cuda:0,cuda:1 | all'
        ' (every visible GPU) | cpu,cpu; workers log beside the cache (CACHE.logs/)'))
    only_keys: Optional[Path] = Field(None, description=(
        "a file of cache keys, one per line: train only those (a --devices worker's share)"), json_schema_extra={"hidden": True})
    trusted: bool = Field(False, description=(
        'run a mixer FILE in this process, unchecked and unconfined (your own code only); by default a file '
        'is checked, trained in the sandbox and scored here, as the research loop does'))

    # options that name a thing in this process only, and the spelling of options whose flag is not their name
    LOCAL: ClassVar[tuple[str, ...]] = ("json_out", "devices", "only_keys", "cache", "no_cache", "device")
    FLAGS: ClassVar[dict[str, str]] = {"json_out": "--json", "compile_step": "--compile"}

    @classmethod
    def flag(cls, field: str) -> str:
        return cls.FLAGS.get(field, "--" + field.replace("_", "-"))

    def flags(self) -> list[str]:
        """The options that differ from their defaults, as `mixerlab eval` flags (a --devices worker's command)."""
        out: list[str] = []
        for field, info in type(self).model_fields.items():
            value = getattr(self, field)
            if field in self.LOCAL or value == info.default:
                continue
            out += [self.flag(field)] if value is True else [self.flag(field), str(value)]
        return out

    @property
    def untrusted(self) -> bool:
        from mixerlab.mixers import BUILTINS

        return self.mixer not in BUILTINS and not self.trusted


def eval_command(**options) -> None:
    """Train a mixer on the MAD tasks of a profile and print its accuracy row.

    A .py file is untrusted unless --trusted: it is checked first (a failed check is a usage error naming it),
    then trained in the sandbox and scored in this process. SIGUSR1 checkpoints the unfinished group now;
    SIGTERM or Ctrl-C checkpoints it and stops (run the same command again to continue)."""
    from mixerlab.train.interrupts import answering_signals

    failed_workers = []
    try:
        args = validated(EvalArgs, EvalArgs.FLAGS, **options)
        writable_file(args.json_out, "--json")
        with answering_signals():
            if args.devices:
                report, failed_workers = spread(args)
            else:
                report = run(args)
    except UserError as err:
        fail(str(err))
    print_report(report, args)
    if report.stopped_by:
        import signal

        raise typer.Exit(128 + signal.Signals[report.stopped_by].value)  # the shell's convention for a signal
    if failed_workers:
        for worker in failed_workers:
            err_console.print(f"[red]the worker on {worker.device} exited with status {worker.returncode}; its log: "
                              f"{worker.log}[/]")
        raise typer.Exit(1)


def command_signature(model: type[BaseModel]) -> inspect.Signature:
    """The typer options of every field of `model` (its flag, default and description): the command's options are
    declared once, in the model, and the --help text, the checks and a worker's flags all come from there."""
    parameters = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if get_origin(annotation) is Annotated:  # a constrained type (config.py): typer parses the base type
            annotation = get_args(annotation)[0]
        hidden = bool((info.json_schema_extra or {}).get("hidden"))  # type: ignore[union-attr]
        option = typer.Option(info.default, model.flag(name), help=info.description, hidden=hidden)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=_plain(annotation)))
    return inspect.Signature(parameters)


def _plain(annotation):
    """Optional[Annotated[int, ...]] -> Optional[int]: typer reads plain types only."""
    args = get_args(annotation)
    if get_origin(annotation) in (Union, UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return Optional[get_args(inner)[0] if get_origin(inner) is Annotated else inner]
    return annotation


eval_command.__signature__ = command_signature(EvalArgs)  # type: ignore[attr-defined]
app.command("eval")(eval_command)


def print_report(report, args: EvalArgs) -> None:
    from mixerlab.table import accuracies_df, format_table

    typer.echo(format_table(accuracies_df({report.mixer: report.row()})))
    if args.seeds > 1:
        for task, score in report.tasks.items():
            console.print(f"  {task}: {score.mean:.4f} +- {score.std:.4f} over {len(score.seeds)} seeds", highlight=False)
    for task, left in report.unfinished.items():  # a partial score is not the profile's score yet: say how far off
        so_far = f"{report.tasks[task].mean:.4f} so far, " if task in report.tasks else ""
        low, high = left.score_range
        console.print(f"  {task}: {left.done} of {left.planned} trainings; {so_far}can end in {low:.4f}-{high:.4f}",
                      highlight=False)
    if report.resumed:
        console.print(f"[dim]{report.resumed} trainings continued from a checkpoint of an earlier run[/]")
    if report.from_longer:
        console.print(f"[dim]{report.from_longer} trainings read off the first epochs of cached longer trainings "
                      "(same jobs, constant learning rate)[/]")
    finished = report.trainings - report.incomplete
    if report.stopped_by:
        if args.no_cache:
            saved = "--no-cache keeps nothing: the finished ones are in this row only, the unfinished ones are lost"
        elif args.untrusted:
            saved = "the finished ones are cached; the sandbox keeps no checkpoints, so the unfinished ones start over"
        else:
            saved = "the finished ones are cached, the unfinished groups checkpointed beside the cache"
        err_console.print(f"[yellow]stopped by {report.stopped_by}: {finished} of {report.trainings} trainings "
                          f"finished; {saved}. Run the same command again to continue.[/]")
    elif report.incomplete:
        why = "were left out (--max-seq-len, --settings, a --devices worker's share) or did not finish in the time " \
            "limit" if args.max_seq_len or args.settings or args.only_keys else "did not finish in the time limit"
        kept = "" if args.no_cache else " Run again to continue (unfinished groups were checkpointed beside the cache)."
        err_console.print(f"[yellow]{report.incomplete} of {report.trainings} trainings {why}; the row covers the "
                          f"finished settings only (the lines under it: where each such task can still end).{kept}[/]")
    console.print(
        f"[dim]{report.profile} profile, {report.trainings} trainings ({report.from_cache} cached), "
        f"{report.wall_seconds:.1f}s on {report.device}, lr schedule {report.lr_schedule}, init {report.init} "
        f"(seeded per {report.init_seed})" + (f", patience {report.patience} epochs" if report.patience else "") + "[/]"
    )


def train_overrides(**chosen: str | None) -> dict[str, str]:
    """The TrainConfig fields given on the command line, each checked against the choices its Literal type
    allows (so a new choice in config.py needs no change here)."""
    from mixerlab.config import train_choices

    overrides = {}
    for field, value in chosen.items():
        if value is None:
            continue
        choices = train_choices(field)
        if value not in choices:
            listed = ", ".join(choices[:-1]) + " or " + choices[-1]
            raise UserError(f"unknown {field.replace('_', ' ')} {value!r}; use {listed}")
        overrides[field] = value
    return overrides


def run(args: EvalArgs, train: bool = True):
    from mixerlab.evaluate import evaluate_mixer
    from mixerlab.progress import EvalProgress

    spec, prof, options, store = prepare(args, train)
    progress = EvalProgress(err_console, spec.name)
    if args.untrusted:
        report = sandboxed(spec, prof, options, store, progress)
    else:
        report = evaluate_mixer(spec, prof, options, cache=store, progress=progress)
    if args.json_out is not None:
        args.json_out.write_text(report.model_dump_json(indent=2))
    return report


def sandboxed(spec, prof, options, store, progress):
    """`eval FILE.py`: the loop's path. Check the file (a failure is a usage error naming the check), then train it
    in the sandbox and score it here (evaluate/sandboxed.py)."""
    from mixerlab.check import Conditions, check_candidate
    from mixerlab.evaluate.sandboxed import evaluate_untrusted
    from mixerlab.sandbox import SandboxLimits

    device = "cuda" if options.device.startswith("cuda") else "cpu"
    gpu = (int(options.device.split(":")[1]) if ":" in options.device else 0) if device == "cuda" else None
    limits = SandboxLimits.for_checks(cuda_device=gpu)
    err_console.print(f"[dim]checking {escape(spec.filename)} in the sandbox (an untrusted file; --trusted skips this)[/]",
                      highlight=False)
    report = check_candidate(spec, limits=limits, check_novelty=False, conditions=Conditions.for_profile(prof, device))
    if not report.passed:
        raise UserError(f"{spec.filename} failed its checks: {report.summary()}; `mixerlab check {spec.filename}` lists "
                        "them all (or pass --trusted to run your own file unchecked)")
    limits = SandboxLimits.for_evaluation(options.time_limit + 600 if options.time_limit else 7 * 24 * 3600.0, gpu)
    result = evaluate_untrusted(spec, prof, dataclasses.replace(options, device=device), limits, cache=store,
                                progress=progress, cuda_device=gpu)
    if not result.ok:
        err_console.print(f"[bold red]the evaluation failed:[/] {escape(result.error)}", highlight=False)
        raise typer.Exit(1)
    return result.report


def spread(args: EvalArgs):
    """`eval --devices`: one worker per device trains its share of the trainings into the shared cache; then the
    row is read from the cache. Returns the report and the workers that failed (evaluate/devices.py)."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mixerlab.evaluate.devices import Worker, parse_devices, run_workers, split_jobs
    from mixerlab.evaluate.runner import max_steps, plan_evaluation
    from mixerlab.train.checkpoint import CheckpointStore

    if args.no_cache:
        raise UserError("--devices needs the result cache (its workers write their trainings there); drop --no-cache")
    if args.device != "auto":
        raise UserError("give --device or --devices, not both")
    try:
        device_list = parse_devices(args.devices, torch.cuda.device_count())
    except ValueError as err:
        raise UserError(str(err)) from None
    kind = "cpu" if device_list[0] == "cpu" else "cuda"
    args = args.model_copy(update={"device": kind})
    spec, prof, options, store = prepare(args, train=True)
    plan = plan_evaluation(spec, prof, options, store)
    job_of_key = {plan.keys[job]: job for job in plan.todo}
    together = [{job_of_key[k].setting.label for k in state["keys"] if k in job_of_key}
                for _, state in CheckpointStore.beside(store.path).load_all()]
    shares = split_jobs(plan.todo, lambda job: max_steps(job, plan.train) * job.setting.input_len, together,
                        len(device_list))
    logs = Path(f"{store.path}.logs")
    workers = [Worker(device, [plan.keys[job] for job in share], logs / f"{spec.name}.worker{i}.log")
               for i, (device, share) in enumerate(zip(device_list, shares))]
    for worker, share in zip(workers, shares):
        err_console.print(f"[dim]{worker.device}: {len(share)} trainings of {len({j.setting.label for j in share})} "
                          f"settings, log {worker.log}[/]", highlight=False)
    flags = ["--cache", str(store.path), "--checkpoint-every", str(args.checkpoint_every), *args.flags()]
    before = store.count(spec.code_hash)  # the workers' new rows are the progress: counted, not read
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as bar:
        task = bar.add_task(f"{spec.name} trainings on {len(workers)} devices", total=len(plan.todo))
        run_workers(flags, workers, lambda: bar.update(task, completed=store.count(spec.code_hash) - before))
    failed = [worker for worker in workers if worker.returncode != 0]
    return run(args, train=False), failed


def prepare(args: EvalArgs, train: bool):
    """Check every eval argument (UserError names the fix) and build what evaluate_mixer takes."""
    from mixerlab.config import get_profile
    from mixerlab.evaluate import EvalOptions, ResultCache
    from mixerlab.evaluate.plan import select_settings
    from mixerlab.mixers import MixerLoadError, preflight, resolve_mixer

    try:
        prof = get_profile(args.profile)
        task_list = parse_tasks(args.tasks)
        chosen = select_settings(prof, task_list, args.settings.split(",")) if args.settings else None
        spec = resolve_mixer(args.mixer)
        if args.name:
            spec = dataclasses.replace(spec, name=args.name)
        dev = resolve_device(args.device)
        if not args.mixer.endswith("_fla") and not args.untrusted:  # an untrusted file runs only in the sandbox
            preflight(spec, prof.train.d_model)
        overrides = train_overrides(lr_schedule=args.lr_schedule, init=args.init, init_seed=args.init_seed)
        if args.patience is not None:
            overrides["patience"] = args.patience
        if args.workers > 1 and not args.untrusted:
            raise UserError("--workers splits a sandboxed evaluation (a .py file); a builtin mixer or --trusted file "
                            "trains in this process: drop --workers (or use --devices for several GPUs)")
        if args.workers > 1 and args.devices:
            raise UserError("--workers and --devices both split the trainings: give one of them")
        if args.compile_step and not dev.startswith("cuda"):
            raise UserError("--compile speeds up CUDA training only; drop it or pass --device cuda")
        store = None if args.no_cache else ResultCache(args.cache)
        keys = None
        if args.only_keys is not None:
            if not args.only_keys.is_file():
                raise UserError(f"--only-keys {str(args.only_keys)!r} is not a file; give a file of cache keys, one per line")
            keys = frozenset(args.only_keys.read_text().split())
    except (MixerLoadError, ValueError) as err:
        raise UserError(str(err)) from None
    options = EvalOptions(tasks=task_list, seeds=args.seeds, device=dev, max_group_tokens=args.max_group_tokens,
                          max_group_members=args.max_group_members, train_overrides=overrides,
                          time_limit=args.time_limit, compile_step=args.compile_step,
                          checkpoint_every=args.checkpoint_every, max_seq_len=args.max_seq_len, settings=chosen,
                          library_solves=args.library_solves, train=train, only_keys=keys, workers=args.workers,
                          concurrent_groups=args.concurrent_groups)
    return spec, prof, options, store
