"""The catalog proposer (edits as code transformations, insights from data), parent selection, judging."""

from __future__ import annotations

import itertools
import re

import pytest

from mixerlab.check import check_candidate
from mixerlab.insights import Insights, parse_block, render_block, valid_name
from mixerlab.evaluate.aggregate import Scores, as_scores
from mixerlab.judge import compare, judge
from mixerlab.mixers import template_source
from mixerlab.mixers.loading import MixerSpec
from mixerlab.propose import EDITS, CatalogProposer, ExperimentView, ProposalContext
from mixerlab.propose.edits import EditNotApplicable, compatible
from mixerlab.sandbox import SandboxLimits
from mixerlab.propose.select import select_parent
from mixerlab.table import accuracies_df

TASKS = ["compress", "context_recall", "fuzzy_recall", "memorize", "noisy_recall", "selective_copy"]


def scores(values: list[float], std: float = 0.0, seeds: int = 1) -> Scores:
    return as_scores({t: {"mean": v, "std": std, "seeds": [v] * seeds} for t, v in zip(TASKS, values)})


def view(name: str, values: list[float] | None, parent: str | None = None, edits: list[str] | None = None,
         kind: str = "candidate", status: str = "done", code: str | None = None) -> ExperimentView:
    sc = scores(values) if values else {}
    return ExperimentView(name=name, kind=kind, parent=parent, edits=edits or [], status=status,
                          success=status == "done", scores=sc, mean_score=sum(values) / 6 if values else None,
                          code=code or template_source("delta_net"))


BASE = [view("delta_net_4layer", [0.49, 0.999, 0.19, 0.34, 0.999, 0.99], kind="baseline"),
        view("gated_delta_net_4layer", [0.41, 0.999, 0.30, 0.35, 0.999, 0.999], kind="baseline",
             code=template_source("gated_delta_net"))]


def test_catalog_has_at_least_12_edits_that_apply_and_compose() -> None:
    assert len(EDITS) >= 12 and len({e.name for e in EDITS}) == len(EDITS)
    source = template_source("delta_net")
    for edit in EDITS:
        code = edit.apply(source)
        compile(code, edit.name, "exec")
        assert valid_name(f"delta_net_4layer_{edit.name}")
    composed = 0
    for a, b in itertools.permutations(EDITS, 2):
        if compatible(b, [a.name]):
            compile(b.apply(a.apply(source)), f"{a.name}+{b.name}", "exec")
            composed += 1
        else:
            assert a.group == b.group or a.group in b.incompatible or b.group in a.incompatible
    assert composed > 100
    with pytest.raises(EditNotApplicable):
        EDITS[0].apply("class DeltaNet: pass\n")


# every edit alone, and two compositions (one case per test: the xdist workers share them out)
CHECKED_EDITS = [[e.name] for e in EDITS] + [["tanh_on_error", "rope_on_qk", "output_gate"],
                                             ["data_dependent_decay", "affine_free_layernorm_qk", "state_norm_clamp"]]


@pytest.mark.slow
@pytest.mark.parametrize("names", CHECKED_EDITS, ids="+".join)
def test_every_edit_and_some_compositions_pass_the_checker(names: list[str]) -> None:
    by_name = {e.name: e for e in EDITS}
    code = template_source("delta_net")
    for name in names:
        code = by_name[name].apply(code)
    report = check_candidate(MixerSpec(name="+".join(names), source=code), limits=SandboxLimits(timeout_s=300))
    assert report.passed, f"{names}: {report.summary()}"


def context(history, parent, language="en") -> ProposalContext:
    return ProposalContext(history=history, parent=parent, references=[], iteration=len(history), language=language,
                           taken_names={e.name for e in history},
                           claimed={(e.parent, e.edits[-1]) for e in history if e.parent and e.edits})


def test_catalog_insights_are_written_from_the_numbers() -> None:
    tanh = EDITS[0]
    child = view("delta_net_4layer_tanh_on_error", [0.55, 0.999, 0.21, 0.36, 0.999, 0.99], "delta_net_4layer",
                 ["tanh_on_error"], code=tanh.apply(template_source("delta_net")))
    history = BASE + [child]
    proposal = CatalogProposer().propose(context(history, child))
    text = proposal.insights.render()
    assert proposal.name.startswith("delta_net_4layer_") and valid_name(proposal.name)
    assert proposal.edits[0] == "tanh_on_error" and len(proposal.edits) == 2
    assert f"{child.mean_score:.4f}" in proposal.insights.observations  # the parent's actual mean
    assert f"mean {child.mean_score - BASE[0].mean_score:+.4f}" in proposal.insights.lessons  # tanh's measured change
    assert "Compress +0.060" in proposal.insights.lessons  # its best task, measured
    assert re.search(r"line \d+ `", proposal.insights.code_issues)  # quotes the parent's actual code line
    for task, target in proposal.expected.items():
        assert 0.0 <= target <= 1.0
    assert all(title in text for title in ("Key Observations", "Specific Code Issues", "Technical Reasoning",
                                           "Expected Improvements", "Lessons from Historical Attempts"))
    assert proposal.code != child.code and "torch.tanh" in proposal.code


def test_measured_effects_replace_priors() -> None:
    tanh = EDITS[0]
    child = view("delta_net_4layer_tanh_on_error", [0.59, 0.999, 0.19, 0.34, 0.999, 0.99], "delta_net_4layer",
                 ["tanh_on_error"], code=tanh.apply(template_source("delta_net")))
    other = view("delta_net_4layer_rope_on_qk", [0.49, 0.999, 0.19, 0.34, 0.999, 0.99], "delta_net_4layer", ["rope_on_qk"])
    ranked = CatalogProposer().ranked_edits(context(BASE + [child, other], BASE[0]))
    names = [edit.name for _, edit, _ in ranked]
    assert "tanh_on_error" not in names  # already tried on this parent
    ctx = context(BASE + [child, other], other)
    expected = {edit.name: exp for _, edit, exp in CatalogProposer().ranked_edits(ctx)}
    assert expected["tanh_on_error"]["compress"] == pytest.approx(0.10)  # measured: 0.59 - 0.49
    assert expected["output_gate"]["fuzzy_recall"] == pytest.approx(0.03)  # prior: never tried


def test_chinese_insights() -> None:
    proposal = CatalogProposer().propose(context(BASE, BASE[0], language="zh"))
    text = proposal.insights.render()
    assert re.search(r"[\u4e00-\u9fff]", proposal.insights.observations)
    assert f"{BASE[0].mean_score:.4f}" in proposal.insights.observations
    assert text.startswith("Key Observations from Experiment Results")  # titles stay as in the seeds


def test_selection_starts_at_the_baseline_and_explores() -> None:
    eligible = lambda e: e.name == "delta_net_4layer" or bool(e.edits)  # noqa: E731
    assert select_parent(BASE, eligible).name == "delta_net_4layer"
    good = view("delta_net_4layer_a", [0.6, 1, 0.3, 0.4, 1, 1], "delta_net_4layer", ["tanh_on_error"])
    children = [view(f"c{i}", [0.1] * 6, "delta_net_4layer_a", ["tanh_on_error", "rope_on_qk"], status="failed") for i in range(10)]
    assert select_parent(BASE + [good], eligible).name == "delta_net_4layer_a"
    # after many children of the best, the untried parent's exploration bonus wins
    assert select_parent(BASE + [good] + children, eligible, c=2.0).name == "delta_net_4layer"
    assert select_parent([view("x", None, status="failed")], eligible) is None


def test_judging_counts_the_measured_noise_and_says_when_there_is_none() -> None:
    from mixerlab.noise import NoiseModel

    noise = NoiseModel(source="test", task_std={t: 0.03 for t in TASKS}, mean_std=0.01)
    a, b = scores([0.50] * 6), scores([0.53] * 6)
    within = compare(b, a, noise)
    assert within.tasks["compress"].verdict == "within noise"  # 0.03 < 2 * sqrt(2) * 0.03
    assert within.verdict == "better"  # the mean over six tasks is less noisy: 0.03 > 2 * sqrt(2) * 0.01
    clear = compare(scores([0.60] * 6), a, noise)
    assert clear.tasks["compress"].verdict == "better"  # 0.10 > 0.085
    unknown = compare(b, a, None)  # one seed each and nothing measured: no figure is invented
    assert {v.verdict for v in unknown.tasks.values()} == {"noise unknown"} and unknown.verdict == "noise unknown"
    seeded_a, seeded_b = scores([0.50] * 6, std=0.01, seeds=3), scores([0.53] * 6, std=0.01, seeds=3)
    assert compare(seeded_b, seeded_a, None).tasks["compress"].verdict == "better"  # their own seeds' estimate
    result = judge(b, a, {"delta_net_4layer": a}, {"compress": 0.52, "memorize": 0.65}, noise)
    assert result.expected["compress"].met and not result.expected["memorize"].met
    assert result.noise == "test" and result.expected_met == 1 and result.improves  # the mean is beyond its noise
    assert "vs_parent" in result.recorded() and "vs_parent" not in judge(b, None, {}, {}, noise).recorded()


def test_the_committed_noise_of_tiny_is_read_by_the_judge() -> None:
    from mixerlab.noise import measurements, noise_for

    noise = noise_for("tiny", "fp32")
    assert noise is not None and set(noise.task_std) == set(TASKS) and noise.mean_std > 0
    assert measurements()["tiny/fp32"].seeds >= 3 and len(measurements()["tiny/fp32"].scores) == 2
    assert noise_for("quick", "bf16") is None or noise_for("quick", "bf16").task_std


def test_noise_measured_on_some_tasks_judges_those_tasks_only() -> None:
    """A costly profile is measured a task at a time (noise.py --tasks): the measured tasks get a yardstick, the
    others and the six-task mean stay 'noise unknown' rather than borrowing a figure."""
    from mixerlab.noise import Measurement, from_measurement

    measured = Measurement(profile="quick", numerics="bf16", hardware="H", command="c", date="d", seeds=3,
                           scores={"delta_net_4layer": {"memorize": [0.90, 0.92, 0.94]}})
    noise = from_measurement(measured)
    assert set(noise.task_std) == {"memorize"} and noise.mean_std is None and noise.mean_threshold() is None
    assert "unmeasured" in noise.describe()
    a, b = scores([0.50] * 6), scores([0.80] * 6)
    verdicts = compare(b, a, noise)
    assert verdicts.tasks["memorize"].verdict == "better"  # 0.30 > 2 * sqrt(2) * 0.02
    assert verdicts.tasks["compress"].verdict == "noise unknown" and verdicts.verdict == "noise unknown"


def test_iteration_block_round_trip() -> None:
    table = accuracies_df({"delta_net_4layer": {t: 0.5 for t in TASKS}, "delta_net_4layer_x_y": {t: 0.25 for t in TASKS}})
    insights = Insights(observations="• a\n• b", code_issues="1. c", reasoning="r", expected="• Compress: 0.5 -> 0.6", lessons="• l")
    block = render_block(table, "20250616_230248", insights, "delta_net_4layer_new_idea", True)
    parsed = parse_block(block)
    assert parsed.name == "delta_net_4layer_new_idea" and parsed.success and parsed.timestamp == "20250616_230248"
    assert parsed.insights == insights
    assert parsed.table.round(6).equals(table.round(6))


def test_an_edit_that_never_acts_at_the_profile_is_seen_before_training() -> None:
    """The fingerprint (check.dynamic.fingerprint): the norm clamp and the momentum act between chunks of 64 tokens,
    which `tiny`'s 32-token sequences never reach: inert there, with their parent's exact numbers; at `quick`'s
    lengths (and with weights grown as training grows them) they act. tanh on the error acts everywhere."""
    from mixerlab.check.dynamic import FINGERPRINT_TOLERANCE, Conditions, fingerprint, same_behaviour
    from mixerlab.config import get_profile
    from mixerlab.propose.edits import EDITS_BY_NAME

    base = template_source("delta_net")
    for profile, inert in (("tiny", {"state_norm_clamp", "momentum_on_update"}), ("quick", set())):
        conditions = Conditions.for_profile(get_profile(profile), "cpu")
        parent = fingerprint(MixerSpec("parent", base).load_class(), conditions)
        for name in ("state_norm_clamp", "momentum_on_update", "tanh_on_error"):
            child = fingerprint(MixerSpec(name, EDITS_BY_NAME[name].apply(base)).load_class(), conditions)
            change = same_behaviour(child, parent)
            assert (change <= FINGERPRINT_TOLERANCE) == (name in inert), (profile, name, change)
