"""The loop's stages one at a time, against a real SQLite record and a fake executor (the sandbox and the training
are tested elsewhere): each stage's record update, its failure path, and the pipeline that runs them. Milliseconds."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from mixerlab.check import Conditions
from mixerlab.check.report import CHECK_ORDER, CheckReport, CheckResult
from mixerlab.config import LoopConfig, get_profile
from mixerlab.evaluate import ResultCache
from mixerlab.evaluate.aggregate import TaskScore
from mixerlab.evaluate.runner import EvalReport
from mixerlab.executor import EvalOutcome
from mixerlab.insights import Insights
from mixerlab.loop import Best, Candidate, LoopState, Next, NoCandidate, Pipeline
from mixerlab.loop import stages
from mixerlab.mixers import template_source
from mixerlab.propose import BaseProposer, Proposal, ProposerError, TokenUse
from mixerlab.store import Store
from mixerlab.tasks import TASK_NAMES

BASE_CODE = template_source("delta_net")
TEXT = Insights(observations="o", code_issues="c", reasoning="because", expected="e", lessons="l")


def fingerprint_of(code: str) -> list[float]:
    digest = hashlib.sha256(code.encode()).digest()
    return [b / 255 for b in digest[:8]]


class FakeExecutor:
    """Checks pass unless the code contains BROKEN; the fingerprint follows the code (so a copy is inert); an
    evaluation returns the scores set for the candidate's name, or fails when none are."""

    def __init__(self, scores: dict[str, float] | None = None) -> None:
        self.scores = scores or {}
        self.checked: list[tuple[str, Conditions | None]] = []
        self.evaluated: list[str] = []
        self.prepared: list[tuple[str, int]] = []  # (profile, evaluations before it)

    def check(self, spec, known, slot, conditions=None) -> CheckReport:
        self.checked.append((spec.name, conditions))
        broken = "BROKEN" in spec.source
        checks = [CheckResult.fail("forward", "the output is NaN") if broken and name == "forward"
                  else CheckResult.ok(name, "fine") for name in CHECK_ORDER]
        return CheckReport(candidate=spec.name, code_hash=spec.code_hash, checks=checks,
                           fingerprint=None if broken else fingerprint_of(spec.source))

    def evaluate(self, spec, job, on_training, slot, progress=None) -> EvalOutcome:
        self.evaluated.append(spec.name)
        value = self.scores.get(spec.name, self.scores.get("*"))
        if value is None:
            return EvalOutcome(ok=False, error="the worker died")
        tasks = {t: TaskScore(task=t, mean=value, std=0.0, seeds=[value], settings=[]) for t in TASK_NAMES}
        report = EvalReport(mixer=spec.name, mixer_hash=spec.code_hash, profile=job.profile, device="cpu", seeds=1,
                            tasks=tasks, trainings=0, trained_now=0, from_cache=0, wall_seconds=0.0, optimizer_steps=0,
                            steps_per_second=0.0, lr_schedule="cosine")
        return EvalOutcome(ok=True, report=report)

    def prepare(self, profile: str) -> None:
        self.prepared.append((profile, len(self.evaluated)))

    def close(self) -> None:
        pass


class OneChange(BaseProposer):
    """Proposes `code` under `name`; repairs by dropping BROKEN; fails when told to."""

    def __init__(self, code: str = BASE_CODE + "\n# a change\n", name: str = "delta_net_4layer_change",
                 fail_with: str | None = None) -> None:
        self.code, self.change, self.fail_with = code, name, fail_with
        self.name = "fixed"
        self.repairs = 0

    def propose(self, context) -> Proposal:
        if self.fail_with:
            raise ProposerError(self.fail_with)
        return Proposal(name=self.change, code=self.code, insights=TEXT, expected={"compress": 0.9},
                        tokens=TokenUse(prompt=10, completion=5, calls=1))

    def repair(self, context, proposal, report) -> Proposal:
        self.repairs += 1
        assert "the output is NaN" in report  # the exact report reaches the repair
        return proposal.model_copy(update={"code": proposal.code.replace("BROKEN", "fixed"),
                                           "tokens": TokenUse(prompt=3, completion=2, calls=1)})


def make_state(tmp_path: Path, proposer=None, executor=None, **config) -> LoopState:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{tmp_path / 'record.db'}")
    run = store.create_run("r", {})
    (tmp_path / "iterations").mkdir(exist_ok=True)
    loop_config = LoopConfig(run_dir=str(tmp_path), **config)
    state = LoopState(config=loop_config, store=store, cache=ResultCache(tmp_path / "cache.sqlite"),
                      executor=executor or FakeExecutor(), proposer=proposer or OneChange(), run_id=run.id,
                      run_dir=tmp_path, noise=None, conditions=LoopState.conditions_for_device(loop_config, "tiny"),
                      console=Console(file=open(tmp_path / "out.txt", "w"), width=200))
    store.add_experiment(run_id=run.id, name="delta_net_4layer", kind="baseline", iteration=0, code=BASE_CODE,
                         code_hash="b", novelty_hash="b", status="done", success=True, mean_score=0.5,
                         scores={t: {"mean": 0.5, "std": 0.0, "seeds": [0.5]} for t in TASK_NAMES},
                         fingerprint=fingerprint_of(BASE_CODE))
    state.best.offer("delta_net_4layer", 0.5)
    return state


def proposed(state: LoopState, iteration: int = 1) -> Candidate:
    candidate = stages.propose(state, iteration)
    assert isinstance(candidate, Candidate)
    return candidate


def test_propose_records_the_candidate_with_its_parent_diff_and_insights(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    candidate = proposed(state)
    row = state.store.experiment(candidate.row.id)
    assert row.status == "checking" and row.parent_id == candidate.parent.id and candidate.parent.name == "delta_net_4layer"
    assert "+# a change" in row.diff and row.insights["reasoning"] == "because" and row.tokens["calls"] == 1
    assert row.expected == {"compress": 0.9} and row.timings["propose_s"] >= 0
    assert [e.stage for e in state.store.events(state.run_id)][:2] == ["proposed", "proposing"]  # newest first
    again = proposed(state, 2)  # the same name is taken: a unique one is given
    assert again.row.name == "delta_net_4layer_change_v2" and again.proposal.name == again.row.name


def test_a_failed_proposal_is_recorded_with_its_reason_and_no_parent_stops(tmp_path: Path) -> None:
    state = make_state(tmp_path, proposer=OneChange(fail_with="the model answered nothing"))
    assert stages.propose(state, 1) is NoCandidate.FAILED
    row = next(e for e in state.store.experiments(state.run_id) if e.kind == "candidate")
    assert row.status == "failed" and row.failure_reason == "the proposer failed: the model answered nothing"
    assert len(list((tmp_path / "iterations").glob("001_*.txt"))) == 1  # its block, printed and kept

    class NoParent(OneChange):
        def choose_parent(self, history, ucb_c):
            return None

    assert stages.propose(make_state(tmp_path / "b", proposer=NoParent()), 1) is NoCandidate.STOP


def test_check_and_repair_records_every_attempt_and_sums_the_tokens(tmp_path: Path) -> None:
    proposer = OneChange(code=BASE_CODE + "\n# BROKEN\n")
    state = make_state(tmp_path, proposer=proposer)
    checked = stages.check_and_repair(state, proposed(state))
    assert checked is not None and proposer.repairs == 1
    row = state.store.experiment(checked.row.id)
    assert row.status == "evaluating" and "# fixed" in row.code
    assert state.store.fingerprints(state.run_id)[row.id] == fingerprint_of(row.code)
    assert [a.passed for a in state.store.attempts(row.id)] == [False, True]
    assert row.tokens["prompt"] == 13 and row.timings["check_s"] >= 0 and checked.parent.name == "delta_net_4layer"
    assert state.executor.checked[0][1] is state.conditions  # checked under the run profile's conditions


def test_a_candidate_that_stays_broken_fails_after_its_repairs(tmp_path: Path) -> None:
    class NeverFixed(OneChange):
        def repair(self, context, proposal, report):
            self.repairs += 1
            return proposal

    proposer = NeverFixed(code=BASE_CODE + "\n# BROKEN\n")
    state = make_state(tmp_path, proposer=proposer, max_repairs=2)
    assert stages.check_and_repair(state, proposed(state)) is None
    row = next(e for e in state.store.experiments(state.run_id) if e.kind == "candidate")
    assert row.status == "failed" and row.failure_reason.startswith("checks failed after 3 attempt(s): check 'forward'")
    assert proposer.repairs == 2 and len(state.store.attempts(row.id)) == 3


def test_a_candidate_that_behaves_as_its_parent_is_inert_and_not_trained(tmp_path: Path) -> None:
    state = make_state(tmp_path, proposer=OneChange(code=BASE_CODE))  # same code: same fingerprint
    assert stages.check_and_repair(state, proposed(state)) is None
    row = next(e for e in state.store.experiments(state.run_id) if e.kind == "candidate")
    assert row.status == "inert" and row.success is False and "behaves exactly as `delta_net_4layer`" in row.failure_reason
    assert state.executor.evaluated == []


def test_evaluate_judge_and_record_write_the_result_and_keep_the_best(tmp_path: Path) -> None:
    state = make_state(tmp_path, executor=FakeExecutor({"delta_net_4layer_change": 0.7}))
    candidate = stages.check_and_repair(state, proposed(state))
    row = stages.evaluate_and_record(state, candidate, slot=0)
    assert row.status == "done" and row.success and row.mean_score == pytest.approx(0.7)
    assert row.scores["compress"] == {"mean": 0.7, "std": 0.0, "seeds": [0.7]}
    assert row.judgement["vs_parent"]["mean_delta"] == pytest.approx(0.2)
    assert row.judgement["vs_baselines"]["delta_net_4layer"]["tasks"]["memorize"]["delta"] == pytest.approx(0.2)
    assert row.judgement["expected"]["compress"]["met"] is False and "promoted" not in row.timings  # cpu: no promotion
    assert state.best.name == "delta_net_4layer_change" and state.best.mean == pytest.approx(0.7)
    assert "delta_net_4layer_change" in (tmp_path / "out.txt").read_text()  # the iteration block was printed


def test_a_failed_evaluation_is_recorded_with_its_error(tmp_path: Path) -> None:
    state = make_state(tmp_path)  # the fake has no scores for it: the worker "dies"
    candidate = stages.check_and_repair(state, proposed(state))
    assert stages.evaluate_and_record(state, candidate, slot=0) is None
    row = state.store.experiment(candidate.row.id)
    assert row.status == "failed" and row.failure_reason == "evaluation failed: the worker died"
    assert state.best.name == "delta_net_4layer"


def test_an_improvement_is_promoted_after_checks_under_the_promotion_profile(tmp_path: Path) -> None:
    state = make_state(tmp_path, executor=FakeExecutor({"delta_net_4layer_change": 0.9}), promote_to="quick",
                       seeds=3)
    state.noise = None
    candidate = stages.check_and_repair(state, proposed(state))
    evaluated, timings = stages.evaluate(state, candidate, slot=0)
    evaluated.report.tasks = {t: s.model_copy(update={"std": 0.01, "seeds": [0.89, 0.9, 0.91]})
                              for t, s in evaluated.report.tasks.items()}
    parent = candidate.parent
    state.store.update_experiment(parent.id, scores={t: {"mean": 0.5, "std": 0.01, "seeds": [0.49, 0.5, 0.51]}
                                                     for t in TASK_NAMES})
    candidate.parent = state.store.experiment(parent.id)
    verdict = stages.judge_and_promote(state, candidate, evaluated, slot=0)
    assert verdict.judgement.vs_parent.verdict == "better" and verdict.judgement.improves
    assert verdict.promoted["profile"] == "quick" and verdict.promoted["scores"]["compress"]["mean"] == pytest.approx(0.9)
    quick = Conditions.for_profile(get_profile("quick"), "cpu")
    assert state.executor.checked[-1][1] == quick and quick.batch_size != state.conditions.batch_size
    row = stages.record(state, candidate, evaluated, verdict, timings)
    assert row.promoted["profile"] == "quick" and row.timings["promote_s"] >= 0


def test_promotion_refuses_a_candidate_that_fails_its_checks_there(tmp_path: Path) -> None:
    class FailsAtQuick(FakeExecutor):
        def check(self, spec, known, slot, conditions=None):
            report = super().check(spec, known, slot, conditions)
            if conditions is not None and conditions.batch_size == 128:
                report.checks[3] = CheckResult.fail("forward", "a batch this large was never checked")
            return report

    state = make_state(tmp_path, executor=FailsAtQuick({"delta_net_4layer_change": 0.9}), promote_to="quick")
    candidate = stages.check_and_repair(state, proposed(state))
    promoted = stages.promote(state, candidate, "quick", slot=0)
    assert "not trained on quick" in promoted["error"] and "a batch this large was never checked" in promoted["error"]
    assert state.executor.evaluated == []


def test_the_best_so_far_keeps_the_first_of_equal_means() -> None:
    best = Best()
    assert best.describe() == ""
    for name, mean in [("a", 0.5), ("b", None), ("c", 0.6), ("d", 0.6), ("e", 0.55)]:
        best.offer(name, mean)
    assert (best.name, best.mean) == ("c", 0.6) and best.describe() == " · best c 0.6000"


def test_the_pipeline_evaluates_every_item_and_bounds_those_in_flight() -> None:
    items, lock = iter(range(12)), threading.Lock()
    in_flight, most, done = 0, 0, []

    def produce():
        nonlocal in_flight, most
        with lock:
            item = next(items, None)
            if item is None:
                return Next.DONE
            if item % 5 == 4:
                return Next.SKIP  # recorded as failed: its slot is free again
            in_flight += 1
            most = max(most, in_flight)
        return item

    def consume(item: int, slot: int) -> None:
        nonlocal in_flight
        time.sleep(0.002)
        with lock:
            in_flight -= 1
            done.append((item, slot))

    Pipeline(workers=2, producers=2, ahead=1).run(produce, consume)
    assert sorted(i for i, _ in done) == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]
    assert {s for _, s in done} <= {0, 1} and most <= 3  # workers + ahead


def test_an_error_in_a_stage_stops_every_thread_and_is_raised() -> None:
    produced = []

    def produce():
        produced.append(1)
        return len(produced)

    def consume(item: int, slot: int) -> None:
        if item == 3:
            raise RuntimeError("the store is gone")

    with pytest.raises(RuntimeError, match="the store is gone"):
        Pipeline(workers=2, producers=1, ahead=0).run(produce, consume)
    assert len(produced) < 10  # the producer stopped too


def test_proposal_threads_hand_out_each_iteration_once(tmp_path: Path) -> None:
    """The whole loop (baselines, pipeline, stages) with the real catalog proposer and the fake executor: two proposal
    threads and one proposal ahead hand out each iteration once and never claim one edit twice."""
    from mixerlab.loop import ResearchLoop
    from mixerlab.propose import CatalogProposer

    (tmp_path / "run").mkdir()
    config = LoopConfig(run_dir=str(tmp_path / "run"), profile="smoke", iterations=4, proposal_threads=2,
                        proposals_ahead=1, cache_path=str(tmp_path / "cache.sqlite"))
    executor = FakeExecutor({"*": 0.6})
    loop = ResearchLoop(config, CatalogProposer(), executor, Console(file=open(tmp_path / "out.txt", "w")))
    loop.run()
    rows = loop.store.experiments()
    candidates = [e for e in rows if e.kind == "candidate"]
    assert [e.status for e in rows if e.kind == "baseline"] == ["done", "done"]
    assert sorted(e.iteration for e in candidates) == [1, 2, 3, 4] and {e.status for e in candidates} == {"done"}
    assert len({e.name for e in candidates}) == 4 and len({(e.parent_id, tuple(e.edits)) for e in candidates}) == 4
    assert loop.store.runs()[0].status == "finished" and len(executor.evaluated) == 6
    assert executor.prepared == [("smoke", 0)]  # the run's spares start before the baselines train
