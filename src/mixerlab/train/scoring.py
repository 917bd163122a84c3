"""How a trainer's test-set outputs become MAD's epoch metrics, and who holds the answers.

A trainer produces logits on a test set; a `Scorer` turns them into (nll, macro accuracy, token accuracy,
perplexity) per member. In-process (`mixerlab eval` of a builtin mixer) the `LocalScorer` holds the test
targets and scores directly. Inside the sandbox the trainer gets a `TestSet` without targets and a scorer
that ships the logits of the scored positions to the trusted parent process, which alone holds the targets
and computes the metrics (mixerlab/evaluate/remote_scoring.py): candidate code never sees a test target and never
computes its own loss or score.

Every scorer reduces the same way: per scored position `metrics.position_stats` (nll, argmax), then MAD's
per-batch metrics over the test set in its original order, batches of `eval_batch_size` examples averaged
weighted by their size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from mixerlab.tasks import IGNORE_INDEX, generate

from .job import TrainJob
from .metrics import metrics_from_positions, position_stats, scatter_positions

METRIC_NAMES = ("nll", "macro_acc", "token_acc", "ppl")


EVAL_BLOCK_TOKENS = 65_536  # test tokens per member in one block of forward calls (2-6 blocks at quick's lengths)


def forward_rows(num_rows: int, length: int, eval_batch: int) -> int:
    """The rows of a block when a trainer evaluates a test set of `num_rows` rows of `length` tokens: blocks
    start at multiples of this, and a forward call never spans two (a trainer may split a block into smaller
    calls for memory). The trusted scorer (evaluate/audit.py `serve`) puts every causality probe in another
    block than its example, so no forward call holds both: a mixer that compares the rows of its batch, and
    looks ahead only where no other row shares the row's prefix, cannot recognise a probe by its partner.
    At least two blocks, whatever the size."""
    return max(1, min((num_rows + 1) // 2, max(eval_batch, EVAL_BLOCK_TOKENS // max(1, length))))


@dataclass(frozen=True)
class TestSet:
    """A test set as a trainer sees it: inputs [N, L] and the positions that are scored [N, L] (bool).
    `targets` [N, L] is there only where the scorer runs in the same process (trusted code). `vocab_size`: the
    classes of its task, where a group pads vocabularies to its largest (a remote scorer ships only these)."""

    inputs: torch.Tensor
    scored: torch.Tensor
    targets: torch.Tensor | None = None
    vocab_size: int | None = None

    def __len__(self) -> int:
        return len(self.inputs)


TestSource = Callable[[TrainJob], TestSet]  # the test set of a job's (setting, seed)
RemoteScorer = Callable[[list[TestSet]], "Scorer"]  # a scorer for a group, from its jobs' test sets (no targets)


def generated_test_set(job: TrainJob) -> TestSet:
    """The job's test set, generated here with its targets (the trusted, in-process source)."""
    data = generate(job.setting, "test", job.seed)
    return TestSet(data.inputs, data.targets != IGNORE_INDEX, data.targets)


@dataclass(frozen=True)
class Scoring:
    """Where a trainer's test sets come from and who scores them. The default generates them here, with
    their targets, and scores here; the sandbox worker reads served test sets (no targets) and scores remotely."""

    test_source: TestSource = generated_test_set
    remote: RemoteScorer | None = None


LOCAL_SCORING = Scoring()


class Scorer(Protocol):
    """One evaluation of some members of a group: `begin`, `add` every chunk of test rows in order, `end`."""

    def begin(self, keys: list[str], epochs: list[int], members: list[int]) -> None:
        """keys/epochs: the members' cache keys and the epoch just finished; members: their indices in the
        trainer's job list (which test set each uses)."""

    def ships_features(self, width: int) -> bool:
        """Whether this scorer wants the language model head's inputs (`width` per position) and the head itself,
        rather than the logits: a remote scorer does where the vocabulary is wider than the model."""

    def head(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        """The members' heads ([M, V, D], [M, V]) and the dtype they compute in; `add` then gets features."""

    def add(self, start: int, stop: int, logits: torch.Tensor) -> None:
        """logits [M, stop - start, L, V]: the members' outputs on rows start..stop of their test sets (after
        `head`: the head's inputs [M, stop - start, L, D])."""

    def end(self) -> torch.Tensor:
        """[M, 4] metrics in METRIC_NAMES order, on the trainer's device."""


def epoch_metrics(nll: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor, num_classes: int,
                  batch: int) -> torch.Tensor:
    """MAD's epoch metrics [M, 4] from per-position results [M, N, L] over whole test sets (original order):
    each batch of `batch` examples scored on its own, weighted by its size; M members at once."""
    members, n = targets.shape[:2]
    total = torch.zeros(members, 4, device=nll.device)
    for b0 in range(0, n, batch):
        b1 = min(n, b0 + batch)
        m = metrics_from_positions(nll[:, b0:b1].flatten(1), preds[:, b0:b1].flatten(1), targets[:, b0:b1].flatten(1),
                                   num_classes)
        total += torch.stack([m[name] for name in METRIC_NAMES], 1) * ((b1 - b0) / n)
    return total


class LocalScorer:
    """Scores in-process from the targets of each member's test set (trusted code only).

    targets [sum N, L]: the test sets of a group's jobs, concatenated; offsets: where each job's starts."""

    def __init__(self, targets: torch.Tensor, offsets: list[int], num_test: int, num_classes: int, eval_batch: int) -> None:
        self.targets, self.scored = targets, targets != IGNORE_INDEX
        self.offsets, self.num_test = offsets, num_test
        self.num_classes, self.eval_batch = num_classes, eval_batch

    def begin(self, keys: list[str], epochs: list[int], members: list[int]) -> None:
        device = self.targets.device
        self._rows = torch.tensor([self.offsets[i] for i in members], device=device)[:, None] \
            + torch.arange(self.num_test, device=device)
        self._targets = self.targets[self._rows]
        self._nll = torch.zeros(self._targets.shape, device=device)
        self._preds = torch.zeros(self._targets.shape, dtype=torch.long, device=device)

    def ships_features(self, width: int) -> bool:
        return False  # in-process the logits cross no boundary

    def head(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        raise TypeError("the local scorer takes logits, not features")

    def add(self, start: int, stop: int, logits: torch.Tensor) -> None:
        targets = self._targets[:, start:stop]
        scored = targets != IGNORE_INDEX
        nll, preds = position_stats(logits[scored], targets[scored])
        self._nll[:, start:stop] = scatter_positions(nll, scored)
        self._preds[:, start:stop] = scatter_positions(preds, scored)

    def end(self) -> torch.Tensor:
        return epoch_metrics(self._nll, self._preds, self._targets, self.num_classes, self.eval_batch)
