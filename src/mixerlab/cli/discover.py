"""`mixerlab discover`: the research loop."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import UserError, app, console, err_console, fail, resolve_device, validated, writable_dir


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


# Options a resumed run keeps from its record: a different value would score its new candidates under other
# conditions than the rest of its table. CLI parameter -> LoopConfig field. Others (--iterations, --workers, the
# model endpoint, ...) may change on resume.
RECORDED = {"proposer": "proposer", "search_seed": "search_seed", "profile": "profile", "seeds": "seeds",
            "patience": "patience", "device": "device", "language": "language", "promote_to": "promote_to",
            "cache": "cache_path", "compile_step": "compile"}


def _claim_run_dir(run_dir: Path) -> bool:
    """Create the run folder if it is missing, atomically: True only for the process whose mkdir made it (two
    commands started on a new folder at once: one makes it, the other finds it)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
        return True
    except FileExistsError:
        return False


def _recorded_options(url: str, run_dir: Path) -> dict:
    """The options the run to resume was started with (its record's config), {} if it has none recorded."""
    from mixerlab.store import Store

    store = Store(url, read_only=True)
    try:
        runs = store.runs()
        run = next((r for r in runs if r.name == run_dir.resolve().name), runs[0] if len(runs) == 1 else None)
        return dict(run.config or {}) if run else {}
    finally:
        store.engine.dispose()


def _resumed_options(ctx: typer.Context, given: dict, recorded: dict) -> dict:
    """`given` with every recorded option taken from the record; an option given on the command line that
    differs from the record is a UserError naming both values."""
    chosen = dict(given)
    for param, field in RECORDED.items():
        if field not in recorded:
            continue
        was = recorded[field]
        source = ctx.get_parameter_source(param)  # typer's own click: compared by name
        if getattr(source, "name", "") == "COMMANDLINE" and given[param] != was \
                and not (param == "cache" and given[param] is not None and str(given[param]) == str(was)):
            flag = "--" + ("compile" if param == "compile_step" else param.replace("_", "-"))
            raise UserError(f"{flag} {given[param]!r} differs from the run's {was!r}: a resumed run keeps the options "
                            f"it was started with; drop {flag}, or start a new run with another --run-dir")
        chosen[param] = Path(was) if param == "cache" and was is not None else was
    return chosen


@app.command("discover")
def discover_command(
    ctx: typer.Context,
    proposer: str = typer.Option("catalog", help="catalog (offline, fixed edits) | search (offline, design-space "
                                 "search with a quality-diversity archive) | llm (any OpenAI-compatible endpoint)"),
    search_seed: int = typer.Option(0, min=0, help="random seed of the search proposer"),
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
    llm_format: str = typer.Option("code", help="llm proposer: code (the model writes the file) | choices (it picks "
                                   "design-space options by constrained JSON; for small local models)"),
    cards: int = typer.Option(4, min=0, max=20, help="llm proposer: knowledge cards put in the prompt"),
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
    from mixerlab.check import Conditions
    from mixerlab.config import PROFILES, LoopConfig, get_profile
    from mixerlab.executor import make_executor
    from mixerlab.loop import ResearchLoop, RunExists, RunFailed
    from mixerlab.propose import CatalogProposer
    from mixerlab.propose.llm import LLMProposer
    from mixerlab.sandbox import SandboxLimits
    from mixerlab.config import available_cpus
    from mixerlab.store import DatabaseError
    from mixerlab.store.lock import RunDirectoryInUse, RunLock

    if resume and db is None and not (run_dir / "mixerlab.db").is_file():
        fail(f"nothing to resume in {str(run_dir)!r}: it holds no mixerlab.db; drop --resume to start a "
             "run there, or give the --run-dir of the run to continue")
    loop, lock, created = None, None, False
    try:
        try:
            created = _claim_run_dir(run_dir)  # removed again only by this process, under its lock, if nothing ran
            lock = RunLock(run_dir).acquire()
        except OSError as err:
            raise UserError(f"run directory {str(run_dir)!r} is not writable ({err.strerror}); choose another "
                            "--run-dir") from None
        if resume:
            from mixerlab.config import sqlite_url

            recorded = _recorded_options(db or sqlite_url(run_dir / "mixerlab.db"), run_dir)
            here = dict(locals())
            given = {param: here[param] for param in RECORDED}
            taken = _resumed_options(ctx, given, recorded)
            proposer, search_seed, profile, seeds, patience = (taken[k] for k in ("proposer", "search_seed", "profile",
                                                                                  "seeds", "patience"))
            device, language, promote_to, cache, compile_step = (
                taken[k] for k in ("device", "language", "promote_to", "cache", "compile_step"))
        _check_url(base_url)
        if proposer not in ("catalog", "search", "llm"):
            raise UserError(f"unknown proposer {proposer!r}; use catalog, search or llm")
        if llm_format not in ("code", "choices"):
            raise UserError(f"unknown --llm-format {llm_format!r}; use code or choices")
        if language not in ("en", "zh"):
            raise UserError(f"unknown language {language!r}; use en or zh")
        dev = resolve_device(device)
        prof = profile or ("quick" if dev.startswith("cuda") else "tiny")
        if prof not in PROFILES:
            raise UserError(f"unknown profile {prof!r}; use one of {', '.join(PROFILES)}")
        if promote_to not in ("auto", "none", *PROFILES):
            raise UserError(f"unknown --promote-to {promote_to!r}; use auto, none or a profile name")
        gpus = _gpu_count() if dev.startswith("cuda") else 0
        most = 8 * gpus if gpus else available_cpus()
        if executor == "local" and workers > most:
            raise UserError(f"--workers {workers} is more than this machine runs at once ({most}: "
                            + (f"8 per GPU, {gpus} GPU(s))" if gpus else f"its {most} CPUs)")
                            + "; give fewer, or --executor ray for a cluster")
        writable_dir(run_dir)
        llm = {"base_url": base_url, "model": model, "api_key_env": api_key_env, "timeout_s": llm_timeout,
               "max_tokens": max_tokens, "temperature": temperature, "format": llm_format, "cards": cards, "max_calls_per_minute": llm_rate, "require_key": not any(h in base_url for h in ("127.0.0.1", "localhost", "[::1]"))}
        config = validated(LoopConfig, {"compile": "--compile", "db_url": "--db"}, run_dir=str(run_dir), db_url=db,
                           proposer=proposer, search_seed=search_seed, profile=prof, seeds=seeds, patience=patience,
                           iterations=3 if iterations is None and budget_minutes is None else iterations,
                           budget_minutes=budget_minutes, workers=workers, device=dev, promote_to=promote_to,
                           max_repairs=max_repairs, language=language, llm=llm,
                           cache_path=str(cache) if cache else None, proposal_threads=proposal_threads,
                           proposals_ahead=proposals_ahead, compile=compile_step)
        if proposer == "llm":
            settings = config.llm
            _llm_preflight(settings)
            chosen = LLMProposer(settings)
        elif proposer == "search":
            from mixerlab.propose.search import SearchProposer

            chosen = SearchProposer(seed=search_seed)
        else:
            chosen = CatalogProposer()
        if executor not in ("local", "ray"):
            raise UserError(f"unknown executor {executor!r}; use local or ray")
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
            with _stops_cleanly(loop, run_dir, db):
                loop.run(resume=resume, directory_locked=True)
        except RunFailed as err:
            from rich.markup import escape

            _print_where(run_dir, config)
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
            raise typer.Exit(1) from None
        finally:
            runner.close()
    except (UserError, RunExists, RunDirectoryInUse, DatabaseError, ValueError) as err:
        if created and lock is not None and (loop is None or loop.run_id is None):
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)  # made by this process, nothing recorded: leave no empty folder
        fail(str(err))
    finally:
        if lock is not None:
            lock.release()
    _print_where(run_dir, config)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _check_url(base_url: str) -> None:
    from urllib.parse import urlparse

    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"--base-url {base_url!r} is not an http(s) URL; give the endpoint, e.g. http://127.0.0.1:8080/v1")


class _stops_cleanly:
    """SIGTERM and SIGINT (Ctrl-C) during a run: mark the run stopped in its database, say how to resume, and end
    the process (its sandbox workers die with it). Finished experiments are recorded; unfinished ones are
    checked or evaluated again by --resume."""

    def __init__(self, loop, run_dir: Path, db: str | None = None) -> None:
        self.loop, self.run_dir, self.db = loop, run_dir, db

    def __enter__(self) -> "_stops_cleanly":
        import signal

        # SIGHUP: a closed terminal or a dropped SSH connection stops the run as SIGTERM does
        self.previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def stop(self, signum: int, _frame) -> None:
        import os
        import signal

        name = signal.Signals(signum).name
        try:
            self.loop.mark_stopped(f"stopped by {name}")
        finally:
            done = sum(1 for e in self.loop.store.experiments(self.loop.run_id) if e.status in ("done", "failed")) \
                if self.loop.run_id is not None else 0
            from rich.markup import escape

            err_console.print(f"\n[yellow]stopped by {name}: {done} experiments are recorded; continue with "
                              f"`{escape(resume_command(self.run_dir, self.db))}` (the run keeps its recorded options; "
                              "unfinished candidates are checked or evaluated again, finished trainings come from "
                              "the cache)[/]", highlight=False)
            os._exit(128 + signum)


def resume_command(run_dir: Path, db: str | None) -> str:
    """The command that continues a run, shell-quoted; complete, since a resumed run reads its options from its
    record (only where the record is, --db, is needed; without its password)."""
    import shlex

    from mixerlab.store.db import without_password

    words = ["mixerlab", "discover", "--run-dir", str(run_dir), "--resume"]
    if db:
        words += ["--db", without_password(db)]
    return shlex.join(words)


def _print_where(run_dir: Path, config) -> None:
    import shlex

    from rich.markup import escape

    from mixerlab.store.db import without_password

    url = without_password(config.database_url)
    console.print(f"\n[bold]results[/]: {escape(url)}  (iteration blocks in {escape(str(run_dir / 'iterations'))})",
                  highlight=False)
    quoted, report = shlex.quote(url), shlex.quote(str(run_dir / "report"))
    console.print(escape(f"  history table:  mixerlab history --db {quoted}"), highlight=False)
    console.print(escape(f"  dashboard:      mixerlab serve --db {quoted}   then open http://127.0.0.1:8000"), highlight=False)
    console.print(escape(f"  report:         mixerlab report --db {quoted} --out {report}"), highlight=False)
