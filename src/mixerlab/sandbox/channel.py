"""The wire between the sandbox worker and its parent: length-prefixed frames, each a JSON header and an
optional binary payload (test logits), the header signed with a per-run key.

The worker writes frames to one pipe and reads replies from another. Everything the parent reads came
from a process that ran candidate code, so `FrameReader` treats it as hostile data: bounded sizes, JSON
only, and a valid HMAC over the header and the payload's length with the key the parent handed to the trusted
worker code on stdin (code that merely finds the pipe cannot forge a frame; payloads, up to hundreds of MB of
logits, are not hashed: only the worker's own code writes after a signed header). Message contents are validated by their
consumers (pydantic models in evaluate/remote_scoring.py and check/__init__.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import threading
from typing import Any

HEADER = struct.Struct(">IQ32s")  # header bytes, payload bytes, HMAC-SHA256
MAX_HEADER_BYTES = 4 << 20
MAX_PAYLOAD_BYTES = 4 << 30


class ProtocolError(ValueError):
    """A frame that is not what the trusted worker code writes: the worker is stopped and the run fails."""


def _mac(key: bytes, header: bytes, payload_len: int) -> bytes:
    return hmac.new(key, header + payload_len.to_bytes(8, "big"), hashlib.sha256).digest()


def encode_header(key: bytes, message: dict[str, Any], payload_len: int = 0) -> bytes:
    """The frame's prefix and signed JSON header; the payload's `payload_len` bytes follow it."""
    header = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(header), payload_len, _mac(key, header, payload_len)) + header


def encode(key: bytes, message: dict[str, Any], payload: bytes = b"") -> bytes:
    return encode_header(key, message, len(payload)) + payload


class FrameReader:
    """Incremental parser of frames from bytes as they arrive.

    A header is verified (size limits, signature) before its payload is allocated; the payload then goes
    straight into one buffer of its final size (`read_from` reads the pipe into it), so a frame of hundreds of
    MB of logits is copied once, not re-buffered chunk by chunk. Payloads come out as writable `bytearray`s
    (`torch.frombuffer` views them without a copy)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.buffer = bytearray()  # the prefix and header of the next frame, as far as it has arrived
        self._message: dict[str, Any] | None = None  # a verified header whose payload is still arriving
        self._payload = bytearray()
        self._filled = 0

    def feed(self, chunk: bytes) -> list[tuple[dict[str, Any], bytes]]:
        frames: list[tuple[dict[str, Any], bytes]] = []
        data = memoryview(chunk)
        while True:
            if self._message is None:
                self.buffer += data
                data = memoryview(self._parse_header())
                if self._message is None:
                    return frames  # the header is not complete yet
            take = min(len(data), len(self._payload) - self._filled)
            self._payload[self._filled : self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
            if self._filled < len(self._payload):
                return frames
            frames.append(self._finish())

    def read_from(self, fd: int, limit: int = 1 << 20) -> list[tuple[dict[str, Any], bytes]] | None:
        """Read what the pipe `fd` has (one read) and return the frames it completed; None at end of file."""
        if self._message is not None and self._filled < len(self._payload):
            read = os.readv(fd, [memoryview(self._payload)[self._filled :]])
            if not read:
                return None
            self._filled += read
            return [self._finish()] + self.feed(b"") if self._filled == len(self._payload) else []
        chunk = os.read(fd, limit)
        return self.feed(chunk) if chunk else None

    def _finish(self) -> tuple[dict[str, Any], bytes]:
        assert self._message is not None
        frame = (self._message, self._payload)
        self._message, self._payload, self._filled = None, bytearray(), 0
        return frame

    def _parse_header(self) -> bytes:
        """If the buffer holds a whole prefix and header, verify it, start its payload and return the bytes
        that followed it (they belong to the payload or to later frames)."""
        if len(self.buffer) < HEADER.size:
            return b""
        header_len, payload_len, mac = HEADER.unpack_from(self.buffer)
        if header_len > MAX_HEADER_BYTES or payload_len > MAX_PAYLOAD_BYTES:
            raise ProtocolError(f"a frame of {header_len} + {payload_len} bytes exceeds the limits")
        end = HEADER.size + header_len
        if len(self.buffer) < end:
            return b""
        header = bytes(self.buffer[HEADER.size : end])
        rest = bytes(self.buffer[end:])
        self.buffer = bytearray()
        if not hmac.compare_digest(mac, _mac(self.key, header, payload_len)):
            raise ProtocolError("a frame with a wrong signature (not written by mixerlab's worker code)")
        try:
            message = json.loads(header)
        except ValueError as err:
            raise ProtocolError(f"a frame header that is not JSON ({err})") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError("a frame header without a message type")
        self._message, self._payload, self._filled = message, bytearray(payload_len), 0
        return rest

    @property
    def pending(self) -> int:
        return len(self.buffer) + (len(self._payload) - self._filled if self._message is not None else 0)


class WorkerChannel:
    """The worker's end: `send` frames to the parent, `send_bytes` a payload through a shared slot where there
    are slots (sandbox/shared.py), `request` a reply (scores) and wait for it.

    Safe to share between threads (groups training at once): a frame is written whole, and a request holds the
    channel until its reply is read, so each reply goes to the thread that asked. The parent keys every frame by
    training, so frames of different groups may interleave."""

    def __init__(self, out_fd: int, reply_fd: int | None, key: bytes, slots: Any = None) -> None:
        self.out_fd, self.reply_fd, self.key = out_fd, reply_fd, key
        self._lock = threading.RLock()
        self.slots = slots  # a shared.WorkerSlots, or None: payloads go through the pipe
        self._reader: FrameReader | None = None
        self._replies: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any], payload: bytes = b"") -> None:
        with self._lock:
            self._write(encode_header(self.key, message, len(payload)))
            self._write(payload)  # not copied into the header's buffer: logits can be hundreds of MB

    def send_bytes(self, message: dict[str, Any], data: Any) -> None:
        """Send `data` (a 1-D uint8 torch tensor, on any device) as the frame's payload: copied into a free
        shared slot when it fits one, else through the pipe."""
        slots = self.slots
        size = int(data.numel())
        if slots is None or size > slots.slot_bytes or self.reply_fd is None:
            self.send(message, memoryview(data.cpu().numpy()))
            return
        with self._lock:
            if data.is_cuda and not slots.pinned:
                slots.pin()
            slot = slots.next
            slots.next = (slot + 1) % slots.slots
            while slot in slots.busy:
                self._read_replies()  # the parent answers "freed" once it has its own copy of the slot
            slots.views()[slot][:size].copy_(data)
            slots.busy.add(slot)
            self.send({**message, "slot": slot, "bytes": size})

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.out_fd, view)
            view = view[written:]

    def _read_replies(self) -> None:
        """Read what the parent has answered (one blocking read): freed slots are noted, replies queued."""
        if self.reply_fd is None:
            raise RuntimeError("this worker has no reply channel")
        if self._reader is None:
            self._reader = FrameReader(self.key)
        chunk = os.read(self.reply_fd, 1 << 16)
        if not chunk:
            raise EOFError("the parent closed the reply channel")
        for message, _ in self._reader.feed(chunk):
            if message.get("type") == "freed" and self.slots is not None:
                self.slots.busy.discard(message.get("slot"))
            else:
                self._replies.append(message)

    def request(self, message: dict[str, Any], payload: bytes = b"") -> dict[str, Any]:
        if self.reply_fd is None:
            raise RuntimeError("this worker has no reply channel")
        with self._lock:
            self.send(message, payload)
            while not self._replies:
                self._read_replies()
            return self._replies.pop(0)
