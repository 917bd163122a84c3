"""The six MAD tasks: layout, scoring, vocabulary bounds, determinism and the sweep."""

from __future__ import annotations

import random

import pytest
import torch

from mixerlab.config import PROFILES, Profile
from mixerlab.tasks import IGNORE_INDEX, TASK_ORDER, Task, TaskSetting, baseline_setting, generate, parse_task, sweep_settings


def small(task: Task, **overrides) -> TaskSetting:
    base = baseline_setting(task).model_dump()
    base.update({"num_train": 256, "num_test": 128, **overrides})
    return TaskSetting(**base)


ALL_SMALL = [small(t) for t in TASK_ORDER] + [
    small(Task.context_recall, vocab_size=128, seq_len=256, change="vocab_size"),
    small(Task.noisy_recall, frac_noise=0.8, change="frac_noise"),
    small(Task.noisy_recall, vocab_size=144, change="vocab_size"),
    small(Task.fuzzy_recall, vocab_size=64, seq_len=256, change="vocab_size"),
    small(Task.selective_copy, num_tokens_to_copy=96, change="num_tokens_to_copy"),
    small(Task.memorize, vocab_size=1024, change="vocab_size"),
    small(Task.compress, vocab_size=128, seq_len=64, change="vocab_size"),
]


@pytest.mark.parametrize("setting", ALL_SMALL, ids=lambda s: s.label)
def test_vocabulary_bounds_and_shapes(setting: TaskSetting) -> None:
    for split in ("train", "test"):
        data = generate(setting, split)
        n = setting.num_train if split == "train" else setting.num_test
        assert data.inputs.shape == data.targets.shape == (n, setting.input_len)
        assert data.inputs.dtype == data.targets.dtype == torch.long
        assert 0 <= data.inputs.min() and data.inputs.max() < setting.vocab_size
        scored = data.targets[data.targets != IGNORE_INDEX]
        assert scored.numel() > 0
        assert 0 <= scored.min() and scored.max() < setting.vocab_size
        assert ((data.targets == IGNORE_INDEX) | (data.targets >= 0)).all()


@pytest.mark.parametrize("setting", ALL_SMALL[:6], ids=lambda s: s.label)
def test_deterministic_and_seeded(setting: TaskSetting) -> None:
    generate.cache_clear()
    a = generate(setting, "train", seed=0)
    generate.cache_clear()
    b = generate(setting, "train", seed=0)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    c = generate(setting, "train", seed=1)
    assert not torch.equal(a.inputs, c.inputs)
    test = generate(setting, "test", seed=0)
    assert not torch.equal(a.inputs[: len(test)], test.inputs[: len(a)])


@pytest.mark.parametrize("task", [Task.context_recall, Task.noisy_recall, Task.fuzzy_recall])
def test_recall_training_targets_are_next_tokens(task: Task) -> None:
    setting = small(task)
    train = generate(setting, "train")
    # the target at position i is the input at position i + 1
    assert torch.equal(train.targets[:, :-1], train.inputs[:, 1:])


@pytest.mark.parametrize("task", [Task.context_recall, Task.noisy_recall])
def test_recall_scores_only_values_of_keys_seen_before(task: Task) -> None:
    setting = small(task, frac_noise=0.4) if task is Task.noisy_recall else small(task)
    test = generate(setting, "test")
    n_plain = setting.vocab_size - setting.noise_vocab_size
    n_keys = n_plain // 2
    checked = 0
    for inputs, targets in zip(test.inputs.tolist(), test.targets.tolist()):
        tokens = inputs + [None]  # the target at i is the token at i + 1
        for i, target in enumerate(targets):
            if target == IGNORE_INDEX:
                continue
            key = inputs[i]
            assert 0 <= key < n_keys, "a scored value follows a key"
            assert n_keys <= target < n_plain, "scored tokens are values, never noise"
            earlier = [inputs[j + 1] for j in range(0, i - 1) if inputs[j] == key and j % 2 == 0]
            assert target in earlier, "the key appeared earlier with this value"
            checked += 1
        assert targets[-1] != IGNORE_INDEX, "the final probe is always scored"
        del tokens
    assert checked > len(test)


def test_noise_tokens_are_never_scored() -> None:
    setting = small(Task.noisy_recall, frac_noise=0.6)
    test = generate(setting, "test")
    noise_start = setting.vocab_size - setting.noise_vocab_size
    is_noise_input = test.inputs >= noise_start
    assert is_noise_input.float().mean() > 0.3  # noise is really there
    scored = test.targets != IGNORE_INDEX
    assert not (scored & (test.targets >= noise_start)).any()
    assert not (scored & is_noise_input).any()


def reference_fuzzy(vocab: int, seq_len: int, km: int, vm: int, train: bool, rng: random.Random):
    """MAD's fuzzy-recall loop, one sequence at a time, in plain Python (the vectorised generator must
    produce the same distribution)."""
    n_keys = (vocab - 1) // 2
    key_vocab, value_vocab = list(range(n_keys)), list(range(n_keys, vocab - 1))
    draw = lambda pool, size: tuple(rng.sample(pool, size))  # noqa: E731
    kps = rng.randint(1, km) if train else km
    vps = rng.randint(1, vm)
    k_probe, v_probe = draw(key_vocab, kps), draw(value_vocab, vps)
    probe_idx = rng.randrange(seq_len - 2 * (kps + vps))
    inputs, targets, kv, presented, added = [], [], {}, set(), False
    while len(inputs) < seq_len - (kps + vps) - (km + vm):
        ks = rng.randint(1, km) if train else km
        vs = rng.randint(1, vm)
        if len(inputs) >= probe_idx and not added:
            inputs += [*k_probe, *v_probe]
            targets += [IGNORE_INDEX] * (kps + vps)
            kv[k_probe] = v_probe
            presented.add(k_probe)
            added = True
            continue
        k = draw(key_vocab, ks)
        if k == k_probe:
            v, added = v_probe, True
        else:
            v = kv.setdefault(k, draw(value_vocab, vs))
        inputs += [*k, *v]
        targets += [IGNORE_INDEX] * len(k) + (list(v) if k in presented else [IGNORE_INDEX] * len(v))
        presented.add(k)
    inputs += [*k_probe, *v_probe]
    targets += [IGNORE_INDEX] * kps + list(v_probe)
    pad = seq_len + 1 - len(inputs)
    inputs = [vocab - 1] * pad + inputs
    targets = [IGNORE_INDEX] * pad + targets
    return inputs[:-1], (inputs[1:] if train else targets[1:])


def _fuzzy_stats(inputs: torch.Tensor, targets: torch.Tensor, pad: int) -> dict[str, float]:
    padded = (inputs == pad).float().sum(1)
    scored = (targets != IGNORE_INDEX).float().sum(1)
    return {"pad": padded.mean().item(), "scored": scored.mean().item(), "scored_sd": scored.std().item()}


@pytest.mark.parametrize("train", [False, True])
def test_fuzzy_recall_matches_reference_distribution(train: bool) -> None:
    setting = small(Task.fuzzy_recall, num_train=3000, num_test=3000)
    data = generate(setting, "train" if train else "test")
    rng = random.Random(0)
    ref = [reference_fuzzy(16, 128, 3, 3, train, rng) for _ in range(3000)]
    ref_in = torch.tensor([r[0] for r in ref])
    ref_tg = torch.tensor([r[1] for r in ref])
    ours, theirs = _fuzzy_stats(data.inputs, data.targets, 15), _fuzzy_stats(ref_in, ref_tg, 15)
    for name in ours:  # means of 3000 sequences: a few standard errors apart at most
        tol = 0.06 * abs(theirs[name]) + 0.05
        assert abs(ours[name] - theirs[name]) < tol, (name, ours, theirs)


def test_fuzzy_recall_structure() -> None:
    setting = small(Task.fuzzy_recall)
    test = generate(setting, "test")
    pad = setting.vocab_size - 1
    n_keys = (setting.vocab_size - 1) // 2
    for inputs, targets in zip(test.inputs.tolist(), test.targets.tolist()):
        body = [t for t in inputs if t != pad]
        assert inputs[: len(inputs) - len(body)] == [pad] * (len(inputs) - len(body)), "padding is on the left"
        assert targets[-1] != IGNORE_INDEX, "the final probe value is scored"
        scored = [t for t in targets if t != IGNORE_INDEX]
        assert all(n_keys <= t < pad for t in scored), "only value tokens are scored"
        # every scored value motif appeared earlier right after the same 3-token key
        i = len(targets) - 1
        while i >= 0 and targets[i] != IGNORE_INDEX:
            i -= 1
        value = [t for t in targets[i + 1 :]]
        key = inputs[i - 2 : i + 1]
        text = inputs[: i - 2]
        found = any(text[j : j + 3] == key and text[j + 3 : j + 3 + len(value)] == value for j in range(len(text)))
        assert found or key == inputs[i - 2 : i + 1]  # the probe was shown before (or never inserted)


def test_memorization_map_is_shared_across_sequences_and_splits() -> None:
    setting = small(Task.memorize, vocab_size=512)
    value_of: dict[int, int] = {}
    for split in ("train", "test"):
        data = generate(setting, split)
        assert (data.inputs[:, 1::2] == setting.vocab_size - 1).all(), "insert token after every key"
        assert (data.targets[:, ::2] == IGNORE_INDEX).all()
        for k, v in zip(data.inputs[:, ::2].flatten().tolist(), data.targets[:, 1::2].flatten().tolist()):
            assert value_of.setdefault(k, v) == v
    n_keys = (setting.vocab_size - 1) // 2
    assert all(k < n_keys <= v < setting.vocab_size - 1 for k, v in value_of.items())
    assert len(set(value_of.values())) == len(value_of), "distinct keys have distinct values"


def test_compression_targets_are_inputs() -> None:
    setting = small(Task.compress)
    data = generate(setting, "train")
    assert torch.equal(data.inputs, data.targets)
    assert (data.inputs[:, -1] == setting.vocab_size - 1).all()
    assert (data.inputs[:, :-1] < setting.vocab_size - 1).all()


@pytest.mark.parametrize("n_copy", [16, 64])
def test_selective_copy_targets_are_scattered_tokens_in_order(n_copy: int) -> None:
    setting = small(Task.selective_copy, num_tokens_to_copy=n_copy)
    blank, copy = setting.vocab_size - 2, setting.vocab_size - 1
    data = generate(setting, "test")
    for inputs, targets in zip(data.inputs.tolist(), data.targets.tolist()):
        copy_at = inputs.index(copy)
        assert copy_at == setting.seq_len - n_copy - 1
        scattered = [t for t in inputs[:copy_at] if t != blank]
        assert targets[-n_copy:] == scattered
        assert targets[: -n_copy] == [IGNORE_INDEX] * (setting.seq_len - n_copy)
        assert inputs[copy_at - 1] != blank, "as in MAD, the last token to copy sits before the copy token"
        assert inputs[copy_at + 1 :] == [blank] * n_copy


def test_sweep_has_mads_66_settings() -> None:
    counts = {task: len(sweep_settings(task)) for task in TASK_ORDER}
    assert counts == {
        Task.compress: 11, Task.context_recall: 11, Task.fuzzy_recall: 11,
        Task.memorize: 6, Task.noisy_recall: 14, Task.selective_copy: 13,
    }
    assert PROFILES["full"].num_trainings() == 396
    assert PROFILES["baseline"].num_trainings() == 6
    labels = [s.label for t in TASK_ORDER for s in sweep_settings(t)]
    assert len(set(labels)) == 66


def test_task_names() -> None:
    assert parse_task("context_recall") is Task.context_recall
    assert parse_task("Context Recall") is Task.context_recall
    assert parse_task("in-context-recall") is Task.context_recall
    assert parse_task("selective-copying") is Task.selective_copy
    assert parse_task("MEMORIZATION") is Task.memorize
    with pytest.raises(ValueError, match="unknown task 'recal'"):
        parse_task("recal")


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="selective copy needs seq_len"):
        TaskSetting(task=Task.selective_copy, vocab_size=16, seq_len=32, num_train=8, num_tokens_to_copy=16)
    with pytest.raises(ValueError, match="frac_noise > 0 needs noise_vocab_size"):
        TaskSetting(task=Task.noisy_recall, vocab_size=16, seq_len=32, num_train=8, frac_noise=0.2)


def test_a_profile_rejects_two_settings_with_one_label() -> None:
    # scores and reports identify a setting by its label: two alike in one task would be merged into one
    short = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=16, num_train=64, num_test=32)
    long = short.model_copy(update={"seq_len": 48})
    base = dict(name="mine", description="two lengths", train=PROFILES["tiny"].train, lrs=(1e-3,), weight_decays=(0.0,))
    with pytest.raises(ValueError, match=r"context_recall settings share the label\(s\) \['context_recall\[baseline\]'\]"):
        Profile(**base, settings={Task.context_recall: (short, long)})
    labelled = long.model_copy(update={"change": "seq_len"})
    assert Profile(**base, settings={Task.context_recall: (short, labelled)}).num_trainings() == 2
