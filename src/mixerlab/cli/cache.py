"""`mixerlab cache`: the result cache of finished trainings (info, export, import, pack-checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import UserError, app, console, fail, output_file, write_atomically


cache_app = typer.Typer(no_args_is_help=True, help="The result cache of finished trainings.")
app.add_typer(cache_app, name="cache")


def _open_cache(path: Optional[Path], must_exist: bool = False, read_only: bool = False):
    """The cache at `path` (default location when None); readers pass must_exist, so that a mistyped path fails
    instead of silently creating an empty cache there (which a later import-if-missing step would then trust),
    and read_only, so that they write nothing (not even a table into a file that is not a cache)."""
    from mixerlab.evaluate import ResultCache
    from mixerlab.evaluate.cache import default_cache_path

    path = path or default_cache_path()
    if must_exist and not path.is_file():
        fail(f"no cache at {str(path)!r}; pass --cache with the path of an existing cache "
             "(`mixerlab cache import FILE --cache PATH` creates one)")
    try:
        return ResultCache(path, read_only=read_only)
    except ValueError as err:
        fail(str(err))


@cache_app.command("info")
def cache_info(
    cache: Optional[Path] = typer.Option(None, help="cache file (default ~/.cache/mixerlab/results.sqlite)"),
    profile: Optional[str] = typer.Option(None, help="also show how far this profile's sweep has got, per mixer "
                                          "and task: smoke | tiny | quick | baseline | full"),
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
    store = _open_cache(cache, must_exist=True, read_only=True)  # info only reads: it creates and writes nothing
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

    store = _open_cache(cache, must_exist=True, read_only=True)
    try:
        mixer_hash = resolve_mixer(mixer).code_hash if mixer else None
    except MixerLoadError as err:
        fail(str(err))
    try:
        output_file(out, "the export file", [store.path])
    except UserError as err:
        fail(str(err))
    exported = []
    try:
        write_atomically(out, lambda temporary: exported.append(store.export_jsonl(temporary, mixer_hash,
                                                                                   gzipped=out.name.endswith(".gz"))))
        typer.echo(f"exported {exported[0]} trainings to {out}")
    except OSError as err:
        fail(f"cannot write {str(out)!r} ({err.strerror}); choose another path")


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
