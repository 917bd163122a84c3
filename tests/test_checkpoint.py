"""Unfinished groups survive a time limit, a crash or a kill, and continue exactly where they stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mixerlab.config import Profile, TrainConfig, get_profile
from mixerlab.evaluate import EvalOptions, ResultCache, evaluate_mixer
from mixerlab.evaluate.inflight import unfinished_trainings
from mixerlab.evaluate.plan import plan_jobs
from mixerlab.mixers import resolve_mixer
from mixerlab.tasks import Task, TaskSetting
from mixerlab.train.batched import BatchedTrainer, train_group
from mixerlab.train.checkpoint import (MEMBER_TENSORS, CheckpointStore, group_id, member_seconds, select_members,
                                       without_members)
from mixerlab.train.interrupts import answering_signals
from mixerlab.train.result import EpochRecord, TrainResult

SETTING = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=32, num_train=256, num_test=128)
TRAIN = TrainConfig(d_model=32, batch_size=32, max_epochs=5)
PROFILE = Profile(name="test", description="two small trainings", train=TRAIN,
                  settings={Task.context_recall: (SETTING,)}, lrs=(1e-3, 3e-3), weight_decays=(0.0,),
                  preferred_device="cpu")


def histories(results) -> list[float]:
    """Every epoch number and metric of every training, flattened in order."""
    return [value for r in sorted(results, key=lambda r: r.key) for e in r.history
            for value in (e.epoch, e.train_loss, e.test_loss, e.test_acc)]


def stopped_early(job, key: str) -> TrainResult:
    """A finished training of `job` under `key`, as the cache holds one that reached 0.999 after an epoch."""
    history = [EpochRecord(epoch=0, train_loss=1.0, test_loss=1.0, test_acc=0.999, test_token_acc=0.999, test_ppl=2.7)]
    return TrainResult(key=key, task=job.setting.task.value, setting=job.setting.label, lr=job.lr,
                       weight_decay=job.weight_decay, seed=job.seed, score=0.999, score_last=0.999, token_acc=0.999,
                       best_epoch=0, epochs_trained=1, stopped_early=True, steps=8, seconds=0.1, trainer="batched",
                       device="cpu", history=history)


def interrupted_checkpoint(jobs, keys, store: CheckpointStore) -> str:
    """Train until the first sync point, as a run whose time limit has passed, and leave its checkpoint."""
    trainer = BatchedTrainer(jobs, keys, TRAIN, resolve_mixer("delta_net").factory(), "cpu", checkpoints=store)
    finished = trainer.run(deadline=time.monotonic() - 1)
    assert finished == [] and 0 < trainer.steps_done < 8 * TRAIN.max_epochs, "stopped mid-training"
    assert store.path(trainer.ident).exists()
    return trainer.ident


def test_a_resumed_group_trains_exactly_like_an_uninterrupted_one(tmp_path: Path) -> None:
    jobs = plan_jobs(PROFILE, (Task.context_recall,), 1)
    keys = ["a", "b"]
    factory = resolve_mixer("delta_net").factory()
    straight = BatchedTrainer(jobs, keys, TRAIN, factory, "cpu").run()

    store = CheckpointStore(tmp_path / "ckpt", every=0)
    ident = interrupted_checkpoint(jobs, keys, store)
    [(found_ident, state)] = store.load_all()
    assert found_ident == ident and state["keys"] == keys and len(state["histories"][0]) == 2  # 2 epochs recorded
    resumed = train_group(jobs, keys, TRAIN, factory, "cpu", checkpoints=store, resume=(ident, state))

    assert histories(resumed) == pytest.approx(histories(straight)) and len(resumed) == 2
    assert [r.score for r in resumed] == [r.score for r in straight]
    assert not store.path(ident).exists(), "a finished group's checkpoint is deleted"


@pytest.mark.slow
def test_eval_picks_up_checkpoints_and_skips_unreadable_ones(tmp_path: Path) -> None:
    spec = resolve_mixer("delta_net")
    jobs = plan_jobs(PROFILE, (Task.context_recall,), 1)
    keys = [job.cache_key(spec.code_hash, TRAIN, "fp32") for job in jobs]
    reference = evaluate_mixer(spec, PROFILE, EvalOptions(tasks=(Task.context_recall,)), ResultCache(tmp_path / "a.sqlite"))

    cache = ResultCache(tmp_path / "b.sqlite")
    store = CheckpointStore.beside(cache.path)
    interrupted_checkpoint(jobs, keys, store)
    (store.folder / "0000garbage.pt").write_bytes(b"not a checkpoint")
    report = evaluate_mixer(spec, PROFILE, EvalOptions(tasks=(Task.context_recall,)), cache)

    assert report.resumed == 2 and report.incomplete == 0
    assert report.tasks["context_recall"].mean == reference.tasks["context_recall"].mean
    assert [p.name for p in store.folder.glob("*.pt")] == ["0000garbage.pt"], "the resumed group's file is gone"


@pytest.mark.slow
def test_packed_checkpoints_resume_their_members_exactly_and_the_rest_start_over(tmp_path: Path) -> None:
    """A lent GPU returns only small files: packing splits a group by member and keeps what fits the budget."""
    spec = resolve_mixer("delta_net")
    options = EvalOptions(tasks=(Task.context_recall,))
    jobs = plan_jobs(PROFILE, (Task.context_recall,), 1)
    keys = [job.cache_key(spec.code_hash, TRAIN, "fp32") for job in jobs]
    straight: list = []
    evaluate_mixer(spec, PROFILE, options, ResultCache(tmp_path / "ref.sqlite"), on_result=straight.append)
    source = CheckpointStore(tmp_path / "source", every=0)
    interrupted_checkpoint(jobs, keys, source)
    [(_, whole)] = source.load_all()
    sizes = CheckpointStore(tmp_path / "sizes")  # file sizes as the store writes them (names are inside)
    sizes.save(group_id(keys[:1]), select_members(whole, [0]))
    sizes.save(group_id(keys), whole)
    one, two = (sizes.path(group_id(k)).stat().st_size for k in (keys[:1], keys))
    assert two > one + one // 2, "a member's rows dominate the file"

    for name, file_limit, budget, carried in [("each-alone", one + 64, 10 * one, 2), ("budget-for-one", 10 * one, one + 64, 1)]:
        report = source.pack(tmp_path / name, file_limit, budget)
        assert (report.carried, report.left, len(report.files)) == (carried, 2 - carried, carried)
        assert all(f.stat().st_size <= file_limit for f in report.files) and report.bytes <= budget
        packed = [torch.load(f, weights_only=False) for f in report.files]
        assert all(member_seconds(p) == pytest.approx(member_seconds(whole)) for p in packed), "times carry over"
        cache = ResultCache(tmp_path / f"{name}.sqlite")
        folder = CheckpointStore.beside(cache.path).folder
        folder.mkdir()
        for f in report.files:
            shutil.copy(f, folder / f.name)
        resumed: list = []
        result = evaluate_mixer(spec, PROFILE, options, cache, on_result=resumed.append)
        assert result.resumed == carried and result.incomplete == 0
        carried_keys = {k for p in packed for k in p["keys"]}
        for key in keys:  # a resumed member continues exactly; one that starts over, alone, differs by float noise
            again, first = histories([r for r in resumed if r.key == key]), histories([r for r in straight if r.key == key])
            assert again == (pytest.approx(first) if key in carried_keys else pytest.approx(first, abs=5e-3)), name
        assert not list(folder.glob("*.pt")), "finished groups leave no checkpoint behind"
    assert source.path(source.load_all()[0][0]).exists(), "packing leaves the source checkpoints in place"


def test_without_members_drops_only_finished_members_and_copies_nothing_else(tmp_path: Path) -> None:
    """Listing or packing checkpoints drops members the cache has finished; a group with none keeps its tensors."""
    jobs = plan_jobs(PROFILE, (Task.context_recall,), 1)
    keys = [job.cache_key(resolve_mixer("delta_net").code_hash, TRAIN, "fp32") for job in jobs]
    store = CheckpointStore(tmp_path / "store", every=0)
    interrupted_checkpoint(jobs, keys, store)
    [(ident, whole)] = store.load_all()
    [(same_ident, same)] = without_members([(ident, whole)], {"a key of another group"})
    assert same_ident == ident and same is whole, "nothing to drop: the state itself, not a copy"
    [(_, fewer)] = without_members([(ident, whole)], {whole["keys"][0]})
    assert fewer["keys"] == whole["keys"][1:]
    assert all(torch.equal(fewer[name], whole[name][1:]) for name in MEMBER_TENSORS)
    assert all(torch.equal(fewer["buffers"][name], b[1:]) for name, b in whole["buffers"].items())


@pytest.mark.slow
def test_pack_checkpoints_command(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache.sqlite")
    jobs = plan_jobs(PROFILE, (Task.context_recall,), 1)
    interrupted_checkpoint(jobs, ["a", "b"], CheckpointStore.beside(cache.path))
    command = [sys.executable, "-m", "mixerlab.cli", "cache", "pack-checkpoints"]
    done = subprocess.run([*command, str(tmp_path / "out"), "--cache", str(cache.path)], capture_output=True, text=True)
    assert done.returncode == 0 and "packed 2 of 2 unfinished trainings into 1 files" in done.stdout, done.stderr
    assert len(list((tmp_path / "out").glob("*.pt"))) == 1
    # "a" stopped early after the checkpoint was taken: packing leaves it out, only "b" travels
    cache.put(stopped_early(jobs[0], "a"), "hash", "m")
    later = subprocess.run([*command, str(tmp_path / "later"), "--cache", str(cache.path)], capture_output=True, text=True)
    assert later.returncode == 0, later.stderr
    assert "packed 1 of 1 unfinished trainings into 1 files" in later.stdout, later.stdout
    assert "1 finished after their checkpoint and are in the cache" in later.stdout, later.stdout
    [file] = (tmp_path / "later").glob("*.pt")
    assert torch.load(file, weights_only=False)["keys"] == ["b"]
    (tmp_path / "file").write_text("x")
    bad = subprocess.run([*command, str(tmp_path / "file"), "--cache", str(cache.path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "is a file; pass a folder" in bad.stderr and "Traceback" not in bad.stderr


def tiny_fuzzy_eval(cache: Path, checkpoint_every: float) -> tuple[list[str], Path]:
    """`mixerlab eval` of one tiny training (the longest of the profile) and the folder of its checkpoints."""
    command = [sys.executable, "-m", "mixerlab.cli", "eval", "--profile", "tiny", "--device", "cpu",
               "--tasks", "fuzzy_recall", "--cache", str(cache), "--checkpoint-every", str(checkpoint_every)]
    return command, CheckpointStore.beside(cache).folder


@pytest.mark.slow
def test_a_killed_eval_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    command, folder = tiny_fuzzy_eval(tmp_path / "cache.sqlite", checkpoint_every=0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while not list(folder.glob("*.pt")) and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.2)
    assert list(folder.glob("*.pt")), "a checkpoint was written while training"
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "1 trainings continued from a checkpoint" in again.stdout
    assert "Fuzzy Recall" in again.stdout and not list(folder.glob("*.pt"))


@pytest.mark.slow
def test_sigusr1_checkpoints_every_group_training_at_once(tmp_path: Path) -> None:
    """Groups that train at once (EvalOptions.concurrent_groups: a thread each) each save once per SIGUSR1; the
    first group to reach a sync point used to consume the request, leaving the others' work unsaved."""
    train = TrainConfig(d_model=32, batch_size=32, max_epochs=12)  # a sync point every 20 steps
    store = CheckpointStore(tmp_path / "ckpt", every=3600)  # no save falls due by the clock
    factory = resolve_mixer("delta_net").factory()
    trainers = []
    for group in "ab":  # two groups of the same trainings under other keys: two checkpoints
        jobs = plan_jobs(PROFILE, (Task.context_recall,), 1)
        trainers.append(BatchedTrainer(jobs, [f"{group}{i}" for i in range(len(jobs))], train, factory, "cpu",
                                       checkpoints=store))
    halt, stepped = threading.Event(), [threading.Event() for _ in trainers]
    saved_at: dict[int, int] = {}

    def runner(i: int) -> threading.Thread:
        trainer = trainers[i]

        def on_steps(_: int) -> None:
            stepped[i].set()
            if i not in saved_at and not halt.is_set() and store.path(trainer.ident).exists():
                saved_at[i] = torch.load(store.path(trainer.ident), weights_only=False)["steps_done"]
        return threading.Thread(target=trainer.run, kwargs=dict(on_steps=on_steps, halt=halt))

    with answering_signals():
        threads = [runner(i) for i in range(len(trainers))]
        for thread in threads:
            thread.start()
        assert all(event.wait(60) for event in stepped)
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while len(saved_at) < len(trainers) and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.02)
        halt.set()
        for thread in threads:
            thread.join()
    assert sorted(saved_at) == [0, 1], f"one SIGUSR1 saved every group, each at a sync point: {saved_at}"
    assert all(steps % 20 == 0 and steps < 96 for steps in saved_at.values()), saved_at


@pytest.mark.slow
def test_sigusr1_checkpoints_now_and_ctrl_c_checkpoints_and_stops(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    train = TrainConfig(d_model=32, batch_size=32, max_epochs=12)  # 96 steps, a sync point every 20
    jobs = plan_jobs(PROFILE, (Task.context_recall,), 1)
    keys = ["a", "b"]
    factory = resolve_mixer("delta_net").factory()
    straight = BatchedTrainer(jobs, keys, train, factory, "cpu").run()
    store = CheckpointStore(tmp_path / "ckpt", every=3600)  # no save falls due by the clock
    trainer = BatchedTrainer(jobs, keys, train, factory, "cpu", checkpoints=store)
    seen: dict[str, int] = {}

    def on_steps(_: int) -> None:
        if trainer.steps_done == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        if "saved_at" not in seen and store.path(trainer.ident).exists():
            seen["saved_at"] = torch.load(store.path(trainer.ident), weights_only=False)["steps_done"]
            os.kill(os.getpid(), signal.SIGINT)

    with answering_signals():
        finished = trainer.run(on_steps=on_steps)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "a second Ctrl-C stops at once"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL, "the handlers are put back"
    said = capfd.readouterr().err
    assert said.count("SIGINT: checkpointing and stopping at the next sync point (Ctrl-C again to stop now)") == 1

    assert seen["saved_at"] == 20, "SIGUSR1 saved at the first sync point, long before the 3600 s interval"
    assert finished == [] and trainer.steps_done == 40 < 96, "Ctrl-C stopped at the next sync point"
    [(ident, state)] = store.load_all()
    assert state["steps_done"] == 40, "and saved the group there"
    resumed = train_group(jobs, keys, train, factory, "cpu", checkpoints=store, resume=(ident, state))
    assert histories(resumed) == pytest.approx(histories(straight)) and len(resumed) == 2


def caught_signals(pid: int) -> int:
    """The process's caught-signal mask (Linux /proc), to know when its handlers are installed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


@pytest.mark.slow
def test_eval_checkpoints_on_sigusr1_and_stops_resumably_on_sigterm(tmp_path: Path) -> None:
    command, folder = tiny_fuzzy_eval(tmp_path / "cache.sqlite", checkpoint_every=3600)  # no save by the clock
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    while not caught_signals(run.pid) & (1 << (signal.SIGUSR1 - 1)) and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGUSR1's default action kills: wait for the handler
    while not list(folder.glob("*.pt")) and time.monotonic() < deadline and run.poll() is None:
        run.send_signal(signal.SIGUSR1)  # until training has reached a sync point that can save
        time.sleep(0.2)
    assert list(folder.glob("*.pt")) and run.poll() is None, "SIGUSR1 wrote a checkpoint and training went on"
    run.send_signal(signal.SIGTERM)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM: 0 of 1 trainings finished" in output and "Traceback" not in output
    said = output.index("SIGTERM: checkpointing and stopping at the next sync point")  # at once, before the stop
    assert said < output.index("stopped by SIGTERM") and "Ctrl-C again" not in output
    assert len(list(folder.glob("*.pt"))) == 1, "the unfinished group was saved"

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "1 trainings continued from a checkpoint" in again.stdout and not list(folder.glob("*.pt"))


@pytest.mark.slow
def test_cache_info_names_the_checkpointed_trainings_and_scores_them_so_far(tmp_path: Path) -> None:
    """What a carried checkpoint holds, before deciding the next call: mixer, training, epochs, score so far."""
    tiny = get_profile("tiny")
    spec = resolve_mixer("delta_net")
    jobs = plan_jobs(tiny, (Task.context_recall,), 2)  # `tiny` has one context_recall training: two seeds of it
    keys = [job.cache_key(spec.code_hash, tiny.train, "fp32") for job in jobs]
    carried = CheckpointStore(tmp_path / "carried", every=0)
    trainer = BatchedTrainer(jobs, keys, tiny.train, spec.factory(), "cpu", checkpoints=carried)
    assert trainer.run(deadline=time.monotonic() - 1) == []
    [(_, state)] = carried.load_all()

    found = unfinished_trainings(carried.load_all(), tiny, [(spec.code_hash, spec.name)], seeds=2)
    assert sorted((u.label, u.mixer, u.max_epochs) for u in found) == sorted((j.label, spec.name, tiny.train.max_epochs)
                                                                             for j in jobs)
    for u in found:
        history = state["histories"][state["keys"].index(u.key)]
        best = min(range(len(history)), key=lambda i: history[i]["test_ppl"])
        assert 0 < u.epochs == len(history) < tiny.train.max_epochs
        assert (u.score, u.best_epoch) == (history[best]["test_acc"], best + 1)
    assert len(found) == 2 and {u.mixer for u in unfinished_trainings(carried.load_all(), tiny, [], seeds=2)} == {None}

    cache = ResultCache(tmp_path / "cache.sqlite")
    info = [sys.executable, "-m", "mixerlab.cli", "cache", "info", "--cache", str(cache.path)]
    env = {**os.environ, "COLUMNS": "200"}
    named = subprocess.run([*info, "--profile", "tiny", "--seeds", "2", "--checkpoints", str(carried.folder)], capture_output=True,
                           text=True, env=env)
    assert named.returncode == 0, named.stderr
    assert "2 unfinished trainings in" in named.stdout, named.stdout
    assert all(f"{spec.name} │ {job.label}" in named.stdout for job in jobs), named.stdout
    mine = subprocess.run([*info, "--profile", "tiny", "--seeds", "2", "--checkpoints", str(carried.folder),
                           "--mixer", "delta_net"], capture_output=True, text=True, env=env)
    assert "2 of the 2 unfinished trainings in" in mine.stdout and mine.stdout.count(f"{spec.name} │") == 2, mine.stdout
    theirs = subprocess.run([*info, "--profile", "tiny", "--seeds", "2", "--checkpoints", str(carried.folder),
                             "--mixer", "gated_delta_net"], capture_output=True, text=True, env=env)
    assert "0 of the 2 unfinished trainings in" in theirs.stdout and "│" not in theirs.stdout, theirs.stdout
    counted = subprocess.run([*info, "--checkpoints", str(carried.folder)], capture_output=True, text=True, env=env)
    assert "2 unfinished trainings checkpointed in" in counted.stdout, counted.stdout
    other = subprocess.run([*info, "--profile", "baseline", "--checkpoints", str(carried.folder)], capture_output=True,
                           text=True, env=env)
    assert other.stdout.count("not in the `baseline` sweep") == 2, other.stdout
    bad = subprocess.run([*info, "--checkpoints", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no folder" in bad.stderr and "Traceback" not in bad.stderr

    # one member stopped early after the checkpoint was taken: the cache has it, so it is no longer under way
    finished_job, running_job = jobs
    cache.put(stopped_early(finished_job, keys[0]), spec.code_hash, spec.name)
    later = subprocess.run([*info, "--profile", "tiny", "--seeds", "2", "--checkpoints", str(carried.folder)],
                           capture_output=True, text=True, env=env)
    assert later.returncode == 0, later.stderr
    assert "1 checkpointed trainings finished after their checkpoint was taken" in later.stdout, later.stdout
    assert "1 unfinished trainings in" in later.stdout, later.stdout
    assert f"{spec.name} │ {running_job.label}" in later.stdout and f"│ {finished_job.label} " not in later.stdout
