"""A run of the loop from start to end: open (or resume) its record, evaluate the baselines, finish what a killed
run left unfinished, then feed the pipeline with the stages until the iterations or the budget are spent."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console

from mixerlab.check import novelty_hash
from mixerlab.check.dynamic import fingerprint
from mixerlab.config import LoopConfig, get_profile
from mixerlab.evaluate import ResultCache
from mixerlab.executor import Executor
from mixerlab.mixers import builtin_spec
from mixerlab.noise import noise_for
from mixerlab.progress import LoopProgress
from mixerlab.propose import Proposer
from mixerlab.store import Store
from mixerlab.store.db import without_password
from mixerlab.store.lock import RecordLock, RunLock
from mixerlab.store.repository import UNFINISHED

from . import stages
from .candidate import Candidate, NoCandidate
from .pipeline import Next, Pipeline
from .stages import LoopState, timestamp

BASELINES = ("delta_net", "gated_delta_net")


class RunExists(ValueError):
    pass


class RunFailed(RuntimeError):
    """Not one evaluation of the run succeeded: nothing was learned, and the message says why."""


class ResearchLoop:
    """One `discover` run. `run()` holds the run directory's and the record's locks for its whole length."""

    def __init__(self, config: LoopConfig, proposer: Proposer, executor: Executor, console: Console | None = None) -> None:
        self.config = config
        self.proposer = proposer
        self.executor = executor
        self.console = console or Console()
        self.run_dir = Path(config.run_dir)
        self.store = Store(config.database_url)
        self.cache = ResultCache(config.cache_path or self.run_dir / "cache.sqlite")
        self.run_id: int | None = None
        self.record_lock: RecordLock | None = None
        self.stop_at = time.monotonic() + config.budget_minutes * 60 if config.budget_minutes else None
        numerics = get_profile(config.profile).train.numerics(config.device)
        self.noise = noise_for(config.profile_label, numerics)  # the yardstick of every verdict (None: unmeasured)

    # the run's record ------------------------------------------------------------------------------------------

    @property
    def run_name(self) -> str:
        return self.run_dir.resolve().name

    def open_run(self, resume: bool) -> LoopState:
        """A new run is named after its folder; a resumed one is found in its database: by that name, or as the
        database's only run (a run directory that was moved or renamed keeps its identity)."""
        existing = self.store.find_run(self.run_name)
        runs = self.store.runs()
        if existing and not resume:
            raise RunExists(f"run {self.run_name!r} already exists in {self.config.database_url}; "
                            "add --resume to continue it, or choose another --run-dir")
        if not existing and resume:
            if len(runs) != 1:
                held = ", ".join(r.name for r in runs) if runs else "none"
                raise RunExists(f"no run {self.run_name!r} to resume in {self.config.database_url} (runs there: {held}); "
                                "drop --resume to start it, or give the --run-dir (or --db) of the run to continue")
            existing = runs[0]
        if existing:
            self._lock_record(existing.id)  # before any write: another process may hold this run by another folder
            self.run_id = existing.id
            self.store.set_run_status(existing.id, "running")
        else:
            recorded = self.config.model_copy(update={"db_url": without_password(self.config.db_url)}
                                              if self.config.db_url else {})
            created = self.store.create_run(self.run_name, recorded.model_dump(mode="json"))
            self._lock_record(created.id)
            self.run_id = created.id
        (self.run_dir / "iterations").mkdir(parents=True, exist_ok=True)
        state = LoopState(config=self.config, store=self.store, cache=self.cache, executor=self.executor,
                          proposer=self.proposer, run_id=self.run_id, run_dir=self.run_dir, noise=self.noise,
                          conditions=LoopState.conditions_for_device(self.config, self.config.profile),
                          console=self.console)
        for e in self.store.experiments(self.run_id):  # the best so far, kept from here on
            state.best.offer(e.name, e.mean_score)
        return state

    def _lock_record(self, run_id: int) -> None:
        self.record_lock = RecordLock(self.config.database_url, run_id, self.run_name, self.store.engine).acquire()

    def run(self, resume: bool = False, directory_locked: bool = False) -> None:
        """`directory_locked`: the caller holds the run directory's lock already (`discover` takes it as it
        creates the folder, so that nothing can come between)."""
        with nullcontext() if directory_locked else RunLock(self.run_dir):  # one process per run directory
            try:
                self._run(resume)
            finally:
                if self.record_lock is not None:
                    self.record_lock.release()
                    self.record_lock = None

    def _run(self, resume: bool) -> None:
        state = self.open_run(resume)
        with LoopProgress(Console(stderr=True, soft_wrap=True)) as progress:  # logs on stderr, blocks on stdout
            state.progress = progress
            try:
                self.executor.prepare(self.config.profile)  # a GPU's spare workers start as the baselines train
                self.ensure_baselines(state)
                self.resume_unfinished(state)
                self.pipeline(state)
                self.fail_if_nothing_worked()
                self.store.set_run_status(self.run_id, "finished")
            except RunFailed:
                self.store.set_run_status(self.run_id, "failed")
                raise
            except BaseException:
                self.store.set_run_status(self.run_id, "interrupted")
                raise
            finally:
                state.progress = None

    def mark_stopped(self, why: str) -> None:
        """The run was stopped from outside (SIGTERM, Ctrl-C): record it, so the dashboard stops showing it live."""
        if self.run_id is not None:
            self.store.set_run_status(self.run_id, "stopped")
            self.store.log_event(self.run_id, "stopped", why)

    def fail_if_nothing_worked(self) -> None:
        rows = self.store.experiments(self.run_id)
        if rows and not any(e.status == "done" for e in rows):
            failed = [e for e in rows if e.status == "failed"]
            first = failed[0] if failed else rows[0]
            raise RunFailed(f"every evaluation of the run failed ({len(failed)} of {len(rows)}); {first.name}: "
                            f"{(first.failure_reason or first.status).splitlines()[0][:500]}")

    # before the pipeline -------------------------------------------------------------------------------------------

    def ensure_baselines(self, state: LoopState) -> None:
        for name in BASELINES:
            spec = builtin_spec(name)
            row = next((e for e in self.store.experiments(self.run_id) if e.name == spec.name), None)
            fingerprints = self.store.fingerprints(self.run_id)
            if row is None:
                row = self.store.add_experiment(
                    run_id=self.run_id, name=spec.name, kind="baseline", iteration=0, proposer="baseline",
                    code=spec.source, code_hash=spec.code_hash, novelty_hash=novelty_hash(spec.source),
                    status="evaluating", profile=self.config.profile_label, timestamp=timestamp(),
                )
            if row.id not in fingerprints:  # trusted code: taken here, not in the sandbox
                row = self.store.update_experiment(row.id, fingerprint=fingerprint(spec.load_class(), state.conditions))
            if row.status != "done":
                stages.evaluate_and_record(state, Candidate(row=row), slot=0)

    def resume_unfinished(self, state: LoopState) -> None:
        for row in self.store.experiments(self.run_id, statuses=UNFINISHED):
            if row.kind != "candidate":
                continue
            state.event("resuming", f"was {row.status}", row.iteration, row.name)
            candidate: Candidate | None = Candidate(row=row, parent=self.store.experiment(row.parent_id) if row.parent_id else None)
            if row.status in ("proposed", "checking"):
                candidate = stages.recheck(state, candidate)
            if candidate is not None:
                stages.evaluate_and_record(state, candidate, slot=0)

    # the pipeline ------------------------------------------------------------------------------------------------

    def pipeline(self, state: LoopState) -> None:
        reserved: set[int] = set()  # iteration numbers handed out and not yet recorded
        claim_lock = threading.Lock()

        def produce() -> Candidate | Next:
            with claim_lock:  # iteration numbers are handed out once, across proposal threads
                iteration = self.claim_iteration(reserved)
                if iteration is None:
                    return Next.DONE
                reserved.add(iteration)
            proposed = stages.propose(state, iteration)
            if proposed is NoCandidate.STOP:
                return Next.DONE
            if proposed is NoCandidate.FAILED:
                return Next.SKIP
            checked = stages.check_and_repair(state, proposed)
            return checked if checked is not None else Next.SKIP

        def consume(candidate: Candidate, slot: int) -> None:
            stages.evaluate_and_record(state, candidate, slot)

        Pipeline(workers=self.config.workers, producers=self.config.proposal_threads,
                 ahead=self.config.lookahead).run(produce, consume)

    def claim_iteration(self, reserved: set[int] = frozenset()) -> int | None:
        """The next iteration number, counting recorded candidates and numbers handed out but not yet recorded."""
        if self.stop_at is not None and time.monotonic() > self.stop_at:
            return None
        recorded = {e.iteration for e in self.store.experiments(self.run_id) if e.kind == "candidate"}
        taken = recorded | set(reserved)
        if self.config.iterations is not None and len(taken) >= self.config.iterations:
            return None
        return max(taken, default=0) + 1
