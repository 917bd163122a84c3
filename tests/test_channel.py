"""The sandbox's wire: frames parse the same however the pipe splits them, a forged or oversized header is
refused before its payload is read, and logits travel as bf16 only where that is exact."""

from __future__ import annotations

import os
import random
import threading
from types import SimpleNamespace

import pytest
import torch

from mixerlab.sandbox.channel import FrameReader, ProtocolError, WorkerChannel, encode, encode_header
from mixerlab.evaluate.remote_scoring import lossless_half

KEY = b"k" * 32


def frames_of(sizes: list[int]) -> tuple[bytes, list[tuple[dict, bytes]]]:
    rng = random.Random(0)
    sent = [({"type": "logits", "n": i}, bytes(rng.randrange(256) for _ in range(size))) for i, size in enumerate(sizes)]
    return b"".join(encode(KEY, message, payload) for message, payload in sent), sent


@pytest.mark.parametrize("seed", range(5))
def test_frames_parse_the_same_whatever_the_chunks(seed: int) -> None:
    data, sent = frames_of([0, 5, 3000, 0, 70_000, 1])
    rng = random.Random(seed)
    reader, got, at = FrameReader(KEY), [], 0
    while at < len(data):
        step = rng.choice([1, 7, 100, 4096, 65_536])
        got += reader.feed(data[at : at + step])
        at += step
    assert [(m, bytes(p)) for m, p in got] == sent
    assert reader.pending == 0


def test_read_from_a_pipe_fills_each_payload_in_place() -> None:
    data, sent = frames_of([10, 3_000_000, 0, 200_000])
    read, write = os.pipe()
    writer = threading.Thread(target=lambda: (WorkerChannel(write, None, KEY)._write(data), os.close(write)))
    writer.start()
    reader, got = FrameReader(KEY), []
    while (frames := reader.read_from(read)) is not None:
        got += frames
    writer.join()
    os.close(read)
    assert [(m, bytes(p)) for m, p in got] == sent
    assert all(isinstance(p, bytearray) for _, p in got)  # writable: torch.frombuffer views it without a copy


def test_a_forged_or_oversized_header_is_refused_before_its_payload() -> None:
    forged = encode_header(b"x" * 32, {"type": "logits"}, 1 << 30)
    with pytest.raises(ProtocolError, match="signature"):
        FrameReader(KEY).feed(forged)  # refused with none of the 1 GiB payload sent
    oversized = encode_header(KEY, {"type": "logits"}, 8 << 30)
    with pytest.raises(ProtocolError, match="exceeds the limits"):
        FrameReader(KEY).feed(oversized)


def test_logits_go_as_bf16_only_where_that_is_exact() -> None:
    bf16_model = torch.randn(64, 100).bfloat16().float()
    bf16_model[:, 90:] = float("-inf")  # the vocabulary mask
    half, dtype = lossless_half(bf16_model)
    assert dtype == "bfloat16" and torch.equal(half.float(), bf16_model)
    fp32_model = torch.randn(64, 100)
    same, dtype = lossless_half(fp32_model)
    assert dtype == "float32" and same is fp32_model


class Loopback:
    """The worker's channel wired straight to a trusted scorer in this process: the same messages and payload
    bytes the pipe would carry, without a sandbox around them."""

    def __init__(self, scorer, slot_bytes: int | None = None) -> None:
        self.scorer, self.sent = scorer, []
        # with a slot size, RemoteScorer cuts its frames to fit shared slots (sandbox/shared.py) as it does in a worker
        self.slots = SimpleNamespace(slot_bytes=slot_bytes) if slot_bytes else None

    def send_bytes(self, message: dict, data: torch.Tensor) -> None:
        self.send(message, data.cpu().numpy().tobytes())

    def send(self, message: dict, payload: bytes = b"") -> None:
        self.sent.append(message)
        self.scorer.handle(dict(message), bytearray(payload))

    def request(self, message: dict, payload: bytes = b"") -> dict:
        return self.scorer.handle(dict(message), bytearray(payload))[0]


def test_a_member_padded_to_its_groups_vocabulary_ships_and_scores_its_own_classes_only() -> None:
    """A group pads vocabularies 256 and 512 to 512; the padded member's frames carry 256 classes, and both
    members score exactly as when each is evaluated alone at its own vocabulary."""
    from mixerlab.config import TrainConfig
    from mixerlab.evaluate.audit import serve
    from mixerlab.evaluate.remote_scoring import RemoteScorer, TrustedScorer, test_set_id
    from mixerlab.tasks import Task, TaskSetting
    from mixerlab.train.job import TrainJob
    from mixerlab.train.scoring import TestSet

    settings = [TaskSetting(task=Task.memorize, vocab_size=v, seq_len=32, num_train=256, num_test=128) for v in (256, 512)]
    jobs = {f"k{v.vocab_size}": TrainJob(setting=v, lr=1e-3, weight_decay=0.0) for v in settings}
    served = {test_set_id(s, 0): serve(s, 0, torch.Generator().manual_seed(1)) for s in settings}
    generator = torch.Generator().manual_seed(0)
    tables = [torch.randn(512, 512, generator=generator) for _ in settings]  # logits of a token: causal
    tables[0][:, 256:] = float("-inf")  # the padding of the 256-class member

    def evaluate(members: list[int], width: int, slot_bytes: int | None = None) -> tuple[list[list[float]], list[int]]:
        keys = [f"k{settings[m].vocab_size}" for m in members]
        scorer = TrustedScorer({k: jobs[k] for k in keys}, TrainConfig(), served, "fp32")
        tests = [served[test_set_id(settings[m], 0)] for m in members]
        channel = Loopback(scorer, slot_bytes)
        remote = RemoteScorer(channel, [TestSet(t.inputs, t.scored, vocab_size=settings[m].vocab_size)
                                        for m, t in zip(members, tests)])
        remote.begin(keys, [0] * len(members), list(range(len(members))))
        logits = torch.stack([tables[m][t.inputs][..., :width] for m, t in zip(members, tests)])
        metrics = remote.end() if remote.add(0, len(tests[0].inputs), logits) is None else None
        return metrics.tolist(), [m["vocab"] for m in channel.sent if m["type"] == "logits"]

    together, vocabs = evaluate([0, 1], 512)
    assert vocabs == [256, 512]  # the padding never crosses
    assert together == evaluate([0], 256)[0] + evaluate([1], 512)[0]
    assert 0.0 < together[0][2] < 1.0  # token accuracy of random logits: a real score, not a constant
    # cut into frames that fit 64 kB slots (16 rows x 16 positions x 256 bf16/fp32 classes each at most)
    cut, cut_vocabs = evaluate([0, 1], 512, slot_bytes=64 << 10)
    assert cut == together and len(cut_vocabs) > 2 * len(vocabs)


@pytest.mark.parametrize("num_test, eval_batch", [(128, 128), (1280, 128), (64, 16), (40, 128)])
def test_no_forward_call_holds_a_probe_and_its_example(num_test: int, eval_batch: int) -> None:
    """The trainer evaluates blocks of `forward_rows` served rows per call; every probe is served in another
    block than its example, so a mixer comparing the rows of its batch cannot pair them."""
    from mixerlab.evaluate.audit import serve
    from mixerlab.tasks import Task, TaskSetting
    from mixerlab.train.scoring import forward_rows

    setting = TaskSetting(task=Task.context_recall, vocab_size=16, seq_len=32, num_train=64, num_test=num_test)
    for seed in range(3):
        served = serve(setting, 0, torch.Generator().manual_seed(seed), eval_batch=eval_batch)
        block = forward_rows(len(served.inputs), setting.input_len, eval_batch)
        row_of = {int(o): r for r, o in enumerate(served.origin.tolist()) if o >= 0}
        assert len(served.probes) >= 8 and len(served.inputs) > block  # two blocks at least
        for probe in served.probes:
            assert probe.served // block != row_of[probe.original] // block
            assert torch.equal(served.inputs[probe.served, : probe.cut + 1],
                               served.inputs[row_of[probe.original], : probe.cut + 1])
        assert sorted(served.origin[served.origin >= 0].tolist()) == list(range(num_test))  # still a permutation


def test_forward_calls_cover_every_row_once_and_never_cross_a_block() -> None:
    from mixerlab.train.batched import forward_calls

    for rows, block, call in [(1300, 650, 200), (1300, 650, 1000), (136, 68, 68), (7, 4, 3), (5, 3, 1)]:
        calls = forward_calls(rows, block, call)
        assert [r for start, stop in calls for r in range(start, stop)] == list(range(rows))
        assert all(stop - start <= call and start // block == (stop - 1) // block for start, stop in calls)


def test_a_vocabulary_wider_than_the_model_ships_the_head_and_scores_as_the_logits_would() -> None:
    """Memorize at 96 and 200 classes on a width-32 model: the worker ships each member's head once per epoch
    and the head's inputs per chunk (no logits), far fewer bytes; the parent's scores match in-process scoring
    of the same trainings, and the causality probes still hold."""
    from mixerlab.config import TrainConfig
    from mixerlab.evaluate.audit import serve
    from mixerlab.mixers import resolve_mixer
    from mixerlab.evaluate.remote_scoring import RemoteScorer, TrustedScorer, test_set_id
    from mixerlab.tasks import Task, TaskSetting
    from mixerlab.train.batched import BatchedTrainer
    from mixerlab.train.job import TrainJob
    from mixerlab.train.scoring import Scoring, TestSet

    train = TrainConfig(d_model=32, batch_size=32, max_epochs=2)
    settings = [TaskSetting(task=Task.memorize, vocab_size=v, seq_len=16, num_train=64, num_test=64) for v in (96, 200)]
    jobs = [TrainJob(setting=s, lr=3e-3, weight_decay=0.0) for s in settings]
    keys = ["a", "b"]
    served = {test_set_id(s, 0): serve(s, 0, torch.Generator().manual_seed(3)) for s in settings}
    factory = resolve_mixer("delta_net").factory()
    here = BatchedTrainer(jobs, keys, train, factory).run()

    scorer = TrustedScorer(dict(zip(keys, jobs)), train, served, "fp32")
    channel = Loopback(scorer)

    def test_source(job) -> TestSet:
        entry = served[test_set_id(job.setting, job.seed)]
        return TestSet(entry.inputs, entry.scored)

    remote = Scoring(test_source=test_source, remote=lambda tests: RemoteScorer(channel, tests))
    there = BatchedTrainer(jobs, keys, train, factory, scoring=remote).run()
    kinds = [m["type"] for m in channel.sent]
    assert "logits" not in kinds and kinds.count("head") == 2 * 2  # two members, two epochs
    assert {m["dim"] for m in channel.sent if m["type"] == "features"} == {32}
    for a, b in zip(here, there):
        assert len(a.history) == len(b.history) == 2
        for x, y in zip(a.history, b.history):
            assert y.test_loss == pytest.approx(x.test_loss, rel=1e-5)
            assert y.test_acc == pytest.approx(x.test_acc, abs=1e-6)
            assert y.test_token_acc == pytest.approx(x.test_token_acc, abs=1e-6)
    assert scorer.probes_checked > 0 and scorer.largest_leak < 1e-5 and scorer.failure is None


def test_features_without_a_head_or_logits_after_one_are_refused() -> None:
    from mixerlab.config import TrainConfig
    from mixerlab.evaluate.audit import serve
    from mixerlab.evaluate.remote_scoring import TrustedScorer, test_set_id
    from mixerlab.tasks import Task, TaskSetting
    from mixerlab.train.job import TrainJob

    setting = TaskSetting(task=Task.memorize, vocab_size=96, seq_len=16, num_train=64, num_test=64)
    served = {test_set_id(setting, 0): serve(setting, 0, torch.Generator().manual_seed(0))}
    rows = int(served[test_set_id(setting, 0)].scored[:4].sum())

    def scorer() -> TrustedScorer:
        return TrustedScorer({"k": TrainJob(setting=setting, lr=1e-3, weight_decay=0.0)}, TrainConfig(), served, "fp32")

    features = {"type": "features", "key": "k", "epoch": 0, "start": 0, "stop": 4, "dim": 8, "dtype": "float32"}
    with pytest.raises(ProtocolError, match="without a head"):
        scorer().handle(features, bytearray(rows * 8 * 4))
    head = {"type": "head", "key": "k", "epoch": 0, "vocab": 96, "dim": 8, "dtype": "float32"}
    with pytest.raises(ProtocolError, match="bytes of float32"):  # a head short of its bias
        scorer().handle(head, bytearray(96 * 8 * 4))
    with pytest.raises(ProtocolError, match="classes for a 96-token task"):
        scorer().handle({**head, "vocab": 95}, bytearray((95 * 8 + 95) * 4))
    s = scorer()
    s.handle(head, bytearray((96 * 8 + 96) * 4))
    logits = {"type": "logits", "key": "k", "epoch": 0, "start": 0, "stop": 4, "vocab": 96}
    with pytest.raises(ProtocolError, match="after its head"):
        s.handle(logits, bytearray(rows * 96 * 4))
    with pytest.raises(ProtocolError, match="without a head of 16"):
        s.handle({**features, "dim": 16}, bytearray(rows * 16 * 4))
    s.handle(features, bytearray(rows * 8 * 4))  # the right frame is taken
    assert s.current["k"].received == 4


def test_the_worker_imports_everything_it_watches_before_its_snapshot() -> None:
    """The worker imports the entry points' modules before its integrity snapshot and lock-down: every trusted
    module the snapshot watches must be loaded by then (a module imported later, inside the entry point, would
    be neither warm in a spare worker nor watched)."""
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            "from mixerlab.sandbox.entry import KNOWN_MODULES\n"
            "from mixerlab.sandbox.integrity import WATCHED_MODULES\n"
            "[importlib.import_module(m) for m in KNOWN_MODULES]\n"
            "print(sorted(m for m in WATCHED_MODULES if m not in sys.modules and m != 'mixerlab.sandbox.worker'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"watched but not imported before the snapshot: {out}"
