"""Shared-memory slots for the worker's test logits, on CUDA: a memorize epoch of `quick` ships 1.3 GB, and
through the pipe (about 1 GB/s) the worker moved at the pipe's pace. Measured on an H100 the slots freed the
worker from it but finished no more trainings: the parent's handling of each frame bounds that task
(benchmarks/results/profile_cost_notes.md).

The parent creates one sealed memory file (Linux `memfd`) of `slots x slot_bytes` and hands it to the worker.
The worker copies a payload into a free slot (straight from the GPU, into page-locked memory where CUDA can
pin it) and sends a small signed frame naming the slot and its length instead of the payload; the parent
copies the bytes out into memory of its own before it looks at them, answers "freed", and hands the copy to
its frame handler as if it had come through the pipe. So the worker can scribble on a slot at any time and
change nothing the parent has already taken, and what the parent scores is exactly what it copied.

The file is sealed against shrinking and growing before the worker sees it: a worker that truncates it gets
EPERM instead of making the parent's reads fault. Where memfd or sealing is missing (not Linux), no slots
are made and payloads go through the pipe as before; both paths give the same bytes (tests/test_shared.py).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from typing import Any

from .channel import ProtocolError

SLOT_BYTES = 64 << 20  # a slot holds 256 rows of a 8192-token memorize test set (16 scored positions, bf16)
SLOTS = 2  # the worker fills one while the parent copies the other out


class SharedSlots:
    """The parent's end: the sealed file, mapped read-only, and the copying out of a named slot."""

    def __init__(self, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES) -> None:
        if slots < 1 or slot_bytes < 1:
            raise ValueError(f"shared slots need at least one slot of at least one byte, not {slots} x {slot_bytes}")
        self.slots, self.slot_bytes = slots, slot_bytes
        self.fd = os.memfd_create("mixerlab-logits", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, slots * slot_bytes)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self.map = mmap.mmap(self.fd, slots * slot_bytes, prot=mmap.PROT_READ)
        except BaseException:
            os.close(self.fd)
            raise

    @classmethod
    def create(cls, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES) -> "SharedSlots | None":
        """Slots where this system has sealed memory files, else None (payloads then use the pipe)."""
        if not hasattr(os, "memfd_create") or not hasattr(fcntl, "F_ADD_SEALS"):
            return None
        try:
            return cls(slots, slot_bytes)
        except OSError:
            return None

    def environment(self) -> dict[str, str]:
        """What the worker needs to map the slots (the fd itself is passed with `pass_fds`)."""
        return {"MIXERLAB_SANDBOX_SLOTS": f"{self.fd}:{self.slots}:{self.slot_bytes}"}

    def take(self, message: dict[str, Any], payload_len: int) -> tuple[dict[str, Any], bytearray, int]:
        """A frame that names a slot, validated as hostile data: the message without the slot fields, a private
        copy of the slot's bytes, and the slot to report freed."""
        slot, size = message.get("slot"), message.get("bytes")
        if type(slot) is not int or not 0 <= slot < self.slots:
            raise ProtocolError(f"a frame names shared slot {slot!r}; there are {self.slots}")
        if type(size) is not int or not 0 <= size <= self.slot_bytes:
            raise ProtocolError(f"a frame claims {size!r} bytes in a shared slot of {self.slot_bytes}")
        if payload_len:
            raise ProtocolError("a frame with both a shared slot and a payload")
        copy = bytearray(size)
        start = slot * self.slot_bytes
        memoryview(copy)[:] = memoryview(self.map)[start : start + size]
        rest = {k: v for k, v in message.items() if k not in ("slot", "bytes")}
        return rest, copy, slot

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class WorkerSlots:
    """The worker's end: the same file mapped writable, one byte tensor per slot, and which slots the parent
    has not yet copied out."""

    def __init__(self, spec: str) -> None:
        fd, slots, slot_bytes = (int(part) for part in spec.split(":"))
        self.slots, self.slot_bytes = slots, slot_bytes
        self.map = mmap.mmap(fd, slots * slot_bytes)
        os.close(fd)
        self.busy: set[int] = set()
        self.next = 0
        self._views: list[Any] | None = None
        self.pinned = False

    def views(self) -> list[Any]:
        if self._views is None:
            import torch

            whole = torch.frombuffer(self.map, dtype=torch.uint8)
            self._views = [whole[i * self.slot_bytes : (i + 1) * self.slot_bytes] for i in range(self.slots)]
        return self._views

    def pin(self) -> None:
        """Page-lock the slots for CUDA (copies from the GPU then run at the bus's speed); best effort."""
        import torch

        self.pinned = True
        try:
            torch.cuda.cudart().cudaHostRegister(self.views()[0].data_ptr(), self.slots * self.slot_bytes, 0)
        except Exception:  # noqa: BLE001 - pageable memory still works, only slower
            pass
