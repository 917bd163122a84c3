"""Test sets as the sandbox worker is served them: shuffled, without targets, with causality probes mixed in.

The checks test causality on random inputs before training; a candidate that leaks the future only under the
conditions of the real evaluation (its lengths, batch sizes, eval mode, after many calls, on CUDA in bf16)
would pass them. So the scored evaluation audits itself. For the language-model tasks the trusted side adds
`probes` to each test set: a probe copies a test example up to a cut position t, where the example is scored,
and continues with the tokens of another example after t. In a causal model the probe's logits at positions
<= t equal the example's; a model that reads token t+1 at position t (the next-token leak that would turn
in-context recall into copying) changes them. The worker cannot tell probes from test examples: rows are
shuffled with a secret permutation and it never sees a target, and a probe is never evaluated in the same
forward call as its example (`train.scoring.forward_rows`): a mixer that compares the rows of its batch, and
looks ahead only on rows that share no prefix with another, leaks on both and is caught. The trusted scorer
compares every probe with its example at every epoch, and scores only the real examples, in their original
order.

Compress is exempt: its auto-encoder reads the whole sequence at the last position by design.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from mixerlab.tasks import IGNORE_INDEX, TaskSetting, generate
from mixerlab.train.scoring import forward_rows

PROBES_PER_EXAMPLES = 64  # one probe per this many test examples, at least MIN_PROBES
MIN_PROBES = 8
# relative change of a probe's logits at positions <= t allowed before it counts as a leak: float32 forms agree
# to ~1e-6; bf16 autocast rounds each example alike but may group rows differently in its kernels
AUDIT_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}


@dataclass(frozen=True)
class Probe:
    served: int  # row of the probe in the served set
    original: int  # the test example it copies up to `cut` (index in the original order)
    cut: int  # last position shared with the example; scored there


@dataclass(frozen=True)
class ServedTestSet:
    """inputs/scored: the rows the worker evaluates (served order); origin: for each, the original test row or
    -1 for a probe; targets: the original test set's targets (never sent); probes: what to compare."""

    inputs: torch.Tensor
    scored: torch.Tensor
    origin: torch.Tensor
    targets: torch.Tensor
    probes: tuple[Probe, ...]

    @property
    def num_real(self) -> int:
        return len(self.targets)

    def probe_of_row(self) -> dict[int, int]:
        return {p.served: k for k, p in enumerate(self.probes)}


def serve(setting: TaskSetting, seed: int, rng: torch.Generator | None = None, eval_batch: int = 128) -> ServedTestSet:
    """The served form of a setting's test set (its targets kept here); `rng` (default: a secret seed) picks
    the probes and the permutation; `eval_batch`: the trainer's, which sets its forward calls (`forward_rows`)."""
    rng = rng or torch.Generator().manual_seed(secrets.randbits(63))
    data = generate(setting, "test", seed)
    inputs, targets = data.inputs, data.targets
    scored = targets != IGNORE_INDEX
    n, length = inputs.shape
    rows, masks, cuts = [], [], []
    if setting.task.backbone == "language_model" and length > 1:
        wanted = max(MIN_PROBES, n // PROBES_PER_EXAMPLES)
        for a in torch.randperm(n, generator=rng).tolist():
            if len(rows) == wanted:
                break
            positions = scored[a, : length - 1].nonzero().flatten()
            if len(positions) == 0:
                continue
            cut = int(positions[torch.randint(len(positions), (1,), generator=rng)])
            donors = ((inputs[:, cut + 1] != inputs[a, cut + 1]) & (torch.arange(n) != a)).nonzero().flatten()
            if len(donors) == 0:
                continue
            b = int(donors[torch.randint(len(donors), (1,), generator=rng)])
            rows.append(torch.cat([inputs[a, : cut + 1], inputs[b, cut + 1 :]]))
            masks.append(torch.cat([scored[a, : cut + 1], scored[b, cut + 1 :]]))
            cuts.append((a, cut))
    all_inputs = torch.cat([inputs, *[r[None] for r in rows]]) if rows else inputs
    all_scored = torch.cat([scored, *[m[None] for m in masks]]) if masks else scored
    origin = torch.cat([torch.arange(n), torch.full((len(rows),), -1, dtype=torch.long)])
    order = _apart(torch.randperm(len(all_inputs), generator=rng), n, [a for a, _ in cuts],
                   forward_rows(len(all_inputs), length, eval_batch), rng)
    served_row = torch.empty_like(order)
    served_row[order] = torch.arange(len(order))  # where each stacked row ends up
    probes = tuple(Probe(int(served_row[n + k]), a, cut) for k, (a, cut) in enumerate(cuts))
    return ServedTestSet(all_inputs[order].contiguous(), all_scored[order].contiguous(), origin[order], targets, probes)


def _apart(order: torch.Tensor, n: int, originals: list[int], block: int, rng: torch.Generator) -> torch.Tensor:
    """`order` (served position -> stacked row; probes are stacked rows n, n+1, ...) changed by swaps until no
    probe shares a block of `block` served rows with its example. Swaps go to random positions, so the served
    order stays a secret random permutation."""
    order = order.clone()
    blocks = (len(order) + block - 1) // block
    if blocks < 2:
        return order
    for _ in range(100 * max(1, len(originals))):
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        clash = [k for k, a in enumerate(originals) if position[n + k] // block == position[a] // block]
        if not clash:
            return order
        here = int(position[n + clash[0]])
        other = int(torch.randint(len(order), (1,), generator=rng))
        if other // block != here // block:
            order[here], order[other] = order[other].clone(), order[here].clone()
    raise RuntimeError("could not serve every probe apart from its example")  # not reached: a swap fixes one clash


def leaks(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """For every (probe, original) pair of logits at their shared scored positions, the relative change
    max |difference| / max |logit|, read from the device once for all pairs. A diverged model is NaN alike in
    both (no change); a non-finite value in one only is an infinite change."""
    if not pairs:
        return []
    stats = []
    for probe_logits, original_logits in pairs:
        finite_probe, finite_original = torch.isfinite(probe_logits), torch.isfinite(original_logits)
        zero = original_logits.new_zeros(())
        stats.append(torch.stack([
            (finite_probe != finite_original).any().float(),
            finite_original.any().float(),
            torch.where(finite_original, original_logits.abs(), zero).amax() if original_logits.numel() else zero,
            torch.where(finite_original, (probe_logits - original_logits).abs(), zero).amax()
            if original_logits.numel() else zero,
        ]).float())
    out = []
    for mismatch, any_finite, scale, change in torch.stack(stats).tolist():
        out.append(float("inf") if mismatch else 0.0 if not any_finite else change / (scale + 1e-6))
    return out
