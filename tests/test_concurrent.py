"""Groups training at once in one process (evaluate/concurrent.py): the same results as one at a time, and a
failing group stops the others and names its error."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from mixerlab.config import get_profile
from mixerlab.evaluate.concurrent import run_groups
from mixerlab.evaluate.runner import EvalOptions, evaluate_mixer
from mixerlab.mixers import builtin_spec


def test_every_group_trains_once_and_several_at_a_time() -> None:
    running, most, seen = 0, 0, []
    lock = threading.Lock()

    def train_one(group: int, halt: threading.Event) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            seen.append(group)
        time.sleep(0.05)
        with lock:
            running -= 1

    run_groups(list(range(7)), train_one, concurrency=3, device="cpu")
    assert sorted(seen) == list(range(7)) and most == 3
    seen.clear()
    run_groups(list(range(4)), train_one, concurrency=1, device="cpu")
    assert seen == [0, 1, 2, 3]


def test_a_failing_group_halts_the_others_and_its_error_is_raised() -> None:
    halted, started = [], []

    def train_one(group: int, halt: threading.Event) -> None:
        started.append(group)
        if group == 1:
            raise RuntimeError("group 1 broke")
        halted.append(halt.wait(timeout=5))  # a trainer stops at its next sync point once halt is set

    with pytest.raises(RuntimeError, match="group 1 broke"):
        run_groups(list(range(6)), train_one, concurrency=2, device="cpu")
    assert halted and all(halted)  # the group beside it was told to stop
    assert len(started) < 6  # groups not started when it failed never start


@pytest.mark.slow
def test_groups_trained_at_once_give_the_results_of_one_at_a_time() -> None:
    """Six groups (one per task), three at a time in threads: every training's whole history is the same."""
    spec, profile = builtin_spec("delta_net"), get_profile("smoke")
    alone = evaluate_mixer(spec, profile, EvalOptions(concurrent_groups=1), on_result=(one := []).append)
    together = evaluate_mixer(spec, profile, EvalOptions(concurrent_groups=3), on_result=(three := []).append)
    assert len(one) == len(three) == profile.num_trainings() == 6
    by_key = {r.key: r for r in three}
    for result in one:
        other = by_key[result.key]
        assert [h.model_dump() for h in other.history] == [h.model_dump() for h in result.history]
    assert together.row() == alone.row()


def test_concurrent_groups_is_checked_on_the_command_line() -> None:
    from pydantic import ValidationError

    from mixerlab.cli.evaluate import EvalArgs

    with pytest.raises(ValidationError, match="concurrent_groups"):
        EvalArgs(concurrent_groups=0)
    assert EvalArgs(concurrent_groups=4).flags() == ["--concurrent-groups", "4"]
    assert replace(EvalOptions(), concurrent_groups=2).concurrent_groups == 2
