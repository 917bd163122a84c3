"""Test sets as the sandbox worker is served them: shuffled, without targets, with causality probes mixed in.

The checks test causality on random inputs before training; a candidate that leaks the future only under the
conditions of the real evaluation (its lengths, batch sizes, eval mode, after many calls, on CUDA in bf16)
would pass them. So the scored evaluation audits itself. For the language-model tasks the trusted side adds
`probes` to each test set: a probe copies a test example up to a cut position t, where the example is scored,
and continues with the tokens of another example after t. In a causal model the probe's logits at positions
<= t equal the example's; a model that reads token t+1 at position t (the next-token leak that would turn
in-context recall into copying) changes them. The worker cannot tell probes from test examples: rows are
shuffled with a secret permutation and it never sees a target. The trusted scorer compares every probe with
its example at every epoch, and scores only the real examples, in their original order.

Compress is exempt: its auto-encoder reads the whole sequence at the last position by design.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from mixerlab.tasks import IGNORE_INDEX, TaskSetting, generate

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


def serve(setting: TaskSetting, seed: int, rng: torch.Generator | None = None) -> ServedTestSet:
    """The served form of a setting's test set (its targets kept here); `rng` (default: a secret seed) picks
    the probes and the permutation."""
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
    order = torch.randperm(len(all_inputs), generator=rng)
    served_row = torch.empty_like(order)
    served_row[order] = torch.arange(len(order))  # where each stacked row ends up
    probes = tuple(Probe(int(served_row[n + k]), a, cut) for k, (a, cut) in enumerate(cuts))
    return ServedTestSet(all_inputs[order].contiguous(), all_scored[order].contiguous(), origin[order], targets, probes)


def leak(probe_logits: torch.Tensor, original_logits: torch.Tensor) -> float:
    """Relative change of the logits at the shared scored positions: max |difference| / max |logit|."""
    finite_probe, finite_original = torch.isfinite(probe_logits), torch.isfinite(original_logits)
    if not torch.equal(finite_probe, finite_original):
        return float("inf")  # a diverged model is NaN alike in both; NaN in only one is a change
    if not finite_original.any():
        return 0.0
    scale = original_logits[finite_original].abs().max().item() + 1e-6
    return (probe_logits - original_logits)[finite_original].abs().max().item() / scale
