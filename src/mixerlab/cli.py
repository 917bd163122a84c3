"""The `mixerlab` command line. Every user error is one line naming the problem and the fix, exit status 2."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console

from mixerlab.sandbox import SandboxLimits  # light: no torch (the CLI's defaults read it)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Autonomous discovery of linear-attention sequence mixers on MAD.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """A mistake in the user's input; printed as one line, exit status 2."""


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2. The message is printed as is: brackets in it (setting labels, pydantic's
    `[type=...]`) are text, not rich markup."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}; use cpu or cuda")
    return device


def parse_tasks(tasks: Optional[str]):
    from mixerlab.tasks import TASK_ORDER, parse_task

    if not tasks:
        return TASK_ORDER
    parsed = []
    for name in tasks.replace(" ", ",").split(","):
        if name:
            parsed.append(parse_task(name))
    return tuple(dict.fromkeys(parsed))


@app.command("eval")
def eval_command(
    mixer: str = typer.Option("delta_net", help="delta_net | gated_delta_net | delta_net_fla | gated_delta_net_fla | PATH.py"),
    profile: str = typer.Option("tiny", help="tiny | quick | baseline | full"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated tasks (default: all six), e.g. memorize,compress"),
    seeds: int = typer.Option(1, min=1, help="seeds per training; scores are mean and std over seeds"),
    device: str = typer.Option("auto", help="cpu | cuda | auto"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full report (per task, per setting) here"),
    cache: Optional[Path] = typer.Option(None, help="result cache (SQLite); default ~/.cache/mixerlab/results.sqlite"),
    no_cache: bool = typer.Option(False, help="neither read nor write the result cache"),
    lr_schedule: Optional[str] = typer.Option(None, help="override the profile's schedule: constant | cosine"),
    max_group_tokens: Optional[int] = typer.Option(None, help="tokens per batched step (memory budget)"),
    max_group_members: Optional[int] = typer.Option(None, min=1, help="at most this many trainings per batched "
                                                    "group (keeps each group's checkpoint small enough to carry)"),
    name: Optional[str] = typer.Option(None, help="row name in the table (default: the mixer's)"),
    time_limit: Optional[float] = typer.Option(None, help="seconds; stop cleanly after it (finished trainings are cached)"),
    init: Optional[str] = typer.Option(None, help="override the model init: mad-lab (as released) | normal (every "
                                       "Linear N(0, 0.02), mad-lab before Dec 2024) | fla-xavier (the mixers' "
                                       "Linears xavier-uniform, gain 2^-2.5, fla's layers before 2025)"),
    init_seed: Optional[str] = typer.Option(None, help="setting (the six lr x wd runs of a setting share their "
                                            "initial weights) | run (each its own, as mad-lab's unseeded init)"),
    patience: Optional[int] = typer.Option(None, min=1, help="also stop a training once its test perplexity has "
                                           "not improved for this many epochs (not MAD's protocol: cheaper, and "
                                           "read off cached trainings without it; benchmarks/results/baselines.md "
                                           "measures what it changes)"),
    compile_step: bool = typer.Option(False, "--compile", help="CUDA: torch.compile each group's training step "
                                      "(faster on long groups; tens of seconds to compile per shape)"),
    library_solves: bool = typer.Option(False, "--library-solves", help="CUDA: solve the chunkwise WY systems with "
                                        "torch.linalg.solve_triangular instead of mixerlab's Triton kernel (same "
                                        "results within float32 rounding; for comparisons)"),
    checkpoint_every: float = typer.Option(120.0, min=0.0, help="seconds between saves of unfinished groups beside "
                                           "the cache (a kill or --time-limit resumes from there)"),
    max_seq_len: Optional[int] = typer.Option(None, min=1, help="train only the settings up to this sequence length "
                                              "now (run a long sweep in parts; the row stays partial until all ran)"),
    settings: Optional[str] = typer.Option(None, help="train only these settings now, comma-separated, e.g. "
                                           "vocab_size=128,baseline or selective_copy[num_train=800] (a probe; the "
                                           "row covers what is cached)"),
    devices: Optional[str] = typer.Option(None, help="spread the trainings over several devices of this host, one "
                                          "worker process each: cuda:0,cuda:1 | all (every visible GPU) | cpu,cpu; "
                                          "workers log beside the cache (CACHE.logs/)"),
    only_keys: Optional[Path] = typer.Option(None, hidden=True, help="a file of cache keys, one per line: train "
                                             "only those (a --devices worker's share)"),
    trusted: bool = typer.Option(False, "--trusted", help="run a mixer FILE in this process, unchecked and "
                                 "unconfined (your own code only); by default a file is checked, trained in the "
                                 "sandbox and scored here, as the research loop does"),
) -> None:
    """Train a mixer on the MAD tasks of a profile and print its accuracy row.

    A .py file is untrusted unless --trusted: it is checked first (exit 1 if it fails, with the report), then
    trained in the sandbox and scored in this process. SIGUSR1 checkpoints the unfinished group now; SIGTERM or
    Ctrl-C checkpoints it and stops (run the same command again to continue)."""
    from mixerlab.train.interrupts import answering_signals

    params = dict(mixer=mixer, profile=profile, tasks=tasks, seeds=seeds, device=device, json_out=json_out,
                  cache=cache, no_cache=no_cache, lr_schedule=lr_schedule, max_group_tokens=max_group_tokens, name=name,
                  time_limit=time_limit, init=init, compile_step=compile_step, checkpoint_every=checkpoint_every,
                  max_seq_len=max_seq_len, init_seed=init_seed, max_group_members=max_group_members, settings=settings,
                  library_solves=library_solves, only_keys=only_keys, patience=patience, trusted=trusted)
    failed_workers = []
    try:
        with answering_signals():
            if devices:
                report, failed_workers = _spread_eval(devices, params)
            else:
                report = _run_eval(**params)
    except UserError as err:
        fail(str(err))
    from mixerlab.table import accuracies_df, format_table

    typer.echo(format_table(accuracies_df({report.mixer: report.row()})))
    if seeds > 1:
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
    if report.stopped_by:
        saved = "unfinished groups were checkpointed beside the cache" if not no_cache else \
            "unfinished trainings are lost (--no-cache keeps no checkpoints)"
        err_console.print(f"[yellow]stopped by {report.stopped_by}: {report.trainings - report.incomplete} of "
                          f"{report.trainings} trainings finished (cached); {saved}. Run the same command again to "
                          "continue.[/]")
    elif report.incomplete:
        why = "were left out (--max-seq-len, --settings, a --devices worker's share) or did not finish in the time " \
            "limit" if max_seq_len or settings or only_keys else "did not finish in the time limit"
        err_console.print(f"[yellow]{report.incomplete} of {report.trainings} trainings {why}; the row covers the "
                          "finished settings only (the lines under it: where each such task can still end). Run again to "
                          "continue (unfinished groups were checkpointed beside the cache).[/]")
    console.print(
        f"[dim]{report.profile} profile, {report.trainings} trainings ({report.from_cache} cached), "
        f"{report.wall_seconds:.1f}s on {report.device}, lr schedule {report.lr_schedule}, init {report.init} "
        f"(seeded per {report.init_seed})" + (f", patience {report.patience} epochs" if report.patience else "") + "[/]"
    )
    if report.stopped_by:
        import signal

        raise typer.Exit(128 + signal.Signals[report.stopped_by].value)  # the shell's convention for a signal
    if failed_workers:
        for worker in failed_workers:
            err_console.print(f"[red]the worker on {worker.device} exited with status {worker.returncode}; its log: "
                              f"{worker.log}[/]")
        raise typer.Exit(1)


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


def _run_eval(mixer, profile, tasks, seeds, device, json_out, cache, no_cache, lr_schedule, max_group_tokens, name,
              time_limit=None, init=None, compile_step=False, checkpoint_every=120.0, max_seq_len=None,
              init_seed=None, max_group_members=None, settings=None, library_solves=False, train=True,
              only_keys=None, patience=None, trusted=False):
    from mixerlab.evaluate import evaluate_mixer
    from mixerlab.progress import EvalProgress

    spec, prof, options, store = _prepare_eval(
        mixer, profile, tasks, seeds, device, json_out, cache, no_cache, lr_schedule, max_group_tokens, name,
        time_limit, init, compile_step, checkpoint_every, max_seq_len, init_seed, max_group_members, settings,
        library_solves, train, only_keys, patience, trusted)
    progress = EvalProgress(err_console, spec.name)
    if _untrusted(mixer, trusted):
        report = _sandboxed_eval(spec, prof, options, store, progress)
    else:
        report = evaluate_mixer(spec, prof, options, cache=store, progress=progress)
    if json_out is not None:
        json_out.write_text(report.model_dump_json(indent=2))
    return report


def _untrusted(mixer: str, trusted: bool) -> bool:
    from mixerlab.mixers import BUILTINS

    return mixer not in BUILTINS and not trusted


def _sandboxed_eval(spec, prof, options, store, progress):
    """`eval FILE.py`: the loop's path. Check the file (exit 1 with the report if it fails), then train it in the
    sandbox and score it here (evaluate/sandboxed.py)."""
    import dataclasses

    from mixerlab.check import Conditions, check_candidate
    from mixerlab.evaluate.sandboxed import evaluate_sandboxed
    from mixerlab.sandbox import SandboxLimits

    device = "cuda" if options.device.startswith("cuda") else "cpu"
    gpu = (int(options.device.split(":")[1]) if ":" in options.device else 0) if device == "cuda" else None
    limits = SandboxLimits(cuda_device=gpu, gpu_memory_fraction=0.2 if gpu is not None else None)
    err_console.print(f"[dim]checking {spec.filename} in the sandbox (an untrusted file; --trusted skips this)[/]",
                      highlight=False)
    report = check_candidate(spec, limits=limits, check_novelty=False,
                             conditions=Conditions.for_profile(prof, device))
    if not report.passed:
        raise UserError(f"{spec.filename} failed its checks: {report.summary()}; `mixerlab check {spec.filename}` lists "
                        "them all (or pass --trusted to run your own file unchecked)")
    limits = SandboxLimits(timeout_s=options.time_limit + 600 if options.time_limit else 7 * 24 * 3600.0,
                           memory_gb=16.0, output_bytes=20_000_000, cuda_device=gpu,
                           gpu_memory_fraction=0.9 if gpu is not None else None)
    result = evaluate_sandboxed(spec, prof, dataclasses.replace(options, device=device), limits, cache=store,
                                progress=progress, cuda_device=gpu)
    if not result.ok:
        from rich.markup import escape

        err_console.print(f"[bold red]the evaluation failed:[/] {escape(result.error)}", highlight=False)
        raise typer.Exit(1)
    return result.report


def _spread_eval(devices: str, params: dict):
    """`eval --devices`: one worker per device trains its share of the trainings into the shared cache; then the
    row is read from the cache. Returns the report and the workers that failed (evaluate/devices.py)."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mixerlab.evaluate.devices import Worker, parse_devices, run_workers, split_jobs
    from mixerlab.evaluate.runner import max_steps, plan_evaluation
    from mixerlab.train.checkpoint import CheckpointStore

    if params["no_cache"]:
        raise UserError("--devices needs the result cache (its workers write their trainings there); drop --no-cache")
    if params["device"] != "auto":
        raise UserError("give --device or --devices, not both")
    try:
        device_list = parse_devices(devices, torch.cuda.device_count())
    except ValueError as err:
        raise UserError(str(err)) from None
    kind = "cpu" if device_list[0] == "cpu" else "cuda"
    spec, prof, options, store = _prepare_eval(**{**params, "device": kind, "train": True})
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
    args = ["--mixer", params["mixer"], "--profile", params["profile"], "--seeds", str(params["seeds"]),
            "--cache", str(store.path), "--checkpoint-every", str(params["checkpoint_every"])]
    for flag, key in (("--tasks", "tasks"), ("--lr-schedule", "lr_schedule"), ("--max-group-tokens", "max_group_tokens"),
                      ("--max-group-members", "max_group_members"), ("--name", "name"), ("--time-limit", "time_limit"),
                      ("--init", "init"), ("--init-seed", "init_seed"), ("--patience", "patience")):
        if params[key] is not None:
            args += [flag, str(params[key])]
    args += ["--compile"] * params["compile_step"] + ["--library-solves"] * params["library_solves"]
    args += ["--trusted"] * params["trusted"]
    before = store.count(spec.code_hash)  # the workers' new rows are the progress: counted, not read
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as bar:
        task = bar.add_task(f"{spec.name} trainings on {len(workers)} devices", total=len(plan.todo))
        run_workers(args, workers, lambda: bar.update(task, completed=store.count(spec.code_hash) - before))
    failed = [worker for worker in workers if worker.returncode != 0]
    return _run_eval(**{**params, "device": kind, "train": False}), failed


def _prepare_eval(mixer, profile, tasks, seeds, device, json_out, cache, no_cache, lr_schedule, max_group_tokens,
                  name, time_limit, init, compile_step, checkpoint_every, max_seq_len, init_seed, max_group_members,
                  settings, library_solves, train, only_keys=None, patience=None, trusted=False):
    """Check every eval argument (UserError names the fix) and build what evaluate_mixer takes."""
    from mixerlab.config import get_profile
    from mixerlab.evaluate import EvalOptions, ResultCache
    from mixerlab.evaluate.plan import select_settings
    from mixerlab.mixers import MixerLoadError, preflight, resolve_mixer

    try:
        prof = get_profile(profile)
        task_list = parse_tasks(tasks)
        chosen = select_settings(prof, task_list, settings.split(",")) if settings else None
        spec = resolve_mixer(mixer)
        if name:
            spec = type(spec)(**{**spec.__dict__, "name": name})
        dev = resolve_device(device)
        if not mixer.endswith("_fla") and not _untrusted(mixer, trusted):  # an untrusted file runs only in the sandbox
            preflight(spec, prof.train.d_model)
        overrides = train_overrides(lr_schedule=lr_schedule, init=init, init_seed=init_seed)
        if patience is not None:
            overrides["patience"] = patience
        if compile_step and not dev.startswith("cuda"):
            raise UserError("--compile speeds up CUDA training only; drop it or pass --device cuda")
        if json_out is not None and not json_out.parent.exists():
            raise UserError(f"cannot write --json {str(json_out)!r}: folder {str(json_out.parent)!r} does not exist")
        store = None if no_cache else ResultCache(cache)
        keys = None
        if only_keys is not None:
            if not only_keys.is_file():
                raise UserError(f"--only-keys {str(only_keys)!r} is not a file; give a file of cache keys, one per line")
            keys = frozenset(only_keys.read_text().split())
    except (MixerLoadError, ValueError) as err:
        raise UserError(str(err)) from None
    options = EvalOptions(tasks=task_list, seeds=seeds, device=dev, max_group_tokens=max_group_tokens,
                          max_group_members=max_group_members, train_overrides=overrides, time_limit=time_limit,
                          compile_step=compile_step, checkpoint_every=checkpoint_every, max_seq_len=max_seq_len,
                          settings=chosen, library_solves=library_solves, train=train, only_keys=keys)
    return spec, prof, options, store


@app.command("check")
def check_command(
    candidate: str = typer.Argument(..., help="a candidate .py file (or a builtin mixer name)"),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON instead of a checklist"),
    budget: float = typer.Option(0.5, min=0.0, help="allowed relative parameter difference from the reference baseline"),
    timeout: float = typer.Option(SandboxLimits.timeout_s, min=1.0, help="seconds the sandboxed checks may take"),
    memory_gb: float = typer.Option(8.0, min=0.5, help="memory the sandbox may use"),
    profile: str = typer.Option("tiny", help="the profile the candidate will be trained on: causality, state and the "
                                "forward are checked at its batch size and lengths"),
    device: str = typer.Option("cpu", help="cpu | cuda: where the candidate will be trained (cuda: bf16 autocast)"),
) -> None:
    """Check a candidate mixer: contract, causality, sub-quadratic cost, numerics, novelty. Exit 0 pass, 1 fail."""
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
    limits = SandboxLimits(timeout_s=timeout, memory_gb=memory_gb, cuda_device=gpu,
                           gpu_memory_fraction=0.5 if gpu is not None else None)
    report = check_candidate(spec, budget=budget, limits=limits, check_novelty=candidate not in BUILTINS,
                             conditions=conditions)
    if json_out:
        typer.echo(report.model_dump_json(indent=2))
    else:
        marks = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "not run": "[dim]skip[/]"}
        console.print(f"[bold]{spec.name}[/] ({spec.code_hash})")
        for c in report.checks:
            console.print(f"  {marks[c.status]}  {CHECK_TITLES[c.name]:<48} [dim]{c.seconds:5.2f}s[/]", highlight=False)
            if c.status == "fail":
                console.print(f"        {c.reason}", highlight=False, soft_wrap=True)
        verdict = "[green]accepted[/]" if report.passed else "[bold red]rejected[/]"
        console.print(f"{verdict} in {report.seconds:.1f}s")
    raise typer.Exit(0 if report.passed else 1)


def _writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mixerlab-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"run directory {str(path)!r} is not writable ({err.strerror}); choose another --run-dir") from None


def _llm_preflight(settings) -> None:
    """Fail before the run starts if the endpoint cannot answer (nothing is recorded yet)."""
    import httpx

    from mixerlab.propose.llm import LLMClient, LLMError

    try:
        client = LLMClient(settings)
    except LLMError as err:
        raise UserError(str(err)) from None
    try:
        response = client.http.get("/models", timeout=10.0)
    except httpx.HTTPError as err:
        raise UserError(f"cannot reach the model endpoint {settings.base_url} ({type(err).__name__}); start the server "
                        "or fix --base-url") from None
    if response.status_code in (401, 403):
        raise UserError(f"{settings.base_url} refused the credentials (HTTP {response.status_code}); "
                        f"set a valid key in ${settings.api_key_env}")


@app.command("discover")
def discover_command(
    proposer: str = typer.Option("catalog", help="catalog (offline) | llm (any OpenAI-compatible endpoint)"),
    iterations: Optional[int] = typer.Option(None, min=0, help="candidates in the run (default 3 unless --budget-minutes)"),
    budget_minutes: Optional[float] = typer.Option(None, min=0.1, help="stop starting iterations after this long"),
    profile: Optional[str] = typer.Option(None, help="evaluation profile (default: tiny on CPU, quick on CUDA)"),
    seeds: int = typer.Option(1, min=1),
    patience: Optional[int] = typer.Option(None, min=1, max=999, help="stop each training once its test perplexity has not "
                                           "improved for this many epochs (as `eval --patience`; every evaluation "
                                           "of the run, promotions included; rows record the profile as "
                                           "PROFILE+patienceP)"),
    workers: int = typer.Option(1, min=1, help="candidates evaluated at once (one process each; GPUs round-robin)"),
    db: Optional[str] = typer.Option(None, help="database URL (default: sqlite in the run directory); postgresql://... works"),
    run_dir: Path = typer.Option(Path("runs") / "default", help="where the run keeps its database, cache and iteration files"),
    resume: bool = typer.Option(False, help="continue the run in --run-dir after an interruption"),
    device: str = typer.Option("auto", help="cpu | cuda | auto"),
    language: str = typer.Option("en", help="language of the Insights: en | zh"),
    max_repairs: int = typer.Option(3, min=0, help="repair attempts after a failed check"),
    promote_to: str = typer.Option("auto", help="profile for candidates that beat their parent: auto | none | full | ..."),
    base_url: str = typer.Option("http://127.0.0.1:8080/v1", help="OpenAI-compatible endpoint (llm proposer)"),
    model: str = typer.Option("default", help="model name at the endpoint (llm proposer)"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the API key"),
    llm_timeout: float = typer.Option(300.0, min=1.0, help="seconds to wait for one model reply"),
    max_tokens: int = typer.Option(4096, min=64, help="completion token limit per model call"),
    temperature: float = typer.Option(0.7, min=0.0, max=2.0, help="sampling temperature of the model (0: greedy)"),
    cache: Optional[Path] = typer.Option(None, help="result cache shared across runs (default: in the run directory)"),
    executor: str = typer.Option("local", help="local (processes here) | ray (a Ray cluster; pip install mixerlab[ray])"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster: auto | HOST:PORT (default: a private local cluster)"),
    gpus_per_task: float = typer.Option(1.0, min=0.0, help="Ray: GPUs per training task (fractions share a GPU)"),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads per training (default: cores / workers)"),
    llm_rate: Optional[float] = typer.Option(None, min=0.1, help="at most this many model calls per minute"),
    proposal_threads: int = typer.Option(1, min=1, help="proposals made at once (hides model latency on big clusters)"),
    proposals_ahead: Optional[int] = typer.Option(
        None, min=0, help="candidates proposed beyond those in evaluation (default: 0 for catalog, 1 for llm)"),
    compile_step: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile every training "
                                                "step on CUDA (default: on for every profile but tiny)"),
) -> None:
    """Run the research loop: baselines, then propose -> check -> evaluate -> record, iteration by iteration."""
    from mixerlab.config import PROFILES, LoopConfig
    from mixerlab.executor import make_executor
    from mixerlab.check import Conditions
    from mixerlab.config import get_profile
    from mixerlab.loop import ResearchLoop, RunExists, RunFailed
    from mixerlab.propose import CatalogProposer
    from mixerlab.propose.llm import LLMProposer, LLMSettings
    from mixerlab.sandbox import SandboxLimits
    from mixerlab.store import DatabaseError

    try:
        if proposer not in ("catalog", "llm"):
            raise UserError(f"unknown proposer {proposer!r}; use catalog or llm")
        if language not in ("en", "zh"):
            raise UserError(f"unknown language {language!r}; use en or zh")
        dev = resolve_device(device)
        prof = profile or ("quick" if dev.startswith("cuda") else "tiny")
        if prof not in PROFILES:
            raise UserError(f"unknown profile {prof!r}; use one of {', '.join(PROFILES)}")
        if promote_to not in ("auto", "none", *PROFILES):
            raise UserError(f"unknown --promote-to {promote_to!r}; use auto, none or a profile name")
        _writable_dir(run_dir)
        llm = {"base_url": base_url, "model": model, "api_key_env": api_key_env, "timeout_s": llm_timeout,
               "max_tokens": max_tokens, "temperature": temperature, "max_calls_per_minute": llm_rate, "require_key": not any(h in base_url for h in ("127.0.0.1", "localhost", "[::1]"))}
        config = LoopConfig(run_dir=str(run_dir), db_url=db, proposer=proposer, profile=prof, seeds=seeds,
                            patience=patience,
                            iterations=3 if iterations is None and budget_minutes is None else iterations,
                            budget_minutes=budget_minutes, workers=workers, device=dev, promote_to=promote_to,
                            max_repairs=max_repairs, language=language, llm=llm,
                            cache_path=str(cache) if cache else None, proposal_threads=proposal_threads,
                            proposals_ahead=proposals_ahead, compile=compile_step)
        if proposer == "llm":
            settings = LLMSettings(**llm)
            _llm_preflight(settings)
            chosen = LLMProposer(settings)
        else:
            chosen = CatalogProposer()
        import torch

        if executor not in ("local", "ray"):
            raise UserError(f"unknown executor {executor!r}; use local or ray")
        gpus = torch.cuda.device_count() if dev.startswith("cuda") else 0
        limits = SandboxLimits(timeout_s=config.check_timeout_s, memory_gb=config.check_memory_gb)
        try:
            runner = make_executor(executor, device=dev, gpus=gpus, check_limits=limits, workers=workers,
                                   workers_per_gpu=max(1, workers // max(1, gpus or 1)), address=ray_address,
                                   gpus_per_task=gpus_per_task, conditions=Conditions.for_profile(get_profile(prof), dev),
                                   **({"threads": threads} if threads else {}))
        except ImportError as err:
            raise UserError(str(err)) from None
        except ConnectionError as err:
            raise UserError(f"cannot connect to the Ray cluster at {ray_address!r} ({err}); start it or fix --ray-address") from None
        if threads and executor == "local":
            runner.cpu_threads = threads
        loop = ResearchLoop(config, chosen, runner, console)
        try:
            loop.run(resume=resume)
        except RunFailed as err:
            from rich.markup import escape

            _print_where(run_dir, config)
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
            raise typer.Exit(1) from None
        finally:
            runner.close()
    except (UserError, RunExists, DatabaseError, ValueError) as err:
        fail(str(err))
    _print_where(run_dir, config)


def _print_where(run_dir: Path, config) -> None:
    url = config.database_url
    console.print(f"\n[bold]results[/]: {url}  (iteration blocks in {run_dir / 'iterations'})", highlight=False)
    console.print(f"  history table:  mixerlab history --db {url}", highlight=False)
    console.print(f"  dashboard:      mixerlab serve --db {url}   then open http://127.0.0.1:8000", highlight=False)
    console.print(f"  report:         mixerlab report --db {url} --out {run_dir / 'report'}", highlight=False)


@app.command("history")
def history_command(
    db: Optional[str] = typer.Option(None, help="database URL"),
    run_dir: Optional[Path] = typer.Option(None, help="a run directory (its mixerlab.db)"),
    run: Optional[str] = typer.Option(None, help="run name (default: every run)"),
    fmt: str = typer.Option("table", "--format", help="table | csv | json | markdown"),
    out: Optional[Path] = typer.Option(None, help="write to this file instead of the terminal"),
) -> None:
    """Print the history table (the seeds' format) or export it."""
    import json as _json

    from mixerlab.store import DatabaseError, Store
    from mixerlab.table import accuracies_df, format_table, to_csv

    if fmt not in ("table", "csv", "json", "markdown"):
        fail(f"unknown format {fmt!r}; use table, csv, json or markdown")
    if db is None:
        if run_dir is None:
            fail("give --db URL or --run-dir DIR")
        path = run_dir / "mixerlab.db"
        if not path.is_file():
            fail(f"no database at {str(path)!r}; pass the --run-dir of a discover run or --db")
        db = f"sqlite:///{path.resolve()}"
    try:
        store = Store(db)
    except DatabaseError as err:
        fail(str(err))
    runs = store.runs()
    if run is not None:
        runs = [r for r in runs if r.name == run]
        if not runs:
            fail(f"no run {run!r} in {db}; runs there: {', '.join(r.name for r in store.runs()) or 'none'}")
    rows, records = {}, []
    for r in runs:
        for e in store.experiments(r.id):
            if e.status == "done" and e.scores:
                rows[e.name] = {t: s["mean"] for t, s in e.scores.items()}
            records.append({"run": r.name, "name": e.name, "kind": e.kind, "iteration": e.iteration, "status": e.status,
                            "success": e.success, "mean_score": e.mean_score, "scores": e.scores,
                            "failure_reason": e.failure_reason, "edits": e.edits})
    df = accuracies_df(rows)
    if fmt == "table":
        text = format_table(df)
    elif fmt == "csv":
        text = to_csv(df)
    elif fmt == "json":
        text = _json.dumps(records, indent=2)
    else:
        text = df.rename(columns={"Unnamed: 0": "architecture"}).to_markdown(index=False)
    if out:
        out.write_text(text + "\n")
        console.print(f"wrote {out}")
    else:
        typer.echo(text)


def _db_from(db: Optional[str], run_dir: Optional[Path]) -> str:
    if db:
        return db
    if run_dir is None:
        fail("give --db URL or --run-dir DIR")
    path = run_dir / "mixerlab.db"
    if not path.is_file():
        fail(f"no database at {str(path)!r}; pass the --run-dir of a discover run or --db")
    return f"sqlite:///{path.resolve()}"


def _existing_db(db: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(db)
    except Exception:  # noqa: BLE001
        fail(f"bad database URL {db!r}: use sqlite:///path/to/run.db or postgresql://user@host:port/db")
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        fail(f"no database at {url.database!r}; point --db at a discover run's mixerlab.db")


@app.command("serve")
def serve_command(
    db: Optional[str] = typer.Option(None, help="database URL of a run (sqlite:///... or postgresql://...)"),
    run_dir: Optional[Path] = typer.Option(None, help="or a run directory"),
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback requires a token"),
    port: int = typer.Option(8000, min=1, max=65535),
    token: Optional[str] = typer.Option(None, help="access token (generated when binding beyond loopback)"),
) -> None:
    """Serve the research dashboard (read-only): leaderboard, experiments, lineage, live view, compare."""
    import uvicorn

    from mixerlab.store import DatabaseError
    from mixerlab.web.app import create_app, default_token

    url = _db_from(db, run_dir)
    _existing_db(url)
    token = default_token(host, token)
    try:
        application = create_app(url, token)
    except DatabaseError as err:
        fail(str(err))
    shown = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    console.print(f"mixerlab dashboard on [bold]{shown}[/] (read-only; Ctrl-C to stop)", highlight=False)
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command("report")
def report_command(
    out: Path = typer.Option(..., help="folder for index.html and report.md"),
    db: Optional[str] = typer.Option(None, help="database URL"),
    run_dir: Optional[Path] = typer.Option(None, help="or a run directory"),
    run: Optional[str] = typer.Option(None, help="only this run"),
    top: int = typer.Option(5, min=1, help="experiments shown in full"),
) -> None:
    """Write a static, self-contained HTML report (and Markdown) that opens from disk."""
    from mixerlab.store import DatabaseError
    from mixerlab.web.report import write_report

    url = _db_from(db, run_dir)
    _existing_db(url)
    try:
        html, md = write_report(url, out, run, top)
    except DatabaseError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot write the report to {str(out)!r} ({err.strerror}); choose another --out")
    console.print(f"wrote {html} and {md}")


cache_app = typer.Typer(no_args_is_help=True, help="The result cache of finished trainings.")
app.add_typer(cache_app, name="cache")


def _open_cache(path: Optional[Path], must_exist: bool = False):
    """The cache at `path` (default location when None); readers pass must_exist, so that a mistyped path fails
    instead of silently creating an empty cache there (which a later import-if-missing step would then trust)."""
    from mixerlab.evaluate import ResultCache
    from mixerlab.evaluate.cache import default_cache_path

    path = path or default_cache_path()
    if must_exist and not path.is_file():
        fail(f"no cache at {str(path)!r}; pass --cache with the path of an existing cache "
             "(`mixerlab cache import FILE --cache PATH` creates one)")
    try:
        return ResultCache(path)
    except ValueError as err:
        fail(str(err))


@cache_app.command("info")
def cache_info(
    cache: Optional[Path] = typer.Option(None, help="cache file (default ~/.cache/mixerlab/results.sqlite)"),
    profile: Optional[str] = typer.Option(None, help="also show how far this profile's sweep has got, per mixer "
                                          "and task: tiny | quick | baseline | full"),
    seeds: int = typer.Option(1, min=1, help="seeds per training of that sweep (as `eval --seeds`)"),
    patience: Optional[int] = typer.Option(None, min=1, help="that sweep with `eval --patience` (its trainings are "
                                           "read off those without it)"),
    checkpoints: Optional[Path] = typer.Option(None, help="folder of unfinished trainings' checkpoints to list "
                                               "(default: the cache's own, `<cache>.checkpoints/`)"),
    mixer: Optional[list[str]] = typer.Option(None, help="only this mixer's sweep and checkpoints (repeatable): its "
                                              "name as listed, a built-in name or a code-hash prefix"),
) -> None:
    """Where the cache is and how many trainings it holds per mixer; with --profile, how far each sweep got
    and which trainings are under way in checkpoints (unfinished, with their score so far). A research loop's
    cache holds many candidates: --mixer narrows the tables to the ones you follow."""
    from mixerlab.config import get_profile

    if checkpoints is not None and not checkpoints.is_dir():
        fail(f"no folder {str(checkpoints)!r}; pass --checkpoints with a folder of checkpoints "
             "(e.g. what `mixerlab cache pack-checkpoints` wrote)")
    store = _open_cache(cache)
    try:
        prof = get_profile(profile) if profile else None
    except ValueError as err:
        fail(str(err))
    if patience is not None:
        if prof is None:
            fail("--patience describes a sweep: give --profile too (e.g. --profile full --patience 20)")
        prof = prof.model_copy(update={"train": prof.train.model_copy(update={"patience": patience})})
    typer.echo(f"{store.path}: {store.count()} trainings")
    mixers = store.mixers()
    for mixer_hash, name, count in mixers:
        typer.echo(f"  {name} ({mixer_hash}): {count}")
    chosen = _select_mixers(mixers, mixer) if mixer else None
    if prof is not None:
        _print_coverage(store, prof, seeds, chosen if chosen is not None else mixers)
    _print_unfinished(store, prof, seeds, mixers, checkpoints, chosen)


def _select_mixers(mixers: list[tuple[str, str, int]], wanted: list[str]) -> list[tuple[str, str, int]]:
    """The mixers named by `wanted`: the cache's by listed name or code-hash prefix, and built-ins by name (also
    before the cache holds any of their trainings: their checkpoints can be under way)."""
    from mixerlab.mixers import BUILTINS, builtin_spec

    chosen: dict[str, tuple[str, str, int]] = {}
    for want in wanted:
        found = [m for m in mixers if want == m[1] or (len(want) >= 4 and m[0].startswith(want))]
        if want in BUILTINS:
            spec = builtin_spec(want)
            found += [m for m in mixers if m[0] == spec.code_hash] or [(spec.code_hash, spec.name, 0)]
        if not found:
            listed = ", ".join(name for _, name, _ in mixers) or "none"
            fail(f"no mixer {want!r} in this cache (it holds: {listed}); pass --mixer with one of those names, "
                 f"a built-in name ({', '.join(BUILTINS)}) or a code-hash prefix of at least 4 characters")
        chosen.update((m[0], m) for m in found)
    return sorted(chosen.values(), key=lambda m: m[1])


def _finished_members(store, states: list[tuple[str, dict]]) -> set[str]:
    """Keys of checkpointed members that the cache has finished: a checkpoint taken before some of its members
    stopped early still holds them."""
    return set(store.get_many({key for _, state in states for key in state["keys"]}))


def _tokens(count: int) -> str:
    return f"{count / 1e9:.2f}G" if count >= 1e9 else f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count:,}"


def _print_coverage(store, prof, seeds: int, mixers: list[tuple[str, str, int]]) -> None:
    from rich.table import Table

    from mixerlab.evaluate.coverage import sweep_coverage

    shown = 0
    for mixer_hash, name, _ in mixers:
        for numerics, where in (("bf16", "GPU, bf16"), ("fp32", "CPU, fp32")):
            rows = sweep_coverage(store, prof, mixer_hash, seeds, numerics)
            if not any(r.done for r in rows):
                continue
            shown += 1
            patience = f", patience {prof.train.patience}" if prof.train.patience else ""
            table = Table(title=f"{name} ({mixer_hash}): `{prof.name}` sweep{patience}, {seeds} seed(s), {where}",
                          title_justify="left")
            for column in ("task", "trainings", "settings complete", "score so far", "can end in", "tokens left (at most)"):
                table.add_column(column, justify="left" if column == "task" else "right")
            for r in rows:
                score = "-" if r.score is None else f"{r.score:.4f}" + ("" if r.complete else " (partial)")
                low, high = r.score_range
                table.add_row(r.task, f"{r.done}/{r.planned}", f"{r.settings_complete}/{r.settings}", score,
                              "" if r.complete else f"{low:.4f}-{high:.4f}", _tokens(r.tokens_left))
            console.print(table)
    if not shown:
        console.print(f"no trainings of the `{prof.name}` profile ({seeds} seed(s)) in this cache yet")


def _print_unfinished(store, prof, seeds: int, mixers: list[tuple[str, str, int]], folder: Optional[Path],
                      chosen: Optional[list[tuple[str, str, int]]] = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mixerlab.evaluate.inflight import unfinished_trainings
    from mixerlab.mixers import BUILTINS, builtin_spec
    from mixerlab.train.checkpoint import CheckpointStore, without_members

    checkpoints = CheckpointStore(folder) if folder else CheckpointStore.beside(store.path)
    states = checkpoints.load_all()
    finished = _finished_members(store, states)  # not under way: resuming skips them
    states = without_members(states, finished)
    count = sum(len(state["keys"]) for _, state in states)
    if finished:
        typer.echo(f"{len(finished)} checkpointed trainings finished after their checkpoint was taken "
                   "(they are in the cache; resuming skips them)")
    if not count:
        if folder is not None:
            typer.echo(f"no unfinished trainings in {checkpoints.folder}")
        return
    if prof is None:
        typer.echo(f"{count} unfinished trainings checkpointed in {checkpoints.folder} (--profile names them)")
        return
    known = ({(h, name) for h, name, _ in chosen} if chosen is not None else
             {(h, name) for h, name, _ in mixers} | {(spec.code_hash, spec.name) for spec in map(builtin_spec, BUILTINS)})
    listed = unfinished_trainings(states, prof, sorted(known), seeds)
    if chosen is None:
        typer.echo(f"{count} unfinished trainings in {checkpoints.folder}:")
    else:
        listed = [u for u in listed if u.mixer is not None]
        names = ", ".join(name for _, name, _ in chosen)
        typer.echo(f"{len(listed)} of the {count} unfinished trainings in {checkpoints.folder} belong to {names}"
                   + (":" if listed else ""))
        if not listed:
            return
    table = Table()
    for column in ("mixer", "training", "epochs", "score so far", "at epoch"):
        table.add_column(column, justify="left" if column in ("mixer", "training") else "right")
    for u in listed:
        table.add_row(u.mixer or "?", escape(u.label) if u.label else f"not in the `{prof.name}` sweep (key {u.key})",
                      f"{u.epochs}/{u.max_epochs}", "-" if u.score is None else f"{u.score:.4f}",
                      "-" if u.best_epoch is None else str(u.best_epoch))
    console.print(table)


@cache_app.command("export")
def cache_export(
    out: Path = typer.Argument(..., help="JSON lines file (.jsonl or .jsonl.gz)"),
    mixer: Optional[str] = typer.Option(None, help="only this mixer (name or file)"),
    cache: Optional[Path] = typer.Option(None),
) -> None:
    """Write cached trainings to a file, to share them or carry them between machines."""
    from mixerlab.mixers import MixerLoadError, resolve_mixer

    store = _open_cache(cache, must_exist=True)
    try:
        mixer_hash = resolve_mixer(mixer).code_hash if mixer else None
    except MixerLoadError as err:
        fail(str(err))
    if not out.parent.exists():
        fail(f"folder {str(out.parent)!r} does not exist; create it or choose another path")
    typer.echo(f"exported {store.export_jsonl(out, mixer_hash)} trainings to {out}")


@cache_app.command("import")
def cache_import(
    file: Path = typer.Argument(..., help="JSON lines file written by `mixerlab cache export`, or another cache's .sqlite"),
    cache: Optional[Path] = typer.Option(None),
) -> None:
    """Add trainings from an exported file (e.g. benchmarks/results/cache/gpu_results.jsonl.gz) or another cache."""
    if not file.is_file():
        fail(f"{str(file)!r} does not exist; pass a file written by `mixerlab cache export` or a cache's .sqlite")
    store = _open_cache(cache)
    try:
        typer.echo(f"imported {store.import_file(file)} trainings into {store.path}")
    except (ValueError, OSError) as err:
        fail(str(err))


@cache_app.command("pack-checkpoints")
def cache_pack_checkpoints(
    out: Path = typer.Argument(..., help="folder for the packed checkpoints (created if missing)"),
    cache: Optional[Path] = typer.Option(None, help="the cache whose unfinished groups to pack"),
    max_file_bytes: int = typer.Option(16_000_000, min=1, help="largest file to write"),
    max_total_bytes: int = typer.Option(48_000_000, min=1, help="budget for all files together"),
) -> None:
    """Copy unfinished trainings' checkpoints into small files that travel (a lent GPU returns 16 MiB files).

    Put the files into another machine's `<cache>.checkpoints/` folder and `mixerlab eval` continues those
    trainings; the ones that did not fit the budget start over there."""
    from mixerlab.train.checkpoint import CheckpointStore, without_members

    results = _open_cache(cache, must_exist=True)
    store = CheckpointStore.beside(results.path)
    if out.exists() and not out.is_dir():
        fail(f"{str(out)!r} is a file; pass a folder for the packed checkpoints")
    states = store.load_all()
    finished = _finished_members(results, states)  # carrying them would take room from trainings that need it
    try:
        report = store.pack(out, max_file_bytes, max_total_bytes, without_members(states, finished))
    except OSError as err:
        fail(f"cannot write into {str(out)!r} ({err.strerror}); choose another folder")
    typer.echo(f"packed {report.carried} of {report.carried + report.left} unfinished trainings into "
               f"{len(report.files)} files ({report.bytes / 1e6:.1f} MB) in {out}"
               + (f"; {report.left} did not fit and start over" if report.left else "")
               + (f"; {len(finished)} finished after their checkpoint and are in the cache" if finished else ""))


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="log what happens")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        err_console.print("interrupted; finished trainings are in the cache and will not be repeated")
        sys.exit(130)


if __name__ == "__main__":
    main()
