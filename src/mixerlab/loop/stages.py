"""The loop's stages, as plain functions over a `LoopState`: propose, check and repair, inert, evaluate, judge and
promote, record. Each takes what the one before returned (a `Candidate`) and writes its own record update, so a
kill between two stages leaves the row visibly unfinished (`--resume` picks it up). tests/test_stages.py runs
each one against a real SQLite record and a fake executor, in milliseconds."""

from __future__ import annotations

import difflib
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from mixerlab.check import CheckReport, Conditions, novelty_hash
from mixerlab.check.dynamic import FINGERPRINT_TOLERANCE, same_behaviour
from mixerlab.config import LoopConfig, get_profile
from mixerlab.evaluate import ResultCache
from mixerlab.evaluate.aggregate import Scores, as_scores, recorded
from mixerlab.evaluate.plan import plan_jobs
from mixerlab.evaluate.prefix import find_finished
from mixerlab.evaluate.runner import EvalReport
from mixerlab.executor import EvaluationJob, Executor
from mixerlab.judge import Judgement, judge
from mixerlab.mixers.loading import MixerSpec
from mixerlab.noise import NoiseModel
from mixerlab.progress import LoopProgress
from mixerlab.propose import ExperimentView, ProposalContext, Proposer, ProposerError, TokenUse
from mixerlab.propose.base import unique_name
from mixerlab.propose.select import references
from mixerlab.store import Experiment, Store
from mixerlab.tasks import TASK_ORDER
from mixerlab.train.result import TrainResult

from .candidate import Best, Candidate, NoCandidate
from .output import block_path, curves, iteration_block, report_text, view


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d_%H%M%S")


def unified_diff(old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "parent.py", "candidate.py"))


@dataclass
class LoopState:
    """What every stage reads and writes: the run's record, its cache and configuration, the executor and proposer,
    the yardstick of its verdicts and the conditions its checks reproduce."""

    config: LoopConfig
    store: Store
    cache: ResultCache
    executor: Executor
    proposer: Proposer
    run_id: int
    run_dir: Path
    noise: NoiseModel | None  # the profile's measured seed noise (None: never measured)
    conditions: Conditions  # how the run's profile trains: what the checks must reproduce
    console: Console = field(default_factory=Console)
    best: Best = field(default_factory=Best)
    progress: LoopProgress | None = None
    print_lock: threading.Lock = field(default_factory=threading.Lock)
    propose_lock: threading.RLock = field(default_factory=threading.RLock)  # selection and naming, across threads

    @staticmethod
    def conditions_for_device(config: LoopConfig, profile: str) -> Conditions:
        """How a profile trains candidates on the run's device: what their checks must reproduce."""
        return Conditions.for_profile(get_profile(profile), "cuda" if config.device.startswith("cuda") else "cpu")

    def conditions_for(self, profile: str) -> Conditions:
        return self.conditions_for_device(self.config, profile)

    def history(self) -> list[ExperimentView]:
        rows = self.store.experiments(self.run_id)
        names = {e.id: e.name for e in rows}
        return [view(e, names) for e in rows]

    def event(self, stage: str, message: str = "", iteration: int = 0, experiment: str = "") -> None:
        self.store.log_event(self.run_id, stage, message, iteration, experiment)
        if self.progress is not None:
            where = f"iteration {iteration} · " if iteration else ""
            self.progress.stage(f"{where}{stage} {experiment}{self.best.describe()}".replace("  ", " "))

    def print_block(self, row: Experiment) -> None:
        """Print the iteration block and keep it under the run directory's iterations/."""
        done = [e for e in self.store.experiments(self.run_id) if e.status == "done" and e.scores and e.id < row.id]
        block = iteration_block(row, done, timestamp())
        with self.print_lock:
            self.console.print(block, highlight=False, markup=False, soft_wrap=True)
        block_path(self.run_dir, row).write_text(block)


# 1. propose ------------------------------------------------------------------------------------------------------

def propose(state: LoopState, iteration: int) -> Candidate | NoCandidate:
    """Select a parent, ask the proposer for a change and record it (status `checking`).

    Selection and naming are serialised across proposal threads; the proposer call itself runs concurrently only
    for proposers that are slow and stateless (a model endpoint), never for the catalog, whose instant choices must
    see each other."""
    with state.propose_lock:
        history = state.history()
        parent = state.proposer.choose_parent(history, state.config.ucb_c)
        if parent is None:
            state.event("stopped", "no eligible parent", iteration)
            return NoCandidate.STOP
        claimed = {(e.parent, e.edits[-1]) for e in history if e.parent and e.edits}
        context = ProposalContext(history=history, parent=parent, references=references(history, parent),
                                  iteration=iteration, language=state.config.language, noise=state.noise,
                                  taken_names={e.name for e in history}, claimed=claimed)
        state.event("proposing", f"parent {parent.name}", iteration)
        parent_row = next(e for e in state.store.experiments(state.run_id) if e.name == parent.name)
        if not state.proposer.concurrent:
            return _ask(state, iteration, parent_row, context)
    return _ask(state, iteration, parent_row, context)


def _ask(state: LoopState, iteration: int, parent_row: Experiment, context: ProposalContext) -> Candidate | NoCandidate:
    stamp, start = timestamp(), time.perf_counter()
    try:
        proposal = state.proposer.propose(context)
    except ProposerError as err:
        with state.propose_lock:
            name = unique_name(f"delta_net_4layer_no_proposal_{iteration}", {e.name for e in state.history()})
            row = state.store.add_experiment(
                run_id=state.run_id, name=name, kind="candidate", iteration=iteration, parent_id=parent_row.id,
                proposer=state.proposer.name, code="", code_hash="", novelty_hash="", status="failed", success=False,
                failure_reason=f"the proposer failed: {err}", profile=state.config.profile_label, timestamp=stamp,
                insights={}, timings={"propose_s": time.perf_counter() - start},
            )
        state.event("failed", str(err), iteration, name)
        state.print_block(row)
        return NoCandidate.FAILED
    with state.propose_lock:  # a concurrent proposal may have taken the name meanwhile
        name = unique_name(proposal.name, {e.name for e in state.history()})
        spec = MixerSpec(name=name, source=proposal.code, filename=f"{name}.py")
        row = state.store.add_experiment(
            run_id=state.run_id, name=name, kind="candidate", iteration=iteration, parent_id=parent_row.id,
            proposer=state.proposer.name, edits=proposal.edits, code=proposal.code, code_hash=spec.code_hash,
            novelty_hash=novelty_hash(proposal.code), diff=unified_diff(context.parent.code, proposal.code),
            insights=proposal.insights.model_dump(), expected=proposal.expected, status="checking",
            profile=state.config.profile_label, timestamp=stamp, tokens=proposal.tokens.model_dump(),
            timings={"propose_s": time.perf_counter() - start},
        )
    state.event("proposed", proposal.insights.reasoning.splitlines()[0][:200], iteration, name)
    return Candidate(row=row, parent=parent_row, proposal=proposal.model_copy(update={"name": name}), context=context)


# 2. check and repair -----------------------------------------------------------------------------------------------

def check_and_repair(state: LoopState, candidate: Candidate) -> Candidate | None:
    """Check in the sandbox, repairing up to `max_repairs` times with the exact report; every attempt is recorded.
    The candidate to evaluate, or None when it was recorded as failed or inert."""
    assert candidate.proposal is not None and candidate.context is not None, "only a fresh proposal is repaired"
    row, proposal, context = candidate.row, candidate.proposal, candidate.context
    tokens = proposal.tokens
    start = time.perf_counter()
    for number in range(state.config.max_repairs + 1):
        state.event("checking", f"attempt {number + 1}", row.iteration, row.name)
        spec = MixerSpec(name=row.name, source=proposal.code, filename=f"{row.name}.py")
        report = state.executor.check(spec, state.store.known_novelty(), 0, state.conditions)
        state.store.add_attempt(row.id, number=number, code=proposal.code, passed=report.passed, reason=report.summary(),
                                check_report=report.model_dump(mode="json"), tokens=proposal.tokens.model_dump())
        if report.passed:
            break
        if number == state.config.max_repairs:
            fail(state, row, f"checks failed after {number + 1} attempt(s): {report.summary()}", report,
                 timings={"check_s": time.perf_counter() - start}, tokens=tokens)
            return None
        state.event("repairing", report.summary()[:200], row.iteration, row.name)
        try:
            proposal = state.proposer.repair(context, proposal, report_text(report))
        except ProposerError as err:
            fail(state, row, f"checks failed ({report.summary()}); the repair failed: {err}", report,
                 timings={"check_s": time.perf_counter() - start}, tokens=tokens)
            return None
        tokens = tokens + proposal.tokens
        row = state.store.update_experiment(
            row.id, code=proposal.code, code_hash=MixerSpec(row.name, proposal.code).code_hash,
            novelty_hash=novelty_hash(proposal.code), diff=unified_diff(context.parent.code, proposal.code),
            edits=proposal.edits, tokens=tokens.model_dump(),
        )
    timings = {**(row.timings or {}), "check_s": time.perf_counter() - start}
    row = settle_inert(state, row, report, timings, {"tokens": tokens.model_dump()})
    if row is None:
        return None
    return Candidate(row=row, parent=state.store.experiment(row.parent_id) if row.parent_id else None,
                     proposal=proposal, context=context)


def recheck(state: LoopState, candidate: Candidate) -> Candidate | None:
    """A resumed candidate that was proposed or being checked: checked again as a new candidate is (the inert check,
    the check time); not repaired: the context its proposal was made in is gone, and a repair from another context
    is another proposal."""
    row = candidate.row
    start = time.perf_counter()
    report = state.executor.check(candidate.spec, state.store.known_novelty(), 0, state.conditions)
    number = len(state.store.attempts(row.id))
    state.store.add_attempt(row.id, number=number, code=row.code, passed=report.passed,
                            reason=report.summary(), check_report=report.model_dump(mode="json"))
    timings = {**(row.timings or {}), "check_s": time.perf_counter() - start}
    if not report.passed:
        fail(state, row, f"checks failed: {report.summary()}", report, timings=timings)
        return None
    row = settle_inert(state, row, report, timings, {})
    return Candidate(row=row, parent=candidate.parent) if row is not None else None


# 3. inert -------------------------------------------------------------------------------------------------------

def settle_inert(state: LoopState, row: Experiment, report: CheckReport, timings: dict, fields: dict) -> Experiment | None:
    """A candidate that passed its checks: recorded as inert (and not trained) if it behaves exactly as an earlier
    experiment, else marked for evaluation; the row to evaluate, or None."""
    if twin := behaves_like(state, report, row):
        name, change = twin
        state.store.update_experiment(row.id, status="inert", success=False, check_report=report.model_dump(mode="json"),
                                      fingerprint=report.fingerprint, timings=timings, **fields, failure_reason=(
            f"inert at {state.config.profile_label}: it behaves exactly as `{name}` (outputs and input gradients at the "
            f"profile's lengths, from the same initial weights, differ by {change:.1e} relative, within "
            f"{FINGERPRINT_TOLERANCE:g}); not trained, its {name} scores would repeat"))
        row = state.store.experiment(row.id)
        state.event("inert", f"behaves as {name}", row.iteration, row.name)
        state.print_block(row)
        return None
    return state.store.update_experiment(row.id, status="evaluating", check_report=report.model_dump(mode="json"),
                                         fingerprint=report.fingerprint, timings=timings, **fields)


def behaves_like(state: LoopState, report: CheckReport, row: Experiment) -> tuple[str, float] | None:
    """An earlier experiment of the run (its parent first) whose fingerprint this candidate's matches."""
    if not report.fingerprint:
        return None
    known = state.store.fingerprints(state.run_id, statuses=("done", "evaluating"))
    earlier = [e for e in state.store.experiments(state.run_id) if e.id != row.id and e.id in known]
    earlier.sort(key=lambda e: e.id != row.parent_id)
    for e in earlier:
        change = same_behaviour(report.fingerprint, known[e.id])
        if change is not None and change <= FINGERPRINT_TOLERANCE:
            return e.name, change
    return None


# 4. evaluate ------------------------------------------------------------------------------------------------------

@dataclass
class Evaluated:
    """A finished evaluation on one profile: its report and every training (those from the cache too)."""

    report: EvalReport
    trainings: list[TrainResult]

    @property
    def scores(self) -> Scores:
        return dict(self.report.tasks)  # a TaskScore is a Score (with how it was reached, which the record leaves out)


def run_profile(state: LoopState, candidate: Candidate, profile_name: str, slot: int) -> Evaluated | str:
    """Train the candidate on a profile through the executor; each finished training goes to the cache at once, and
    trainings the cache holds already are not trained again. The evaluation, or the error that ended it."""
    spec, row = candidate.spec, candidate.row
    profile = get_profile(profile_name)
    overrides = {"patience": state.config.patience} if state.config.patience else {}
    train = profile.train.model_copy(update=overrides)
    numerics = train.numerics(state.config.device)
    jobs = plan_jobs(profile, TASK_ORDER, state.config.seeds)
    known = list(find_finished(state.cache, jobs, spec.code_hash, train, numerics).values())
    job = EvaluationJob(profile=profile_name, tasks=[t.value for t in TASK_ORDER], seeds=state.config.seeds,
                        train_overrides=overrides, timeout_s=state.config.evaluation_timeout(profile_name), known=known,
                        compile_step=state.config.compiles(profile_name))

    def keep(result: TrainResult) -> None:
        state.cache.put(result, spec.code_hash, spec.name)

    progress = state.progress.evaluation(f"{row.name} ({profile_name})") if state.progress else None
    outcome = state.executor.evaluate(spec, job, keep, slot, progress)
    if not outcome.ok or outcome.report is None:
        return outcome.error or "the executor returned no report"
    return Evaluated(report=outcome.report, trainings=outcome.trainings + known)


def evaluate(state: LoopState, candidate: Candidate, slot: int) -> tuple[Evaluated, dict[str, float]] | None:
    """Evaluate on the run's profile: the evaluation and the row's timings, or None when it failed (recorded)."""
    row = candidate.row
    state.event("evaluating", f"profile {state.config.profile_label}", row.iteration, row.name)
    start = time.perf_counter()
    result = run_profile(state, candidate, state.config.profile, slot)
    timings = {**(row.timings or {}), "eval_s": time.perf_counter() - start}
    if isinstance(result, str):
        fail(state, row, f"evaluation failed: {result}", timings=timings)
        return None
    return result, timings


# 5. judge and promote -----------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """What the record learns from an evaluation: its scores, their mean, the judgement and, for a real improvement,
    its scores on the promotion profile."""

    scores: Scores
    mean: float
    judgement: Judgement
    promoted: dict[str, Any] | None = None
    promote_s: float | None = None


def judge_and_promote(state: LoopState, candidate: Candidate, evaluated: Evaluated, slot: int) -> Verdict:
    """Judge against the parent, the baselines and the candidate's own targets (judge.py), counting the profile's
    measured noise; a candidate better than its parent is then trained on the promotion profile."""
    row = candidate.row
    scores = evaluated.scores
    baselines = {e.name: as_scores(e.scores) for e in state.store.experiments(state.run_id)
                 if e.kind == "baseline" and e.scores}
    parent = as_scores(candidate.parent.scores) if candidate.parent is not None else None
    verdict = Verdict(scores=scores, mean=statistics.fmean(s.mean for s in scores.values()),
                      judgement=judge(scores, parent or None, baselines, row.expected or {}, state.noise))
    promotion = state.config.promotion_profile()
    if row.kind == "candidate" and promotion and verdict.judgement.improves:
        state.event("promoting", f"to {promotion}", row.iteration, row.name)
        start = time.perf_counter()
        verdict.promoted = promote(state, candidate, promotion, slot)
        verdict.promote_s = time.perf_counter() - start
    return verdict


def promote(state: LoopState, candidate: Candidate, promotion: str, slot: int) -> dict[str, Any]:
    """Train an improving candidate on the promotion profile, once it passes its checks under that profile's
    conditions (its lengths and batch: the run's checks saw only the run profile's). The record's `promoted`."""
    label = state.config.label(promotion)
    conditions = state.conditions_for(promotion)
    report = state.executor.check(candidate.spec, {}, slot, conditions)  # {}: it is recorded already; no novelty check
    if not report.passed:
        return {"profile": label, "error": f"not trained on {label}: it fails its checks under "
                                          f"{conditions.describe()}: {report.summary()}"}
    result = run_profile(state, candidate, promotion, slot)
    if isinstance(result, str):
        return {"profile": label, "error": result}
    return {"profile": label, "scores": recorded(result.scores)}


# 6. record ----------------------------------------------------------------------------------------------------------

def record(state: LoopState, candidate: Candidate, evaluated: Evaluated, verdict: Verdict, timings: dict[str, float]) -> Experiment:
    """Write the finished experiment (status `done`), keep the best score so far and print the iteration block."""
    fields: dict[str, Any] = {"status": "done", "success": True, "scores": recorded(verdict.scores),
                              "mean_score": verdict.mean, "judgement": verdict.judgement.recorded(),
                              "curves": curves(evaluated.trainings), "timings": timings}
    if verdict.promoted is not None:
        fields["promoted"] = verdict.promoted
        fields["timings"] = {**timings, "promote_s": verdict.promote_s}
    row = state.store.update_experiment(candidate.row.id, **fields)
    state.best.offer(row.name, row.mean_score)
    state.event("done", f"mean {verdict.mean:.4f}", row.iteration, row.name)
    if row.kind == "candidate":
        state.print_block(row)
    return row


def evaluate_and_record(state: LoopState, candidate: Candidate, slot: int) -> Experiment | None:
    """Stages 4 to 6 for one candidate: the finished row, or None when its evaluation failed (recorded)."""
    evaluated = evaluate(state, candidate, slot)
    if evaluated is None:
        return None
    result, timings = evaluated
    return record(state, candidate, result, judge_and_promote(state, candidate, result, slot), timings)


def fail(state: LoopState, row: Experiment, reason: str, report: CheckReport | None = None,
         timings: dict | None = None, tokens: TokenUse | None = None) -> None:
    """Record the experiment as failed, with the reason a reader (and the next proposal) needs."""
    fields: dict[str, Any] = {"status": "failed", "success": False, "failure_reason": reason}
    if report is not None:
        fields["check_report"] = report.model_dump(mode="json")
    if timings:
        fields["timings"] = {**(row.timings or {}), **timings}
    if tokens is not None:
        fields["tokens"] = tokens.model_dump()
    row = state.store.update_experiment(row.id, **fields)
    state.event("failed", reason[:300], row.iteration, row.name)
    state.print_block(row)
