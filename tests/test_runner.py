"""The evaluation runner: a sweep run in parts (--max-seq-len, --settings) and the order groups train in."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mixerlab.config import Profile, TrainConfig
from mixerlab.evaluate import EvalOptions, ResultCache, evaluate_mixer
from mixerlab.evaluate import runner
from mixerlab.evaluate.plan import plan_jobs, select_settings
from mixerlab.mixers import resolve_mixer
from mixerlab.tasks import Task, TaskSetting
from mixerlab.train.interrupts import answering_signals

SHORT = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=16, num_train=128, num_test=64)
LONG = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=48, num_train=128, num_test=64, change="seq_len")
TRAIN = TrainConfig(d_model=32, batch_size=32, max_epochs=2)
PROFILE = Profile(name="test", description="two lengths", train=TRAIN,
                  settings={Task.context_recall: (LONG, SHORT)}, lrs=(1e-3,), weight_decays=(0.0,),
                  preferred_device="cpu")
TASKS = (Task.context_recall,)


def test_a_sweep_in_parts_by_sequence_length_adds_up_to_the_whole(tmp_path: Path) -> None:
    spec = resolve_mixer("delta_net")
    profile = PROFILE
    whole = evaluate_mixer(spec, profile, EvalOptions(tasks=TASKS), ResultCache(tmp_path / "whole.sqlite"))

    cache = ResultCache(tmp_path / "parts.sqlite")
    first = evaluate_mixer(spec, profile, EvalOptions(tasks=TASKS, max_seq_len=32), cache)
    assert (first.trained_now, first.incomplete) == (1, 1), "only the 16-token setting trains; the row is partial"
    second = evaluate_mixer(spec, profile, EvalOptions(tasks=TASKS), cache)
    assert (second.from_cache, second.trained_now, second.incomplete) == (1, 1, 0)
    assert second.tasks["context_recall"].mean == whole.tasks["context_recall"].mean
    # the partial report says where the task can still end: the short setting fixed, the long one anywhere in 0-1
    short = first.tasks["context_recall"].mean
    left = first.unfinished["context_recall"]
    assert (left.done, left.planned) == (1, 2)
    assert left.score_range == pytest.approx((short / 2, (short + 1) / 2))
    assert left.score_range[0] <= whole.tasks["context_recall"].mean <= left.score_range[1]
    assert second.unfinished == {} and whole.unfinished == {}


def test_a_run_limited_to_chosen_settings_trains_only_those(tmp_path: Path) -> None:
    spec = resolve_mixer("delta_net")
    cache = ResultCache(tmp_path / "c.sqlite")
    long = LONG  # labelled context_recall[seq_len=48]
    profile = PROFILE
    chosen = select_settings(profile, TASKS, ["seq_len=48"])
    assert chosen == {"context_recall[seq_len=48]"}
    probe = evaluate_mixer(spec, profile, EvalOptions(tasks=TASKS, settings=chosen), cache)
    assert (probe.trained_now, probe.incomplete) == (1, 1)
    assert [s.setting for s in probe.tasks["context_recall"].settings] == [long.label]
    rest = evaluate_mixer(spec, profile, EvalOptions(tasks=TASKS), cache)
    assert (rest.from_cache, rest.trained_now, rest.incomplete) == (1, 1, 0)


def test_setting_names_pick_across_tasks_and_unknown_ones_list_the_choices() -> None:
    from mixerlab.config import get_profile

    full = get_profile("full")
    both = (Task.context_recall, Task.selective_copy)
    assert select_settings(full, both, ["vocab_size=128"]) == {"context_recall[vocab_size=128]",
                                                               "selective_copy[vocab_size=128]"}
    assert select_settings(full, both, ["selective_copy[baseline]", " seq_len=512"]) == {
        "selective_copy[baseline]", "context_recall[seq_len=512]", "selective_copy[seq_len=512]"}
    with pytest.raises(ValueError, match=r"unknown setting 'frac_noise=0.4'.*num_tokens_to_copy=96"):
        select_settings(full, both, ["frac_noise=0.4"])  # a Noisy Recall setting, not one of these tasks'


def test_cheapest_groups_train_first(tmp_path: Path, monkeypatch) -> None:
    """Under a time limit, the run should finish as many trainings as it can: short groups go first."""
    lengths: list[int] = []
    real = runner.train_group

    def spy(jobs, *args, **kwargs):
        lengths.append(jobs[0].setting.seq_len)
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(runner, "train_group", spy)
    evaluate_mixer(resolve_mixer("delta_net"), PROFILE, EvalOptions(tasks=TASKS), ResultCache(tmp_path / "c.sqlite"))
    assert lengths == [16, 48]
    jobs = plan_jobs(PROFILE, TASKS, 1)
    assert runner._group_cost([jobs[0]], TRAIN) > runner._group_cost([jobs[1]], TRAIN)  # LONG is planned first


def test_max_group_members_caps_every_group(tmp_path: Path, monkeypatch) -> None:
    """Small groups keep checkpoints small enough to carry off a machine that returns only small files."""
    sizes: list[int] = []
    real = runner.train_group

    def spy(jobs, *args, **kwargs):
        sizes.append(len(jobs))
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(runner, "train_group", spy)
    three = PROFILE.model_copy(update={"settings": {Task.context_recall: (SHORT,)}, "lrs": (1e-3, 2e-3, 3e-3)})
    spec = resolve_mixer("delta_net")
    evaluate_mixer(spec, three, EvalOptions(tasks=TASKS), ResultCache(tmp_path / "a.sqlite"))
    capped = evaluate_mixer(spec, three, EvalOptions(tasks=TASKS, max_group_members=2), ResultCache(tmp_path / "b.sqlite"))
    assert sizes[0] == 3 and sorted(sizes[1:]) == [1, 2] and capped.incomplete == 0


def test_a_stop_signal_ends_the_run_after_its_group_and_is_reported_only_if_work_is_left(tmp_path: Path) -> None:
    """SIGTERM during the first (short) group: the second never starts. After the last training: no stop."""
    spec = resolve_mixer("delta_net")

    def terminate(_) -> None:  # a real signal, delivered to this process once a training finishes
        os.kill(os.getpid(), signal.SIGTERM)

    with answering_signals():
        stopped = evaluate_mixer(spec, PROFILE, EvalOptions(tasks=TASKS), ResultCache(tmp_path / "a.sqlite"),
                                 on_result=terminate)
    assert (stopped.trained_now, stopped.incomplete, stopped.stopped_by) == (2, 1, "SIGTERM")
    assert stopped.tasks["context_recall"].settings[0].setting == SHORT.label, "the cheap group trained first"

    cache = ResultCache(tmp_path / "b.sqlite")
    evaluate_mixer(spec, PROFILE, EvalOptions(tasks=TASKS, max_seq_len=32), cache)
    with answering_signals():
        finished = evaluate_mixer(spec, PROFILE, EvalOptions(tasks=TASKS), cache, on_result=terminate)
    assert (finished.trained_now, finished.incomplete, finished.stopped_by) == (1, 0, None)


@pytest.mark.parametrize("library_solves, expected", [(False, None), (True, False)])
def test_library_solves_reach_every_group_trainer(tmp_path: Path, monkeypatch, library_solves: bool, expected) -> None:
    """`--library-solves` keeps torch.linalg.solve_triangular in every group; by default the trainer decides
    (the kernel where it runs: CUDA)."""
    seen = []
    real = runner.train_group

    def spy(*args, **kwargs):
        seen.append(kwargs["fast_solves"])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_group", spy)
    report = evaluate_mixer(resolve_mixer("delta_net"), PROFILE, EvalOptions(tasks=TASKS, library_solves=library_solves),
                            ResultCache(tmp_path / "c.sqlite"))
    assert report.trained_now == 2 and seen and set(seen) == {expected}


def test_small_vocabularies_share_a_group_large_ones_pad_at_most_fourfold() -> None:
    """quick's selective copy (vocabularies 16-128 at one length) trains as one group; memorize (256-8192) as two."""
    from mixerlab.config import get_profile
    from mixerlab.evaluate.plan import group_jobs

    quick = get_profile("quick")
    vocabs = lambda groups: [sorted({j.setting.vocab_size for j in g}) for g in groups]  # noqa: E731
    copy = group_jobs(plan_jobs(quick, (Task.selective_copy,), 1), lambda job: 512)
    assert vocabs(copy) == [[16, 32, 64, 128]] and len(copy[0]) == 22
    memorize = group_jobs(plan_jobs(quick, (Task.memorize,), 1), lambda job: 512)
    assert vocabs(memorize) == [[256, 512, 1024], [2048, 4096, 8192]]
    assert len(group_jobs(plan_jobs(quick, Task.__members__.values(), 1), lambda job: 512)) == 13  # was 18
