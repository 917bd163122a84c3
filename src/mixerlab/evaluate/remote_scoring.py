"""Trusted scoring across the sandbox boundary: the worker ships test logits, the parent scores them.

Worker side, `RemoteScorer` (a `train.scoring.Scorer`): for every chunk of test rows it sends the logits of the
scored positions, and at the end of an evaluation it asks the parent for the metrics, which the trainer needs
for its stop rule. Parent side, `TrustedScorer`: holds the served test sets (evaluate/audit.py) with their
targets, validates every frame as hostile data, checks the causality probes, computes MAD's metrics with the
same functions as the in-process scorer, keeps the authoritative history of every training, and builds the
`TrainResult`s itself. What the worker reports of its own (train loss, seconds, trainer kind, device) is
recorded as reported, never as a score.

Where a task's vocabulary is wider than the model (memorize: up to 8,192 classes at width 128), the worker ships
the inputs of the language model's head instead of its outputs: once per epoch the head's weights and bias, then
per test chunk the normalised hidden states at the scored positions, in the dtype the head computes in. The
parent applies the head itself and scores the logits it computed as it scores shipped ones: up to 64x fewer bytes
(on an H100 memorize was bound by handling 1.3 GB of logits per epoch). A worker gains nothing by it: any logits
it could make this way it could have shipped directly.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mixerlab.config import TrainConfig
from mixerlab.evaluate.audit import AUDIT_TOLERANCE, ServedTestSet, leaks
from mixerlab.tasks import IGNORE_INDEX, TaskSetting
from mixerlab.train.common import make_result
from mixerlab.train.job import TrainJob
from mixerlab.train.metrics import position_stats
from mixerlab.train.result import EpochRecord, TrainResult, select_epochs
from mixerlab.train.schedule import batches_per_epoch
from mixerlab.train.scoring import TestSet, epoch_metrics

from mixerlab.sandbox.channel import ProtocolError, WorkerChannel

MAX_VOCAB = 1 << 16


def test_set_id(setting: TaskSetting, seed: int) -> str:
    """The name of a (setting, seed) test set in the file the parent writes for the worker."""
    return json.dumps([setting.key(), seed], sort_keys=True)


# --- the worker's end ------------------------------------------------------------------------------


class RemoteScorer:
    """Ships the scored positions' logits to the parent; gets the metrics back (see module docstring)."""

    def __init__(self, channel: WorkerChannel, tests: list[TestSet], verify: Callable[[str], None] | None = None) -> None:
        self.channel, self.verify = channel, verify
        self.scored = [t.scored for t in tests]
        self.vocab = [t.vocab_size for t in tests]  # each member's own classes: a group's padding is not shipped

    def begin(self, keys: list[str], epochs: list[int], members: list[int]) -> None:
        self.keys, self.epochs, self.members = keys, epochs, members
        self.head_dtype: torch.dtype | None = None  # set by `head`: chunks are then the head's inputs

    def ships_features(self, width: int) -> bool:
        """Whether the head's inputs (`width` values a position) are fewer bytes than its outputs."""
        return max(v or 0 for v in self.vocab) > width

    def head(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        """Ship each member's head ([M, V, D] weight, [M, V] bias) as the head computes with it (`dtype`: the
        autocast dtype, else float32); the chunks `add` gets after this are then [M, rows, L, D] features."""
        self.head_dtype = dtype
        for m, member in enumerate(self.members):
            vocab = self.vocab[member] or weight.shape[1]
            own_bias = bias[m, :vocab] if bias is not None else weight.new_zeros(vocab)
            data = torch.cat([weight[m, :vocab].reshape(-1), own_bias]).to(dtype)
            self.channel.send_bytes({"type": "head", "key": self.keys[m], "epoch": self.epochs[m], "vocab": vocab,
                                     "dim": weight.shape[-1], "dtype": WIRE_NAMES[dtype]},
                                    data.contiguous().view(torch.uint8))

    def add(self, start: int, stop: int, logits: torch.Tensor) -> None:
        """logits [M, rows, L, V], or after `head` the head's inputs [M, rows, L, D]."""
        for m, member in enumerate(self.members):
            chunk = self.scored[member][start:stop]
            per_row = chunk.sum(1).tolist()  # scored positions per row, to cut frames that fit a shared slot
            scored = chunk.to(logits.device)
            if self.head_dtype is not None:  # the head's inputs, as exactly what the head multiplies
                rows, dtype, kind = logits[m][scored].to(self.head_dtype), WIRE_NAMES[self.head_dtype], "features"
            else:
                # a member padded to the group's vocabulary ships its own classes only: the padding is -inf,
                # which changes no softmax, argmax or macro accuracy (up to 3x fewer bytes in a memorize group)
                own = logits[m][..., : self.vocab[member] or logits.shape[-1]]
                (rows, dtype), kind = lossless_half(own[scored].float()), "logits"
            ends = [0, *accumulate(per_row)]  # where each row's scored positions start among `rows`
            for first, last in pieces(per_row, rows.shape[-1] * rows.element_size(), self.piece_bytes()):
                data = rows[ends[first] : ends[last]].contiguous().view(torch.uint8).reshape(-1)
                self.channel.send_bytes({"type": kind, "key": self.keys[m], "epoch": self.epochs[m],
                                         "start": start + first, "stop": start + last,
                                         ("vocab" if kind == "logits" else "dim"): rows.shape[-1], "dtype": dtype},
                                        data)

    def piece_bytes(self) -> int | None:
        """The largest frame that goes through a shared slot (None: no slots, one frame per chunk of rows)."""
        return self.channel.slots.slot_bytes if self.channel.slots is not None else None

    def end(self) -> torch.Tensor:
        if self.verify:
            self.verify("during training")
        reply = self.channel.request({"type": "score", "keys": self.keys, "epochs": self.epochs})
        if "error" in reply:
            raise RuntimeError(f"the trusted scorer stopped the evaluation: {reply['error']}")
        return torch.tensor(reply["metrics"], dtype=torch.float32, device=self.scored[0].device)


def pieces(per_row: list[int], row_bytes: int, limit: int | None) -> list[tuple[int, int]]:
    """Consecutive row ranges whose scored positions take at most `limit` bytes each (a row larger than the
    limit goes alone); the whole range in one piece without a limit."""
    if limit is None or not per_row:
        return [(0, len(per_row))]
    out, first, size = [], 0, 0
    for row, count in enumerate(per_row):
        if size and size + count * row_bytes > limit:
            out.append((first, row))
            first, size = row, 0
        size += count * row_bytes
    out.append((first, len(per_row)))
    return out


def lossless_half(rows: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The logits as bfloat16 where that loses nothing (a bf16 model's head: every value is a bf16 number), else
    as they are: half the bytes to ship on CUDA, the same scores (the parent widens them back exactly)."""
    half = rows.to(torch.bfloat16)
    return (half, "bfloat16") if torch.equal(half.float(), rows) else (rows, "float32")


WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
WIRE_NAMES = {dtype: name for name, dtype in WIRE_DTYPES.items()}
MAX_WIDTH = 4096  # the widest head input a features frame may carry


# --- the parent's end: messages, validated ----------------------------------------------------------


def _tensor(payload: bytes, dtype: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """A frame's payload as a tensor of `shape` (on the CPU, no copy), refused unless its size is exactly that."""
    wire = WIRE_DTYPES[dtype]
    count = 1
    for n in shape:
        count *= n
    if len(payload) != count * wire.itemsize:
        raise ProtocolError(f"{len(payload)} bytes of {dtype} for {what}")
    if not count:
        return torch.zeros(shape, dtype=wire)
    buffer = payload if isinstance(payload, bytearray) else bytearray(payload)  # frombuffer wants it writable
    return torch.frombuffer(buffer, dtype=wire).view(shape)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


WireDtype = Literal["float32", "bfloat16"]


class _TrainingMessage(_Message):
    """A frame about one training's evaluation in progress."""

    key: str
    epoch: int = Field(ge=0)


class _RowsMessage(_TrainingMessage):
    """Values for the scored positions of test rows start..stop."""

    start: int = Field(ge=0)
    stop: int = Field(gt=0)


class LogitsMessage(_RowsMessage):
    type: Literal["logits"]
    vocab: int = Field(ge=1, le=MAX_VOCAB)
    dtype: WireDtype = "float32"


class FeaturesMessage(_RowsMessage):
    type: Literal["features"]
    dim: int = Field(ge=1, le=MAX_WIDTH)
    dtype: WireDtype


class HeadMessage(_TrainingMessage):
    type: Literal["head"]
    vocab: int = Field(ge=1, le=MAX_VOCAB)
    dim: int = Field(ge=1, le=MAX_WIDTH)
    dtype: WireDtype


class ScoreMessage(_Message):
    type: Literal["score"]
    keys: list[str] = Field(min_length=1)
    epochs: list[int]


class TrainedMessage(_Message):
    type: Literal["trained"]
    key: str
    train_losses: list[float]
    seconds: float = Field(ge=0, le=1e7)
    trainer: Literal["batched", "sequential"]
    device: str = Field(pattern=r"^(cpu|cuda(:\d{1,2})?)$")


class PartsMessage(_Message):
    type: Literal["parts"]
    seconds: dict[str, float] = Field(max_length=32)


class StepsMessage(_Message):
    type: Literal["steps"]
    member_steps: int = Field(ge=0, le=10**12)


@dataclass
class _Layout:
    """A served test set's scored positions, flattened in the order the worker ships them (served rows in order,
    a row's positions in order), with what scoring needs at each, on the scorer's device. Built once per test
    set: a frame for rows start..stop is then the flat range row_ptr[start]..row_ptr[stop], scored with a few
    kernels and no wait for the device (the per-row and per-probe searches it replaced cost ~20 ms a training and
    epoch on the parent, on quick's recall tasks)."""

    row_ptr: list[int]  # [rows + 1]: where each served row's positions start
    target: torch.Tensor  # [P] the target at each position; IGNORE_INDEX on probe rows (scored by the audit only)
    real: torch.Tensor  # [R] the positions on real test rows
    dest: torch.Tensor  # [R] where each goes in the original test set's [N * L] layout
    audit_flat: list[int]  # the positions the causality audit compares, ascending
    audit_at: torch.Tensor  # the same, on the device
    audit_slot: torch.Tensor  # for each, its row in the audit buffer
    audit_ranges: list[tuple[int, int, int, int]]  # per probe: its own rows [a, b) and its example's [c, d)
    slots: int
    targets: torch.Tensor  # [N, L] the original test set's targets

    @classmethod
    def of(cls, served: ServedTestSet, device: torch.device) -> "_Layout":
        rows, positions = served.scored.nonzero(as_tuple=True)
        row_ptr = [0, *accumulate(served.scored.sum(1).tolist())]
        origin = served.origin[rows]
        is_real = origin >= 0
        target = torch.full((len(rows),), IGNORE_INDEX, dtype=torch.long)
        target[is_real] = served.targets[origin[is_real], positions[is_real]]
        real = is_real.nonzero().flatten()
        length = served.targets.shape[1]
        slot = torch.full((len(rows),), -1, dtype=torch.long)
        ranges, cursor = [], 0
        for probe in served.probes:
            shared = positions <= probe.cut
            span = []
            for mine in (rows == probe.served) & shared, (origin == probe.original) & shared:
                where = mine.nonzero().flatten()
                if (slot[where] >= 0).any():
                    raise RuntimeError("two probes share a scored position")  # serve() never makes such a set
                slot[where] = torch.arange(cursor, cursor + len(where))
                span += [cursor, cursor + len(where)]
                cursor += len(where)
            ranges.append(tuple(span))
        at = (slot >= 0).nonzero().flatten()
        return cls(row_ptr, target.to(device), real.to(device), (origin[real] * length + positions[real]).to(device),
                   at.tolist(), at.to(device), slot[at].to(device), ranges, cursor, served.targets.to(device))


@dataclass
class _Epoch:
    """One training's evaluation in progress: rows received so far and what they scored, per flat position of
    its test set's layout (on the scorer's device)."""

    epoch: int
    received: int = 0
    nll: torch.Tensor | None = None  # [P]
    preds: torch.Tensor | None = None  # [P]
    audit: torch.Tensor | None = None  # [slots, vocab]: the logits the causality audit compares
    vocab: int = 0
    head: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight [V, D], bias [V]) where features are shipped


class TrustedScorer:
    """The parent's side of one sandboxed evaluation; `handle` is run_sandboxed's frame handler."""

    def __init__(self, jobs: dict[str, TrainJob], train: TrainConfig, served: dict[str, ServedTestSet],
                 numerics: str, on_result: Callable[[TrainResult], None] | None = None,
                 on_steps: Callable[[int], None] | None = None, device: str = "cpu") -> None:
        self.jobs, self.train, self.served = jobs, train, served
        # where the shipped logits are reduced: the evaluation's GPU where there is one (a memorize epoch ships
        # ~600M logits; on the CPU their softmax was most of the evaluation), else here on the CPU
        self.device = torch.device(device)
        self.tolerance = AUDIT_TOLERANCE[numerics]
        self.on_result, self.on_steps = on_result, on_steps
        self.history: dict[str, list[list[float]]] = {key: [] for key in jobs}
        self.current: dict[str, _Epoch] = {}
        self.results: dict[str, TrainResult] = {}
        self.failure: str | None = None  # why the candidate failed the audit (a reason for its record)
        self.member_steps = 0
        self.largest_leak = 0.0
        self.probes_checked = 0
        self.worker_parts: dict[str, float] = {}  # the worker's own timing of its parts (a profile, not a score)
        self.layouts: dict[str, _Layout] = {}

    def _served(self, key: str) -> ServedTestSet:
        job = self.jobs[key]
        return self.served[test_set_id(job.setting, job.seed)]

    def _layout(self, key: str) -> _Layout:
        job = self.jobs[key]
        ident = test_set_id(job.setting, job.seed)
        if ident not in self.layouts:
            self.layouts[ident] = _Layout.of(self.served[ident], self.device)
        return self.layouts[ident]

    def handle(self, message: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes] | None:
        kind = message.get("type")
        try:
            if kind == "logits":
                self._logits(LogitsMessage.model_validate(message), payload)
            elif kind == "head":
                self._head(HeadMessage.model_validate(message), payload)
            elif kind == "features":
                self._features(FeaturesMessage.model_validate(message), payload)
            elif kind == "score":
                return {"type": "scores", "metrics": self._score(ScoreMessage.model_validate(message))}, b""
            elif kind == "trained":
                self._trained(TrainedMessage.model_validate(message))
            elif kind == "steps":
                steps = StepsMessage.model_validate(message).member_steps
                if self.on_steps and steps > self.member_steps:
                    self.on_steps(steps - self.member_steps)
                self.member_steps = max(self.member_steps, steps)
            elif kind == "parts":
                self.worker_parts = {name[:40]: seconds for name, seconds in
                                     PartsMessage.model_validate(message).seconds.items()}
            elif kind not in ("error", "done", "log"):
                raise ProtocolError(f"unexpected message {kind!r}")
        except ValidationError as err:
            raise ProtocolError(f"an invalid {kind!r} message ({err.errors()[0]['msg']})") from None
        return None

    def _epoch(self, key: str, epoch: int, vocab: int) -> _Epoch:
        """The evaluation in progress of training `key`, begun by its first frame of `epoch`."""
        if key not in self.jobs or key in self.results:
            raise ProtocolError(f"test outputs for a training that is not running ({key[:12]})")
        state = self.current.get(key)
        if state is None:
            if epoch != len(self.history[key]):
                raise ProtocolError(f"test outputs for epoch {epoch} of {key[:12]}, expected {len(self.history[key])}")
            if vocab != self.jobs[key].setting.vocab_size:  # the worker ships a member's own classes only
                raise ProtocolError(f"outputs over {vocab} classes for a {self.jobs[key].setting.vocab_size}-token task")
            layout = self._layout(key)
            positions = layout.row_ptr[-1]
            state = self.current[key] = _Epoch(
                epoch, nll=torch.zeros(positions, device=self.device),
                preds=torch.zeros(positions, dtype=torch.long, device=self.device),
                audit=torch.zeros(layout.slots, vocab, device=self.device), vocab=vocab)
        return state

    def _head(self, m: HeadMessage, payload: bytes) -> None:
        if m.key in self.current:
            raise ProtocolError(f"a head for {m.key[:12]} in the middle of an evaluation")
        state = self._epoch(m.key, m.epoch, m.vocab)
        values = _tensor(payload, m.dtype, (m.vocab * m.dim + m.vocab,), f"a {m.vocab} x {m.dim} head")
        values = values.to(self.device)
        state.head = (values[: m.vocab * m.dim].view(m.vocab, m.dim), values[m.vocab * m.dim :])

    def _features(self, m: FeaturesMessage, payload: bytes) -> None:
        state = self.current.get(m.key)
        if state is None or state.head is None or state.head[0].shape[1] != m.dim \
                or WIRE_DTYPES[m.dtype] != state.head[0].dtype:
            raise ProtocolError(f"features for {m.key[:12]} without a head of {m.dim} {m.dtype} inputs before them")
        weight, bias = state.head
        self._rows(m.key, m.epoch, m.start, m.stop, payload, m.dtype, m.dim,
                   lambda x: torch.nn.functional.linear(x, weight, bias).float())

    def _logits(self, m: LogitsMessage, payload: bytes) -> None:
        state = self._epoch(m.key, m.epoch, m.vocab)
        if m.vocab != state.vocab:
            raise ProtocolError(f"logits over {m.vocab} classes for {m.key[:12]} after {state.vocab} in this evaluation")
        if state.head is not None:
            raise ProtocolError(f"logits for {m.key[:12]} after its head: send features")
        self._rows(m.key, m.epoch, m.start, m.stop, payload, m.dtype, m.vocab, lambda x: x.float())

    def _rows(self, key: str, epoch: int, start: int, stop: int, payload: bytes, dtype: str, width: int,
              to_logits: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Score the test rows start..stop of one training's evaluation: `payload` holds `width` values for each
        scored position, which `to_logits` turns into the logits there (on this scorer's device). Nothing here
        waits for the device: the metrics are read once per evaluation, in `_score`."""
        state, served = self.current.get(key), self._served(key)
        if state is None or (epoch, start) != (state.epoch, state.received) or stop > len(served.inputs) \
                or stop <= start:
            raise ProtocolError(f"test outputs out of order for {key[:12]} (rows {start}..{stop}, epoch {epoch})")
        layout = self._layout(key)
        first, last = layout.row_ptr[start], layout.row_ptr[stop]
        values = _tensor(payload, dtype, (last - first, width), f"{last - first} scored positions x {width}")
        if self.device.type == "cuda":  # a page-locked copy goes to the GPU without waiting for it
            values = values.pin_memory().to(self.device, non_blocking=True)
        logits = to_logits(values)
        nll, preds = position_stats(logits, layout.target[first:last])  # 0 at probe rows (ignored targets)
        state.nll[first:last] = nll
        state.preds[first:last] = preds
        a, b = bisect_left(layout.audit_flat, first), bisect_left(layout.audit_flat, last)
        if b > a:
            state.audit[layout.audit_slot[a:b]] = logits[layout.audit_at[a:b] - first]
        state.received = stop

    def _score(self, m: ScoreMessage) -> list[list[float]]:
        if len(m.epochs) != len(m.keys) or len(set(m.keys)) != len(m.keys):
            raise ProtocolError("a score request with mismatched keys and epochs")
        rows = []
        for key, epoch in zip(m.keys, m.epochs):
            state = self.current.get(key)
            served = self._served(key) if key in self.jobs else None
            if state is None or served is None or state.epoch != epoch or state.received != len(served.inputs):
                raise ProtocolError(f"a score request for {key[:12]} epoch {epoch} before all its test rows arrived")
            layout = self._layout(key)
            shape = layout.targets.shape
            nll = torch.zeros(shape.numel(), device=self.device)
            preds = torch.zeros(shape.numel(), dtype=torch.long, device=self.device)
            nll[layout.dest] = state.nll[layout.real]
            preds[layout.dest] = state.preds[layout.real]
            rows.append(epoch_metrics(nll.view(1, *shape), preds.view(1, *shape), layout.targets[None], state.vocab,
                                      self.train.eval_batch_size)[0])
        changes = leaks([(self.current[key].audit[a:b], self.current[key].audit[c:d])
                         for key in m.keys for a, b, c, d in self._layout(key).audit_ranges])
        self._audit(m.keys, changes)
        metrics = torch.stack(rows).tolist()
        for key, row in zip(m.keys, metrics):
            self.history[key].append(row)
            del self.current[key]
        return metrics

    def _audit(self, keys: list[str], changes: list[float]) -> None:
        found = iter(changes)
        for key in keys:
            for probe in self._served(key).probes:
                change = next(found)
                self.probes_checked += 1
                self.largest_leak = max(self.largest_leak, change)
                if change > self.tolerance:
                    self.failure = (
                        f"causality audit failed during the scored evaluation of {self.jobs[key].setting.label} (epoch "
                        f"{self.current[key].epoch}): a copy of a test sequence with other tokens after position "
                        f"{probe.cut}, evaluated in another forward call, got other logits at positions <= {probe.cut} "
                        f"(relative change {change:.2e}, allowed {self.tolerance:g}); the mixer looks ahead, or mixes "
                        "the rows of its batch, when its test set is scored: make every output depend on its own row's "
                        "earlier tokens only")
                    raise ProtocolError(self.failure)

    def _trained(self, m: TrainedMessage) -> None:
        if m.key not in self.jobs or m.key in self.results:
            raise ProtocolError(f"a finished training that is not running ({m.key[:12]})")
        job, history = self.jobs[m.key], self.history[m.key]
        # a row is METRIC_NAMES: nll, macro accuracy, token accuracy, perplexity
        records = [EpochRecord(epoch=e, train_loss=0.0, test_loss=nll, test_acc=macro, test_token_acc=token, test_ppl=ppl)
                   for e, (nll, macro, token, ppl) in enumerate(history)]
        kept, stopped = select_epochs(records, self.train.stop_accuracy, self.train.patience) if records else ([], False)
        if not kept or not (stopped or len(kept) >= self.train.max_epochs):
            raise ProtocolError(f"the worker ended {job.label} after {len(history)} scored epochs, before it was done")
        if len(m.train_losses) != len(kept):
            raise ProtocolError(f"{len(m.train_losses)} train losses for {len(kept)} epochs")
        kept = [r.model_copy(update={"train_loss": loss}) for r, loss in zip(kept, m.train_losses)]
        steps = len(kept) * batches_per_epoch(job.setting.num_train, self.train.batch_size)
        result = make_result(job, m.key, kept, self.train, steps, m.seconds, m.trainer, m.device)
        self.results[m.key] = result
        if self.on_result:
            self.on_result(result)

