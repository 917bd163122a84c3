"""Training: the batched trainer equals the reference trainer; MAD's stopping and scoring rules."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from mixerlab.config import PROFILES, TrainConfig
from mixerlab.mixers import resolve_mixer
from mixerlab.tasks import Task, TaskSetting
from mixerlab.train.batched import BatchedTrainer, supports_vmap, train_group
from mixerlab.train.job import TrainJob
from mixerlab.train.result import EpochRecord, best_epoch, select_epochs
from mixerlab.train.schedule import epoch_order, lr_for_epoch
from mixerlab.train.single import train_single

TRAIN = TrainConfig(d_model=32, batch_size=32, max_epochs=3)
FACTORY = resolve_mixer("delta_net").factory()


def recall(num_train: int, vocab: int = 16) -> TaskSetting:
    return TaskSetting(task=Task.context_recall, vocab_size=vocab, seq_len=24, num_train=num_train, num_test=64)


def assert_same_training(a, b, tol: float = 2e-4) -> None:
    assert len(a.history) == len(b.history)
    for x, y in zip(a.history, b.history):
        assert x.train_loss == pytest.approx(y.train_loss, abs=tol)
        assert x.test_loss == pytest.approx(y.test_loss, abs=tol)
        assert x.test_acc == pytest.approx(y.test_acc, abs=5e-3)
    assert a.steps == b.steps


def test_batched_equals_reference_trainer_member_by_member() -> None:
    # different learning rates, weight decays, seeds and data sizes (so epochs and last batches differ)
    jobs = [
        TrainJob(setting=recall(96), lr=3e-3, weight_decay=0.0),
        TrainJob(setting=recall(96), lr=1e-3, weight_decay=0.1),
        TrainJob(setting=recall(70), lr=3e-3, weight_decay=0.0, seed=1),
        TrainJob(setting=recall(40), lr=2e-3, weight_decay=0.1),
    ]
    batched = train_group(jobs, ["k"] * 4, TRAIN, FACTORY)
    assert [r.trainer for r in batched] == ["batched"] * 4
    for job, got in zip(jobs, batched):
        assert_same_training(train_single(job, TRAIN, FACTORY), got)


def test_recorded_seconds_are_shares_of_the_group_wall_time() -> None:
    # eval_speed.md sums these to measure what a sweep cost: they must add up to the group's time, not repeat it
    jobs = [TrainJob(setting=recall(n), lr=3e-3, weight_decay=0.0) for n in (96, 96, 64, 32)]
    start = time.perf_counter()
    results = train_group(jobs, ["k"] * 4, TRAIN, FACTORY)
    wall = time.perf_counter() - start
    assert [r.trainer for r in results] == ["batched"] * 4
    assert 0.5 * wall < sum(r.seconds for r in results) <= wall  # setup before the first step is nobody's share
    assert results[0].steps > results[3].steps  # more batches per epoch, more of the time
    assert results[0].seconds > results[3].seconds


def test_members_do_not_interact_and_vocabularies_may_differ() -> None:
    # member `small` trained beside two different partners (same padded vocabulary) must train identically
    small = TrainJob(setting=recall(64, vocab=12), lr=3e-3, weight_decay=0.0)
    partner_a = TrainJob(setting=recall(64, vocab=20), lr=1e-3, weight_decay=0.0)
    partner_b = TrainJob(setting=recall(48, vocab=20), lr=3e-3, weight_decay=0.1, seed=5)
    with_a = BatchedTrainer([small, partner_a], ["s", "a"], TRAIN, FACTORY).run()
    with_b = BatchedTrainer([small, partner_b], ["s", "b"], TRAIN, FACTORY).run()
    assert_same_training(with_a[0], with_b[0], tol=1e-5)
    assert with_a[1].history != with_b[1].history


def test_a_member_beside_a_larger_vocabulary_trains_as_it_does_alone() -> None:
    # built at the padded size, the member's initial weights (and so its result) would depend on its partner
    small = TrainJob(setting=recall(64, vocab=12), lr=3e-3, weight_decay=0.1)
    partner = TrainJob(setting=recall(64, vocab=40), lr=1e-3, weight_decay=0.0)
    together = BatchedTrainer([small, partner], ["s", "p"], TRAIN, FACTORY).run()
    alone = train_single(small, TRAIN, FACTORY)
    assert_same_training(together[0], alone)
    assert together[0].score == pytest.approx(alone.score, abs=5e-3)


def test_padding_a_vocabulary_keeps_the_model_and_its_initial_weights() -> None:
    from mixerlab.model import build_model, pad_vocabulary

    for backbone in ("language_model", "autoencoder"):
        torch.manual_seed(3)
        small = build_model(backbone, 12, 8, 32, FACTORY)
        torch.manual_seed(3)
        padded = pad_vocabulary(build_model(backbone, 12, 8, 32, FACTORY), 30)
        assert padded.embed.weight.shape[0] == padded.head.weight.shape[0] == padded.vocab_size == 30
        assert torch.equal(padded.embed.weight[:12], small.embed.weight)
        assert torch.equal(padded.blocks[0].layer.q_proj.weight, small.blocks[0].layer.q_proj.weight)
        tokens = torch.randint(0, 12, (2, 8))
        assert torch.allclose(padded(tokens)[..., :12], small(tokens), atol=1e-6)
        assert not padded.head.weight[12:].any()
    with pytest.raises(ValueError, match="cannot pad"):
        pad_vocabulary(small, 4)


def test_padded_vocabulary_is_exactly_the_smaller_model() -> None:
    torch.manual_seed(0)
    logits_small = torch.randn(2, 5, 7)
    logits_big = torch.cat([logits_small, torch.randn(2, 5, 4)], -1)
    mask = torch.zeros(11)
    mask[7:] = float("-inf")
    targets = torch.randint(0, 7, (2, 5))
    loss_small = nn.functional.cross_entropy(logits_small.flatten(0, 1), targets.flatten())
    loss_big = nn.functional.cross_entropy((logits_big + mask).flatten(0, 1), targets.flatten())
    assert loss_big.item() == pytest.approx(loss_small.item(), abs=1e-6)
    assert ((logits_big + mask).argmax(-1) < 7).all()


class ItemMixer(nn.Module):
    """A mixer vmap cannot run (it asks the host for a value), to exercise the sequential fallback."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + 0.0 * float(x.detach().abs().max().item())
        return self.proj(x.cumsum(1) / torch.arange(1, x.shape[1] + 1)[:, None]) * scale


def test_mixers_that_cannot_vmap_train_sequentially() -> None:
    jobs = [TrainJob(setting=recall(64), lr=3e-3, weight_decay=0.0), TrainJob(setting=recall(64), lr=1e-3, weight_decay=0.0)]
    assert not supports_vmap(jobs[0], TRAIN, ItemMixer)
    assert supports_vmap(jobs[0], TRAIN, FACTORY)
    results = train_group(jobs, ["a", "b"], TRAIN, ItemMixer)
    assert [r.trainer for r in results] == ["sequential", "sequential"]
    assert_same_training(train_single(jobs[0], TRAIN, ItemMixer), results[0])


def test_early_stop_and_best_perplexity_epoch() -> None:
    setting = PROFILES["tiny"].settings[Task.context_recall][0]
    train = PROFILES["tiny"].train.model_copy(update={"max_epochs": 12})
    result = train_group([TrainJob(setting=setting, lr=3e-3, weight_decay=0.0)], ["k"], train, resolve_mixer("delta_net").factory())[0]
    assert result.stopped_early, "context recall reaches 0.999 on the tiny profile"
    assert result.history[-1].test_acc > 0.999
    assert all(h.test_acc <= 0.999 for h in result.history[:-1])
    assert result.epochs_trained < 12


def record(epoch: int, acc: float, ppl: float) -> EpochRecord:
    return EpochRecord(epoch=epoch, train_loss=1.0, test_loss=math.log(ppl), test_acc=acc, test_token_acc=acc, test_ppl=ppl)


def test_mads_scoring_rule() -> None:
    history = [record(0, 0.5, 3.0), record(1, 0.8, 1.5), record(2, 0.7, 2.0), record(3, 0.9995, 1.6), record(4, 1.0, 1.0)]
    kept, stopped = select_epochs(history, 0.999)
    assert stopped and len(kept) == 4, "training stops at the first epoch above 0.999"
    assert best_epoch(kept).epoch == 1, "the score comes from the lowest-perplexity epoch, not the last"
    assert best_epoch([record(0, 0.1, float("nan")), record(1, 0.2, 5.0)]).epoch == 1


def test_patience_stops_once_perplexity_stops_improving() -> None:
    ppl = [5.0, 3.0, 3.0, 4.0, 2.5, 2.6, 2.7, 2.8, 1.0]  # best at 1 (a tie is no better), then at 4
    history = [record(i, 0.5, p) for i, p in enumerate(ppl)]
    assert select_epochs(history, 0.999) == (history, False), "no patience: MAD's rule alone, every epoch runs"
    kept, stopped = select_epochs(history, 0.999, patience=3)
    assert stopped and len(kept) == 8 and best_epoch(kept).epoch == 4, "stops 3 epochs after the best so far"
    assert select_epochs(history, 0.999, patience=2)[0] == history[:4], "the tie at epoch 2 does not reset it"
    assert select_epochs(history, 0.999, patience=9) == (history, False)
    nan_first = [record(0, 0.1, float("nan")), record(1, 0.1, float("nan")), record(2, 0.2, 4.0)]
    assert select_epochs(nan_first, 0.999, patience=2)[0] == nan_first[:2], "NaN epochs never count as the best"
    accurate = [record(0, 0.5, 2.0), record(1, 0.9995, 3.0), record(2, 1.0, 1.0)]
    assert select_epochs(accurate, 0.999, patience=5)[0] == accurate[:2], "MAD's 0.999 stop still comes first"
    with pytest.raises(ValueError):
        TrainConfig(patience=0)


def test_a_patience_training_is_the_first_epochs_of_the_full_one_in_both_trainers() -> None:
    # a high learning rate on little data: test perplexity turns up after 5-6 epochs, the members stop apart
    train = TrainConfig(d_model=32, batch_size=32, max_epochs=12)
    patient = train.model_copy(update={"patience": 3})
    jobs = [TrainJob(setting=recall(n), lr=lr, weight_decay=0.0) for lr in (1e-2,) for n in (40, 96)]
    batched = train_group(jobs, ["k"] * len(jobs), patient, FACTORY)
    stops = set()
    for job, got in zip(jobs, batched):
        whole = train_single(job, train, FACTORY)
        alone = train_single(job, patient, FACTORY)
        assert alone.stopped_early and alone.epochs_trained < whole.epochs_trained
        assert alone.epochs_trained == best_epoch(alone.history).epoch + 1 + 3
        assert [h.test_ppl for h in alone.history] == [h.test_ppl for h in whole.history[: alone.epochs_trained]]
        assert (alone.score, alone.best_epoch) == (whole.score, whole.best_epoch), "the best epoch came before the stop"
        # the batched trainer stops it after the same epoch (lr 1e-2 lets vmap's float32 rounding grow to ~1e-3)
        assert (got.epochs_trained, got.best_epoch, got.steps) == (alone.epochs_trained, alone.best_epoch, alone.steps)
        assert [h.test_loss for h in got.history] == pytest.approx([h.test_loss for h in alone.history], abs=5e-3)
        stops.add(alone.epochs_trained)
    assert len(stops) > 1, "members of one group stopped at different epochs"


def test_schedules() -> None:
    constant = TrainConfig()
    assert lr_for_epoch(constant, 1e-3, 150) == 1e-3
    cosine = TrainConfig(lr_schedule="cosine", max_epochs=200)
    assert lr_for_epoch(cosine, 1e-3, 0) == pytest.approx(1e-3)
    assert lr_for_epoch(cosine, 1e-3, 100) == pytest.approx((1e-3 + 1e-6) / 2)
    assert lr_for_epoch(cosine, 1e-3, 200) == pytest.approx(1e-6)
    a, b = epoch_order(1, 0, 50), epoch_order(1, 1, 50)
    assert sorted(a.tolist()) == list(range(50)) and not torch.equal(a, b)
    assert torch.equal(a, epoch_order(1, 0, 50))


def test_init_seed_per_setting_or_per_run() -> None:
    from mixerlab.train.common import init_model

    a, b = (TrainJob(setting=recall(64), lr=lr, weight_decay=0.0) for lr in (1e-3, 3e-3))
    first = lambda model: next(model.parameters()).detach()  # noqa: E731
    shared = TRAIN
    per_run = TRAIN.model_copy(update={"init_seed": "run"})
    assert torch.equal(first(init_model(a, shared, FACTORY)), first(init_model(b, shared, FACTORY)))
    assert not torch.equal(first(init_model(a, per_run, FACTORY)), first(init_model(b, per_run, FACTORY)))
    assert torch.equal(first(init_model(a, per_run, FACTORY)), first(init_model(a, per_run, FACTORY)))
    # the default leaves every cached key as it was; the other value makes new ones
    assert a.cache_key("m", shared) == a.cache_key("m", TrainConfig(d_model=32, batch_size=32, max_epochs=3))
    assert a.cache_key("m", per_run) != a.cache_key("m", shared)


def test_a_group_compiles_only_once_it_has_trained_long_enough_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ski-rental rule of `--compile`: a shape trains eagerly until it has trained `compile_after_tokens`
    tokens, then switches to the compiled step at the next sync and trains on to the same result (same math).
    Run on the CPU with the compiler replaced by the identity, so the switch itself is what is tested."""
    from mixerlab.train import batched

    compiled_at: list[int] = []
    compiled_steps: list[int] = []

    def fake_compile(fn, mode=None):
        compiled_at.append(trainer.tokens_since_build)

        def compiled(*args):
            compiled_steps.append(trainer.steps_done)
            return fn(*args)
        return compiled

    monkeypatch.setattr(batched, "compile_static", fake_compile)
    jobs = [TrainJob(setting=recall(96), lr=lr, weight_decay=0.0) for lr in (1e-3, 3e-3)]
    per_step = 2 * TRAIN.batch_size * jobs[0].setting.input_len
    reference = BatchedTrainer(jobs, ["k"] * 2, TRAIN, FACTORY).run()
    for after, switches in ((4 * per_step, 1), (10**12, 0)):
        compiled_at.clear(), compiled_steps.clear()
        trainer = BatchedTrainer(jobs, ["k"] * 2, TRAIN, FACTORY, compile_after_tokens=after, sync_every=1)
        trainer.compile_wanted = True  # CUDA only in use; forced here
        results = trainer.run()
        assert len(compiled_at) == switches
        assert all(tokens >= after for tokens in compiled_at)  # not before it has earned it
        assert len(compiled_steps) == (3 if switches else 0)  # the last epoch's 3 steps (an epoch: 3 steps)
        assert (trainer.compiled_logits is not None) == bool(switches)
        for a, b in zip(results, reference):
            assert_same_training(a, b, tol=1e-4)
