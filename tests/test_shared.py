"""Shared-memory slots for the worker's payloads (sandbox/shared.py): the parent gets the same bytes as through
the pipe, in order, with the slot fields gone; a frame that names a slot wrongly, or a worker that lets the
parent's replies pile up, stops the worker; the worker cannot shrink the shared file under the parent."""

from __future__ import annotations

import os

import pytest

from mixerlab.sandbox import SandboxLimits, run_sandboxed
from mixerlab.evaluate.remote_scoring import pieces
from mixerlab.sandbox.shared import SharedSlots

LIMITS = SandboxLimits(timeout_s=120, memory_gb=3.0)
SLOT = 1 << 20

SENDER = """
import torch
sizes = [700_000, 0, 1_048_576, 3_000_000, 5, 900_000, 800_000, 700_000, 1]  # 3 MB: over a slot, so the pipe
for n, size in enumerate(sizes):
    data = (torch.arange(size, dtype=torch.int64) * (n + 7) % 251).to(torch.uint8)
    channel.send_bytes({"type": "blob", "n": n}, data)
send({"type": "asked", "reply": channel.request({"type": "ask"})})
"""


def blobs(slot_bytes: int) -> tuple[list[tuple[dict, bytes]], object]:
    got: list[tuple[dict, bytes]] = []

    def handle(message: dict, payload: bytes):
        if message["type"] == "blob":
            got.append((message, bytes(payload)))
        if message["type"] == "ask":
            return {"type": "answer", "blobs": len(got)}, b""
        return None

    outcome = run_sandboxed({"kind": "run", "source": SENDER}, LIMITS, handle, shared_slot_bytes=slot_bytes)
    return got, outcome


def test_payloads_through_shared_slots_arrive_as_through_the_pipe() -> None:
    shared, outcome = blobs(SLOT)
    assert outcome.status == "ok", outcome.output_tail
    piped, outcome_piped = blobs(0)
    assert outcome_piped.status == "ok", outcome_piped.output_tail
    assert [m for m, _ in shared] == [{"type": "blob", "n": n} for n in range(9)]  # in order, no slot fields
    assert shared == piped
    assert [len(p) for _, p in shared] == [700_000, 0, 1_048_576, 3_000_000, 5, 900_000, 800_000, 700_000, 1]
    # the worker's request got its answer although "freed" replies were queued before it
    asked = next(m for m in outcome.messages if m["type"] == "asked")
    assert asked["reply"] == {"type": "answer", "blobs": 9}


@pytest.mark.parametrize("frame, error", [
    ({"type": "blob", "slot": 2, "bytes": 1}, "names shared slot 2"),
    ({"type": "blob", "slot": 0, "bytes": SLOT + 1}, f"bytes in a shared slot of {SLOT}"),
    ({"type": "blob", "slot": "0", "bytes": 1}, "names shared slot '0'"),
])
def test_a_frame_that_names_a_slot_wrongly_stops_the_worker(frame: dict, error: str) -> None:
    source = f"channel.send({frame!r})\nimport time\ntime.sleep(30)"
    outcome = run_sandboxed({"kind": "run", "source": source}, LIMITS, lambda m, p: None, shared_slot_bytes=SLOT)
    assert outcome.status == "protocol"
    assert error in outcome.protocol_error
    assert outcome.seconds < 25


def test_a_slot_frame_to_a_parent_that_gave_no_slots_stops_the_worker() -> None:
    source = "channel.send({'type': 'blob', 'slot': 0, 'bytes': 1})\nimport time\ntime.sleep(30)"
    outcome = run_sandboxed({"kind": "run", "source": source}, LIMITS, lambda m, p: None)
    assert outcome.status == "protocol" and "given none" in outcome.protocol_error


def test_a_worker_that_never_reads_its_replies_cannot_stall_the_parent() -> None:
    source = "for _ in range(100_000):\n    channel.send({'type': 'blob', 'slot': 0, 'bytes': 0})\nimport time\ntime.sleep(60)"
    outcome = run_sandboxed({"kind": "run", "source": source}, LIMITS, lambda m, p: None, shared_slot_bytes=SLOT)
    assert outcome.status == "protocol" and "unread" in outcome.protocol_error
    assert outcome.seconds < 50


def test_the_shared_file_cannot_be_resized_under_the_parent() -> None:
    slots = SharedSlots.create(slots=2, slot_bytes=4096)
    assert slots is not None  # Linux: memfd and seals exist
    try:
        writable = os.open(f"/proc/self/fd/{slots.fd}", os.O_RDWR)  # as the worker holds it
        try:
            for size in (0, 4096, 1 << 20):
                with pytest.raises(PermissionError):
                    os.ftruncate(writable, size)
        finally:
            os.close(writable)
        assert os.fstat(slots.fd).st_size == 2 * 4096
    finally:
        slots.close()


@pytest.mark.parametrize("per_row, limit, expected", [
    ([2, 2, 2, 2], None, [(0, 4)]),
    ([2, 2, 2, 2], 4 * 5, [(0, 2), (2, 4)]),
    ([2, 9, 1, 0, 1], 4 * 4, [(0, 1), (1, 2), (2, 5)]),  # a row over the limit goes alone
    ([0, 0], 4, [(0, 2)]),
])
def test_rows_are_cut_into_pieces_that_fit_a_slot(per_row: list[int], limit: int | None, expected: list) -> None:
    assert pieces(per_row, 4, limit) == expected
