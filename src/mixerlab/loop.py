"""The research loop (`mixerlab discover`).

A run first evaluates both baselines; then each iteration selects a parent (select.py), asks the proposer
for a named change with its Insights document, checks the code in the sandbox (repairing up to
`max_repairs` times with the exact report), evaluates it on the run's profile (sandboxed; every finished
training goes to the result cache at once), judges it against its parent, the baselines and its own
targets (judge.py), promotes real improvements to the `full` protocol, records everything and prints the
iteration block in the seeds' shape.

Pipeline: proposal threads select, propose, check and repair, and put checked candidates on a queue;
`--workers` evaluation threads take them off and train them through the executor. At most `workers +
proposals_ahead` candidates are proposed and not yet finished: with a slow language model a proposal is
made while the GPUs train (they do not wait for it), and with the instant catalog proposer every proposal
waits for, and learns from, every result before it (a proposal made ahead cannot see the runs in flight).

Durability: every state change is one committed row update, so a kill at any moment (kill -9 included)
leaves each experiment either finished or visibly unfinished (proposed / checking / evaluating).
`--resume` re-checks or re-evaluates the unfinished ones (finished trainings come from the cache) and
continues the iteration count from the database, so nothing is lost or done twice.
"""

from __future__ import annotations

import difflib
import queue
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from mixerlab.check import CHECK_TITLES, CheckReport, Conditions, novelty_hash
from mixerlab.check.dynamic import FINGERPRINT_TOLERANCE, fingerprint, same_behaviour
from mixerlab.config import LoopConfig, get_profile
from mixerlab.evaluate import ResultCache
from mixerlab.evaluate.plan import plan_jobs
from mixerlab.evaluate.prefix import find_finished
from mixerlab.evaluate.runner import EvalReport
from mixerlab.executor import EvaluationJob, Executor
from mixerlab.insights import Insights, render_block
from mixerlab.judge import improves, judge
from mixerlab.mixers import builtin_spec
from mixerlab.mixers.loading import MixerSpec
from mixerlab.noise import noise_for
from mixerlab.progress import LoopProgress
from mixerlab.propose import ExperimentView, Proposal, ProposalContext, Proposer, ProposerError, TokenUse
from mixerlab.propose.base import unique_name
from mixerlab.propose.select import references
from mixerlab.store import Experiment, Store
from mixerlab.store.db import without_password
from mixerlab.store.lock import RecordLock, RunLock
from mixerlab.store.repository import UNFINISHED
from mixerlab.table import accuracies_df
from mixerlab.tasks import TASK_NAMES, TASK_ORDER
from mixerlab.train.result import TrainResult

BASELINES = ("delta_net", "gated_delta_net")


class RunExists(ValueError):
    pass


class RunFailed(RuntimeError):
    """Not one evaluation of the run succeeded: nothing was learned, and the message says why."""


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d_%H%M%S")


def view(e: Experiment, names: dict[int, str]) -> ExperimentView:
    return ExperimentView(name=e.name, kind=e.kind, parent=names.get(e.parent_id) if e.parent_id else None,
                          edits=list(e.edits or []), status=e.status, success=e.success, scores=e.scores or {},
                          mean_score=e.mean_score, failure_reason=e.failure_reason, expected=e.expected or {}, code=e.code)


def report_text(report: CheckReport) -> str:
    lines = [report.summary(), ""]
    for c in report.checks:
        lines.append(f"[{c.status}] {CHECK_TITLES[c.name]}: {c.reason}")
    return "\n".join(lines)


def curves(trainings: list[TrainResult]) -> dict[str, Any]:
    """Per task, the learning curve of its first setting's best training (seed 0)."""
    out: dict[str, Any] = {}
    for task in TASK_NAMES:
        runs = [t for t in trainings if t.task == task and t.seed == 0]
        if not runs:
            continue
        first = sorted({t.setting for t in runs})[0]
        best = max((t for t in runs if t.setting == first), key=lambda t: t.score)
        out[task] = {"setting": first, "lr": best.lr, "weight_decay": best.weight_decay,
                     "test_acc": [h.test_acc for h in best.history], "train_loss": [h.train_loss for h in best.history]}
    return out


class ResearchLoop:
    def __init__(self, config: LoopConfig, proposer: Proposer, executor: Executor, console: Console | None = None) -> None:
        self.config = config
        self.proposer = proposer
        self.executor = executor
        self.console = console or Console()
        self.run_dir = Path(config.run_dir)
        self.store = Store(config.database_url)
        self.cache = ResultCache(config.cache_path or self.run_dir / "cache.sqlite")
        self.print_lock = threading.Lock()
        self.propose_lock = threading.RLock()
        self.run_id: int | None = None
        self.record_lock: RecordLock | None = None
        self.stop_at = time.monotonic() + config.budget_minutes * 60 if config.budget_minutes else None
        self.progress: LoopProgress | None = None
        numerics = get_profile(config.profile).train.numerics(config.device)
        self.noise = noise_for(config.profile_label, numerics)  # the yardstick of every verdict (None: unmeasured)
        # how candidates will be trained: their fingerprints are taken at these widths and lengths
        self.conditions = self.conditions_for(config.profile)

    def conditions_for(self, profile: str) -> Conditions:
        """How a profile trains candidates on this run's device: what their checks must reproduce."""
        return Conditions.for_profile(get_profile(profile), "cuda" if self.config.device.startswith("cuda") else "cpu")

    # the run ------------------------------------------------------------------------------------

    @property
    def run_name(self) -> str:
        return self.run_dir.resolve().name

    def open_run(self, resume: bool) -> None:
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

    def _lock_record(self, run_id: int) -> None:
        self.record_lock = RecordLock(self.config.database_url, run_id, self.run_name, self.store.engine).acquire()

    def history(self) -> list[ExperimentView]:
        rows = self.store.experiments(self.run_id)
        names = {e.id: e.name for e in rows}
        return [view(e, names) for e in rows]

    def event(self, stage: str, message: str = "", iteration: int = 0, experiment: str = "") -> None:
        self.store.log_event(self.run_id, stage, message, iteration, experiment)
        if self.progress is not None:
            best = max((e for e in self.history() if e.mean_score is not None), key=lambda e: e.mean_score, default=None)
            suffix = f" · best {best.name} {best.mean_score:.4f}" if best else ""
            where = f"iteration {iteration} · " if iteration else ""
            self.progress.stage(f"{where}{stage} {experiment}{suffix}".replace("  ", " "))

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
        self.open_run(resume)
        with LoopProgress(Console(stderr=True, soft_wrap=True)) as progress:  # logs on stderr, blocks on stdout
            self.progress = progress
            try:
                self.ensure_baselines()
                self.resume_unfinished()
                self.pipeline()
                self.fail_if_nothing_worked()
                self.store.set_run_status(self.run_id, "finished")
            except RunFailed:
                self.store.set_run_status(self.run_id, "failed")
                raise
            except BaseException:
                self.store.set_run_status(self.run_id, "interrupted")
                raise
            finally:
                self.progress = None

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

    def pipeline(self) -> None:
        workers = max(1, self.config.workers)
        ready: queue.Queue = queue.Queue(maxsize=workers)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        claim_lock = threading.Lock()
        producers = max(1, self.config.proposal_threads)
        closed = threading.Semaphore(0)
        in_flight = threading.Semaphore(workers + self.config.lookahead)  # proposed and not yet evaluated

        def take_slot() -> bool:
            while not stop.is_set():
                if in_flight.acquire(timeout=0.5):
                    return True
            return False

        def producer() -> None:
            try:
                while take_slot():
                    queued = False
                    try:
                        with claim_lock:  # iteration numbers are handed out once, across proposal threads
                            iteration = self.claim_iteration(reserved=self._reserved)
                            if iteration is None:
                                return
                            self._reserved.add(iteration)
                        proposed = self.propose(iteration)
                        if proposed == "stop":
                            return
                        if proposed is None:
                            continue
                        checked = self.check_with_repairs(*proposed)
                        if checked is not None:
                            if not put(checked):
                                return
                            queued = True  # its evaluation frees the slot
                    finally:
                        if not queued:
                            in_flight.release()
            finally:
                closed.release()

        def close_queue() -> None:  # once every proposal thread is done, tell every evaluation worker
            for _ in range(producers):
                closed.acquire()
            for _ in range(workers):
                put(None)

        def consumer(slot: int) -> None:
            try:
                while (item := ready.get()) is not None:
                    row, parent = item
                    try:
                        self.evaluate(row, MixerSpec(name=row.name, source=row.code, filename=f"{row.name}.py"), parent, slot)
                    finally:
                        in_flight.release()
            except BaseException:
                stop.set()
                raise

        self._reserved: set[int] = set()
        with ThreadPoolExecutor(workers + producers + 1) as pool:
            futures = ([pool.submit(producer) for _ in range(producers)] + [pool.submit(close_queue)]
                       + [pool.submit(consumer, slot) for slot in range(workers)])
            errors = []
            for future in futures:
                try:
                    future.result()
                except BaseException as err:  # noqa: BLE001 - re-raised below, after every thread stopped
                    stop.set()
                    errors.append(err)
            if errors:
                raise errors[0]

    def claim_iteration(self, reserved: set[int] = frozenset()) -> int | None:
        """The next iteration number, counting recorded candidates and numbers handed out but not yet recorded."""
        if self.stop_at is not None and time.monotonic() > self.stop_at:
            return None
        recorded = {e.iteration for e in self.store.experiments(self.run_id) if e.kind == "candidate"}
        taken = recorded | set(reserved)
        if self.config.iterations is not None and len(taken) >= self.config.iterations:
            return None
        return max(taken, default=0) + 1

    # baselines and resuming ----------------------------------------------------------------------

    def ensure_baselines(self) -> None:
        for name in BASELINES:
            spec = builtin_spec(name)
            row = next((e for e in self.store.experiments(self.run_id) if e.name == spec.name), None)
            if row is None:
                row = self.store.add_experiment(
                    run_id=self.run_id, name=spec.name, kind="baseline", iteration=0, proposer="baseline",
                    code=spec.source, code_hash=spec.code_hash, novelty_hash=novelty_hash(spec.source),
                    status="evaluating", profile=self.config.profile_label, timestamp=timestamp(),
                )
            if not (row.check_report or {}).get("fingerprint"):  # trusted code: taken here, not in the sandbox
                row = self.store.update_experiment(row.id, check_report={
                    "fingerprint": fingerprint(spec.load_class(), self.conditions)})
            if row.status != "done":
                self.evaluate(row, spec, parent=None, slot=0)

    def resume_unfinished(self) -> None:
        for row in self.store.experiments(self.run_id, statuses=UNFINISHED):
            if row.kind != "candidate":
                continue
            self.event("resuming", f"was {row.status}", row.iteration, row.name)
            spec = MixerSpec(name=row.name, source=row.code, filename=f"{row.name}.py")
            parent = self.store.experiment(row.parent_id) if row.parent_id else None
            if row.status in ("proposed", "checking"):
                # checked again as a new candidate is (the inert check, the check time); not repaired: the context
                # its proposal was made in is gone, and a repair from another context is another proposal
                start = time.perf_counter()
                report = self.executor.check(spec, self.store.known_novelty(), 0, self.conditions)
                number = len(self.store.attempts(row.id))
                self.store.add_attempt(row.id, number=number, code=row.code, passed=report.passed,
                                       reason=report.summary(), check_report=report.model_dump(mode="json"))
                timings = {**(row.timings or {}), "check_s": time.perf_counter() - start}
                if not report.passed:
                    self.fail(row, f"checks failed: {report.summary()}", report, timings=timings)
                    continue
                row = self.after_checks(row, report, timings, {})
                if row is None:
                    continue
            self.evaluate(row, spec, parent=parent, slot=0)

    # one iteration -------------------------------------------------------------------------------

    def propose(self, iteration: int):
        """(row, proposal, context) for a new candidate; None if the proposer failed (recorded); "stop" if no parent.

        Selection and recording are serialised across proposal threads; the proposer call itself runs
        concurrently only for proposers that are slow and stateless (a model endpoint), never for the catalog,
        whose instant choices must see each other."""
        concurrent = self.proposer.concurrent
        with self.propose_lock:
            history = self.history()
            parent = self.proposer.choose_parent(history, self.config.ucb_c)
            if parent is None:
                self.event("stopped", "no eligible parent", iteration)
                return "stop"
            claimed = {(e.parent, e.edits[-1]) for e in history if e.parent and e.edits}
            context = ProposalContext(history=history, parent=parent, references=references(history, parent),
                                      iteration=iteration, language=self.config.language, noise=self.noise,
                                      taken_names={e.name for e in history}, claimed=claimed)
            self.event("proposing", f"parent {parent.name}", iteration)
            parent_row = next(e for e in self.store.experiments(self.run_id) if e.name == parent.name)
            if not concurrent:
                return self._record_proposal(iteration, parent, parent_row, context)
        return self._record_proposal(iteration, parent, parent_row, context)

    def _record_proposal(self, iteration: int, parent: ExperimentView, parent_row: Experiment, context: ProposalContext):
        stamp, start = timestamp(), time.perf_counter()
        try:
            proposal = self.proposer.propose(context)
        except ProposerError as err:
            with self.propose_lock:
                name = unique_name(f"delta_net_4layer_no_proposal_{iteration}", {e.name for e in self.history()})
                row = self.store.add_experiment(
                    run_id=self.run_id, name=name, kind="candidate", iteration=iteration, parent_id=parent_row.id,
                    proposer=self.proposer.name, code="", code_hash="", novelty_hash="", status="failed", success=False,
                    failure_reason=f"the proposer failed: {err}", profile=self.config.profile_label, timestamp=stamp,
                    insights={}, timings={"propose_s": time.perf_counter() - start},
                )
            self.event("failed", str(err), iteration, name)
            self.print_block(row)
            return None
        with self.propose_lock:  # a concurrent proposal may have taken the name meanwhile
            name = unique_name(proposal.name, {e.name for e in self.history()})
            spec = MixerSpec(name=name, source=proposal.code, filename=f"{name}.py")
            row = self.store.add_experiment(
                run_id=self.run_id, name=name, kind="candidate", iteration=iteration, parent_id=parent_row.id,
                proposer=self.proposer.name, edits=proposal.edits, code=proposal.code, code_hash=spec.code_hash,
                novelty_hash=novelty_hash(proposal.code), diff=self.diff(parent.code, proposal.code),
                insights=proposal.insights.model_dump(), expected=proposal.expected, status="checking",
                profile=self.config.profile_label, timestamp=stamp, tokens=proposal.tokens.model_dump(),
                timings={"propose_s": time.perf_counter() - start},
            )
        self.event("proposed", proposal.insights.reasoning.splitlines()[0][:200], iteration, name)
        return row, proposal.model_copy(update={"name": name}), context

    @staticmethod
    def diff(old: str, new: str) -> str:
        return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "parent.py", "candidate.py"))

    def check_with_repairs(self, row: Experiment, proposal: Proposal, context: ProposalContext):
        """Check, repairing up to max_repairs times; (row, parent row) when it passed, None when recorded as failed."""
        slot = 0
        tokens = proposal.tokens
        start = time.perf_counter()
        for number in range(self.config.max_repairs + 1):
            self.event("checking", f"attempt {number + 1}", row.iteration, row.name)
            spec = MixerSpec(name=row.name, source=proposal.code, filename=f"{row.name}.py")
            report = self.executor.check(spec, self.store.known_novelty(), slot, self.conditions)
            self.store.add_attempt(row.id, number=number, code=proposal.code, passed=report.passed, reason=report.summary(),
                                   check_report=report.model_dump(mode="json"), tokens=proposal.tokens.model_dump())
            if report.passed:
                break
            if number == self.config.max_repairs:
                self.fail(row, f"checks failed after {number + 1} attempt(s): {report.summary()}", report,
                          timings={"check_s": time.perf_counter() - start}, tokens=tokens)
                return None
            self.event("repairing", report.summary()[:200], row.iteration, row.name)
            try:
                proposal = self.proposer.repair(context, proposal, report_text(report))
            except ProposerError as err:
                self.fail(row, f"checks failed ({report.summary()}); the repair failed: {err}", report,
                          timings={"check_s": time.perf_counter() - start}, tokens=tokens)
                return None
            tokens = tokens + proposal.tokens
            parent = context.parent
            row = self.store.update_experiment(
                row.id, code=proposal.code, code_hash=MixerSpec(row.name, proposal.code).code_hash,
                novelty_hash=novelty_hash(proposal.code), diff=self.diff(parent.code, proposal.code),
                edits=proposal.edits, tokens=tokens.model_dump(),
            )
        timings = {**(row.timings or {}), "check_s": time.perf_counter() - start}
        row = self.after_checks(row, report, timings, {"tokens": tokens.model_dump()})
        return (row, self.store.experiment(row.parent_id)) if row is not None else None

    def after_checks(self, row: Experiment, report: CheckReport, timings: dict, fields: dict) -> Experiment | None:
        """A candidate that passed its checks: recorded as inert (and not trained) if it behaves exactly as an
        earlier experiment, else marked for evaluation; the row to evaluate, or None."""
        if twin := self.behaves_like(report, row):
            name, change = twin
            self.store.update_experiment(row.id, status="inert", success=False, check_report=report.model_dump(mode="json"),
                                         timings=timings, **fields, failure_reason=(
                f"inert at {self.config.profile_label}: it behaves exactly as `{name}` (outputs and input gradients at the "
                f"profile's lengths, from the same initial weights, differ by {change:.1e} relative, within "
                f"{FINGERPRINT_TOLERANCE:g}); not trained, its {name} scores would repeat"))
            row = self.store.experiment(row.id)
            self.event("inert", f"behaves as {name}", row.iteration, row.name)
            self.print_block(row)
            return None
        return self.store.update_experiment(row.id, status="evaluating", check_report=report.model_dump(mode="json"),
                                            timings=timings, **fields)

    def behaves_like(self, report: CheckReport, row: Experiment) -> tuple[str, float] | None:
        """An earlier experiment of the run (its parent first) whose fingerprint this candidate's matches."""
        if not report.fingerprint:
            return None
        earlier = [e for e in self.store.experiments(self.run_id) if e.id != row.id and e.status in ("done", "evaluating")
                   and (e.check_report or {}).get("fingerprint")]
        earlier.sort(key=lambda e: e.id != row.parent_id)
        for e in earlier:
            change = same_behaviour(report.fingerprint, e.check_report["fingerprint"])
            if change is not None and change <= FINGERPRINT_TOLERANCE:
                return e.name, change
        return None

    def fail(self, row: Experiment, reason: str, report: CheckReport | None = None, timings: dict | None = None,
             tokens: TokenUse | None = None) -> None:
        fields: dict[str, Any] = {"status": "failed", "success": False, "failure_reason": reason}
        if report is not None:
            fields["check_report"] = report.model_dump(mode="json")
        if timings:
            fields["timings"] = {**(row.timings or {}), **timings}
        if tokens is not None:
            fields["tokens"] = tokens.model_dump()
        row = self.store.update_experiment(row.id, **fields)
        self.event("failed", reason[:300], row.iteration, row.name)
        self.print_block(row)

    # evaluation ------------------------------------------------------------------------------------

    def scores_of(self, report: EvalReport) -> dict[str, dict]:
        """The record's scores column: per task, the mean, std and per-seed scores (the settings stay in the cache)."""
        return {task: {"mean": s.mean, "std": s.std, "seeds": s.seeds} for task, s in report.tasks.items()}

    def run_profile(self, row: Experiment, spec: MixerSpec, profile_name: str, slot: int) -> tuple[EvalReport | None, list, str]:
        profile = get_profile(profile_name)
        overrides = {"patience": self.config.patience} if self.config.patience else {}
        train = profile.train.model_copy(update=overrides)
        numerics = train.numerics(self.config.device)
        jobs = plan_jobs(profile, TASK_ORDER, self.config.seeds)
        known = list(find_finished(self.cache, jobs, spec.code_hash, train, numerics).values())
        job = EvaluationJob(profile=profile_name, tasks=[t.value for t in TASK_ORDER], seeds=self.config.seeds,
                            train_overrides=overrides, timeout_s=self.config.evaluation_timeout(profile_name), known=known,
                            compile_step=self.config.compiles(profile_name))

        def record(result: TrainResult) -> None:
            self.cache.put(result, spec.code_hash, spec.name)

        progress = self.progress.evaluation(f"{row.name} ({profile_name})") if self.progress else None
        outcome = self.executor.evaluate(spec, job, record, slot, progress)
        if not outcome.ok:
            return None, outcome.trainings, outcome.error
        return outcome.report, outcome.trainings + known, ""

    def promote(self, row: Experiment, spec: MixerSpec, promotion: str, slot: int) -> dict[str, Any]:
        """Train an improving candidate on the promotion profile, once it passes its checks under that profile's
        conditions (its lengths and batch: the run's checks saw only the run profile's). The record's `promoted`."""
        label = self.config.label(promotion)
        conditions = self.conditions_for(promotion)
        report = self.executor.check(spec, {}, slot, conditions)  # {}: it is recorded already; no novelty check
        if not report.passed:
            return {"profile": label, "error": f"not trained on {label}: it fails its checks under "
                                              f"{conditions.describe()}: {report.summary()}"}
        promoted, _, error = self.run_profile(row, spec, promotion, slot)
        return {"profile": label, "scores": self.scores_of(promoted)} if promoted else {"profile": label, "error": error}

    def evaluate(self, row: Experiment, spec: MixerSpec, parent: Experiment | None, slot: int) -> None:
        self.event("evaluating", f"profile {self.config.profile_label}", row.iteration, row.name)
        start = time.perf_counter()
        report, trainings, error = self.run_profile(row, spec, self.config.profile, slot)
        timings = {**(row.timings or {}), "eval_s": time.perf_counter() - start}
        if report is None:
            self.fail(row, f"evaluation failed: {error}", timings=timings)
            return
        scores = self.scores_of(report)
        mean = statistics.fmean(s["mean"] for s in scores.values())
        baselines = {e.name: e.scores for e in self.store.experiments(self.run_id) if e.kind == "baseline" and e.scores}
        judgement = judge(scores, parent.scores if parent else None, baselines, row.expected or {}, self.noise)
        fields: dict[str, Any] = {"status": "done", "success": True, "scores": scores, "mean_score": mean,
                                  "judgement": judgement, "curves": curves(trainings), "timings": timings}
        promotion = self.config.promotion_profile()
        if row.kind == "candidate" and promotion and improves(judgement):
            self.event("promoting", f"to {promotion}", row.iteration, row.name)
            t0 = time.perf_counter()
            fields["promoted"] = self.promote(row, spec, promotion, slot)
            fields["timings"] = {**timings, "promote_s": time.perf_counter() - t0}
        row = self.store.update_experiment(row.id, **fields)
        self.event("done", f"mean {mean:.4f}", row.iteration, row.name)
        if row.kind == "candidate":
            self.print_block(row)

    # output -----------------------------------------------------------------------------------------

    def table_before(self, row: Experiment):
        done = [e for e in self.store.experiments(self.run_id) if e.status == "done" and e.scores and e.id < row.id]
        return accuracies_df({e.name: {t: s["mean"] for t, s in e.scores.items()} for e in done})

    def print_block(self, row: Experiment) -> None:
        insights = Insights(**row.insights) if row.insights else Insights(
            observations="(no proposal)", code_issues="(no proposal)", reasoning=row.failure_reason or "(no proposal)",
            expected="(no proposal)", lessons="(no proposal)")
        block = render_block(self.table_before(row), row.timestamp or timestamp(), insights, row.name, bool(row.success))
        with self.print_lock:
            self.console.print(block, highlight=False, markup=False, soft_wrap=True)
        (self.run_dir / "iterations" / f"{row.iteration:03d}_{(row.code_hash or 'none')[:16]}.txt").write_text(block)
