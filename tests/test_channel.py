"""The sandbox's wire: frames parse the same however the pipe splits them, a forged or oversized header is
refused before its payload is read, and logits travel as bf16 only where that is exact."""

from __future__ import annotations

import os
import random
import threading

import pytest
import torch

from mixerlab.sandbox.channel import FrameReader, ProtocolError, WorkerChannel, encode, encode_header
from mixerlab.sandbox.scoring import lossless_half

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
